"""The local disk backend: the cache of one machine, shared by every process on it.

Layout under the root (docs/engine.md)::

    <root>/cache/blobs/sha256/<hex>   blobs, named by their digest
    <root>/cache/records/<key-hex>    cache records (msgpack, CacheRecord.to_bytes)
    <root>/cache/lock                 flock: shared by record writers, exclusive for prune
    <root>/tmp/cache-*                files being written (same filesystem: atomic renames)

Safe for several processes on one root:

- a blob or record is written to ``<root>/tmp``, fsynced, renamed into place and its
  directory fsynced, so a reader sees all of it or nothing; two writers of one digest each
  write their own file and the second rename replaces identical bytes;
- ``put_record`` checks its blobs and publishes under the shared lock, and ``prune``
  decides and deletes under the exclusive one, so no record ever names a pruned blob;
- a file's mtime is its last use (set on write, on read, and when a record names a blob),
  which is prune's LRU order;
- a corrupt blob or undecodable record is removed only if it is still the same file
  (inode) that was read: a good copy renamed in meanwhile stays.

A blob fetched from a remote cache is written by that backend straight into a staging file
here (``stage_blob``: a ``_StagedBlob``), hashed once (by the backend as the bytes arrive,
or here) and published as above only when its digest matched (``CacheBackend.fetch_into``).

Every blob is checked as it enters the store.  Reads verify again (``open_blob``), except
that a blob this store object published itself, whose file is still the same inode, size
and ctime (nothing wrote to it or replaced it since; the store's own touches keep the
mark), can be read as is (``LocalBlobSource.open_checked``): one hash per blob from the
network to an exported tar, as a content store that verifies on ingest (containerd's).
(A write in the same clock tick as the store's last look could keep the ctime on kernels
without fine-grained ctimes, before 6.13; damage on disk that bypasses the kernel is not
seen either, as in any store that verifies on ingest only.)

Blocking work runs in threads (``asyncio.to_thread``) in 1 MiB chunks; blobs are streamed,
never held whole in memory.  ``LocalBlobSource`` is the blocking view the exporters read.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import os
import re
import tempfile
import time
from collections.abc import AsyncIterable, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import BinaryIO, Final

from dockyard.cache_backends._protocol import (
    CHUNK,
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

__all__ = ["TEMP_PREFIX", "Collector", "LocalBackend", "LocalBlobSource"]

#: The prefix of this backend's files in ``<root>/tmp`` (other components share the dir).
TEMP_PREFIX: Final = "cache-"
#: A temporary file older than this (seconds) was left by a crashed writer: prune drops it.
STALE_TEMP: Final = 3600.0
_HEX: Final = re.compile(r"[0-9a-f]{64}")
#: A garbage collector's say in a prune: (records, blobs) -> (eligible, extra) of
#: ``plan_prune``, decided under the store's exclusive lock.
Collector = Callable[[list[PruneEntry], list[PruneEntry]],
                     tuple[Callable[[PruneEntry, bool], bool] | None, Mapping[str, int] | None]]


@contextlib.contextmanager
def _os_errors(action: str, path: Path) -> Iterator[None]:
    """``OSError`` -> ``CacheError`` naming the action, the path and what to do."""
    try:
        yield
    except OSError as err:
        raise CacheError(f"local cache: cannot {action} {path}: {err.strerror or err}",
                         hint=_hint(err)) from err


def _hint(err: OSError) -> str:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free disk space, or run `dockyard prune`"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "check that DOCKYARD_ROOT is writable by this user"
    return "check the disk and DOCKYARD_ROOT"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_if_same(path: Path, seen: os.stat_result) -> None:
    """Remove ``path`` only if it is still the file ``seen`` was taken of."""
    with contextlib.suppress(FileNotFoundError):
        now = os.stat(path)
        if (now.st_dev, now.st_ino) == (seen.st_dev, seen.st_ino):
            os.unlink(path)


@contextlib.contextmanager
def _flock(path: Path, *, exclusive: bool) -> Iterator[None]:
    with _os_errors("lock", path):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        with _os_errors("lock", path):
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


class _Layout:
    """The paths of one root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "cache" / "blobs" / "sha256"
        self.records = root / "cache" / "records"
        self.lock = root / "cache" / "lock"
        self.tmp = root / "tmp"

    def create(self) -> None:
        for path in (self.blobs, self.records, self.tmp):
            with _os_errors("create the directory", path):
                path.mkdir(parents=True, exist_ok=True)
        with _os_errors("create", self.lock):
            self.lock.touch(exist_ok=True)

    def blob(self, digest: str) -> Path:
        return self.blobs / digest_hex(digest)

    def record(self, key: str) -> Path:
        return self.records / digest_hex(key, "cache key")


