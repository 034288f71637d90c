"""ADD's auto-extraction: a local file that is a tar archive (plain, gzip, bzip2, xz or
zstd, told apart by content, as BuildKit's archiveutil does) is unpacked into the
destination directory instead of being copied.

Unpacking keeps the archive's owners (unless ``--chown``), modes and mtimes, and treats the
destination as the root of the archive, as BuildKit does (Docker 20.10's BuildKit untars
in a chroot at the destination; its answers to each case below are recorded in
tests/integration/workers/test_fileops_archive.py):

- names are cleaned against that root: ``../evil`` lands at ``evil``, ``/abs/x`` at
  ``abs/x``; an entry naming the root itself (``./``) is skipped;
- symlinks are made as the archive writes them (``var/run -> /run``, ``up -> ../tmp``),
  and an entry written through one is resolved inside the root: an absolute target
  restarts at the root, ``..`` stops there.  Directories missing on the way are made, as
  BuildKit's newer unpacker does (20.10 failed with "no such file or directory");
- a hardlink's target is resolved the same way, its last component never followed; one
  whose target is missing or a directory is refused, naming the entry;
- GNU sparse entries (type ``S``) are refused with BuildKit's "unhandled tar header type
  83", as are the other types BuildKit does not handle; PAX sparse files are written out
  in full, as BuildKit writes them;
- what one ADD expands to is bounded (``DOCKYARD_ADD_MAX``, see ``ArchiveLimits``), checked
  at each entry before its data is written, and an entry of ``LARGE_WRITE`` bytes or more
  first checks that the disk it lands on has room for it.

Every refusal is a ``LayerError`` naming the archive and the entry; the caller (the
solver) adds the vertex and its Dockerfile line.
"""

from __future__ import annotations

import bz2
import contextlib
import errno
import gzip
import lzma
import os
import posixpath
import shutil
import stat
import tarfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO, Final

import zstandard

from dockyard.scheduler._errors import LayerError, SolveError, UsageError

from ._cache_limit import parse_size
from ._copy import make_dirs, resolve_in_root
from ._disk import DISK_FULL_HINT, free_bytes, human_size, is_disk_full

__all__ = ["ADD_MAX_ENV", "DEFAULT_ADD_MAX", "LARGE_WRITE", "ArchiveBudget", "ArchiveLimits",
           "open_archive", "unpack_archive"]

ADD_MAX_ENV: Final = "DOCKYARD_ADD_MAX"
#: What one ADD may expand to when ``DOCKYARD_ADD_MAX`` is unset.
DEFAULT_ADD_MAX: Final = 32 * 1024**3
#: An entry at least this big checks the free space before it is written.
LARGE_WRITE: Final = 16 * 1024**2

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)

#: The entry types BuildKit's untar handles (a PAX global header never reaches us).
_HANDLED: Final = frozenset({tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE,
                             tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE,
                             tarfile.BLKTYPE, tarfile.FIFOTYPE})
_TYPES = {tarfile.CHRTYPE: stat.S_IFCHR, tarfile.BLKTYPE: stat.S_IFBLK,
          tarfile.FIFOTYPE: stat.S_IFIFO}


@dataclass(frozen=True, slots=True)
class ArchiveLimits:
    """``max_bytes``: what the archives of one ADD may expand to (the sum of their files'
    sizes), None for no limit; ``large_write``: an entry this big checks the free space of
    its disk first."""

    max_bytes: int | None = DEFAULT_ADD_MAX
    large_write: int = LARGE_WRITE

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> ArchiveLimits:
        """``DOCKYARD_ADD_MAX``: a size (``32GB``, binary units as buildx reads them),
        ``off`` for no limit; unset or empty: ``DEFAULT_ADD_MAX``."""
        text = environ.get(ADD_MAX_ENV, "").strip()
        if not text:
            return cls()
        if text.lower() == "off":
            return cls(max_bytes=None)
        try:
            return cls(max_bytes=parse_size(text, ADD_MAX_ENV))
        except UsageError:
            raise SolveError(f"invalid {ADD_MAX_ENV} {text!r}: expected a size such as 32GB, "
                             "or off", hint=f"fix or unset {ADD_MAX_ENV} in the worker's "
                             "environment") from None


