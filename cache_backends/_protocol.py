"""What every cache backend is: blobs by digest and cache records by key, behind one small
async protocol, and the rules all backends share.

- ``CacheBackend``: ``has``/``has_many``, ``open_blob`` (a streaming ``BlobReader``),
  ``put_blob``, ``fetch_into`` (a blob copied into a local store, a ``BlobSink``),
  ``get_record``/``put_record``, ``prune``, ``usage``, ``statistics``.
- ``fetch_into`` lets a remote backend write a blob straight into the sink's own staging
  file (``StagedBlob``), which is hashed once and published only after its digest matched:
  one write and one hash per blob, and nothing unverified is ever visible in the sink.
- Blobs are verified while they are read: a reader that reaches the end of a blob whose
  bytes do not hash to its digest raises ``BlobCorrupt`` and the backend drops the blob,
  so a damaged cache is a cache miss, never a wrong build.  A blob is published whole or
  not at all.
- A record is accepted only when every layer blob it names is present (``put_record``),
  and a record that cannot be decoded is dropped and reads as a miss (``get_record``).
- ``plan_prune`` is the prune policy, without I/O: least recently used first, a record
  together with the blobs only it references, then blobs no record references.

Digests and keys are ``sha256:`` and 64 lowercase hex digits (what scheduler/_cachekey.py
and the OCI layouts use); anything else is refused with a ``CacheError``.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import re
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Final, Protocol, cast

from dockyard.cache_backends._records import CacheRecord
from dockyard.scheduler._errors import CacheError

__all__ = [
    "CHUNK",
    "BackendStatistics",
    "BlobCorrupt",
    "BlobInput",
    "BlobMissing",
    "BlobReader",
    "BlobSink",
    "CacheBackend",
    "Counters",
    "PruneEntry",
    "PrunePlan",
    "PruneReport",
    "StagedBlob",
    "StreamReader",
    "Usage",
    "copy_blob",
    "corrupt_blob",
    "digest_hex",
    "plan_prune",
    "verified_stream",
]

#: The unit of streamed I/O: big enough that a thread hop per chunk costs nothing.
CHUNK: Final = 1 << 20
_DIGEST: Final = re.compile(r"sha256:[0-9a-f]{64}")

#: What ``put_blob`` accepts: small bytes, a file, a readable stream, or async chunks.
BlobInput = bytes | Path | BinaryIO | AsyncIterable[bytes]


class BlobMissing(CacheError):
    """The backend does not hold the blob (a cache miss)."""


class BlobCorrupt(CacheError):
    """A stored blob did not match its digest; it has been removed (a cache miss)."""


def digest_hex(digest: str, what: str = "blob digest") -> str:
    """The hex part of a ``sha256:<hex>`` digest or key; anything else is a ``CacheError``."""
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise CacheError(f"invalid {what} {digest!r}: expected sha256: and 64 lowercase "
                         "hex digits")
    return digest[len("sha256:"):]


# --- data the protocol returns -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Usage:
    """Bytes and counts held by a backend, by kind."""

    blob_bytes: int = 0
    blob_count: int = 0
    record_bytes: int = 0
    record_count: int = 0

    @property
    def total_bytes(self) -> int:
        return self.blob_bytes + self.record_bytes


@dataclass(frozen=True, slots=True)
class PruneReport:
    """What one ``prune`` removed and the bytes that freed."""

    records_removed: int = 0
    blobs_removed: int = 0
    bytes_freed: int = 0
    #: the records and blobs removed (the local store fills it: a collector counts kinds)
    removed: tuple[PruneEntry, ...] = ()


@dataclass(frozen=True, slots=True)
class BackendStatistics:
    """Counts since the backend object was made (this process only)."""

    blob_hits: int
    blob_misses: int
    blobs_written: int
    blobs_corrupt: int
    record_hits: int
    record_misses: int
    records_written: int
    records_dropped: int


@dataclass(slots=True)
class Counters:
    """The mutable counts behind ``statistics()``; each field only ever grows."""

    blob_hits: int = 0
    blob_misses: int = 0
    blobs_written: int = 0
    blobs_corrupt: int = 0
    record_hits: int = 0
    record_misses: int = 0
    records_written: int = 0
    records_dropped: int = 0

    def snapshot(self) -> BackendStatistics:
        return BackendStatistics(
            blob_hits=self.blob_hits, blob_misses=self.blob_misses,
            blobs_written=self.blobs_written, blobs_corrupt=self.blobs_corrupt,
            record_hits=self.record_hits, record_misses=self.record_misses,
            records_written=self.records_written, records_dropped=self.records_dropped)


# --- the protocol ----------------------------------------------------------------------------


class BlobReader(Protocol):
    """A blob being read: ``read`` returns ``b""`` at its end, and raises ``BlobCorrupt``
    there if the bytes did not match ``digest``.  Use it as ``async with`` and/or
    ``async for chunk in reader``."""

    digest: str

    async def read(self, size: int = CHUNK) -> bytes: ...

    async def aclose(self) -> None: ...

    async def __aenter__(self) -> BlobReader: ...

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None: ...

    def __aiter__(self) -> AsyncIterator[bytes]: ...


class StagedBlob(Protocol):
    """A blob being received by a local store, not yet visible in it (blocking methods:
    call them from a thread).  Write its bytes to ``file`` (writable and seekable: writes
    at any offset); ``seal`` flushes it and gives (``sha256:`` digest, size): ``hashed``,
    what the writer computed over the very bytes it wrote (the store then only checks the
    file's size), else the store hashes the file, once; ``publish`` makes it the store's
    blob durably (fsynced), to be called only once the caller compared that digest;
    ``discard`` removes it (always call it; after ``publish`` it does nothing)."""

    file: BinaryIO

    def seal(self, hashed: tuple[str, int] | None = None) -> tuple[str, int]: ...

    def publish(self) -> int: ...

    def discard(self) -> None: ...


class BlobSink(Protocol):
    """A local store that ``CacheBackend.fetch_into`` copies blobs into."""

    async def put_blob(self, digest: str, source: BlobInput, *, move: bool = False) -> int:
        ...

    def stage_blob(self, digest: str) -> StagedBlob:
        """A new staging file for ``digest`` (blocking: call it from a thread)."""
        ...


class CacheBackend(Protocol):
    """Blobs by digest and cache records by key.  Every method may raise ``CacheError``
    (naming the backend and the digest or key); none lets an ``OSError`` through."""

    name: str

    async def has(self, digest: str) -> bool: ...

    async def has_many(self, digests: Iterable[str]) -> set[str]:
        """The subset of ``digests`` the backend holds."""
        ...

    async def open_blob(self, digest: str) -> BlobReader:
        """A verifying reader of the blob (``BlobMissing`` if absent); marks it used."""
        ...

    async def put_blob(self, digest: str, source: BlobInput, *, move: bool = False) -> int:
        """Store ``source`` under ``digest`` (checked: a mismatch is a ``CacheError`` and
        nothing is stored); returns its size.  Published atomically; an existing blob is
        kept and ``source`` not read.  ``move``: ``source`` is a file the backend may take
        (rename) instead of copying; it is gone afterwards either way."""
        ...

    async def fetch_into(self, digest: str, sink: BlobSink) -> int:
        """Copy the blob into ``sink`` (the size): ``BlobMissing`` if absent here;
        ``BlobCorrupt`` (and dropped here, as ``open_blob`` does) if its bytes do not match,
        and then ``sink`` never shows it.  Marks it used here."""
        ...

    async def get_record(self, key: str) -> CacheRecord | None:
        """The record stored under ``key``, or None; a record that does not decode (or
        has an unknown version) is removed and reads as None.  Marks it used."""
        ...

    async def put_record(self, record: CacheRecord) -> None:
        """Store ``record`` under its key, atomically; a ``CacheError`` if a layer blob it
        names is missing (blobs first, then the record that names them)."""
        ...

    async def prune(self, *, keep_bytes: int | None = None,
                    older_than: float | None = None) -> PruneReport:
        """Remove least recently used entries: only those unused for ``older_than``
        seconds, and only until ``usage().total_bytes <= keep_bytes``; with neither, all.
        Records go first, then the blobs no record names."""
        ...

    async def usage(self) -> Usage: ...

    def statistics(self) -> BackendStatistics: ...


# --- verification while reading --------------------------------------------------------------


class _VerifyingRaw(io.RawIOBase):
    """Hashes what it reads from ``source``; at the end, a mismatch calls ``on_corrupt``
    (the backend drops the blob) and raises ``BlobCorrupt``.  The end is the empty read, or,
    when the stored ``size`` is known, the read that delivers its last byte (a consumer that
    stops at the size it expects still gets the check)."""

    def __init__(self, source: BinaryIO, digest: str, where: str,
                 on_corrupt: Callable[[], None], size: int | None) -> None:
        super().__init__()
        self._source = source
        self._digest = digest
        self._where = where
        self._on_corrupt = on_corrupt
        self._size = size
        self._hash = hashlib.sha256()
        # bytes delivered so far
        self._seen = 0
        # True once the end was reached and the digest compared (it is compared once)
        self._checked = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        data = self._source.read(len(view))
        if data:
            view[:len(data)] = data
            self._hash.update(data)
            self._seen += len(data)
            if self._seen == self._size and not self._checked:
                self._check()
            return len(data)
        if not self._checked:
            self._check()
        return 0

    def _check(self) -> None:
        self._checked = True
        actual = "sha256:" + self._hash.hexdigest()
        if actual != self._digest:
            self._on_corrupt()
            raise corrupt_blob(self._digest, self._where, actual)

    def close(self) -> None:
        try:
            self._source.close()
        finally:
            super().close()


def corrupt_blob(digest: str, where: str, actual: str) -> BlobCorrupt:
    """The error for a stored blob ``digest`` in ``where`` whose bytes hash to ``actual``
    (the backend has removed it)."""
    return BlobCorrupt(f"blob {digest} in {where} is corrupt (its bytes hash to {actual}); "
                       "it was removed",
                       hint="the build treats it as a cache miss; rebuild to store it again")


async def copy_blob(backend: CacheBackend, digest: str, sink: BlobSink) -> int:
    """``fetch_into`` for a backend without a faster way: its verifying reader streamed
    into ``sink.put_blob`` (a corrupt blob raises ``BlobCorrupt`` before the sink
    publishes it)."""
    async with await backend.open_blob(digest) as reader:
        return await sink.put_blob(digest, reader)


def verified_stream(source: BinaryIO, digest: str, where: str,
                    on_corrupt: Callable[[], None], *, size: int | None = None) -> BinaryIO:
    """``source`` (of ``size`` bytes, when known) read through a digest check (see
    ``BlobReader``), buffered in chunks."""
    raw = _VerifyingRaw(source, digest, where, on_corrupt, size)
    return cast(BinaryIO, io.BufferedReader(raw, CHUNK))


class StreamReader:
    """A ``BlobReader`` over a blocking verified stream; ``offload`` runs each read in a
    thread (files), else inline (memory)."""

    def __init__(self, digest: str, stream: BinaryIO, *, offload: bool) -> None:
        self.digest = digest
        self._stream = stream
        self._offload = offload

    async def read(self, size: int = CHUNK) -> bytes:
        if self._offload:
            return await asyncio.to_thread(self._stream.read, size)
        return self._stream.read(size)

    async def aclose(self) -> None:
        self._stream.close()

    async def __aenter__(self) -> StreamReader:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while chunk := await self.read(CHUNK):
            yield chunk

    def __repr__(self) -> str:
        return f"<StreamReader {self.digest} closed={self._stream.closed}>"


# --- the prune policy --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PruneEntry:
    """A record (``blobs``: the layer digests it names; ``kind``: what made it, its
    ``meta["kind"]``, "" when unknown) or a blob, as prune sees it."""

    name: str
    size: int
    last_use: float
    blobs: frozenset[str] = field(default_factory=frozenset)
    kind: str = ""


@dataclass(frozen=True, slots=True)
class PrunePlan:
    """What to remove, records before blobs, and the bytes that frees."""

    records: tuple[str, ...]
    blobs: tuple[str, ...]
    bytes_freed: int


def plan_prune(records: Sequence[PruneEntry], blobs: Sequence[PruneEntry], *, now: float,
               keep_bytes: int | None, older_than: float | None,
               eligible: Callable[[PruneEntry, bool], bool] | None = None,
               extra: Mapping[str, int] | None = None) -> PrunePlan:
    """Walk records and unreferenced blobs least recently used first; skip those used
    within ``older_than`` seconds of ``now``; stop once the total is ``<= keep_bytes``.
    A removed record takes the blobs that no remaining record names.

    ``eligible(entry, is_record)`` (a garbage collector's policy: its kinds, what running
    builds hold) says what may go: a record it refuses stays and keeps its blobs, a blob it
    refuses stays even when no record names it any more.  ``extra``: bytes outside the
    store that go with a blob (its unpacked layer), counted in the total and the bytes
    freed."""
    allowed = eligible or (lambda entry, is_record: True)
    sizes = {blob.name: blob.size + (extra or {}).get(blob.name, 0) for blob in blobs}
    by_name = {blob.name: blob for blob in blobs}
    refs = Counter(digest for record in records for digest in record.blobs if digest in sizes)
    units = [(record, True) for record in records]
    units += [(blob, False) for blob in blobs if not refs[blob.name]]
    units.sort(key=lambda unit: (unit[0].last_use, not unit[1], unit[0].name))
    remaining = sum(sizes.values()) + sum(record.size for record in records)
    total = remaining
    gone_records: list[str] = []
    gone_blobs: list[str] = []
    for entry, is_record in units:
        if keep_bytes is not None and remaining <= keep_bytes:
            break
        if older_than is not None and entry.last_use > now - older_than:
            continue
        if not allowed(entry, is_record):
            continue
        if not is_record:
            remaining -= sizes[entry.name]
            gone_blobs.append(entry.name)
            continue
        remaining -= entry.size
        gone_records.append(entry.name)
        for digest in sorted(entry.blobs & sizes.keys()):
            refs[digest] -= 1
            if not refs[digest] and allowed(by_name[digest], False):
                gone_blobs.append(digest)
                remaining -= sizes[digest]
    return PrunePlan(records=tuple(gone_records), blobs=tuple(gone_blobs),
                     bytes_freed=total - remaining)
