"""dockyard's workers: everything that executes on a node (runc, snapshots, layers,
registry, file operations, images and exporters).  Workers never parse a Dockerfile.

The names are loaded on first use (PEP 562), so a client that needs one small piece, such as
the metadata of an exported image, does not pay for importing the whole runtime.
"""

from __future__ import annotations

from dockyard.scheduler._lazy import lazy_exports as _lazy_exports

_EXPORTS: dict[str, str] = {
    "WorkerRuntime": "_runtime", "BuildSession": "_runtime", "RuntimeBackend": "_runtime",
    "LocalContext": "_context_source", "ManifestContext": "_context_source",
    "ContextManifest": "_context_manifest", "build_manifest": "_context_manifest",
    "ContextStore": "_context_store", "ContextReader": "_context_fetch",
    "ask_reader": "_context_fetch",
    "SnapshotStore": "_snapshots", "Mounted": "_snapshots",
    "Executor": "_executor", "SecretFile": "_executor", "SshSocket": "_executor",
    "write_layer": "_layers", "unpack_layer": "_layers", "apply_layer_flat": "_layers",
    "is_empty_diff": "_layers",
    "apply_file_actions": "_fileops", "UserDb": "_fileops",
    "RegistryClient": "_registry", "RegistryConfig": "_registry", "ResolvedImage": "_registry",
    "Descriptor": "_manifests",
    "build_image": "_image", "build_index": "_image", "build_metadata": "_image",
    "ImageArtifacts": "_image", "IndexArtifacts": "_image",
    "export_oci": "_exporters", "export_docker": "_exporters", "export_tar": "_exporters",
    "export_local": "_exporters", "push_image": "_exporters", "BlobSource": "_exporters",
    "WorkerActor": "_actor",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS, globals())
