"""The stat indexes of the build contexts a process reads, kept on disk between builds.

One file per context directory (keyed by its real path), under the directory the
process keeps them in: the client's ``<DOCKYARD_ROOT>/context-index`` for a build it
sends (its manifest), the worker's own for a context directory it reads itself::

    <dir>/<sha256 of the real path, 32 hex>.msgpack   an index
    <dir>/.new-<random>                               one being written
    <dir>/trees/<sha256 of the name, 32 hex>.msgpack  the tree a worker last made of a
                                                      context source (``Materialised``)

An index file is the sha256 (32 bytes) of what follows, then ``ContextDigests``' wire
form in msgpack: a file cut short or with a flipped bit is seen as damaged, so a wrong
digest never comes out of it.

``load`` gives the context's ``ContextDigests`` (workers/_context_digest.py): what the
index knew, or nothing when there is no index, or it is damaged, foreign (another version,
another path) or unreadable -- it is then rebuilt by this build, never trusted and never
an error.  ``save`` writes the index whole to a temporary file and renames it into place
(a reader sees the old index or the new one), then keeps the ``limit`` most recently used
indexes (by their files' mtimes; a load that writes nothing touches its file).  A failure
to save is logged and the build goes on: the index only spares reads.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import msgpack

from ._context_digest import ContextDigests

__all__ = ["MAX_CONTEXTS", "MAX_INDEX_BYTES", "ContextIndexes"]

#: Indexes kept per directory (one per context path, least recently used removed).
MAX_CONTEXTS = 32
#: An index file larger than this is not read (a context of millions of files).
MAX_INDEX_BYTES = 256 << 20
_SUFFIX = ".msgpack"
_TEMP = ".new-"
#: A temporary file this old is what a killed writer left.
_STALE_TEMP_NS = 3600 * 1_000_000_000

_log = logging.getLogger(__name__)


class ContextIndexes:
    """The stat indexes under ``directory`` (see the module docstring)."""

    def __init__(self, directory: Path, limit: int = MAX_CONTEXTS, *,
                 clock: Callable[[], int] = time.time_ns) -> None:
        self.directory = directory
        self.limit = limit
        self.clock = clock  # now, in the file timestamps' ns (the racy rule's)

    def __repr__(self) -> str:
        return f"<ContextIndexes {self.directory} limit={self.limit}>"

    def path(self, context_dir: Path) -> Path:
        """The index file of ``context_dir``."""
        key = hashlib.sha256(os.fsencode(_real(context_dir))).hexdigest()[:32]
        return self.directory / (key + _SUFFIX)

    def load(self, context_dir: Path) -> ContextDigests:
        """The digests the index of ``context_dir`` holds; empty when it has none usable."""
        real = _real(context_dir)
        found = _read(self.path(context_dir))
        loaded = None if found is None else ContextDigests.from_wire(found, context_dir, real,
                                                                     clock=self.clock)
        if loaded is None and found is not None:
            _log.info("the stat index of %s is foreign (another version or path): "
                      "rebuilt", real)
        return loaded if loaded is not None else ContextDigests(context_dir, clock=self.clock)

    def save(self, digests: ContextDigests) -> None:
        """Write the index of ``digests.root`` (atomically), then keep the ``limit``
        most recently used; a failure is logged, never raised."""
        target = self.path(digests.root)
        try:
            if not digests.changed():
                with contextlib.suppress(FileNotFoundError):
                    os.utime(target)  # still used: last in the LRU order
                return
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            body = msgpack.packb(digests.to_wire(_real(digests.root)))
            _write(target, hashlib.sha256(body).digest() + body)
            self._prune(keep=target)
        except (OSError, ValueError, TypeError) as err:
            _log.warning("cannot save the stat index of the build context %s in %s: %s",
                         digests.root, self.directory, err)

    def load_tree(self, name: str) -> object | None:
        """The wire form saved by ``save_tree`` for the context source ``name``, or None
        when there is none usable."""
        return _read(self._tree_path(name))

    def save_tree(self, name: str, data: object) -> None:
        """Keep ``data`` (msgpack-able) for the context source ``name``, whole or not at
        all; a failure is logged, never raised (it only spares copies)."""
        target = self._tree_path(name)
        try:
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            body = msgpack.packb(data)
            _write(target, hashlib.sha256(body).digest() + body)
        except (OSError, ValueError, TypeError) as err:
            _log.warning("cannot save the last tree of the context %s in %s: %s", name,
                         target.parent, err)

    def _tree_path(self, name: str) -> Path:
        key = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:32]
        return self.directory / "trees" / (key + _SUFFIX)

    def _prune(self, keep: Path) -> None:
        """Remove the least recently used indexes past ``limit``, and stale temps."""
        indexes: list[tuple[int, Path]] = []
        now = time.time_ns()
        with os.scandir(self.directory) as entries:
            for entry in entries:
                with contextlib.suppress(FileNotFoundError):
                    used = entry.stat(follow_symlinks=False).st_mtime_ns
                    if entry.name.startswith(_TEMP) and now - used > _STALE_TEMP_NS:
                        os.unlink(entry.path)
                    elif entry.name.endswith(_SUFFIX) and entry.path != str(keep):
                        indexes.append((used, Path(entry.path)))
        indexes.sort(reverse=True)
        for _, path in indexes[max(0, self.limit - 1):]:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _real(context_dir: Path) -> str:
    return os.path.realpath(context_dir)


def _read(path: Path) -> object | None:
    """The msgpack data of the index file ``path``; None when there is none usable."""
    try:
        with open(path, "rb") as stream:
            data = stream.read(MAX_INDEX_BYTES + 1)
    except OSError:
        return None
    check, body = data[:32], data[32:]
    if len(data) > MAX_INDEX_BYTES or hashlib.sha256(body).digest() != check:
        _log.info("the stat index %s is damaged: ignored", path)
        return None
    try:
        found: object = msgpack.unpackb(body, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException):
        _log.info("the stat index %s is not msgpack: ignored", path)
        return None
    return found


def _write(target: Path, data: bytes) -> None:
    """``data`` as ``target``, whole or not at all (temporary file, then rename)."""
    fd, temp = tempfile.mkstemp(prefix=_TEMP, dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
