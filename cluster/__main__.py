"""``python -m cluster``: the same as the ``dockyard`` console script."""

from ._cli import main

raise SystemExit(main())