class _TempFile:
    """A file being written under ``<root>/tmp``, hashed on the way; ``publish`` fsyncs it,
    renames it to ``target`` and fsyncs the directory; ``discard`` removes it."""

    def __init__(self, layout: _Layout, kind: str) -> None:
        with _os_errors("create a temporary file in", layout.tmp):
            fd, name = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{kind}-", dir=layout.tmp)
        self.path = Path(name)
        self.file: BinaryIO = os.fdopen(fd, "wb")
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        with _os_errors("write", self.path):
            self.file.write(data)
        self.hash.update(data)
        self.size += len(data)

    def publish(self, target: Path, when: float) -> None:
        with _os_errors("store", target):
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.chmod(self.path, 0o644)
            os.utime(self.path, (when, when))
            os.replace(self.path, target)
            _fsync_dir(target.parent)

    def discard(self) -> None:
        self.file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class _BlobWriter:
    """A blob being written; ``commit`` checks the digest before publishing it."""

    def __init__(self, store: _DiskStore, digest: str) -> None:
        self._store = store
        self._digest = digest
        self._temp = _TempFile(store.layout, "blob")

    def write(self, data: bytes) -> None:
        self._temp.write(data)

    def commit(self) -> int:
        actual = "sha256:" + self._temp.hash.hexdigest()
        if actual != self._digest:
            raise blob_mismatch(self._digest, self._store.where, actual)
        self._temp.publish(self._store.layout.blob(self._digest), self._store.clock())
        self._store.vouch(self._digest)
        self._store.counters.blobs_written += 1
        return self._temp.size

    def discard(self) -> None:
        self._temp.discard()


class _StagedBlob:
    """A blob written by someone else into a temporary file (``file``, positioned writes
    allowed); ``seal`` hashes it by reading it once, ``publish`` is ``_TempFile.publish``
    (fsync, rename, directory fsync).  The ``StagedBlob`` of cache_backends/_protocol.py."""

    def __init__(self, store: _DiskStore, digest: str) -> None:
        self._store = store
        self._digest = digest
        self._temp = _TempFile(store.layout, "blob")
        self.file: BinaryIO = self._temp.file
        self._size: int | None = None

    def seal(self, hashed: tuple[str, int] | None = None) -> tuple[str, int]:
        path = self._temp.path
        with _os_errors("write", path):
            self.file.flush()
        if hashed is not None:
            with _os_errors("read back", path):
                written = os.fstat(self.file.fileno()).st_size
            if written != hashed[1]:
                raise CacheError(f"{self._store.where}: blob {self._digest} was received "
                                 f"as {hashed[1]} bytes but {written} were written",
                                 hint="a bug in dockyard: please report it")
            self._size = written
            return hashed[0], written
        with _os_errors("read back", path), open(path, "rb") as stream:
            actual, self._size = _hash_stream(stream)
        return actual, self._size

    def publish(self) -> int:
        if self._size is None:
            raise CacheError(f"{self._store.where}: blob {self._digest} published before "
                             "it was checked", hint="a bug in dockyard: please report it")
        self._temp.publish(self._store.layout.blob(self._digest), self._store.clock())
        self._store.vouch(self._digest)
        self._store.counters.blobs_written += 1
        return self._size

    def discard(self) -> None:
        self._temp.discard()


