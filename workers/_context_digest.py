"""Digests of one context directory's files, trusted across builds while stat agrees.

``ContextDigests`` holds, for one context directory, each regular file's content sha256
with the stat it was read under: relative path -> (size, mtime_ns, ctime_ns, inode,
device, mode) and digest.  ``digest(path)`` gives the known digest while the file's stat
is all the same, and reads and hashes the file otherwise: a one-file change in a
10,000-file context reads that one file.  What it knew comes from, and what it learnt
goes to, the context's stat index on disk (``dockyard.workers._context_index``); used by the
client's ``build_manifest`` and the worker's ``LocalContext``.

Why stat is enough, and when it is not:

- any write moves the mtime and the ctime; ``touch -d``/``utime`` can put the mtime back,
  never the ctime; a file replaced by another (``mv``, an editor's save, ``tar -x`` with
  the same size and mtime) has another inode and a new ctime.  So a changed file misses.
- timestamps advance in ticks (the filesystem's granularity, the kernel's coarse clock):
  an edit within the tick of the read would leave the stat as it was.  Git's "racily
  clean" rule, kept here: a file whose mtime or ctime is within ``RACY_NS`` of the start
  of this ``ContextDigests`` (made before the walk, so before any stat and read it does)
  is hashed but never written to the index, and is read again by the next build.  A
  remembered entry's timestamps are then older than its read by more than a tick, and
  any later change gives a stat it cannot equal.  Within this run a racy file's digest
  is kept while its stat is the same: the build reads one content of it, once.
- a file that changed while it was read (its stat after the read differs) is not
  remembered at all.

One read per file and stat, however many threads ask: a thread asking for a file
another thread is reading waits for that read and takes its digest (the source's
identity and a copy's checksum are computed at once, in two threads, over one file).

Wire form, version 1 (a map; what the index file holds)::

    {"v": 1, "root": real path of the context,
     "entries": [[path, size, mtime_ns, ctime_ns, inode, device, mode, sha256], ...]}

``path`` as in a context manifest (str, bytes when not UTF-8), ``sha256`` the 32 raw
bytes.  ``from_wire`` trusts nothing: anything malformed, of another version or of
another root gives None, and the caller starts empty.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dockyard.scheduler._errors import SolveError

from ._context_walk import name_from_wire, name_to_wire

__all__ = ["INDEX_VERSION", "RACY_NS", "ContextDigests", "DigestStatistics", "StatKey",
           "stat_key"]

INDEX_VERSION = 1
#: A file whose mtime or ctime is this close to the hashing is never remembered
#: (2 s: the coarsest timestamp tick of a Linux filesystem, FAT's, with room to spare).
RACY_NS = 2_000_000_000

#: The digest of no bytes: the content of an empty file, and of a socket or device as sent.
_EMPTY = hashlib.sha256(b"").hexdigest()
_CHUNK = 1 << 20
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

StatKey = tuple[int, int, int, int, int, int]  # size, mtime_ns, ctime_ns, inode, dev, mode
_Known = tuple[StatKey, str]  # the stat a file was read under, its sha256 hex


def stat_key(info: os.stat_result) -> StatKey:
    return (info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino, info.st_dev,
            info.st_mode)


@dataclass(frozen=True, slots=True)
class DigestStatistics:
    """What one ``ContextDigests`` did: digests served from the index, files read and
    their bytes, and the entries it would keep."""

    hits: int
    files_hashed: int
    bytes_hashed: int
    entries: int


class ContextDigests:
    """The digests of ``root``'s regular files by relative path (see the module
    docstring); safe to use from several threads."""

    def __init__(self, root: Path, known: Mapping[str, _Known] | None = None, *,
                 clock: Callable[[], int] = time.time_ns) -> None:
        self.root = root
        # Entries of the index as loaded; never changes.
        self._known: dict[str, _Known] = dict(known or {})
        # Entries confirmed or learnt by this run (stat checked, not racy); grows.
        self._fresh: dict[str, _Known] = {}
        # Entries learnt by this run but racy: served for the rest of this run while
        # the stat is the same, never kept by the index; grows.
        self._racy: dict[str, _Known] = {}
        # Path being read -> (its lock, threads holding or waiting for it); an entry
        # lives while a thread is in ``_one_reader`` for that path.
        self._reading: dict[str, tuple[threading.Lock, int]] = {}
        # Paths a walk listed this run: their loaded entries are kept unless read again.
        self._listed: set[str] = set()
        # Paths read this run (their loaded entry, if any, is stale); grows.
        self._read_paths: set[str] = set()
        # Timestamps at or after this are racy (see the module docstring); fixed.
        self._racy_from = clock() - RACY_NS
        self._lock = threading.Lock()
        self._hits = self._files = self._bytes = 0  # statistics, under _lock

    def __repr__(self) -> str:
        s = self.statistics()
        return (f"<ContextDigests {self.root} known={len(self._known)} hits={s.hits} "
                f"hashed={s.files_hashed} bytes={s.bytes_hashed}>")

    def statistics(self) -> DigestStatistics:
        with self._lock:
            return DigestStatistics(self._hits, self._files, self._bytes,
                                    len(self._kept()))

    def listed(self, paths: Iterable[str]) -> None:
        """Say a walk of this run found ``paths``: their entries outlive this run."""
        with self._lock:
            self._listed.update(paths)

    def known(self, path: str, info: os.stat_result | None) -> str | None:
        """The digest of ``root/path`` without reading it: when its stat ``info`` (an
        ``lstat`` taken after this object was made) is the one it was read under, or it is
        not a regular file (sent empty); else None."""
        if info is None:
            return None
        if not stat.S_ISREG(info.st_mode):
            return _EMPTY  # a socket or a device is sent empty (_context_walk.as_sent)
        return self._lookup(path, stat_key(info))

    def digest(self, path: str, info: os.stat_result | None = None) -> str:
        """The sha256 hex of the content of ``root/path``; ``info``: its ``lstat`` taken
        after this object was made, when the caller has one.  A file that cannot be read
        raises ``SolveError`` naming it."""
        try:
            info = os.lstat(self.root / path) if info is None else info
            if not stat.S_ISREG(info.st_mode):
                return _EMPTY  # a socket or a device is sent empty (_context_walk.as_sent)
            return self._digest(path, stat_key(info), info.st_size)
        except OSError as err:
            raise SolveError(f"cannot read {path!r} in the build context {self.root}: "
                             f"{err.strerror}") from None

    def _digest(self, path: str, key: StatKey, size: int) -> str:
        """The known digest, else the file read by one thread at a time: one that
        waited takes what the reader learnt (looked up again once it has the path)."""
        if (found := self._lookup(path, key)) is not None:
            return found
        with self._one_reader(path):
            if (found := self._lookup(path, key)) is not None:
                return found
            digest, after = self._read(path)
            self._learnt(path, key, after, digest, size)
        return digest

    @contextlib.contextmanager
    def _one_reader(self, path: str) -> Iterator[None]:
        """Hold ``path``'s read lock (made on first use, dropped by its last user)."""
        with self._lock:
            lock, users = self._reading.get(path, (threading.Lock(), 0))
            self._reading[path] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._lock:
                lock, users = self._reading.pop(path)
                if users > 1:
                    self._reading[path] = (lock, users - 1)

    def _lookup(self, path: str, key: StatKey) -> str | None:
        with self._lock:
            racy = self._racy.get(path)
            if racy is not None and racy[0] == key:
                self._hits += 1
                return racy[1]
            known = self._fresh.get(path) or self._known.get(path)
            if known is None or known[0] != key:
                return None
            self._fresh[path] = known
            self._hits += 1
            return known[1]

    def _read(self, path: str) -> tuple[str, StatKey]:
        """The digest of the file and its stat after the read; a symlink or a fifo
        swapped in since the walk is refused, never followed or waited on."""
        fd = os.open(self.root / path, _OPEN_FLAGS)
        with open(fd, "rb") as stream:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise SolveError(f"{path!r} in the build context {self.root} is no longer "
                                 "a regular file", hint="build again once the files stop "
                                 "changing")
            digest = hashlib.sha256()
            while chunk := stream.read(_CHUNK):
                digest.update(chunk)
            return digest.hexdigest(), stat_key(os.fstat(fd))

    def _learnt(self, path: str, key: StatKey, after: StatKey, digest: str,
                size: int) -> None:
        with self._lock:
            self._files += 1
            self._bytes += size
            self._read_paths.add(path)
            self._fresh.pop(path, None)
            self._racy.pop(path, None)
            if after != key:
                return  # changed while read: the digest may be of neither content
            racy = max(key[1], key[2]) >= self._racy_from
            (self._racy if racy else self._fresh)[path] = (key, digest)

    def _kept(self) -> dict[str, _Known]:
        """What the index keeps: the loaded entries of paths listed and not read again,
        then this run's."""
        kept = {path: self._known[path] for path in self._listed - self._read_paths
                if path in self._known}
        kept.update(self._fresh)
        return kept

    def changed(self) -> bool:
        """Whether the index would be written otherwise than it was loaded."""
        with self._lock:
            return self._kept() != self._known

    def to_wire(self, root: str) -> dict[str, Any]:
        """The wire form (module docstring); ``root``: the context's real path."""
        with self._lock:
            kept = self._kept()
        return {"v": INDEX_VERSION, "root": root,
                "entries": [[name_to_wire(path), *key, bytes.fromhex(digest)]
                            for path, (key, digest) in kept.items()]}

    @classmethod
    def from_wire(cls, data: Any, root: Path, real: str, *,
                  clock: Callable[[], int] = time.time_ns) -> ContextDigests | None:
        """The digests ``data`` holds for ``root`` (whose real path is ``real``); None
        when ``data`` is not version 1 of the wire form for that path."""
        if not isinstance(data, dict) or data.get("v") != INDEX_VERSION:
            return None
        raw = data.get("entries")
        if data.get("root") != real or not isinstance(raw, list):
            return None
        known: dict[str, _Known] = {}
        for item in raw:
            entry = _entry(item)
            if entry is None:
                return None
            known[entry[0]] = entry[1]
        return cls(root, known, clock=clock)


def _entry(item: Any) -> tuple[str, _Known] | None:
    """One entry of the wire form, checked; None when malformed."""
    if not isinstance(item, list) or len(item) != 8:
        return None
    path, *numbers, digest = item
    name = name_from_wire(path)
    if name is None or not isinstance(digest, bytes) or len(digest) != 32:
        return None
    if not all(type(n) is int and n >= 0 for n in numbers):
        return None
    size, mtime, ctime, inode, dev, mode = numbers
    return name, ((size, mtime, ctime, inode, dev, mode), digest.hex())