@dataclass(slots=True)
class ArchiveBudget:
    """The expansion of one ADD so far: ``used`` bytes of file data written, never above
    ``limits.max_bytes`` (an entry that would pass it is refused before it is written)."""

    limits: ArchiveLimits = field(default_factory=ArchiveLimits)
    used: int = 0


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
                   owner: tuple[int, int] | None, budget: ArchiveBudget | None = None) -> bool:
    """Extract ``src`` (in ``src_root``, followed) into the directory ``dest`` of
    ``dst_root`` when it is an archive; False (nothing done) when it is not.  ``budget``
    is the ADD's (shared by its sources); default: a fresh one with the default limits."""
    path = resolve_in_root(src_root, src)
    if not os.path.lexists(path):
        return False
    with open_archive(path) as archive:
        if archive is None:
            return False
        target = resolve_in_root(dst_root, dest)
        make_dirs(target, dst_root, 0o755, owner)
        try:
            _Extractor(target, owner, src, budget or ArchiveBudget()).run(archive)
        except (tarfile.TarError, EOFError, lzma.LZMAError, zstandard.ZstdError) as err:
            raise LayerError(f"ADD {src}: corrupt archive: {err}",
                             hint="check the file is a complete tar archive") from None
    return True


def _clean(name: str) -> str:
    """An entry's name as a path below the root (``""`` for the root itself)."""
    return posixpath.normpath("/" + name).lstrip("/")


def _shown(name: str) -> str:
    """``name`` quoted for a message: escaped (newlines, undecodable bytes) and, when very
    long, cut with its length."""
    text = repr(name)
    return text if len(text) <= 100 else f"{text[:80]}...' ({len(name)} characters)"


_OS_HINTS: Final = {
    errno.ENAMETOOLONG: "names are limited to 255 bytes a component and 4096 a path; "
                        "rebuild the archive with shorter names",
    errno.ELOOP: "the archive's symlinks form a loop; fix them in the archive",
    errno.ENOTDIR: "a file (of the archive or already in the destination) stands where "
                   "the entry needs a directory; fix the archive or the destination",
}


