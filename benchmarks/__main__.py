"""``python -m benchmarks``: run the suite and print the table."""

import sys

from benchmarks._main import main

sys.exit(main())
