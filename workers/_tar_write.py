"""An overlayfs upper directory -> the entries of an OCI layer tar, in a fixed order.

The walk is depth first, a directory's children sorted by their tar name (bytes order), so
the same tree always gives the same tar.  What overlayfs stores and the layer format says
differently (image-spec layer.md, containerd archive/tar.go):

- a whiteout (a character device 0/0 named ``x``)  -> an empty regular file ``.wh.x``;
- an opaque directory (xattr ``trusted.overlay.opaque`` or ``user.overlay.opaque`` = ``y``)
  -> the directory, then ``<dir>/.wh..wh..opq`` right after it, before its children (an
  applier clears the directory's lower contents before this layer's children land);
- a file seen again through another name (same inode, ``st_nlink`` > 1) -> a tar hardlink
  to the first name written.  Whiteouts are excluded: overlayfs may share one whiteout inode.

Headers are PAX (long names, big ids), numeric uid/gid with empty uname/gname; only the
``security.capability`` xattr is exported (as containerd does).  An upper dir that carries
overlay metadata this differ cannot express (``redirect``, ``metacopy``) is refused: mount
the overlay with ``redirect_dir=off,metacopy=off``.
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, ParamSpec, Protocol, TypeVar

from dockyard.scheduler._errors import LayerError

__all__ = ["TarEntryWriter", "TarSink", "is_empty_diff", "ustar_header", "write_upper"]

WHITEOUT_PREFIX: Final = ".wh."
OPAQUE_MARKER: Final = ".wh..wh..opq"
_OPAQUE_XATTRS: Final = ("trusted.overlay.opaque", "user.overlay.opaque")
_REFUSED_XATTRS: Final = ("trusted.overlay.redirect", "trusted.overlay.metacopy",
                          "user.overlay.redirect", "user.overlay.metacopy")
_CAPABILITY: Final = "security.capability"
_BLOCK: Final = 512
_FLUSH_AT: Final = 1 << 20
_READ_SIZE: Final = 1 << 20
_ZEROS: Final = bytes(_BLOCK * 2)
_P = ParamSpec("_P")
_T = TypeVar("_T")


class TarSink(Protocol):
    def write(self, data: bytes) -> None: ...


@dataclass(frozen=True, slots=True)
class _Node:
    """One file of the upper dir: its tar name, host path and lstat."""

    name: str
    path: str
    st: os.stat_result


def is_empty_diff(upper: Path) -> bool:
    """True when the upper dir holds nothing: the op changed no file (it adds no layer)."""
    try:
        with os.scandir(upper) as entries:
            return next(entries, None) is None
    except OSError as err:
        raise LayerError(f"cannot read the upper dir {upper}: {err.strerror}") from err


class TarEntryWriter:
    """Turns nodes into tar bytes, buffered into ~1 MiB chunks for the sink."""

    def __init__(self, sink: TarSink, epoch: int | None) -> None:
        self._sink = sink
        self._epoch = epoch
        self._buffer = bytearray()
        self._links: dict[tuple[int, int], str] = {}   # (dev, ino) -> first tar name

    def add(self, node: _Node) -> None:
        info = self._header(node)
        self._put(ustar_header(info) or info.tobuf(tarfile.PAX_FORMAT, "utf-8",
                                                   "surrogateescape"))
        if info.type == tarfile.REGTYPE and info.size:
            self._copy(node.path, info.size)

    def add_marker(self, name: str) -> None:
        """An empty regular file (a whiteout or opaque marker): mode 0, root, time 0 or epoch."""
        info = tarfile.TarInfo(name)
        info.mode = 0
        info.mtime = self._epoch if self._epoch is not None else 0
        self._put(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))

    def close(self) -> None:
        self._put(_ZEROS)
        self._flush()

    def _header(self, node: _Node) -> tarfile.TarInfo:
        st = node.st
        info = tarfile.TarInfo(node.name)
        info.mode = stat.S_IMODE(st.st_mode)
        info.uid, info.gid, info.uname, info.gname = st.st_uid, st.st_gid, "", ""
        mtime = int(st.st_mtime)
        info.mtime = min(mtime, self._epoch) if self._epoch is not None else mtime
        first = self._first_link(node)
        if first is not None:
            info.type, info.linkname = tarfile.LNKTYPE, first
        else:
            self._set_type(info, node)
        capability = _read_capability(node)
        if capability is not None:
            info.pax_headers = {"SCHILY.xattr." + _CAPABILITY:
                                capability.decode("utf-8", "surrogateescape")}
        return info

    def _first_link(self, node: _Node) -> str | None:
        """The name this inode was first written under, or None (and remember this one)."""
        st = node.st
        if stat.S_ISDIR(st.st_mode) or st.st_nlink < 2:
            return None
        first = self._links.get((st.st_dev, st.st_ino))
        if first is None:
            self._links[(st.st_dev, st.st_ino)] = node.name
        return first

    def _set_type(self, info: tarfile.TarInfo, node: _Node) -> None:
        mode = node.st.st_mode
        if stat.S_ISREG(mode):
            info.type, info.size = tarfile.REGTYPE, node.st.st_size
        elif stat.S_ISDIR(mode):
            info.type = tarfile.DIRTYPE
        elif stat.S_ISLNK(mode):
            info.type, info.linkname = tarfile.SYMTYPE, _io(os.readlink, node.path)
        elif stat.S_ISFIFO(mode):
            info.type = tarfile.FIFOTYPE
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            info.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
            info.devmajor, info.devminor = os.major(node.st.st_rdev), os.minor(node.st.st_rdev)
        else:
            raise LayerError(f"cannot put {node.path} in a layer: a socket or unknown file type",
                             hint="remove it before the step ends")

    def _copy(self, path: str, size: int) -> None:
        """The file's data and padding; exactly ``size`` bytes (the size the header says)."""
        left = size
        try:
            with open(path, "rb", buffering=0) as src:
                while left > 0:
                    chunk = src.read(min(_READ_SIZE, left))
                    if not chunk:
                        raise LayerError(f"{path} shrank while it was being exported",
                                         hint="nothing may write to a snapshot being exported")
                    left -= len(chunk)
                    self._put(chunk)
        except OSError as err:
            raise LayerError(f"cannot read {path} for the layer: {err.strerror}") from err
        self._put(bytes(-size % _BLOCK))

    def _put(self, data: bytes) -> None:
        if len(data) >= _FLUSH_AT:
            self._flush()
            self._sink.write(data)
            return
        self._buffer += data
        if len(self._buffer) >= _FLUSH_AT:
            self._flush()

    def _flush(self) -> None:
        if self._buffer:
            self._sink.write(bytes(self._buffer))
            self._buffer.clear()