class _DiskStore:
    """The blocking operations of the backend (each called in a worker thread)."""

    def __init__(self, root: Path, clock: Callable[[], float], counters: Counters) -> None:
        self.layout = _Layout(root)
        self.clock = clock
        self.counters = counters
        self.where = f"the local cache ({root})"
        self.layout.create()
        # digest -> the identity (_identity) of the blob file this store published after
        # hashing its bytes itself (or taking the hash of their receiver, StagedBlob.seal):
        # while the file is still that one, unchanged (a write changes its ctime; the
        # store's own touches keep the mark), its bytes need no second hash (open_vouched)
        self._vouched: dict[str, tuple[int, int, int, int]] = {}

    def touch(self, path: Path) -> bool:
        """Mark ``path`` used now; False if it is gone.  A checked blob (``vouch``) that
        was still the file checked stays checked (its new ctime is this touch's)."""
        when = self.clock()
        vouched = self._still_vouched(path)
        try:
            os.utime(path, (when, when))
        except FileNotFoundError:
            return False
        except OSError:
            pass  # a read-only cache still serves reads; only the LRU order suffers
        if vouched is not None:
            self.vouch(vouched)
        return True

    def _still_vouched(self, path: Path) -> str | None:
        """The digest of ``path`` if it is a checked blob still as it was checked."""
        if path.parent != self.layout.blobs or not self._vouched:
            return None
        digest = f"sha256:{path.name}"
        mark = self._vouched.get(digest)
        try:
            return digest if mark is not None and _identity(os.stat(path)) == mark else None
        except OSError:
            return None

    # --- blobs ---------------------------------------------------------------------------

    def exists(self, digests: Iterable[str]) -> set[str]:
        return {digest for digest in digests if self.layout.blob(digest).is_file()}

    def open_blob(self, digest: str) -> BinaryIO:
        path = self.layout.blob(digest)
        try:
            file = open(path, "rb")  # noqa: SIM115 -- closed by the returned stream
        except FileNotFoundError:
            self.counters.blob_misses += 1
            raise BlobMissing(f"blob {digest} is not in {self.where}") from None
        except OSError as err:
            raise CacheError(f"local cache: cannot open {path}: {err.strerror}",
                             hint=_hint(err)) from err
        seen = os.fstat(file.fileno())
        self.counters.blob_hits += 1
        self.touch(path)
        return verified_stream(file, digest, self.where,
                               lambda: self._drop(path, seen), size=seen.st_size)

    def vouch(self, digest: str) -> None:
        """Remember that the blob file of ``digest``, just published, holds checked bytes."""
        with contextlib.suppress(OSError):
            self._vouched[digest] = _identity(os.stat(self.layout.blob(digest)))

    def open_vouched(self, digest: str) -> BinaryIO | None:
        """The blob's file, unbuffered and unverified, if this store checked its bytes when
        it published it and it is still that file, unchanged (``_identity``); else None."""
        mark = self._vouched.get(digest)
        if mark is None:
            return None
        path = self.layout.blob(digest)
        try:
            file = open(path, "rb", buffering=0)  # noqa: SIM115 -- the caller closes it
        except OSError:
            self._vouched.pop(digest, None)
            return None
        if _identity(os.fstat(file.fileno())) != mark:
            file.close()
            self._vouched.pop(digest, None)
            return None
        self.counters.blob_hits += 1
        self.touch(path)
        return file

    def _drop(self, path: Path, seen: os.stat_result) -> None:
        self.counters.blobs_corrupt += 1
        with _os_errors("remove the corrupt blob", path):
            _unlink_if_same(path, seen)

    def blob_path(self, digest: str) -> Path | None:
        path = self.layout.blob(digest)
        return path if self.touch(path) else None

    def begin_blob(self, digest: str) -> _BlobWriter:
        return _BlobWriter(self, digest)

    def stage_blob(self, digest: str) -> _StagedBlob:
        digest_hex(digest)
        return _StagedBlob(self, digest)

    def put_blob(self, digest: str, source: bytes | Path | BinaryIO, move: bool) -> int:
        """Store ``source`` (not an async iterable); the blob's size."""
        existing = self.existing(digest)
        if existing is not None:
            if move and isinstance(source, Path):
                with _os_errors("remove", source):
                    source.unlink(missing_ok=True)
            return existing
        if move and isinstance(source, Path):
            return self._adopt(digest, source)
        writer = self.begin_blob(digest)
        try:
            self._copy(source, writer)
            return writer.commit()
        finally:
            writer.discard()

    def existing(self, digest: str) -> int | None:
        """The blob's size (and it is marked used), or None when absent."""
        path = self.layout.blob(digest)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return None
        self.touch(path)
        return size

    def _copy(self, source: bytes | Path | BinaryIO, writer: _BlobWriter) -> None:
        if isinstance(source, bytes):
            writer.write(source)
            return
        if isinstance(source, Path):
            with _os_errors("read", source), open(source, "rb") as stream:
                self._copy(stream, writer)
            return
        try:
            while chunk := source.read(CHUNK):
                writer.write(chunk)
        except OSError as err:
            raise CacheError(f"cannot read the source of a blob for {self.where}: "
                             f"{err.strerror or err}", hint="the producer of the blob "
                             "failed; nothing was stored") from err

    def _adopt(self, digest: str, source: Path) -> int:
        """Take the file ``source`` as the blob: checked, fsynced, renamed into place (or
        copied when it is on another filesystem); it is gone afterwards."""
        try:
            with _os_errors("read", source), open(source, "rb") as stream:
                actual, size = _hash_stream(stream)
                os.fsync(stream.fileno())
            if actual != digest:
                raise blob_mismatch(digest, self.where, actual)
            return self._rename_in(digest, source, size)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(source)

    def _rename_in(self, digest: str, source: Path, size: int) -> int:
        target = self.layout.blob(digest)
        when = self.clock()
        with _os_errors("store", target):
            os.chmod(source, 0o644)
            os.utime(source, (when, when))
            try:
                os.replace(source, target)
            except OSError as err:
                if err.errno != errno.EXDEV:
                    raise
                return self.put_blob(digest, source, move=False)
            _fsync_dir(target.parent)
        self.vouch(digest)
        self.counters.blobs_written += 1
        return size

    # --- records ---------------------------------------------------------------------------

    def get_record(self, key: str) -> CacheRecord | None:
        path = self.layout.record(key)
        try:
            with open(path, "rb") as stream:
                data, seen = stream.read(), os.fstat(stream.fileno())
        except FileNotFoundError:
            self.counters.record_misses += 1
            return None
        except OSError as err:
            raise CacheError(f"local cache: cannot read the record {path}: {err.strerror}",
                             hint=_hint(err)) from err
        record = stored_record(data, key, self.counters)
        if record is None:
            with _os_errors("remove the undecodable record", path):
                _unlink_if_same(path, seen)
            return None
        self.touch(path)
        return record

    def put_record(self, record: CacheRecord) -> None:
        path = self.layout.record(record.key)
        with _flock(self.layout.lock, exclusive=False):
            require_blobs(record, self.where, lambda digest: self.touch(self.layout.blob(digest)))
            temp = _TempFile(self.layout, "record")
            try:
                temp.write(record.to_bytes())
                temp.publish(path, self.clock())
            finally:
                temp.discard()
        self.counters.records_written += 1

    # --- housekeeping ---------------------------------------------------------------------

    def prune(self, keep_bytes: int | None, older_than: float | None,
              collector: Collector | None = None) -> PruneReport:
        with _flock(self.layout.lock, exclusive=True):
            records, dropped, dropped_bytes = self._scan_records()
            blobs = [PruneEntry(f"sha256:{name}", stat.st_size, stat.st_mtime)
                     for name, stat in _scan(self.layout.blobs)]
            eligible, extra = (None, None) if collector is None else collector(records, blobs)
            plan = plan_prune(records, blobs, now=self.clock(), keep_bytes=keep_bytes,
                              older_than=older_than, eligible=eligible, extra=extra)
            for key in plan.records:
                self._remove(self.layout.record(key))
            for digest in plan.blobs:
                self._remove(self.layout.blob(digest))
        self._remove_stale_temps()
        named = {entry.name: entry for entry in (*records, *blobs)}
        return PruneReport(records_removed=len(plan.records) + dropped,
                           blobs_removed=len(plan.blobs),
                           bytes_freed=plan.bytes_freed + dropped_bytes,
                           removed=tuple(named[name] for name in (*plan.records,
                                                                  *plan.blobs)))

    def _scan_records(self) -> tuple[list[PruneEntry], int, int]:
        """Every record as a prune entry; undecodable ones are removed on the way (their
        count and bytes are returned)."""
        entries: list[PruneEntry] = []
        dropped = dropped_bytes = 0
        for name, stat in _scan(self.layout.records):
            path = self.layout.records / name
            with _os_errors("read the record", path):
                try:
                    record = decode_record(path.read_bytes())
                except FileNotFoundError:
                    continue
            if record is None or record.key != f"sha256:{name}":
                self._remove(path)
                dropped, dropped_bytes = dropped + 1, dropped_bytes + stat.st_size
                continue
            named = frozenset(layer.digest for layer in record.result.layers)
            entries.append(PruneEntry(record.key, stat.st_size, stat.st_mtime, named,
                                      str(record.meta.get("kind", ""))))
        return entries, dropped, dropped_bytes

    def _remove(self, path: Path) -> None:
        with _os_errors("remove", path):
            path.unlink(missing_ok=True)

    def _remove_stale_temps(self) -> None:
        """Drop what crashed writers left (live writers' files are renamed away any time)."""
        limit = time.time() - STALE_TEMP
        with _os_errors("list", self.layout.tmp), os.scandir(self.layout.tmp) as entries:
            ours = [entry for entry in entries if entry.name.startswith(TEMP_PREFIX)]
        for entry in ours:
            with contextlib.suppress(FileNotFoundError):
                if entry.is_file() and entry.stat().st_mtime < limit:
                    self._remove(Path(entry.path))

    def usage(self) -> Usage:
        blobs = [stat.st_size for _, stat in _scan(self.layout.blobs)]
        records = [stat.st_size for _, stat in _scan(self.layout.records)]
        return Usage(blob_bytes=sum(blobs), blob_count=len(blobs),
                     record_bytes=sum(records), record_count=len(records))


