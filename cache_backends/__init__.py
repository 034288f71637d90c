"""Content-addressed cache backends: blobs by digest and cache records by key.

One small async protocol (``CacheBackend``), one module per backend (local disk, S3 and any
S3-compatible store, in-memory), registered by name in ``BACKENDS``; the memory backend ships
as the fake for tests.

The names are loaded on first use (PEP 562): code that only needs the record types (the
solver, the coordinator) does not import boto3.
"""

from __future__ import annotations

from dockyard.scheduler._lazy import lazy_exports as _lazy_exports

_EXPORTS: dict[str, str] = {
    "BACKENDS": "_registry",
    "BackendStatistics": "_protocol", "BlobCorrupt": "_protocol", "BlobMissing": "_protocol",
    "CacheBackend": "_protocol", "PruneReport": "_protocol", "Usage": "_protocol",
    "CacheRecord": "_records", "LayerDescriptor": "_records", "RecordError": "_records",
    "StateResult": "_records",
    "LocalBackend": "_local", "LocalBlobSource": "_local",
    "MemoryBackend": "_memory",
    "S3Backend": "_s3", "S3BlobSource": "_s3",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS, globals())
