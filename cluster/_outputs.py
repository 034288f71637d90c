"""The client's end of its outputs: what the workers hand back over the session channel
(``output.write``/``output.close`` asks, docs/cluster.md), written by the client as its
own user.

Output ``index`` is the position in the client's own ``--output`` list:

- a file output (oci, docker, tar) is written sequentially (each write's ``offset`` must
  be the bytes written so far) to a temporary file beside ``dest``, renamed onto ``dest``
  at ``output.close`` (``dest=-``: straight to stdout);
- a ``docker`` output without ``dest`` (``--load``) is spooled to a temporary file and
  loaded into the client's Docker engine at ``output.close`` (cluster/_docker_engine.py);
- ``type=local`` (and ``type=oci``/``docker`` with ``tar=false``: the image layout as a
  directory) receives a tar stream, spooled, and unpacked into ``dest`` at
  ``output.close`` by ``extract_tar``: modes kept, owners never applied (the files belong
  to the user running the client, as BuildKit's local exporter does); a member whose name
  is absolute or climbs out (``..``), goes through a symlink, or a link whose target is
  outside ``dest`` is refused, as is a hard link to anything but a regular file inside.
  Symlink targets that are absolute are kept as they are (they name paths of the image's
  root, which is ``dest``); nothing is ever written through a symlink.

A failed or cancelled build calls ``abort``: temporary files go, ``dest`` is untouched.
A write at offset 0 of an output already (partly or wholly) received starts that output
over: an export whose worker died runs again and sends every output again (the same
bytes: the build is content-addressed).  Only stdout cannot be taken back: an output
sent there again is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, BinaryIO

from dockyard.scheduler._errors import ExportError
from dockyard.scheduler._progress import (
    Event,
    EventSink,
    VertexCompleted,
    VertexFailed,
    VertexLog,
    VertexStarted,
)

from ._build_options import OutputSpec
from ._docker_engine import DockerEngine

__all__ = ["MAX_WRITE_BYTES", "OutputWriters", "extract_tar"]

MAX_WRITE_BYTES = 4 * 1024 * 1024  # one output.write's data (docs/cluster.md)


class _FileWriter:
    """A file output: sequential writes into a temporary file, renamed at close."""

    def __init__(self, dest: str | None, stdout: BinaryIO) -> None:
        self.dest = dest  # None: stdout
        self._stdout = stdout
        self._file: IO[bytes] | None = None  # the temporary file, once opened
        self._temp: str | None = None  # its path
        self.written = 0  # bytes written so far (the next write's offset)

    def write(self, offset: int, data: bytes) -> None:
        if offset != self.written:
            raise ExportError(f"output {self._name()}: a write at offset {offset}, expected "
                              f"{self.written} (writes are sequential)")
        try:
            self._target().write(data)
        except OSError as exc:
            raise ExportError(f"cannot write output {self._name()}: "
                              f"{exc.strerror or exc}") from None
        self.written += len(data)

    def _target(self) -> IO[bytes]:
        if self.dest is None:
            return self._stdout
        if self._file is None:
            directory = os.path.dirname(self.dest) or "."
            fd, self._temp = tempfile.mkstemp(prefix=".dockyard-", dir=directory)
            self._file = os.fdopen(fd, "wb")
        return self._file

    def _name(self) -> str:
        return "stdout" if self.dest is None else repr(self.dest)

    def close(self) -> None:
        try:
            if self.dest is None:
                self._stdout.flush()
                return
            self._target().close()
            os.chmod(str(self._temp), 0o644)
            os.replace(str(self._temp), self.dest)
        except OSError as exc:
            raise ExportError(f"cannot write output {self._name()}: "
                              f"{exc.strerror or exc}") from None
        self._temp = None

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._temp)


class _LocalWriter:
    """A ``type=local`` output: the tar stream spooled, unpacked into ``dest`` at close."""

    def __init__(self, dest: str) -> None:
        self.dest = dest
        self._spool: IO[bytes] | None = None
        self.written = 0

    def write(self, offset: int, data: bytes) -> None:
        if offset != self.written:
            raise ExportError(f"output {self.dest!r}: a write at offset {offset}, expected "
                              f"{self.written} (writes are sequential)")
        if self._spool is None:
            self._spool = tempfile.TemporaryFile(prefix="dockyard-output-")  # noqa: SIM115
        self._spool.write(data)
        self.written += len(data)

    def close(self) -> None:
        spool = self._spool or tempfile.TemporaryFile(  # noqa: SIM115 -- closed below
            prefix="dockyard-output-")
        self._spool = None
        with spool:
            spool.seek(0)
            extract_tar(spool, Path(self.dest))

    def abort(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None


class _LoadWriter:
    """A ``docker`` output without ``dest`` (``--load``): the tar spooled, and loaded into
    the client's Docker engine at close (cluster/_docker_engine.py), shown as BuildKit's
    ``importing to docker`` step with the engine's ``Loaded image`` lines."""

    def __init__(self, index: int, engine: DockerEngine, events: EventSink | None) -> None:
        self._engine = engine
        self._events = events
        self._vertex = "sha256:" + hashlib.sha256(f"dockyard-load-{index}".encode()).hexdigest()
        self._spool: IO[bytes] | None = None
        self.written = 0

    def write(self, offset: int, data: bytes) -> None:
        if offset != self.written:
            raise ExportError(f"the image to load: a write at offset {offset}, expected "
                              f"{self.written} (writes are sequential)")
        if self._spool is None:
            self._spool = tempfile.TemporaryFile(prefix="dockyard-load-")  # noqa: SIM115
        try:
            self._spool.write(data)
        except OSError as exc:
            raise ExportError(f"cannot keep the image to load in a temporary file: "
                              f"{exc.strerror or exc}",
                              hint="free space in the temporary directory (TMPDIR)") from None
        self.written += len(data)

    def close(self) -> None:
        spool, self._spool = self._spool, None
        if spool is None:
            raise ExportError("the image to load came without any byte")
        name = "importing to docker"
        self._emit(VertexStarted(self._vertex, name, time.time()))
        started = time.monotonic()
        try:
            with spool:
                spool.seek(0)
                lines = self._engine.load(spool, self.written)
        except ExportError as error:
            self._emit(VertexFailed(self._vertex, name, error.message))
            raise
        for line in lines:
            self._emit(VertexLog(self._vertex, 1, line.encode() + b"\n"))
        self._emit(VertexCompleted(self._vertex, name, time.monotonic() - started))

    def _emit(self, event: Event) -> None:
        if self._events is not None:
            self._events.emit(event)

    def abort(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None


_Writer = _FileWriter | _LocalWriter | _LoadWriter


class OutputWriters:
    """The ``output.write``/``output.close`` handlers of one build's outputs."""

    def __init__(self, outputs: Sequence[OutputSpec], stdout: BinaryIO,
                 engine: DockerEngine | None = None, events: EventSink | None = None
                 ) -> None:
        self._outputs = tuple(outputs)  # the client's own --output list
        self._stdout = stdout
        self._engine = engine  # where the docker outputs without dest are loaded
        self._events = events  # the build's progress (a load's step is shown there)
        self._writers: dict[int, _Writer] = {}  # index -> its open writer
        self.closed: set[int] = set()  # indexes written completely

    def handlers(self) -> dict[str, Any]:
        return {"output.write": self.write, "output.close": self.close}

    def write(self, params: dict[str, Any]) -> None:
        offset, data = params.get("offset"), params.get("data")
        index = self._index(params, again=offset == 0)
        if type(offset) is not int or not isinstance(data, bytes):
            raise ExportError("an output.write without an integer offset and bytes data")
        if len(data) > MAX_WRITE_BYTES:
            raise ExportError(f"an output.write of {len(data)} bytes (at most "
                              f"{MAX_WRITE_BYTES})")
        if offset == 0:
            self._start_over(index)
        self._writer(index).write(offset, data)

    def _start_over(self, index: int) -> None:
        """Output ``index`` comes again from its start (a retried export): what came of
        it before is dropped."""
        writer = self._writers.get(index)
        if index not in self.closed and (writer is None or writer.written == 0):
            return  # its first write
        if self._outputs[index].to_stdout:
            raise ExportError(f"output {index} was sent again (the worker exporting it was "
                              "lost), but its first bytes already went to stdout",
                              hint="build again, or write the output to a file")
        self.closed.discard(index)
        if writer is not None:
            writer.abort()
            del self._writers[index]

    def close(self, params: dict[str, Any]) -> None:
        index = self._index(params)
        writer = self._writer(index)
        del self._writers[index]
        try:
            writer.close()
        except BaseException:
            writer.abort()
            raise
        self.closed.add(index)

    def abort(self) -> None:
        """Drop every output not closed yet (the build failed)."""
        for writer in self._writers.values():
            writer.abort()
        self._writers.clear()

    def _index(self, params: dict[str, Any], *, again: bool = False) -> int:
        """The output an ask names; ``again``: it may be closed (its start comes again)."""
        index = params.get("index")
        if type(index) is not int or not 0 <= index < len(self._outputs):
            raise ExportError(f"an output ask for output {index!r}, which this build does "
                              f"not have ({len(self._outputs)} outputs)")
        if index in self.closed and not again:
            raise ExportError(f"output {index} was already closed")
        spec = self._outputs[index]
        if spec.type not in ("local", "tar", "oci", "docker"):
            raise ExportError(f"output {index} is of type {spec.type!r}, which the client "
                              f"does not write")
        return index

    def _writer(self, index: int) -> _Writer:
        writer = self._writers.get(index)
        if writer is None:
            writer = self._writers[index] = self._new_writer(index)
        return writer

    def _new_writer(self, index: int) -> _Writer:
        spec = self._outputs[index]
        if spec.loads:
            if self._engine is None:
                raise ExportError(f"output {index} is to be loaded into a Docker engine, "
                                  "and this client was given none")
            return _LoadWriter(index, self._engine, self._events)
        if spec.type == "local" or not spec.tar:  # oci/docker tar=false: a layout directory
            return _LocalWriter(str(spec.dest))
        return _FileWriter(None if spec.to_stdout else str(spec.dest), self._stdout)


# --- unpacking a local output ----------------------------------------------------------


def _refuse(dest: Path, name: str, why: str) -> ExportError:
    return ExportError(f"the local output for {str(dest)!r} has a member {name!r} that "
                       f"{why}: refused", hint="this is a bug or an attack on the worker side")


def _member_parts(dest: Path, name: str) -> tuple[str, ...]:
    """The path components of member ``name`` (empty for the root itself)."""
    if name.startswith("/"):
        raise _refuse(dest, name, "is absolute")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise _refuse(dest, name, "climbs out with '..'")
    return parts


def _parent(dest: Path, name: str, parts: tuple[str, ...]) -> Path:
    """The member's directory, created as needed, never through a symlink."""
    path = dest
    for part in parts[:-1]:
        path = path / part
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            os.mkdir(path, 0o755)
            continue
        if not stat.S_ISDIR(info.st_mode):
            raise _refuse(dest, name, f"goes through {str(path)!r}, which is no directory")
    return path


def _clear(dest: Path, name: str, target: Path, is_dir: bool) -> bool:
    """Remove what stands at ``target`` unless it is a directory a directory member
    reuses; whether a directory is there now."""
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(info.st_mode):
        if is_dir:
            return True
        shutil.rmtree(target)
        return False
    os.unlink(target)
    return False


def _link_inside(dest: Path, name: str, link: str) -> None:
    """Refuse a relative symlink target that climbs out of ``dest``."""
    if link.startswith("/"):
        return  # a path of the image's root: dest, seen from inside
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), link))
    if resolved == ".." or resolved.startswith("../") or resolved.startswith("/"):
        raise _refuse(dest, name, f"links to {link!r}, outside the output")