class _Extractor:
    """Writes one archive's entries under ``root`` (a resolved, existing directory)."""

    def __init__(self, root: Path, owner: tuple[int, int] | None, label: str,
                 budget: ArchiveBudget) -> None:
        self.root = root
        self.real_root = os.path.realpath(root)
        self.owner = owner
        self.label = label
        self.budget = budget
        # Directories extracted, with their mtimes: set last, once their entries are in.
        self.dir_times: list[tuple[Path, int]] = []

    def run(self, archive: tarfile.TarFile) -> None:
        for member in archive:
            try:
                self._extract(archive, member)
            except OSError as err:
                hint = DISK_FULL_HINT if is_disk_full(err) else _OS_HINTS.get(err.errno or 0)
                raise self._error(member.name, f": {err.strerror or err}", hint) from None
        for path, mtime in reversed(self.dir_times):
            if self._still_here(path):
                os.utime(path, (mtime, mtime), follow_symlinks=False)

    def _error(self, name: str, why: str, hint: str | None) -> LayerError:
        return LayerError(f"ADD {self.label}: archive entry {_shown(name)}{why}", hint=hint)

    def _refuse(self, name: str, why: str) -> LayerError:
        return self._error(name, f" {why}", "fix the archive (or COPY it, to keep it as one "
                                            "file)")

    def _extract(self, archive: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        if member.type not in _HANDLED:  # GNU sparse is type S, 83
            raise self._error(member.name, f": unhandled tar header type {member.type[0]}",
                              _type_hint(member.type))
        relative = _clean(member.name)
        if not relative:  # the root: BuildKit keeps the destination as it is
            return
        path = self._place(member.name, relative)
        self._clear(path, member)
        if member.isdir():
            if not os.path.isdir(path):
                os.mkdir(path, 0o700)
            self.dir_times.append((path, int(member.mtime)))
        elif member.isreg():
            self._write(archive, member, path)
        elif member.issym():
            os.symlink(member.linkname, path)
        elif member.islnk():  # shares its target's inode, metadata included
            os.link(self._link_source(member), path, follow_symlinks=False)
            return
        else:
            os.mknod(path, member.mode | _TYPES[member.type],
                     os.makedev(member.devmajor, member.devminor))
        self._metadata(member, path)

    def _resolve(self, name: str, relative: str, follow_final: bool = True) -> Path:
        try:
            return resolve_in_root(self.root, relative, follow_final=follow_final)
        except SolveError:  # a symlink loop
            raise self._error(name, ": too many levels of symbolic links",
                              _OS_HINTS[errno.ELOOP]) from None

    def _place(self, name: str, relative: str) -> Path:
        """The host path of entry ``name``: its parent resolved in the root (symlinks
        followed inside it) and made when missing; its last component as written."""
        parent_name, _, leaf = relative.rpartition("/")
        parent = self._resolve(name, parent_name)
        missing: list[Path] = []
        here = parent
        while here != self.root and not os.path.lexists(here):
            missing.append(here)
            here = here.parent
        if not os.path.isdir(here):
            inside = "/" + str(here.relative_to(self.root))
            raise self._error(name, f": {_shown(inside)} is not a directory",
                              _OS_HINTS[errno.ENOTDIR])
        for directory in reversed(missing):
            os.mkdir(directory, 0o755)
            if self.owner is not None:
                os.chown(directory, *self.owner)
        return parent / leaf

    def _clear(self, path: Path, member: tarfile.TarInfo) -> None:
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return
        if stat.S_ISDIR(mode):
            if not member.isdir():
                shutil.rmtree(path)
        else:
            path.unlink()

    def _write(self, archive: tarfile.TarFile, member: tarfile.TarInfo, path: Path) -> None:
        self._reserve(member, path)
        reader = archive.extractfile(member)
        assert reader is not None
        with open(path, "xb") as writer:
            while chunk := reader.read(1 << 20):
                writer.write(chunk)

    def _reserve(self, member: tarfile.TarInfo, path: Path) -> None:
        """Count ``member``'s size against the ADD's limit, and check that its disk has
        room for a large one, before any of it is written."""
        limits, size = self.budget.limits, member.size
        total = self.budget.used + size
        if limits.max_bytes is not None and total > limits.max_bytes:
            raise self._error(
                member.name, f" ({human_size(size)}) would expand the ADD to "
                f"{human_size(total)}, past its limit of {human_size(limits.max_bytes)}",
                f"the archive may be a decompression bomb; if it is genuine, raise "
                f"{ADD_MAX_ENV} in the workers' environment (a size such as 64GB, or off)")
        if size >= limits.large_write:
            free = free_bytes(path.parent)
            if size > free:
                raise self._error(member.name, f" needs {human_size(size)} but its disk has "
                                  f"{human_size(free)} free", DISK_FULL_HINT)
        self.budget.used = total

    def _link_source(self, member: tarfile.TarInfo) -> Path:
        relative = _clean(member.linkname)
        source = self._resolve(member.name, relative, follow_final=False)
        if not relative or os.path.isdir(source) and not os.path.islink(source):
            raise self._refuse(member.name, f"hardlinks to the directory "
                                            f"{_shown(member.linkname)}")
        if not os.path.lexists(source):
            raise self._refuse(member.name, f"hardlinks to {_shown(member.linkname)}, which "
                                            "is not in the destination before it")
        return source

    def _metadata(self, member: tarfile.TarInfo, path: Path) -> None:
        owner = self.owner or (member.uid, member.gid)
        os.chown(path, *owner, follow_symlinks=False)
        if not member.issym():
            os.chmod(path, member.mode & 0o7777)
        if not member.isdir():
            mtime = int(member.mtime)
            os.utime(path, (mtime, mtime), follow_symlinks=False)

    def _still_here(self, path: Path) -> bool:
        """True when ``path`` is still a directory reached without a symlink (a later entry
        may have replaced it or a parent with a symlink leading anywhere)."""
        expected = os.path.join(self.real_root, path.relative_to(self.root))
        return os.path.realpath(path) == expected and os.path.isdir(path)


def _type_hint(kind: bytes) -> str:
    if kind == tarfile.GNUTYPE_SPARSE:
        return ("GNU sparse entries are refused, as BuildKit refuses them; re-create the "
                "archive without `tar --sparse` (or with --format=posix)")
    return "BuildKit refuses this kind of tar entry too; re-create the archive with plain tar"
