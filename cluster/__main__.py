"""``python -m dockyard.cluster`` (or ``python -m dockyard``): the ``dockyard`` console script."""

from ._cli import main

raise SystemExit(main())
