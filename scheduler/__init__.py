"""dockyard's scheduler: everything that decides, nothing that executes.

The Dockerfile frontend (``scheduler.dockerfile``), the build graph it produces, platforms,
image references, and the one exception tree of the project.  Nothing in this package
touches a filesystem or a network.
"""

from ._errors import (
    DockerfileError,
    DockyardError,
    GraphError,
    ImageReferenceError,
    UsageError,
)
from ._graph import (
    GRAPH_VERSION,
    BuildGraph,
    Copy,
    ExecMount,
    ExecOp,
    FileAction,
    FileOp,
    Healthcheck,
    HistoryEntry,
    ImageConfig,
    ImageResult,
    MergeOp,
    Mkdir,
    Mkfile,
    Op,
    Rm,
    SourceOp,
    Symlink,
    Vertex,
)
from ._platform import Platform, default_platform, parse_platform, parse_platforms
from ._reference import Reference, parse_reference

__all__ = [
    "GRAPH_VERSION",
    "BuildGraph",
    "Copy",
    "DockerfileError",
    "DockyardError",
    "ExecMount",
    "ExecOp",
    "FileAction",
    "FileOp",
    "GraphError",
    "Healthcheck",
    "HistoryEntry",
    "ImageConfig",
    "ImageReferenceError",
    "ImageResult",
    "MergeOp",
    "Mkdir",
    "Mkfile",
    "Op",
    "Platform",
    "Reference",
    "Rm",
    "SourceOp",
    "Symlink",
    "UsageError",
    "Vertex",
    "default_platform",
    "parse_platform",
    "parse_platforms",
    "parse_reference",
]
