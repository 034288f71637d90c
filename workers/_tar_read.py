"""Tar entries -> files under a root, never outside it.

Two forms (``Extractor(overlay=...)``):

- overlay form (a layer's snapshot directory, later a lowerdir): ``.wh.x`` becomes a
  character device 0/0 named ``x`` and ``.wh..wh..opq`` the xattr ``trusted.overlay.opaque=y``
  on its directory (``user.overlay.opaque`` when not root, for ``userxattr`` mounts);
- flat form (a materialised image): ``.wh.x`` deletes ``x``, ``.wh..wh..opq`` deletes what
  the directory held before this layer.

The escape rules (containerd archive/tar.go, image-spec layer.md) hold in both forms: a name
is cleaned of ``.`` and empty components and of a leading ``/`` (as tar tools do); a ``..``
component is refused; every directory on the way to an entry must be a real directory (a
symlink there is refused, so nothing is ever written through a link); a hardlink's target
obeys the same rules and, in overlay form, must be an entry of this layer; devices only as
root.  Symlinks are created as they are, never followed.  Directory mtimes are set at the end
(writing their children changed them).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tarfile
from collections.abc import Callable
from typing import Final, ParamSpec, Protocol, TypeVar

from dockyard.scheduler._errors import LayerError

__all__ = ["Extractor", "clear_directory"]

WHITEOUT_PREFIX: Final = ".wh."
WHITEOUT_META_PREFIX: Final = ".wh..wh."
OPAQUE_MARKER: Final = ".wh..wh..opq"
_XATTR_PREFIX: Final = "SCHILY.xattr."
_OVERLAY_XATTRS: Final = ("trusted.overlay.", "user.overlay.")
_COPY_SIZE: Final = 1 << 20
_P = ParamSpec("_P")
_T = TypeVar("_T")


class _Data(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def clean_name(name: str, what: str = "layer entry") -> str:
    """``name`` relative to the root: leading ``/``, ``.`` and empty parts dropped; LayerError
    for a ``..`` part.  The root itself is ``""``."""
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise LayerError(f"{what} {name!r} has a '..' component: it would escape the root",
                         hint="the layer is corrupt or hostile; rebuild or re-pull it")
    return "/".join(parts)


class Extractor:
    """Applies tar members one by one under ``root``; ``finish`` sets directory times."""

    def __init__(self, root: str, *, overlay: bool) -> None:
        self._root = root
        self._overlay = overlay
        self._privileged = os.geteuid() == 0
        self._written: set[str] = set()       # names this layer created (never whiteouts)
        self._real_dirs: set[str] = {""}      # names checked to be real directories (cache;
        #                                       entries below a replaced name are dropped)
        self._dir_times: list[tuple[str, int]] = []   # (abs path, mtime ns) set at finish

    # -- one member -------------------------------------------------------------------

    def apply(self, member: tarfile.TarInfo, data: _Data | None) -> None:
        rel = clean_name(member.name)
        if not rel:
            return   # the root: its metadata belongs to the snapshot, not the layer
        parent, _, base = rel.rpartition("/")
        self._ensure_dir(parent, member.name)
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(parent, base, member.name)
            return
        path = self._abs(rel)
        if member.islnk():
            self._hardlink(rel, member)
            return
        kept = self._make_room(rel, member.isdir())
        self._create(path, member, data, kept)
        self._metadata(path, member)
        self._written.add(rel)

    def finish(self) -> None:
        for path, mtime in reversed(self._dir_times):
            _io(os.utime, path, ns=(mtime, mtime), follow_symlinks=False)

    # -- paths ------------------------------------------------------------------------

    def _abs(self, rel: str) -> str:
        return os.path.join(self._root, rel)

    def _ensure_dir(self, rel: str, entry: str, *, create: bool = True) -> bool:
        """Every component of ``rel`` is a real directory (missing ones made 0755 when
        ``create``, else False); a symlink or a file on the way is refused."""
        if rel in self._real_dirs:
            return True
        if not self._ensure_dir(rel.rpartition("/")[0], entry, create=create):
            return False
        try:
            st = os.lstat(self._abs(rel))
        except FileNotFoundError:
            if not create:
                return False
            _io(os.mkdir, self._abs(rel), 0o755)
        else:
            if stat.S_ISLNK(st.st_mode):
                raise LayerError(f"layer entry {entry!r} goes through the symlink {rel!r}: "
                                 "writing through a link could escape the root",
                                 hint="the layer is corrupt or hostile; rebuild or re-pull it")
            if not stat.S_ISDIR(st.st_mode):
                raise LayerError(f"layer entry {entry!r}: {rel!r} is not a directory")
        self._real_dirs.add(rel)
        return True

    def _make_room(self, rel: str, is_dir: bool) -> bool:
        """Remove what is at ``rel`` unless both it and the new entry are directories;
        True when an existing directory is kept."""
        path = self._abs(rel)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return False
        if is_dir and stat.S_ISDIR(st.st_mode):
            return True
        self._remove(rel, st)
        return False

    def _remove(self, rel: str, st: os.stat_result) -> None:
        path = self._abs(rel)
        if stat.S_ISDIR(st.st_mode):
            _io(shutil.rmtree, path)
        else:
            _io(os.unlink, path)
        self._real_dirs = {d for d in self._real_dirs if not _within(d, rel)}
        self._written = {w for w in self._written if not _within(w, rel)}

    # -- whiteouts --------------------------------------------------------------------

    def _whiteout(self, parent: str, base: str, entry: str) -> None:
        if base == OPAQUE_MARKER:
            self._opaque(parent)
        elif not base.startswith(WHITEOUT_META_PREFIX):   # other .wh..wh. names: ignored
            name = base[len(WHITEOUT_PREFIX):]
            if name in ("", ".", ".."):
                raise LayerError(f"layer entry {entry!r} is a whiteout of no valid name")
            self._delete(f"{parent}/{name}" if parent else name)

    def _opaque(self, parent: str) -> None:
        path = self._abs(parent)
        if self._overlay:
            name = "trusted.overlay.opaque" if self._privileged else "user.overlay.opaque"
            _io(os.setxattr, path, name, b"y", follow_symlinks=False)
            return
        for child in _io(os.listdir, path):
            rel = f"{parent}/{child}" if parent else child
            if rel not in self._written:
                self._remove(rel, _io(os.lstat, self._abs(rel)))

    def _delete(self, rel: str) -> None:
        try:
            st = os.lstat(self._abs(rel))
        except FileNotFoundError:
            st = None
        if st is not None:
            self._remove(rel, st)
        if self._overlay:
            self._require_root(rel, "a whiteout")
            _io(os.mknod, self._abs(rel), stat.S_IFCHR, os.makedev(0, 0))

    # -- creating ---------------------------------------------------------------------

    def _hardlink(self, rel: str, member: tarfile.TarInfo) -> None:
        target = clean_name(member.linkname, f"layer entry {member.name!r} links to")
        target_parent = target.rpartition("/")[0]
        if self._overlay and target not in self._written:
            raise LayerError(f"layer entry {member.name!r} is a hardlink to {member.linkname!r}, "
                             "which is not an earlier entry of this layer",
                             hint="the layer is corrupt or hostile; rebuild or re-pull it")
        found = self._ensure_dir(target_parent, member.name, create=False)
        target_st = _lstat_or_none(self._abs(target)) if found else None
        if target_st is None or stat.S_ISDIR(target_st.st_mode):
            raise LayerError(f"layer entry {member.name!r} is a hardlink to {member.linkname!r}, "
                             "which is missing or a directory")
        if rel == target:
            return
        self._make_room(rel, False)
        _io(os.link, self._abs(target), self._abs(rel), follow_symlinks=False)
        self._written.add(rel)

    def _create(self, path: str, member: tarfile.TarInfo, data: _Data | None,
                kept: bool) -> None:
        if member.isreg():
            _write_file(path, data)
        elif member.isdir():
            if not kept:
                _io(os.mkdir, path, 0o700)
        elif member.issym():
            _io(os.symlink, member.linkname, path)
        elif member.isfifo():
            _io(os.mkfifo, path, 0o600)
        elif member.ischr() or member.isblk():
            self._require_root(member.name, "a device file")
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            _io(os.mknod, path, kind | 0o600, os.makedev(member.devmajor, member.devminor))
        else:
            raise LayerError(f"layer entry {member.name!r} has an unsupported type "
                             f"{member.type!r}")

    def _require_root(self, entry: str, what: str) -> None:
        if not self._privileged:
            raise LayerError(f"layer entry {entry!r} is {what}: only root can create it",
                             hint="unpack layers as root")

    def _metadata(self, path: str, member: tarfile.TarInfo) -> None:
        if self._privileged:
            _io(os.lchown, path, member.uid, member.gid)
        self._xattrs(path, member)
        if not member.issym():
            _io(os.chmod, path, member.mode & 0o7777)
        mtime = round(member.mtime * 1_000_000_000)
        if member.isdir():
            self._dir_times.append((path, mtime))
        else:
            _io(os.utime, path, ns=(mtime, mtime), follow_symlinks=False)

    def _xattrs(self, path: str, member: tarfile.TarInfo) -> None:
        for key, value in member.pax_headers.items():
            name = key[len(_XATTR_PREFIX):]
            if not key.startswith(_XATTR_PREFIX) or name.startswith(_OVERLAY_XATTRS):
                continue   # overlay metadata from a tar would steer the overlay: dropped
            raw = value.encode("utf-8", "surrogateescape")
            try:
                os.setxattr(path, name, raw, follow_symlinks=False)
            except OSError as err:
                if err.errno in (errno.EPERM, errno.ENOTSUP) and \
                        (member.issym() or not self._privileged):
                    continue
                raise LayerError(f"cannot set xattr {name} on {path}: {err.strerror}") from err


def _write_file(path: str, data: _Data | None) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = _io(os.open, path, flags, 0o600)
    with open(fd, "wb", buffering=0, closefd=True) as out:
        while data is not None and (chunk := data.read(_COPY_SIZE)):
            _io(out.write, chunk)


def _within(name: str, top: str) -> bool:
    return name == top or name.startswith(top + "/")


def _lstat_or_none(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def clear_directory(root: str) -> None:
    """Remove everything inside ``root`` (not ``root``), never following a symlink."""
    for child in os.listdir(root):
        path = os.path.join(root, child)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


def _io(func: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """Call an os function; an OSError becomes a LayerError naming the path."""
    try:
        return func(*args, **kwargs)
    except OSError as err:
        where = err.filename or (args[0] if args else "")
        raise LayerError(f"cannot unpack the layer at {where}: {err.strerror}") from err