#: Header fields (POSIX ustar, the layout of a 512-byte tar header): an octal number
#: field of N bytes holds N-1 digits and a NUL; text fields are NUL-padded.
_OCTAL_LIMIT_8: Final = 8 ** 7
_OCTAL_LIMIT_12: Final = 8 ** 11
_USTAR_MAGIC: Final = b"ustar\x0000"
_PLAIN_TYPES: Final = frozenset((tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE,
                                 tarfile.LNKTYPE, tarfile.FIFOTYPE, tarfile.CHRTYPE,
                                 tarfile.BLKTYPE))
_DEVICES: Final = (tarfile.CHRTYPE, tarfile.BLKTYPE)


def ustar_header(info: tarfile.TarInfo) -> bytes | None:
    """The 512-byte header ``info.tobuf(PAX_FORMAT)`` gives when the entry needs no PAX
    record (ASCII names of at most 100 bytes, numbers that fit their octal fields, no
    xattrs), built without tarfile's per-header struct work (its checksum unpacks the
    block twice: a third of a layer's time for small files); None otherwise, and the
    caller asks tarfile.  tests/unit/workers/test_tar_header.py holds the two equal."""
    name = info.name + "/" if info.type == tarfile.DIRTYPE and \
        not info.name.endswith("/") else info.name
    mtime = info.mtime
    if (info.pax_headers or info.type not in _PLAIN_TYPES or info.uname or info.gname
            or len(name) > 100 or len(info.linkname) > 100 or not name.isascii()
            or not info.linkname.isascii() or type(mtime) is not int
            or not 0 <= mtime < _OCTAL_LIMIT_12 or not 0 <= info.size < _OCTAL_LIMIT_12
            or not 0 <= info.uid < _OCTAL_LIMIT_8 or not 0 <= info.gid < _OCTAL_LIMIT_8):
        return None
    if info.type in _DEVICES:
        if not (0 <= info.devmajor < _OCTAL_LIMIT_8 and 0 <= info.devminor < _OCTAL_LIMIT_8):
            return None
        devices = b"%07o\0%07o\0" % (info.devmajor, info.devminor)
    else:
        devices = bytes(16)
    head = b"%s%07o\0%07o\0%07o\0%011o\0%011o\0" % (
        name.encode("ascii").ljust(100, b"\0"), info.mode & 0o7777, info.uid, info.gid,
        info.size, mtime)
    tail = b"%s%s%s%s" % (info.type, info.linkname.encode("ascii").ljust(100, b"\0"),
                          _USTAR_MAGIC, bytes(64))
    tail = (tail + devices).ljust(512 - 148 - 8, b"\0")
    # the checksum: the sum of the header's bytes with its own field read as 8 spaces
    checksum = sum(head) + sum(tail) + 8 * 0x20
    return head + b"%06o\0 " % checksum + tail


