"""Content-addressed cache backends: blobs by digest and cache records by key.

One small async protocol (``CacheBackend``), one module per backend (local disk, S3 and any
S3-compatible store, in-memory), registered by name in ``BACKENDS``; the memory backend ships
as the fake for tests.
"""

from ._local import LocalBackend, LocalBlobSource
from ._memory import MemoryBackend
from ._protocol import (
    BackendStatistics,
    BlobCorrupt,
    BlobMissing,
    CacheBackend,
    PruneReport,
    Usage,
)
from ._records import CacheRecord, LayerDescriptor, RecordError, StateResult
from ._registry import BACKENDS
from ._s3 import S3Backend, S3BlobSource

__all__ = [
    "BACKENDS",
    "BackendStatistics",
    "BlobCorrupt",
    "BlobMissing",
    "CacheBackend",
    "CacheRecord",
    "LayerDescriptor",
    "LocalBackend",
    "LocalBlobSource",
    "MemoryBackend",
    "PruneReport",
    "RecordError",
    "S3Backend",
    "S3BlobSource",
    "StateResult",
    "Usage",
]
