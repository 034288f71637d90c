"""dockyard against BuildKit: the benchmark suite (``python -m benchmarks``, see README.md).

Importing the package puts ``tests/support`` and ``tests/oracle`` on ``sys.path`` (see
``_paths``), so its modules can borrow the test helpers that start real services."""

from benchmarks import _paths as _paths