def write_upper(upper: Path, writer: TarEntryWriter) -> None:
    """Every entry of ``upper`` through ``writer``, in the layer's order."""
    for item in _walk(os.fspath(upper), ""):
        if isinstance(item, str):
            writer.add_marker(item)
        else:
            writer.add(item)
    writer.close()


def _walk(root: str, prefix: str) -> Iterator[_Node | str]:
    """Nodes and marker names (str) below ``root``; ``prefix`` is root's tar name + '/'."""
    for name, path, st in _children(root):
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            yield prefix + WHITEOUT_PREFIX + name
            continue
        node = _Node(prefix + name, path, st)
        yield node
        if stat.S_ISDIR(st.st_mode):
            if _is_opaque(path):
                yield node.name + "/" + OPAQUE_MARKER
            yield from _walk(path, node.name + "/")


def _children(root: str) -> list[tuple[str, str, os.stat_result]]:
    """(name, path, lstat) of the entries of ``root``, sorted by their tar name."""
    try:
        with os.scandir(root) as entries:
            names = [entry.name for entry in entries]
    except OSError as err:
        raise LayerError(f"cannot read the directory {root}: {err.strerror}") from err
    found = [(n, os.path.join(root, n)) for n in names]
    nodes = [(n, path, _io(os.lstat, path)) for n, path in found]
    return sorted(nodes, key=_tar_key)


def _tar_key(item: tuple[str, str, os.stat_result]) -> bytes:
    """The sort key: the name as it will appear in the tar (a whiteout gets its prefix)."""
    name, _, st = item
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
        name = WHITEOUT_PREFIX + name
    return os.fsencode(name)


def _is_opaque(path: str) -> bool:
    names = _xattr_names(path)
    return any(name in names and _io(os.getxattr, path, name, follow_symlinks=False) == b"y"
               for name in _OPAQUE_XATTRS)


def _read_capability(node: _Node) -> bytes | None:
    if not stat.S_ISREG(node.st.st_mode):
        return None
    names = _xattr_names(node.path)
    if _CAPABILITY not in names:
        return None
    value: bytes = _io(os.getxattr, node.path, _CAPABILITY, follow_symlinks=False)
    return value


def _xattr_names(path: str) -> list[str]:
    """The xattr names of ``path``; LayerError if overlayfs metadata we cannot express."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as err:
        if err.errno in (errno.ENOTSUP, errno.EPERM):
            return []
        raise LayerError(f"cannot list the xattrs of {path}: {err.strerror}") from err
    for refused in _REFUSED_XATTRS:
        if refused in names:
            raise LayerError(f"{path} carries overlay metadata {refused} that a layer cannot "
                             "express", hint="mount the overlay with redirect_dir=off,metacopy=off")
    return names


def _io(func: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """Call an os function on a path; an OSError becomes a LayerError naming the path."""
    try:
        return func(*args, **kwargs)
    except OSError as err:
        raise LayerError(f"cannot read {err.filename} for the layer: {err.strerror}") from err
