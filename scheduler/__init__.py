"""dockyard's scheduler: everything that decides, nothing that executes.

The Dockerfile frontend (``dockyard.scheduler.dockerfile``), the build graph it produces, platforms,
image references, and the one exception tree of the project.  Nothing in this package
touches a filesystem or a network.

The names are loaded on first use (PEP 562), so a command that needs only the error types
does not pay for importing the graph.
"""

from __future__ import annotations

from ._lazy import lazy_exports as _lazy_exports

_EXPORTS: dict[str, str] = {
    "CacheError": "_errors", "DockerfileError": "_errors", "DockyardError": "_errors",
    "ExecError": "_errors", "ExportError": "_errors", "GraphError": "_errors",
    "ImageReferenceError": "_errors", "LayerError": "_errors", "RegistryError": "_errors",
    "ServiceError": "_errors", "SolveError": "_errors", "UsageError": "_errors",
    "WorkerLost": "_errors",
    "GRAPH_VERSION": "_graph", "BuildGraph": "_graph", "Copy": "_graph", "ExecMount": "_graph",
    "ExecOp": "_graph", "FileAction": "_graph", "FileOp": "_graph", "Healthcheck": "_graph",
    "HistoryEntry": "_graph", "ImageConfig": "_graph", "ImageResult": "_graph",
    "MergeOp": "_graph", "Mkdir": "_graph", "Mkfile": "_graph", "Op": "_graph", "Rm": "_graph",
    "SourceOp": "_graph", "Symlink": "_graph", "Vertex": "_graph",
    "Platform": "_platform", "default_platform": "_platform", "parse_platform": "_platform",
    "parse_platforms": "_platform",
    "Reference": "_reference", "parse_reference": "_reference",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS, globals())
