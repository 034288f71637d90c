"""The client's answer to ``context.read``: ranges of its context's files, for a worker
that has only the manifest (docs/cluster.md, "Context transfer").

``ContextServer(context_dir, manifest)`` serves only what the manifest lists as regular
files, within their listed sizes, at most ``READ_BYTES`` per ask.  A request is client
input from the cluster, so everything else is refused with a ``SolveError`` saying what
(the channel sends it back as a failure reply): a path not listed (``..``, absolute, an
excluded file, a directory, a symlink), a range past the listed size, a malformed item.
The file is opened component by component under the context directory without following
a symlink (``O_NOFOLLOW`` at every step), and must still be a regular file: a symlink or
a FIFO swapped in since the walk is refused, never followed or waited on.  A file that
shrank gives fewer bytes; the worker's digest check reports it as changed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dockyard.scheduler._errors import SolveError
from dockyard.workers._context_fetch import READ_BYTES, READ_ITEMS, ReadItem
from dockyard.workers._context_manifest import ContextManifest, ManifestEntry, name_from_wire

__all__ = ["MAX_ITEMS", "ContextServer", "ContextServers"]

#: At most this many ranges in one ask (the worker's reads never ask more).
MAX_ITEMS = READ_ITEMS
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class ContextServer:
    """Serves ``context.read`` for one context directory and the manifest sent for it."""

    def __init__(self, context_dir: Path, manifest: ContextManifest, *,
                 hashed: int = 0) -> None:
        self.root = context_dir
        # path -> its entry, regular files only: all that may be read
        self.files: dict[str, ManifestEntry] = {
            entry.path: entry for entry in manifest.entries if entry.sha256 is not None}
        # bytes served so far (statistics)
        self.served = 0
        # bytes read to digest the manifest's files (statistics; fixed)
        self.hashed = hashed

    def __repr__(self) -> str:
        return f"<ContextServer {self.root} files={len(self.files)} served={self.served}>"

    def read(self, params: Any) -> list[bytes]:
        """The bytes of each ``[path, offset, length]`` in ``params["items"]``."""
        items = self.checked(params)
        dir_fd = os.open(self.root, _DIR_FLAGS)
        try:
            chunks = [self._read_range(dir_fd, item) for item in items]
        finally:
            os.close(dir_fd)
        self.served += sum(len(chunk) for chunk in chunks)
        return chunks

    def checked(self, params: Any) -> list[ReadItem]:
        """The items of a request, each checked against the manifest; else ``SolveError``."""
        raw = params.get("items") if isinstance(params, dict) else None
        if not isinstance(raw, list) or len(raw) > MAX_ITEMS:
            raise _refused(f"'items' must be a list of at most {MAX_ITEMS} ranges")
        items = [self._item(index, item) for index, item in enumerate(raw)]
        total = sum(length for _, _, length in items)
        if total > READ_BYTES:
            raise _refused(f"{total} bytes asked in one read (at most {READ_BYTES})")
        return items

    def _item(self, index: int, item: Any) -> ReadItem:
        if not isinstance(item, list | tuple) or len(item) != 3:
            raise _refused(f"item {index} is not [path, offset, length]")
        raw_path, offset, length = item
        path = name_from_wire(raw_path)
        entry = self.files.get(path) if path is not None else None
        if path is None or entry is None:
            raise _refused(f"item {index}: {raw_path!r} is not a file of the build context "
                           "as sent")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                   for v in (offset, length)) or offset + length > entry.size:
            raise _refused(f"item {index}: the range {offset!r}+{length!r} is not within "
                           f"{path!r} ({entry.size} bytes)")
        return path, offset, length

    def _read_range(self, dir_fd: int, item: ReadItem) -> bytes:
        path, offset, length = item
        try:
            with _opened_beneath(dir_fd, path) as fd:
                return _pread_all(fd, length, offset)
        except OSError as err:
            raise SolveError(f"cannot read {path!r} in the build context {self.root}: "
                             f"{err.strerror}", hint="build again once the files stop "
                             "changing") from None


class ContextServers:
    """Serves ``context.read`` for every context of a build (the main one and each
    ``--build-context`` directory), each ask by the ``name`` it gives."""

    def __init__(self) -> None:
        # session context name -> the server of its directory and manifest
        self.servers: dict[str, ContextServer] = {}

    def __repr__(self) -> str:
        return f"<ContextServers {sorted(self.servers)} served={self.served}>"

    def add(self, name: str, server: ContextServer) -> None:
        self.servers[name] = server

    @property
    def served(self) -> int:
        """Bytes served so far, all contexts together (statistics)."""
        return sum(server.served for server in self.servers.values())

    @property
    def hashed(self) -> int:
        """Bytes read to digest the manifests' files (statistics; fixed)."""
        return sum(server.hashed for server in self.servers.values())

    def read(self, params: Any) -> list[bytes]:
        """The bytes of each range of the context ``params["name"]`` asks."""
        name = params.get("name") if isinstance(params, dict) else None
        server = self.servers.get(name) if isinstance(name, str) else None
        if server is None:
            raise _refused(f"{name!r} is not a context the client sent")
        return server.read(params)


@contextlib.contextmanager
def _opened_beneath(dir_fd: int, path: str) -> Iterator[int]:
    """``path`` under ``dir_fd`` opened for reading, following no symlink on the way;
    ``SolveError`` unless it is (still) a regular file."""
    *parents, name = path.split("/")
    fds: list[int] = []
    try:
        current = dir_fd
        for part in parents:
            current = os.open(part, _DIR_FLAGS, dir_fd=current)
            fds.append(current)
        fd = os.open(name, _FILE_FLAGS, dir_fd=current)
        fds.append(fd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _refused(f"{path!r} is no longer a regular file")
        yield fd
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            raise _refused(f"{path!r} is no longer a regular file (a symlink was swapped "
                           "in)") from None
        raise
    finally:
        for fd in reversed(fds):
            os.close(fd)


def _pread_all(fd: int, length: int, offset: int) -> bytes:
    """Up to ``length`` bytes at ``offset`` (fewer only at the end of the file)."""
    parts: list[bytes] = []
    while length > 0:
        chunk = os.pread(fd, length, offset)
        if not chunk:
            break
        parts.append(chunk)
        offset += len(chunk)
        length -= len(chunk)
    return b"".join(parts)


def _refused(what: str) -> SolveError:
    return SolveError(f"refused to read the build context: {what}",
                      hint="the cluster asked for something the client did not send")
