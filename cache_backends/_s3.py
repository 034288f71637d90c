"""The S3 backend: a cache shared by every machine that can reach one bucket (AWS S3 or any
S3-compatible store: MinIO, Ceph RGW, R2, GCS interop).

Layout in the bucket (issue 4)::

    <prefix>blobs/sha256/<hex>   blobs, named by their digest
    <prefix>records/<key-hex>    cache records (msgpack, CacheRecord.to_bytes, versioned)

Each object carries its last use (the backend's clock) as user metadata; prune's LRU order
reads it.  Marking an object used is a copy onto itself, done only when the mark is older
than ``touch_after`` seconds, so a warm cache costs one request per record looked up.

- A blob is hashed before it is uploaded (bytes and files in place, streams spooled to an
  unnamed temporary file), so a blob whose bytes do not match its digest never reaches the
  bucket; S3 shows a PUT or a completed multipart upload whole or not at all.
- Reads verify the digest while streaming; a mismatch deletes the object only if it is
  still the one read (its ETag) and raises ``BlobCorrupt``: a miss, repaired by the next
  build.  Large blobs come through ranged, parallel GETs into an unnamed temporary file;
  ``fetch_into`` (a restore into the local cache) writes any blob straight into the local
  store's staging file instead, hashing the bytes as they arrive (a large one in order,
  part by part, while later parts are still coming: _s3_ranges); the store takes that
  hash instead of reading the file back, and publishes the blob only if it matched (a
  mismatch drops the object here, as above): one write, one hash.
- A record is written only after every blob it names is known to exist: uploaded or seen
  by a HEAD through this instance (a backend lives for one build), the others found by a
  batch of parallel HEADs.  So a build HEADs each blob at most once and uploads it at most
  once, however many records name it.  A blob any backend of this process drops as
  corrupt (an import, on the same bucket) is trusted no more, nor one prune deleted.
  Concurrent writers of one key or digest each PUT whole objects; the last one stays.
  Within one backend a blob is uploaded once at a time (a second upload of it waits and
  finds it stored); a failed multipart attempt aborts the upload it began (_s3_client).
- ``prune`` deletes records first, then the blobs no remaining record names, and never a
  blob modified within ``grace`` seconds: a build that stores a blob or reuses one (which
  marks it used at most ``touch_after`` seconds late) and then writes its record is not
  robbed of it, as long as ``touch_after`` is well under ``grace``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import io
import itertools
import os
import tempfile
import threading
import time
from collections.abc import AsyncIterable, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, BinaryIO, Final, TypeVar, cast

from dockyard.cache_backends._credentials import S3Credentials
from dockyard.cache_backends._protocol import (
    CHUNK,
    BackendStatistics,
    BlobInput,
    BlobMissing,
    BlobSink,
    Counters,
    PruneEntry,
    PruneReport,
    StagedBlob,
    StreamReader,
    Usage,
    corrupt_blob,
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
from dockyard.cache_backends._s3_client import Head, Listed, S3Objects, S3Settings
from dockyard.cache_backends._s3_ranges import PartSlots, Turns, receive_ranges
from dockyard.cache_backends._s3_stream import ResumingBody
from dockyard.scheduler._errors import CacheError

__all__ = ["S3Backend", "S3BlobSource"]

T = TypeVar("T")
K = TypeVar("K")

#: Default seconds a use mark may lag before a use rewrites it.
TOUCH_AFTER: Final = 3600.0
#: Default seconds during which a freshly written or marked blob is never pruned.
GRACE: Final = 6 * 3600.0


#: Ticks ordering what a backend remembered against what any backend dropped.
_STAMPS = itertools.count(1)
#: (endpoint, bucket, key) -> the tick a backend of this process last dropped it as corrupt.
_DROPPED: dict[tuple[str, str, str], int] = {}
_DROPPED_LOCK = threading.Lock()


class _Bucket:
    """The blocking operations of the backend (each called in a worker thread)."""

    def __init__(self, objects: S3Objects, prefix: str, clock: Callable[[], float],
                 touch_after: float, tmp_dir: Path | None, counters: Counters) -> None:
        self.objects = objects
        self.prefix = prefix
        self.clock = clock
        self.touch_after = touch_after
        self.tmp_dir = tmp_dir
        self.counters = counters
        self.where = f"the S3 cache (s3://{objects.bucket}/{prefix})"
        # the parts of large blobs held at once, across this backend's fetches
        self.slots = PartSlots(objects.settings.concurrency)
        # large blobs' turns: one at a time, in the order their fetches were asked for
        self.turns = Turns()
        # digest -> the lock of its upload in flight (one upload of a blob at a time)
        self._flights: dict[str, threading.Lock] = {}
        self._flights_lock = threading.Lock()
        # blob key -> its HEAD and when it was remembered (a _STAMPS tick), for the blobs
        # uploaded or seen existing through this instance (the write path trusts them: no
        # second HEAD) unless dropped since; guarded by _flights_lock
        self._present: dict[str, tuple[Head, int]] = {}

    def blob_key(self, digest: str) -> str:
        return f"{self.prefix}blobs/sha256/{digest_hex(digest)}"

    def record_key(self, key: str) -> str:
        return f"{self.prefix}records/{digest_hex(key, 'cache key')}"

    def record_key_of(self, key: str) -> str | None:
        """Where a record decoded with ``key`` belongs; None for a malformed key."""
        try:
            return self.record_key(key)
        except CacheError:
            return None

    def in_parallel(self, fn: Callable[[K], T], items: Iterable[K]) -> list[T]:
        """``fn`` over ``items`` on up to ``concurrency`` threads (one shared client)."""
        todo = list(items)
        if len(todo) <= 1:
            return [fn(item) for item in todo]
        workers = min(len(todo), self.objects.settings.concurrency)
        with ThreadPoolExecutor(workers, thread_name_prefix="dockyard-s3") as pool:
            return list(pool.map(fn, todo))

    def temp_file(self) -> IO[bytes]:
        """An unnamed file (gone when closed, even after a crash) for spooling a blob."""
        try:
            return tempfile.TemporaryFile(dir=self.tmp_dir)
        except OSError as err:
            raise CacheError(f"{self.where}: cannot create a temporary file in "
                             f"{self.tmp_dir or tempfile.gettempdir()}: {err.strerror or err}",
                             hint="free disk space or point TMPDIR at a writable disk") from err

    def mark(self, key: str, head: Head) -> str | None:
        """Mark ``key`` used when its mark is stale; its ETag now (None: gone).  A failed
        mark only weakens the LRU order, so it is not an error."""
        now = self.clock()
        if now - head.used < self.touch_after:
            return head.etag
        try:
            return self.objects.touch(key, now)
        except CacheError:
            return head.etag

    # --- blobs ---------------------------------------------------------------------------

    def heads(self, digests: Iterable[str]) -> dict[str, Head]:
        """The blobs among ``digests`` that exist, by digest (parallel HEADs)."""
        wanted = sorted({digest for digest in digests if digest_hex(digest)})
        found = self.in_parallel(lambda digest: self.objects.head(self.blob_key(digest)),
                                 wanted)
        return {digest: head for digest, head in zip(wanted, found, strict=True) if head}

    def open_blob(self, digest: str) -> BinaryIO:
        key = self.blob_key(digest)
        head = self.objects.head(key)
        if head is None:
            self.counters.blob_misses += 1
            raise BlobMissing(f"blob {digest} is not in {self.where}")
        source = self._fetch(key, head)
        etag = self.mark(key, head) or head.etag
        self.counters.blob_hits += 1
        return verified_stream(source, digest, self.where,
                               lambda: self._drop(key, etag), size=head.size)

    def fetch_into(self, digest: str, sink: BlobSink, ticket: int) -> int:
        """The blob written into a staging file of ``sink`` and hashed as it arrives (the
        store takes that hash: it does not read the file back), checked, then published
        there (see ``CacheBackend.fetch_into``); the staging file never outlives the call.
        ``ticket``: its turn among large blobs (``Turns``), ended here."""
        try:
            return self._fetch_into(digest, sink, ticket)
        finally:
            self.turns.end(ticket)

    def _fetch_into(self, digest: str, sink: BlobSink, ticket: int) -> int:
        key = self.blob_key(digest)
        head = self.objects.head(key)
        if head is None:
            self.counters.blob_misses += 1
            raise BlobMissing(f"blob {digest} is not in {self.where}")
        staged = sink.stage_blob(digest)
        try:
            received = self._receive(key, head, staged, ticket)
            etag = self.mark(key, head) or head.etag
            self.counters.blob_hits += 1
            actual, _ = staged.seal(received)
            if actual != digest:
                self._drop(key, etag)
                raise corrupt_blob(digest, self.where, actual)
            return staged.publish()
        finally:
            staged.discard()

    def _receive(self, key: str, head: Head, staged: StagedBlob, ticket: int
                 ) -> tuple[str, int]:
        """The object's bytes into ``staged.file``, hashed on the way: one resuming GET, or
        for a large one (in its turn) ranged parallel GETs written in place; (digest,
        size) received."""
        if head.size > self.objects.settings.multipart_threshold:
            self.turns.wait(ticket)
            return receive_ranges(self.objects, key, head.size, staged.file, self.slots)
        self.turns.end(ticket)
        hasher, size = hashlib.sha256(), 0
        with ResumingBody(self.objects, key, head.size) as body:
            while chunk := body.read(CHUNK):
                staged.file.write(chunk)
                hasher.update(chunk)
                size += len(chunk)
        return "sha256:" + hasher.hexdigest(), size

    def _check_size(self, key: str, head: Head, got: int) -> None:
        if got != head.size:  # not damage: a transfer that went wrong
            raise CacheError(f"S3 cache: downloading s3://{self.objects.bucket}/{key} "
                             f"gave {got} bytes, not {head.size}",
                             hint="the object changed meanwhile or the store is "
                             "unwell; the build treats it as a miss")

    def _fetch(self, key: str, head: Head) -> BinaryIO:
        """A stream of the object: a GET that resumes where it broke, or for a large one
        ranged parallel GETs into a temporary file first."""
        if head.size <= self.objects.settings.multipart_threshold:
            return cast(BinaryIO, ResumingBody(self.objects, key, head.size))
        spool = self.temp_file()
        try:
            self.objects.download(key, spool)
            self._check_size(key, head, spool.seek(0, os.SEEK_END))
            spool.seek(0)
        except BaseException:
            spool.close()
            raise
        return cast(BinaryIO, spool)

    def _drop(self, key: str, etag: str) -> None:
        self.counters.blobs_corrupt += 1
        self.forget(key, dropped=True)
        self.objects.delete_if_same(key, etag)

    # --- what this instance knows exists (the write path) ----------------------------------

    def _where_is(self, key: str) -> tuple[str, str, str]:
        return (self.objects.settings.endpoint_url or "", self.objects.bucket, key)

    def remember(self, key: str, head: Head, stamp: int | None = None) -> None:
        """Trust ``head`` for ``key`` from ``stamp`` on: a tick taken *before* the request
        that found it (a drop by another instance while the request ran then wins: the
        HEAD may have seen the corrupt blob that drop deleted); default now."""
        with self._flights_lock:
            self._present[key] = (head, next(_STAMPS) if stamp is None else stamp)

    def forget(self, key: str, *, dropped: bool = False) -> None:
        """Stop trusting ``key``; ``dropped`` (deleted as corrupt): neither does any other
        backend of this process on the same bucket (a build's --cache-from and --cache-to
        are two instances, and the export must upload the rebuilt blob again)."""
        if dropped:
            with _DROPPED_LOCK:
                _DROPPED[self._where_is(key)] = next(_STAMPS)
        with self._flights_lock:
            self._present.pop(key, None)

    def known(self, key: str) -> Head | None:
        with self._flights_lock:
            head, stamp = self._present.get(key, (None, 0))
        if head is None:
            return None
        with _DROPPED_LOCK:
            dropped = _DROPPED.get(self._where_is(key), -1)
        return head if stamp > dropped else None

    def confirmed(self, digests: Iterable[str]) -> dict[str, Head]:
        """The blobs among ``digests`` that exist, by digest: those known to this instance,
        and the others by parallel HEADs (remembered when found)."""
        wanted = sorted({digest for digest in digests if digest_hex(digest)})
        known = {digest: head for digest in wanted
                 if (head := self.known(self.blob_key(digest))) is not None}
        return known | self.looked_up(digest for digest in wanted if digest not in known)

    def looked_up(self, digests: Iterable[str]) -> dict[str, Head]:
        """``heads`` (asks the bucket), remembering what it found for the write path."""
        stamp = next(_STAMPS)
        found = self.heads(digests)
        for digest, head in found.items():
            self.remember(self.blob_key(digest), head, stamp)
        return found

    def still_there(self, key: str, head: Head) -> bool:
        """Mark a known blob used when its mark is stale (a copy onto itself, remembered);
        False when that found it gone (then forgotten)."""
        now = self.clock()
        if now - head.used < self.touch_after:
            return True
        stamp = next(_STAMPS)
        try:
            etag = self.objects.touch(key, now)
        except CacheError:
            return True  # a failed mark only weakens the LRU order
        if etag is None:
            self.forget(key)
            return False
        self.remember(key, dataclasses.replace(head, used=now, etag=etag), stamp)
        return True

    def existing(self, digest: str) -> int | None:
        """The blob's size (and it is marked used), or None when absent; a blob known to
        this instance costs no request (unless its mark is stale)."""
        key = self.blob_key(digest)
        head = self.known(key)
        if head is None:
            stamp = next(_STAMPS)  # before the HEAD: see remember
            head = self.objects.head(key)
            if head is None:
                return None
            self.remember(key, head, stamp)
        return head.size if self.still_there(key, head) else None

    def upload(self, digest: str, spool: IO[bytes], actual: str, size: int) -> int:
        """Publish the already hashed ``spool`` (``actual``) as the blob ``digest``."""
        if actual != digest:
            raise blob_mismatch(digest, self.where, actual)
        key = self.blob_key(digest)
        with self._flight(digest) as waited:
            if waited and self.existing(digest) is not None:
                return size  # a sibling stored it meanwhile
            used = self.clock()
            self.objects.upload(key, spool, used)
        self.remember(key, Head(size=size, etag="", used=used,
                                modified=datetime.now(UTC)))
        self.counters.blobs_written += 1
        return size

    @contextlib.contextmanager
    def _flight(self, digest: str) -> Iterator[bool]:
        """Hold ``digest``'s upload lock; whether another upload held it first."""
        with self._flights_lock:
            lock = self._flights.setdefault(digest, threading.Lock())
        waited = not lock.acquire(blocking=False)
        if waited:
            lock.acquire()
        try:
            yield waited
        finally:
            lock.release()

    def put_blob(self, digest: str, source: bytes | Path | BinaryIO, move: bool) -> int:
        try:
            existing = self.existing(digest)
            if existing is not None:
                return existing
            if isinstance(source, Path):
                with self._open_source(source) as stream:
                    return self.upload(digest, stream, *_hash_stream(stream))
            if isinstance(source, bytes):
                return self.upload(digest, io.BytesIO(source), _sha256(source), len(source))
            with self.temp_file() as spool:
                return self.upload(digest, spool, *self._spool(source, spool))
        finally:
            if move and isinstance(source, Path):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(source)

    def _open_source(self, path: Path) -> IO[bytes]:
        try:
            return open(path, "rb")  # noqa: SIM115 -- the caller closes it
        except OSError as err:
            raise CacheError(f"cannot read {path} to store it in {self.where}: "
                             f"{err.strerror or err}") from err

    def _spool(self, source: BinaryIO, spool: IO[bytes]) -> tuple[str, int]:
        digest = hashlib.sha256()
        size = 0
        try:
            while chunk := source.read(CHUNK):
                digest.update(chunk)
                spool.write(chunk)
                size += len(chunk)
        except OSError as err:
            raise CacheError(f"cannot read the source of a blob for {self.where}: "
                             f"{err.strerror or err}", hint="the producer of the blob "
                             "failed; nothing was stored") from err
        return "sha256:" + digest.hexdigest(), size

    # --- records ---------------------------------------------------------------------------

    def get_record(self, key: str) -> CacheRecord | None:
        name = self.record_key(key)
        found = self.objects.get(name)
        if found is None:
            self.counters.record_misses += 1
            return None
        data, head = found
        record = stored_record(data, key, self.counters)
        if record is None:
            self.objects.delete_if_same(name, head.etag)
            return None
        self.mark(name, head)
        return record

    def put_record(self, record: CacheRecord) -> None:
        name = self.record_key(record.key)
        heads = self.confirmed(layer.digest for layer in record.result.layers)
        now = self.clock()
        stale = [digest for digest, head in heads.items()
                 if now - head.used >= self.touch_after]
        there = self.in_parallel(
            lambda digest: self.still_there(self.blob_key(digest), heads[digest]), stale)
        gone = {digest for digest, alive in zip(stale, there, strict=True) if not alive}
        require_blobs(record, self.where, lambda digest: digest in heads
                      and digest not in gone)
        self.objects.put(name, record.to_bytes(), self.clock())
        self.counters.records_written += 1

    # --- housekeeping ---------------------------------------------------------------------

    def listed(self, kind: str) -> list[Listed]:
        """The digest-named objects under ``<prefix><kind>``; strays are ignored."""
        base = f"{self.prefix}{kind}"
        return [item for item in self.objects.listing(base)
                if _is_hex(item.key[len(base):])]

    def usage(self) -> Usage:
        blobs = self.listed("blobs/sha256/")
        records = self.listed("records/")
        return Usage(blob_bytes=sum(item.size for item in blobs), blob_count=len(blobs),
                     record_bytes=sum(item.size for item in records),
                     record_count=len(records))

    def __repr__(self) -> str:
        return f"<S3 {self.where}>"


