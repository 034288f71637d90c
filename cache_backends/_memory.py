"""The in-memory backend: the fake every unit test of a cache user takes, and the reference
the conformance suite holds the other backends to.

It keeps the same rules as the disk backend (verification on read and write, records only
after their blobs, undecodable records dropped, the same prune policy), in dicts, in one
process.  ``inject_blob``/``inject_record`` store bytes unchecked, so tests can simulate a
damaged cache.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import time
from collections.abc import AsyncIterable, Callable, Iterable
from pathlib import Path
from typing import BinaryIO

from dockyard.cache_backends._protocol import (
    BackendStatistics,
    BlobInput,
    BlobMissing,
    BlobSink,
    Counters,
    PruneEntry,
    PruneReport,
    StreamReader,
    Usage,
    copy_blob,
    digest_hex,
    plan_prune,
    verified_stream,
)
from dockyard.cache_backends._records import CacheRecord
from dockyard.cache_backends._rules import (
    blob_mismatch,
    decode_record,
    require_blobs,
    stored_record,
)
from dockyard.scheduler._errors import CacheError

__all__ = ["MemoryBackend", "MemoryBlobSource"]

_WHERE = "the memory cache"


class MemoryBackend:
    """A ``CacheBackend`` in dicts.  ``clock`` gives the time of each use (prune's LRU)."""

    name = "memory"

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        # digest -> its bytes; every value hashes to its key unless injected
        self._blobs: dict[str, bytes] = {}
        # cache key -> the record's stored bytes (CacheRecord.to_bytes, or injected)
        self._records: dict[str, bytes] = {}
        # digest or key -> clock() of its last read or write
        self._used: dict[str, float] = {}
        self._counters = Counters()

    # --- blobs ---------------------------------------------------------------------------

    async def has(self, digest: str) -> bool:
        digest_hex(digest)
        return digest in self._blobs

    async def has_many(self, digests: Iterable[str]) -> set[str]:
        wanted = list(digests)
        for digest in wanted:
            digest_hex(digest)
        return {digest for digest in wanted if digest in self._blobs}

    async def open_blob(self, digest: str) -> StreamReader:
        return StreamReader(digest, self.open_sync(digest), offload=False)

    def open_sync(self, digest: str) -> BinaryIO:
        """A blocking verified stream of the blob (the exporters' side)."""
        digest_hex(digest)
        data = self._blobs.get(digest)
        if data is None:
            self._counters.blob_misses += 1
            raise BlobMissing(f"blob {digest} is not in {_WHERE}")
        self._counters.blob_hits += 1
        self._used[digest] = self._clock()
        return verified_stream(io.BytesIO(data), digest, _WHERE,
                               lambda: self._drop_blob(digest, data), size=len(data))

    def _drop_blob(self, digest: str, data: bytes) -> None:
        self._counters.blobs_corrupt += 1
        if self._blobs.get(digest) is data:
            del self._blobs[digest]

    async def put_blob(self, digest: str, source: BlobInput, *, move: bool = False) -> int:
        digest_hex(digest)
        if digest in self._blobs:
            self._used[digest] = self._clock()
            await _discard(source, move)
            return len(self._blobs[digest])
        data = await _read_all(source, move)
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise blob_mismatch(digest, _WHERE, actual)
        self._blobs[digest] = data
        self._used[digest] = self._clock()
        self._counters.blobs_written += 1
        return len(data)

    async def fetch_into(self, digest: str, sink: BlobSink) -> int:
        return await copy_blob(self, digest, sink)

    def inject_blob(self, digest: str, data: bytes) -> None:
        """Store ``data`` under ``digest`` unchecked (tests: a damaged cache)."""
        self._blobs[digest] = data
        self._used[digest] = self._clock()

    # --- records ---------------------------------------------------------------------------

    async def get_record(self, key: str) -> CacheRecord | None:
        digest_hex(key, "cache key")
        data = self._records.get(key)
        if data is None:
            self._counters.record_misses += 1
            return None
        record = stored_record(data, key, self._counters)
        if record is None:
            del self._records[key]
            return None
        self._used[key] = self._clock()
        return record

    async def put_record(self, record: CacheRecord) -> None:
        digest_hex(record.key, "cache key")
        named = require_blobs(record, _WHERE, self._blobs.__contains__)
        now = self._clock()
        for digest in named:
            self._used[digest] = now
        self._records[record.key] = record.to_bytes()
        self._used[record.key] = now
        self._counters.records_written += 1

    def inject_record(self, key: str, data: bytes) -> None:
        """Store ``data`` as the record under ``key`` unchecked (tests)."""
        self._records[key] = data
        self._used[key] = self._clock()

    # --- housekeeping ---------------------------------------------------------------------

    async def prune(self, *, keep_bytes: int | None = None,
                    older_than: float | None = None) -> PruneReport:
        records = [PruneEntry(key, len(data), self._used.get(key, 0.0), _named(data))
                   for key, data in self._records.items()]
        blobs = [PruneEntry(digest, len(data), self._used.get(digest, 0.0))
                 for digest, data in self._blobs.items()]
        plan = plan_prune(records, blobs, now=self._clock(), keep_bytes=keep_bytes,
                          older_than=older_than)
        for key in plan.records:
            del self._records[key]
        for digest in plan.blobs:
            del self._blobs[digest]
        return PruneReport(records_removed=len(plan.records), blobs_removed=len(plan.blobs),
                           bytes_freed=plan.bytes_freed)

    async def usage(self) -> Usage:
        return Usage(blob_bytes=sum(map(len, self._blobs.values())),
                     blob_count=len(self._blobs),
                     record_bytes=sum(map(len, self._records.values())),
                     record_count=len(self._records))

    def statistics(self) -> BackendStatistics:
        return self._counters.snapshot()

    def blob_source(self) -> MemoryBlobSource:
        """The blocking view the exporters read (workers/_exporters.py ``BlobSource``)."""
        return MemoryBlobSource(self)

    def __repr__(self) -> str:
        return f"<MemoryBackend blobs={len(self._blobs)} records={len(self._records)}>"


class MemoryBlobSource:
    """``BlobSource``/``BlobPaths`` over a ``MemoryBackend``: verified streams, no files."""

    def __init__(self, backend: MemoryBackend) -> None:
        self._backend = backend

    def open_blob(self, digest: str) -> BinaryIO:
        return self._backend.open_sync(digest)

    def blob_path(self, digest: str) -> Path | None:
        return None


def _named(data: bytes) -> frozenset[str]:
    """The layer digests a stored record names (none if it does not decode)."""
    record = decode_record(data)
    if record is None:
        return frozenset()
    return frozenset(layer.digest for layer in record.result.layers)


async def _read_all(source: BlobInput, move: bool) -> bytes:
    if isinstance(source, bytes):
        return source
    if isinstance(source, Path):
        data = await asyncio.to_thread(_read_file, source)
        await _discard(source, move)
        return data
    if isinstance(source, AsyncIterable):
        return b"".join([chunk async for chunk in source])
    return source.read()


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise CacheError(f"cannot read {path} to store it in {_WHERE}: "
                         f"{err.strerror or err}") from err


async def _discard(source: BlobInput, move: bool) -> None:
    if move and isinstance(source, Path):
        await asyncio.to_thread(_unlink, source)


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        raise CacheError(f"cannot remove {path} after storing it in {_WHERE}: "
                         f"{err.strerror or err}") from err