def _hardlink_source(dest: Path, member: tarfile.TarInfo) -> Path:
    try:
        parts = _member_parts(dest, member.linkname)
    except ExportError:
        raise _refuse(dest, member.name, f"hard-links to {member.linkname!r}, outside the "
                                         f"output") from None
    if not parts:
        raise _refuse(dest, member.name, "hard-links to the output's root")
    source = dest.joinpath(*parts)
    for depth in range(1, len(parts)):
        if not stat.S_ISDIR(os.lstat(dest.joinpath(*parts[:depth])).st_mode):
            raise _refuse(dest, member.name, "hard-links through a symlink")
    try:
        info = os.lstat(source)
    except FileNotFoundError:
        raise _refuse(dest, member.name, f"hard-links to {member.linkname!r}, which the "
                                         f"output does not hold") from None
    if not stat.S_ISREG(info.st_mode):
        raise _refuse(dest, member.name, "hard-links to something that is no regular file")
    return source


def _write_file(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
    source = tar.extractfile(member)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        if source is not None:
            shutil.copyfileobj(source, out, 1024 * 1024)
        os.fchmod(out.fileno(), member.mode & 0o7777)


def _extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path,
                    dirs: list[tuple[Path, tarfile.TarInfo]]) -> None:
    parts = _member_parts(dest, member.name)
    if not parts:
        return  # the root itself: dest keeps the user's own mode
    target = _parent(dest, member.name, parts) / parts[-1]
    if member.issym():
        _link_inside(dest, member.name, member.linkname)
    source = _hardlink_source(dest, member) if member.islnk() else None
    exists = _clear(dest, member.name, target, member.isdir())
    if member.isdir():
        if not exists:
            os.mkdir(target, 0o700)
        dirs.append((target, member))
    elif member.isreg():
        _write_file(tar, member, target)
    elif member.issym():
        os.symlink(member.linkname, target)
    elif source is not None:
        os.link(source, target, follow_symlinks=False)
        return  # the same inode as its source: its times are the source's
    else:
        return  # devices and fifos: not made by an unprivileged client
    os.utime(target, (member.mtime, member.mtime), follow_symlinks=False)


def extract_tar(stream: IO[bytes], dest: Path) -> None:
    """Unpack the tar ``stream`` into ``dest`` (created if missing), as the module
    docstring says; a refused member is an ``ExportError`` (what came before it stays)."""
    try:
        dest.mkdir(parents=True, exist_ok=True)
        dirs: list[tuple[Path, tarfile.TarInfo]] = []
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                _extract_member(tar, member, dest, dirs)
        for path, member in reversed(dirs):  # modes last: a read-only dir still got filled
            os.chmod(path, member.mode & 0o7777)
            os.utime(path, (member.mtime, member.mtime))
    except tarfile.TarError as exc:
        raise ExportError(f"the local output for {str(dest)!r} is not a valid tar: "
                          f"{exc}") from None
    except OSError as exc:
        raise ExportError(f"cannot write the local output {str(dest)!r}: "
                          f"{exc.strerror or exc} ({exc.filename})") from None