def _is_hex(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _hash_stream(stream: IO[bytes]) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    while chunk := stream.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return "sha256:" + digest.hexdigest(), size


class _Pruner:
    """One prune: read what the bucket holds, plan (``plan_prune``), spare young blobs,
    delete records, then blobs."""

    def __init__(self, bucket: _Bucket, grace: float) -> None:
        self._bucket = bucket
        self._grace = grace

    def run(self, keep_bytes: int | None, older_than: float | None) -> PruneReport:
        records, dropped, dropped_bytes = self._records()
        blobs, young = self._blobs()
        plan = plan_prune(records, blobs, now=self._bucket.clock(), keep_bytes=keep_bytes,
                          older_than=older_than)
        spared = [digest for digest in plan.blobs if digest in young]
        doomed = [digest for digest in plan.blobs if digest not in young]
        sizes = {blob.name: blob.size for blob in blobs}
        objects = self._bucket.objects
        objects.delete_many([self._bucket.record_key(key) for key in plan.records])
        objects.delete_many([self._bucket.blob_key(digest) for digest in doomed])
        for digest in doomed:  # no longer trusted by this instance's write path
            self._bucket.forget(self._bucket.blob_key(digest))
        freed = plan.bytes_freed - sum(sizes[digest] for digest in spared)
        return PruneReport(records_removed=len(plan.records) + dropped,
                           blobs_removed=len(doomed), bytes_freed=freed + dropped_bytes)

    def _records(self) -> tuple[list[PruneEntry], int, int]:
        """Every record as a prune entry; undecodable or misfiled ones are deleted on the
        way (their count and bytes are returned)."""
        listed = self._bucket.listed("records/")
        found = self._bucket.in_parallel(lambda item: self._bucket.objects.get(item.key),
                                         listed)
        entries: list[PruneEntry] = []
        dropped = dropped_bytes = 0
        for item, got in zip(listed, found, strict=True):
            if got is None:
                continue
            data, head = got
            record = decode_record(data)
            if record is None or item.key != self._bucket.record_key_of(record.key):
                self._bucket.objects.delete_if_same(item.key, head.etag)
                dropped, dropped_bytes = dropped + 1, dropped_bytes + head.size
                continue
            named = frozenset(layer.digest for layer in record.result.layers)
            entries.append(PruneEntry(record.key, head.size, head.used, named))
        return entries, dropped, dropped_bytes

    def _blobs(self) -> tuple[list[PruneEntry], set[str]]:
        """Every blob as a prune entry, and the digests of those too young to delete."""
        listed = self._bucket.listed("blobs/sha256/")
        digests = ["sha256:" + item.key.rsplit("/", 1)[1] for item in listed]
        heads = self._bucket.heads(digests)
        limit = time.time() - self._grace
        entries = [PruneEntry(digest, head.size, head.used)
                   for digest, head in heads.items()]
        young = {digest for digest, head in heads.items()
                 if self._grace > 0 and head.modified.timestamp() > limit}
        return entries, young


class S3Backend:
    """A ``CacheBackend`` in an S3 bucket (see the module docstring).

    Credentials come from boto3's standard chain (environment, shared config, instance or
    IRSA roles) unless ``credentials`` are given (a build client's, for that build's
    backends only; their region is the default of ``region``).  ``endpoint_url`` and
    ``use_path_style`` reach S3-compatible stores;
    ``retry_for`` bounds the retries of each call in seconds, ``read_timeout`` a stalled
    request's wait (``_s3_client.READ_TIMEOUT`` unless given; an endpoint that never
    answered gets a few quick attempts instead, see ``_s3_client``); blobs above
    ``multipart_threshold`` bytes go up in parts of ``part_size`` and come down in ranged
    parallel GETs, ``concurrency`` at a time; ``tmp_dir`` holds the spooled ones (unnamed
    files).  ``clock`` gives the time of each use; ``touch_after`` and ``grace`` are in
    seconds (see the module docstring)."""

    name = "s3"

    def __init__(self, bucket: str, prefix: str = "", region: str | None = None,
                 endpoint_url: str | None = None, use_path_style: bool = False, *,
                 retry_for: float = 60.0, read_timeout: float | None = None,
                 concurrency: int = 16,
                 multipart_threshold: int = 16 << 20, part_size: int = 8 << 20,
                 tmp_dir: Path | None = None, clock: Callable[[], float] = time.time,
                 touch_after: float = TOUCH_AFTER, grace: float = GRACE,
                 credentials: S3Credentials | None = None) -> None:
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        if region is None and credentials is not None:
            region = credentials.region
        settings = S3Settings(bucket=bucket, region=region, endpoint_url=endpoint_url,
                              credentials=credentials,
                              use_path_style=use_path_style, retry_for=retry_for,
                              read_timeout=read_timeout,
                              concurrency=concurrency, part_size=part_size,
                              multipart_threshold=multipart_threshold)
        self._counters = Counters()
        # every blocking operation; shared with the blob sources handed out
        self._bucket = _Bucket(S3Objects(settings), prefix, clock, touch_after, tmp_dir,
                               self._counters)
        self._grace = grace

    @property
    def where(self) -> str:
        return self._bucket.where

    async def has(self, digest: str) -> bool:
        return bool(await self.has_many((digest,)))

    async def has_many(self, digests: Iterable[str]) -> set[str]:
        wanted = list(digests)
        return set(await asyncio.to_thread(self._bucket.looked_up, wanted))

    async def open_blob(self, digest: str) -> StreamReader:
        stream = await asyncio.to_thread(self._bucket.open_blob, digest)
        return StreamReader(digest, stream, offload=True)

    async def fetch_into(self, digest: str, sink: BlobSink) -> int:
        digest_hex(digest)
        ticket = self._bucket.turns.ticket()  # in the order the fetches were asked for
        try:
            return await asyncio.to_thread(self._bucket.fetch_into, digest, sink, ticket)
        finally:  # also when cancelled before the thread ran: the next turn may start
            self._bucket.turns.end(ticket)

    async def put_blob(self, digest: str, source: BlobInput, *, move: bool = False) -> int:
        digest_hex(digest)
        if isinstance(source, AsyncIterable):
            return await self._put_chunks(digest, source)
        return await asyncio.to_thread(self._bucket.put_blob, digest, source, move)

    async def _put_chunks(self, digest: str, chunks: AsyncIterable[bytes]) -> int:
        existing = await asyncio.to_thread(self._bucket.existing, digest)
        if existing is not None:
            return existing
        spool = await asyncio.to_thread(self._bucket.temp_file)
        try:
            hasher, size = hashlib.sha256(), 0
            async for chunk in chunks:
                hasher.update(chunk)
                size += len(chunk)
                await asyncio.to_thread(spool.write, chunk)
            actual = "sha256:" + hasher.hexdigest()
            return await asyncio.to_thread(self._bucket.upload, digest, spool, actual, size)
        finally:
            spool.close()  # unnamed: nothing is left, even when cancelled

    async def get_record(self, key: str) -> CacheRecord | None:
        digest_hex(key, "cache key")
        return await asyncio.to_thread(self._bucket.get_record, key)

    async def put_record(self, record: CacheRecord) -> None:
        digest_hex(record.key, "cache key")
        await asyncio.to_thread(self._bucket.put_record, record)

    async def prune(self, *, keep_bytes: int | None = None,
                    older_than: float | None = None) -> PruneReport:
        pruner = _Pruner(self._bucket, self._grace)
        return await asyncio.to_thread(pruner.run, keep_bytes, older_than)

    async def usage(self) -> Usage:
        return await asyncio.to_thread(self._bucket.usage)

    def statistics(self) -> BackendStatistics:
        return self._counters.snapshot()

    def blob_source(self) -> S3BlobSource:
        """The blocking view the exporters read (workers/_exporters.py ``BlobSource``);
        call it from a thread, not the event loop."""
        return S3BlobSource(self._bucket)

    def __repr__(self) -> str:
        return f"<S3Backend {self.where}>"


class S3BlobSource:
    """Blocking access to an ``S3Backend``'s blobs: verified streams; no local files."""

    def __init__(self, bucket: _Bucket) -> None:
        self._bucket = bucket

    def open_blob(self, digest: str) -> BinaryIO:
        return self._bucket.open_blob(digest)

    def blob_path(self, digest: str) -> Path | None:
        return None

    def __repr__(self) -> str:
        return f"<S3BlobSource {self._bucket.where}>"
