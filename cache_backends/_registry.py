"""Every cache backend by name: the one place a new backend (S3, next) is registered, and
the list the conformance suite (tests/integration/cache_backends/) runs over."""

from __future__ import annotations

from typing import Final

from dockyard.cache_backends._local import LocalBackend
from dockyard.cache_backends._memory import MemoryBackend
from dockyard.cache_backends._protocol import CacheBackend
from dockyard.cache_backends._s3 import S3Backend

__all__ = ["BACKENDS"]

#: name -> backend class.  Constructors differ (a root, a bucket...): the caller that picks
#: a backend by name (the CLI's configuration) supplies its options.
BACKENDS: Final[dict[str, type[CacheBackend]]] = {
    "memory": MemoryBackend,
    "local": LocalBackend,
    "s3": S3Backend,
}
