"""Each package's public surface is exactly its ``__all__``, pinned here: a name leaves or
joins the API only by changing this table."""

from __future__ import annotations

import importlib
import types

import pytest

SURFACES: dict[str, set[str]] = {
    "scheduler": {
        "GRAPH_VERSION", "BuildGraph", "Copy", "DockerfileError", "DockyardError", "ExecMount",
        "ExecOp", "FileAction", "FileOp", "GraphError", "Healthcheck", "HistoryEntry",
        "ImageConfig", "ImageReferenceError", "ImageResult", "MergeOp", "Mkdir", "Mkfile",
        "Op", "Platform", "Reference", "Rm", "SourceOp", "Symlink", "UsageError", "Vertex",
        "default_platform", "parse_platform", "parse_platforms", "parse_reference",
        "CacheError", "ExecError", "ExportError", "LayerError", "RegistryError",
        "ServiceError", "SolveError", "WorkerLost",
    },
    "dockyard.scheduler.dockerfile": {
        "RULES", "BaseImage", "CheckWarning", "Directives", "Dockerfile", "Expansion",
        "FrontendResult", "Heredoc", "ImageResolver", "Lexer", "Node", "ParseResult",
        "PatternMatcher", "Rule", "Stage", "build_graph", "parse", "parse_dockerfile",
        "parse_ignore_file", "process_word", "process_words",
    },
    "dockyard.scheduler.dockerfile.shell": {"MAX_WORD_SIZE", "Expansion", "Lexer", "process_word",
                                   "process_words"},
    "cluster": {"ContextEntry", "ignore_file_for", "load_ignore_patterns", "main",
                "walk_context"},
    "workers": {
        "WorkerRuntime", "BuildSession", "RuntimeBackend", "LocalContext", "SnapshotStore",
        "Mounted", "Executor", "SecretFile", "SshSocket", "write_layer", "unpack_layer",
        "apply_layer_flat", "is_empty_diff", "apply_file_actions", "UserDb", "RegistryClient",
        "RegistryConfig", "ResolvedImage", "Descriptor", "build_image", "build_index",
        "build_metadata", "ImageArtifacts", "IndexArtifacts", "export_oci", "export_docker",
        "export_tar", "export_local", "push_image", "BlobSource", "WorkerActor",
        "ManifestContext", "ContextManifest", "build_manifest", "ContextStore",
        "ContextReader", "ask_reader",
    },
    "cache_backends": {
        "BACKENDS", "BackendStatistics", "BlobCorrupt", "BlobMissing", "CacheBackend",
        "CacheRecord", "LayerDescriptor", "LocalBackend", "LocalBlobSource", "MemoryBackend",
        "PruneReport", "RecordError", "S3Backend", "S3BlobSource", "StateResult", "Usage",
    },
}


@pytest.mark.parametrize("name", sorted(SURFACES))
def test_all_is_the_pinned_surface(name: str) -> None:
    module = importlib.import_module(name)
    assert set(module.__all__) == SURFACES[name]
    for attr in module.__all__:
        assert hasattr(module, attr), f"{name}.__all__ names missing {attr}"


@pytest.mark.parametrize("name", sorted(SURFACES))
def test_nothing_public_outside_all(name: str) -> None:
    """Every public name the package itself defines (or re-exports from its private
    modules) is listed in ``__all__``; imported helpers like ``dataclass`` don't count."""
    module = importlib.import_module(name)
    public = {a for a, obj in vars(module).items() if not a.startswith("_")
              and not isinstance(obj, types.ModuleType)
              and getattr(obj, "__module__", name).startswith(name)}
    assert public <= set(module.__all__)
