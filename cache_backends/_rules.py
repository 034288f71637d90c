"""The rules every stored-cache backend keeps, in one place so the disk backend and the
in-memory reference cannot drift apart: a blob's bytes must hash to its digest, a record is
stored only after the blobs it names, and a stored record that does not decode (or decodes
to another key) is dropped and counted as a miss.

Each backend keeps its own storage and says where it is (``where``, as in ``the local
cache (/root)``); these functions only decide and word the errors.
"""

from __future__ import annotations

from collections.abc import Callable

from dockyard.cache_backends._protocol import Counters
from dockyard.cache_backends._records import CacheRecord, RecordError
from dockyard.scheduler._errors import CacheError

__all__ = ["blob_mismatch", "decode_record", "require_blobs", "stored_record"]


def blob_mismatch(digest: str, where: str, actual: str) -> CacheError:
    """The error for a blob offered under ``digest`` whose bytes hash to ``actual``."""
    return CacheError(f"cannot store blob {digest} in {where}: its bytes hash to {actual}",
                      hint="the producer of the blob is at fault; nothing was stored")


def require_blobs(record: CacheRecord, where: str, held: Callable[[str], bool]
                  ) -> frozenset[str]:
    """The blob digests ``record`` names; a ``CacheError`` listing those ``held`` says the
    backend lacks (``held`` is asked once per digest and may mark it used)."""
    named = frozenset(layer.digest for layer in record.result.layers)
    missing = sorted(digest for digest in named if not held(digest))
    if missing:
        raise CacheError(f"cannot store the cache record {record.key} in {where}: it names "
                         f"blobs the cache does not hold: {', '.join(missing)}",
                         hint="store a record's blobs before the record")
    return named


def decode_record(data: bytes) -> CacheRecord | None:
    """The record stored as ``data``; None when it does not decode."""
    try:
        return CacheRecord.from_bytes(data)
    except RecordError:
        return None


def stored_record(data: bytes, key: str, counters: Counters) -> CacheRecord | None:
    """The record read under ``key``, counted as a hit; None, counted as a dropped record
    and a miss, when it does not decode or is another key's (the caller removes it)."""
    record = decode_record(data)
    if record is None or record.key != key:
        counters.records_dropped += 1
        counters.record_misses += 1
        return None
    counters.record_hits += 1
    return record