def _identity(seen: os.stat_result) -> tuple[int, int, int, int]:
    """What tells a file's bytes unchanged since: the same inode, size and ctime (a write
    or a rename updates the ctime)."""
    return (seen.st_dev, seen.st_ino, seen.st_size, seen.st_ctime_ns)


def _scan(directory: Path) -> list[tuple[str, os.stat_result]]:
    """(hex name, stat) of the digest-named files in ``directory``; strays are ignored."""
    found: list[tuple[str, os.stat_result]] = []
    with _os_errors("list", directory), os.scandir(directory) as entries:
        for entry in entries:
            if not _HEX.fullmatch(entry.name):
                continue
            with contextlib.suppress(FileNotFoundError):
                found.append((entry.name, entry.stat(follow_symlinks=False)))
    return found


def _hash_stream(stream: BinaryIO) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    while chunk := stream.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return "sha256:" + digest.hexdigest(), size


class LocalBackend:
    """A ``CacheBackend`` on a local directory tree (``root`` is ``DOCKYARD_ROOT``);
    ``clock`` gives the time of each use (prune's LRU), stored as file mtimes."""

    name = "local"

    def __init__(self, root: Path, *, clock: Callable[[], float] = time.time) -> None:
        self._counters = Counters()
        # every blocking operation; shared with the blob sources handed out
        self._store = _DiskStore(root, clock, self._counters)

    @property
    def root(self) -> Path:
        return self._store.layout.root

    async def has(self, digest: str) -> bool:
        return bool(await asyncio.to_thread(self._store.exists, (digest,)))

    async def has_many(self, digests: Iterable[str]) -> set[str]:
        return await asyncio.to_thread(self._store.exists, list(digests))

    def holds(self, digest: str) -> bool:
        """``has`` without a thread: one ``stat``, cheap enough for the event loop."""
        return bool(self._store.exists((digest,)))

    async def open_blob(self, digest: str) -> StreamReader:
        stream = await asyncio.to_thread(self._store.open_blob, digest)
        return StreamReader(digest, stream, offload=True)

    async def put_blob(self, digest: str, source: BlobInput, *, move: bool = False) -> int:
        digest_hex(digest)
        if isinstance(source, AsyncIterable):
            return await self._put_chunks(digest, source)
        return await asyncio.to_thread(self._store.put_blob, digest, source, move)

    def stage_blob(self, digest: str) -> _StagedBlob:
        """A staging file for ``digest`` that a remote backend's ``fetch_into`` writes
        (``BlobSink``; blocking: call it from a thread)."""
        return self._store.stage_blob(digest)

    async def fetch_into(self, digest: str, sink: BlobSink) -> int:
        return await copy_blob(self, digest, sink)

    async def _put_chunks(self, digest: str, chunks: AsyncIterable[bytes]) -> int:
        existing = await asyncio.to_thread(self._store.existing, digest)
        if existing is not None:
            return existing
        writer = await asyncio.to_thread(self._store.begin_blob, digest)
        try:
            pending: list[bytes] = []
            async for chunk in chunks:
                pending.append(chunk)
                if sum(map(len, pending)) >= CHUNK:
                    await asyncio.to_thread(writer.write, b"".join(pending))
                    pending.clear()
            await asyncio.to_thread(writer.write, b"".join(pending))
            size = await asyncio.to_thread(writer.commit)
        finally:
            writer.discard()  # quick, and must run even when cancelled
        return size

    async def get_record(self, key: str) -> CacheRecord | None:
        return await asyncio.to_thread(self._store.get_record, key)

    async def put_record(self, record: CacheRecord) -> None:
        await asyncio.to_thread(self._store.put_record, record)

    async def prune(self, *, keep_bytes: int | None = None,
                    older_than: float | None = None,
                    collector: Collector | None = None) -> PruneReport:
        """``plan_prune`` over this store, deciding and deleting under the exclusive lock
        (no record is put meanwhile).  ``collector(records, blobs)``, called under that
        lock, gives ``plan_prune``'s ``eligible`` and ``extra`` (a garbage collector's
        policy: workers/_gc.py)."""
        return await asyncio.to_thread(self._store.prune, keep_bytes, older_than, collector)

    def prune_blocking(self, *, keep_bytes: int | None = None,
                       older_than: float | None = None,
                       collector: Collector | None = None) -> PruneReport:
        """``prune``, blocking (for a caller already in a worker thread)."""
        return self._store.prune(keep_bytes, older_than, collector)

    async def usage(self) -> Usage:
        return await asyncio.to_thread(self._store.usage)

    def statistics(self) -> BackendStatistics:
        return self._counters.snapshot()

    def blob_source(self) -> LocalBlobSource:
        """The blocking view the exporters read (workers/_exporters.py ``BlobSource`` and
        ``BlobPaths``); call it from a thread, not the event loop."""
        return LocalBlobSource(self._store)

    def __repr__(self) -> str:
        return f"<LocalBackend root={str(self.root)!r}>"


class LocalBlobSource:
    """Blocking access to a ``LocalBackend``'s blobs: ``open_blob`` returns a verified
    stream (``BlobMissing``/``BlobCorrupt`` as the async side), ``blob_path`` the blob's
    file (to push or link as is) or None when the cache lacks it."""

    def __init__(self, store: _DiskStore) -> None:
        self._store = store

    def open_blob(self, digest: str) -> BinaryIO:
        return self._store.open_blob(digest)

    def blob_path(self, digest: str) -> Path | None:
        return self._store.blob_path(digest)

    def open_checked(self, digest: str) -> BinaryIO | None:
        """The blob's file when this store checked its bytes as it stored them (in this
        process) and the file is still that one: read it as is, no second hash (the
        exporters copy it into their tar with ``copy_file_range``); else None (use
        ``open_blob``, which verifies)."""
        return self._store.open_vouched(digest)

    def __repr__(self) -> str:
        return f"<LocalBlobSource root={str(self._store.layout.root)!r}>"
