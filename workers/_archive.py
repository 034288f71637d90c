"""ADD's auto-extraction: a local file that is a tar archive (plain, gzip, bzip2, xz or
zstd, told apart by content, as BuildKit's archiveutil does) is unpacked into the
destination directory instead of being copied.

Unpacking keeps the archive's owners (unless ``--chown``), modes and mtimes, and refuses
what would leave the destination, as Docker's archive package does: a name climbing out
with ``..``, a hardlink to outside, a symlink whose relative target climbs out, and a
write through a symlink already in place (``LayerError`` naming the entry).
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import os
import posixpath
import shutil
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, BinaryIO

import zstandard

from scheduler._errors import LayerError

from ._copy import make_dirs, resolve_in_root

__all__ = ["open_archive", "unpack_archive"]

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)


def _decompressed(raw: IO[bytes]) -> BinaryIO:
    head = raw.read(6)
    raw.seek(0)
    kind = next((name for magic, name in _MAGIC if head.startswith(magic)), "")
    if kind == "gzip":
        return gzip.GzipFile(fileobj=raw)  # type: ignore[return-value]
    if kind == "bzip2":
        return bz2.BZ2File(raw)  # type: ignore[return-value]
    if kind == "xz":
        return lzma.LZMAFile(raw)  # type: ignore[return-value]
    if kind == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(raw)
    return raw  # type: ignore[return-value]


@contextlib.contextmanager
def open_archive(path: Path) -> Iterator[tarfile.TarFile | None]:
    """The tar stream of ``path``, or None when it is not a regular file holding a tar
    (possibly compressed) with at least one entry."""
    if not stat.S_ISREG(os.lstat(path).st_mode):
        yield None
        return
    with open(path, "rb") as raw:
        try:
            archive = tarfile.open(fileobj=_decompressed(raw), mode="r|")  # noqa: SIM115
        except (tarfile.TarError, OSError, EOFError, lzma.LZMAError, zstandard.ZstdError):
            archive = None
        # Go's tar reader: an archive without a first entry (EOF) is no archive.
        first = getattr(archive, "firstmember", None)
        yield archive if first is not None else None


def unpack_archive(src_root: Path, src: str, dst_root: Path, dest: str,
                   owner: tuple[int, int] | None) -> bool:
    """Extract ``src`` (in ``src_root``, followed) into the directory ``dest`` of
    ``dst_root`` when it is an archive; False (nothing done) when it is not."""
    path = resolve_in_root(src_root, src)
    if not os.path.lexists(path):
        return False
    with open_archive(path) as archive:
        if archive is None:
            return False
        target = resolve_in_root(dst_root, dest)
        make_dirs(target, dst_root, 0o755, owner)
        try:
            _Extractor(target, owner, src).run(archive)
        except (tarfile.TarError, EOFError, lzma.LZMAError, zstandard.ZstdError) as err:
            raise LayerError(f"ADD {src}: corrupt archive: {err}",
                             hint="check the file is a complete tar archive") from None
    return True


class _Extractor:
    """Writes one archive's entries under ``root`` (a resolved, existing directory)."""

    def __init__(self, root: Path, owner: tuple[int, int] | None, label: str) -> None:
        self.root = root
        self.owner = owner
        self.label = label
        # Directories extracted, with their mtimes: set last, once their entries are in.
        self.dir_times: list[tuple[Path, int]] = []

    def run(self, archive: tarfile.TarFile) -> None:
        for member in archive:
            self._extract(archive, member)
        for path, mtime in reversed(self.dir_times):
            os.utime(path, (mtime, mtime), follow_symlinks=False)

    def _refuse(self, name: str, why: str) -> LayerError:
        return LayerError(f"ADD {self.label}: archive entry {name!r} {why}",
                          hint="the archive tries to write outside its destination; "
                               "rebuild it with relative paths inside one directory")

    def _inside(self, name: str) -> str:
        cleaned = posixpath.normpath("/" + name).lstrip("/")
        relative = posixpath.normpath(name.lstrip("/"))
        if relative == ".." or relative.startswith("../"):
            raise self._refuse(name, "climbs out of the destination")
        return cleaned

    def _place(self, name: str) -> Path:
        """The host path of entry ``name``: parents created, none of them a symlink."""
        parts = [p for p in self._inside(name).split("/") if p]
        here = self.root
        for part in parts[:-1]:
            here = here / part
            if os.path.islink(here):
                raise self._refuse(name, f"would write through the symlink {part!r}")
            if not os.path.lexists(here):
                os.mkdir(here, 0o755)
                if self.owner is not None:
                    os.chown(here, *self.owner)
        return here / parts[-1] if parts else self.root

    def _extract(self, archive: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        path = self._place(member.name)
        self._clear(path, member)
        if member.isdir():
            if not path.is_dir():
                os.mkdir(path, 0o700)
            self.dir_times.append((path, int(member.mtime)))
        elif member.isreg():
            self._write(archive, member, path)
        elif member.issym():
            self._symlink(member, path)
        elif member.islnk():  # shares its target's inode, metadata included
            os.link(self._link_source(member), path)
            return
        elif member.ischr() or member.isblk() or member.isfifo():
            os.mknod(path, member.mode | _TYPES[member.type],
                     os.makedev(member.devmajor, member.devminor))
        else:
            return
        self._metadata(member, path)

    def _clear(self, path: Path, member: tarfile.TarInfo) -> None:
        if path == self.root or not os.path.lexists(path):
            return
        if member.isdir() and path.is_dir() and not path.is_symlink():
            return
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()

    def _write(self, archive: tarfile.TarFile, member: tarfile.TarInfo, path: Path) -> None:
        reader = archive.extractfile(member)
        assert reader is not None
        with open(path, "xb") as writer:
            while chunk := reader.read(1 << 20):
                writer.write(chunk)

    def _symlink(self, member: tarfile.TarInfo, path: Path) -> None:
        entry_dir = posixpath.dirname(self._inside(member.name))
        if not member.linkname.startswith("/") and _climbs_out(entry_dir, member.linkname):
            raise self._refuse(member.name, f"links to {member.linkname!r}, outside")
        os.symlink(member.linkname, path)

    def _link_source(self, member: tarfile.TarInfo) -> Path:
        source = self._place(member.linkname)
        if not os.path.lexists(source):
            raise self._refuse(member.name, f"hardlinks to {member.linkname!r}, which the "
                                            "archive does not hold before it")
        return source

    def _metadata(self, member: tarfile.TarInfo, path: Path) -> None:
        owner = self.owner or (member.uid, member.gid)
        os.chown(path, *owner, follow_symlinks=False)
        if not member.issym():
            os.chmod(path, member.mode & 0o7777)
        if not member.isdir():
            mtime = int(member.mtime)
            os.utime(path, (mtime, mtime), follow_symlinks=False)


def _climbs_out(directory: str, link: str) -> bool:
    """True when ``link``, relative to ``directory``, leads above the top (lexically)."""
    depth = 0
    for part in (directory + "/" + link).split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


_TYPES = {tarfile.CHRTYPE: stat.S_IFCHR, tarfile.BLKTYPE: stat.S_IFBLK,
          tarfile.FIFOTYPE: stat.S_IFIFO}

