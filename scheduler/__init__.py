"""dockyard's scheduler: everything that decides, nothing that executes.

The Dockerfile frontend (``scheduler.dockerfile``), the build graph, and (later) cache
keys, the solver and placement.  Nothing in this package touches a filesystem other than
reading the inputs it is handed.
"""

from ._errors import DockerfileError, DockyardError, UsageError

__all__ = ["DockerfileError", "DockyardError", "UsageError"]
