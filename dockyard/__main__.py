"""``python -m dockyard``: the same as the ``dockyard`` console script."""

from dockyard.cluster._cli import main

raise SystemExit(main())
