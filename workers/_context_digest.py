"""Digests of context files on this machine, remembered across builds by what stat says.

The process remembers file digests (``_DigestCache``), keyed by all that stat says of the
file (device, inode, size, mtime and ctime in ns): any write changes the ctime, so a
changed file misses and is hashed again.  A file changed in the last ``_RACY_NS`` is never
remembered (an edit within one timestamp tick of the hash would keep its stat: git's
"racily clean" rule).  Used by the worker's ``LocalContext`` and by the client's
``build_manifest``.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from scheduler._errors import SolveError

__all__ = ["_DIGESTS", "_RACY_NS", "_DigestCache", "_hash_file"]

#: A file whose mtime or ctime is this recent is hashed every time (timestamps advance in
#: ticks: an edit within the tick of an earlier hash could leave the stat unchanged).
_RACY_NS = 2_000_000_000

#: The digest of no bytes: the content of an empty file, and of a socket or device as sent.
_EMPTY = hashlib.sha256(b"").hexdigest()

_StatKey = tuple[str, int, int, int, int, int]  # path, dev, inode, size, mtime_ns, ctime_ns


def _stat_key(path: Path, info: os.stat_result) -> _StatKey:
    return (str(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns,
            info.st_ctime_ns)


class _DigestCache:
    """File content digests by ``_StatKey``, least recently used dropped past ``limit``;
    shared by the builds of one worker process (their hashing threads included)."""

    def __init__(self, limit: int = 200_000) -> None:
        self.limit = limit
        self._digests: OrderedDict[_StatKey, str] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: _StatKey) -> str | None:
        with self._lock:
            digest = self._digests.get(key)
            if digest is not None:
                self._digests.move_to_end(key)
            return digest

    def put(self, key: _StatKey, digest: str, now_ns: int) -> None:
        """Remember ``digest`` unless the file changed within ``_RACY_NS`` of ``now_ns``."""
        if now_ns - max(key[4], key[5]) <= _RACY_NS:
            return
        with self._lock:
            self._digests[key] = digest
            self._digests.move_to_end(key)
            while len(self._digests) > self.limit:
                self._digests.popitem(last=False)

    def __len__(self) -> int:
        return len(self._digests)


_DIGESTS = _DigestCache()


def _hash_file(root: Path, path: str, cache: _DigestCache = _DIGESTS,
               clock: Callable[[], int] = time.time_ns) -> str:
    """The sha256 of ``root/path``'s content, from ``cache`` while its stat is unchanged
    (``clock``: now, in the file timestamps' ns)."""
    full = root / path
    try:
        info = os.lstat(full)
        if not stat.S_ISREG(info.st_mode):
            return _EMPTY  # a socket or a device is sent empty (_context_walk.as_sent)
        before = _stat_key(full, info)
        known = cache.get(before)
        if known is not None:
            return known
        digest = hashlib.sha256()
        with open(full, "rb") as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
            after = _stat_key(full, os.fstat(stream.fileno()))
    except OSError as err:
        raise SolveError(f"cannot read {path!r} in the build context {root}: "
                         f"{err.strerror}") from None
    if after == before:  # not changed while it was read
        cache.put(before, digest.hexdigest(), clock())
    return digest.hexdigest()
