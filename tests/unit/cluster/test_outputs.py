"""The client's output writers (cluster/_outputs.py): file outputs written sequentially,
``type=local`` tar streams unpacked as the client's user, hostile tars refused."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from dockyard.cluster._build_options import OutputSpec
from dockyard.cluster._outputs import MAX_WRITE_BYTES, OutputWriters, extract_tar
from dockyard.scheduler._errors import ExportError

Member = tuple[str, bytes | None, Callable[[tarfile.TarInfo], None] | None]


def _tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _file(name: str, data: bytes = b"x", mode: int = 0o644, uid: int = 0) -> tuple[
        tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.uid, info.gid, info.mtime = len(data), mode, uid, uid, 1000
    return info, data


def _special(name: str, kind: bytes, link: str = "", mode: int = 0o755) -> tuple[
        tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = kind, link, mode, 2000
    return info, None


def _dir(name: str, mode: int = 0o755) -> tuple[tarfile.TarInfo, None]:
    return _special(name, tarfile.DIRTYPE, mode=mode)


def _symlink(name: str, target: str) -> tuple[tarfile.TarInfo, None]:
    return _special(name, tarfile.SYMTYPE, target, 0o777)


def _hardlink(name: str, target: str) -> tuple[tarfile.TarInfo, None]:
    return _special(name, tarfile.LNKTYPE, target)


def _extract(tmp_path: Path, data: bytes) -> Path:
    dest = tmp_path / "out"
    extract_tar(io.BytesIO(data), dest)
    return dest


def test_a_tree_is_unpacked_with_modes_and_links(tmp_path: Path) -> None:
    dest = _extract(tmp_path, _tar(
        _dir("./"), _dir("bin"), _file("bin/busybox", b"elf", 0o4755, uid=4321),
        _symlink("bin/sh", "/bin/busybox"), _symlink("bin/ls", "busybox"),
        _hardlink("bin/cat", "bin/busybox"), _dir("ro", 0o555), _file("ro/f", b"r", 0o444),
        _special("dev/null", tarfile.CHRTYPE)))
    busybox = dest / "bin" / "busybox"
    assert busybox.read_bytes() == b"elf"
    assert stat.S_IMODE(busybox.stat().st_mode) == 0o4755
    assert busybox.stat().st_uid == os.getuid(), "never chowned to the tar's owner"
    assert os.readlink(dest / "bin" / "sh") == "/bin/busybox"
    assert os.readlink(dest / "bin" / "ls") == "busybox"
    assert os.path.samefile(dest / "bin" / "cat", busybox)
    assert stat.S_IMODE((dest / "ro").stat().st_mode) == 0o555
    assert (dest / "ro" / "f").read_bytes() == b"r"
    assert (dest / "bin" / "busybox").stat().st_mtime == 1000
    assert not (dest / "dev" / "null").exists()
    os.chmod(dest / "ro", 0o755)  # so tmp_path can be removed


HOSTILE: list[tuple[str, bytes, str]] = [
    ("absolute", _tar(_file("/etc/evil")), "'/etc/evil' that is absolute"),
    ("dotdot", _tar(_file("a/../../evil")), "'a/../../evil' that climbs out with '..'"),
    ("symlink-out", _tar(_symlink("l", "../../etc")), "'l' that links to '../../etc', "
                                                        "outside the output"),
    ("through-symlink", _tar(_symlink("l", "/tmp"), _file("l/evil")),
     "'l/evil' that goes through '{dest}/l', which is no directory"),
    ("hardlink-out", _tar(_hardlink("h", "../../etc/passwd")),
     "'h' that hard-links to '../../etc/passwd', outside the output"),
    ("hardlink-absolute", _tar(_hardlink("h", "/etc/passwd")),
     "'h' that hard-links to '/etc/passwd', outside the output"),
    ("hardlink-to-symlink", _tar(_symlink("l", "/etc/passwd"), _hardlink("h", "l")),
     "'h' that hard-links to something that is no regular file"),
    ("hardlink-missing", _tar(_hardlink("h", "nothing")),
     "'h' that hard-links to 'nothing', which the output does not hold"),
]


@pytest.mark.parametrize(("data", "why"), [(d, w) for _, d, w in HOSTILE],
                         ids=[name for name, _, _ in HOSTILE])
def test_hostile_tars_are_refused(tmp_path: Path, data: bytes, why: str) -> None:
    dest = tmp_path / "out"
    with pytest.raises(ExportError) as caught:
        extract_tar(io.BytesIO(data), dest)
    why = why.format(dest=dest)
    assert caught.value.message == (f"the local output for '{dest}' has a member {why}: "
                                    f"refused")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "nothing written outside"


def test_a_broken_tar_is_an_export_error(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="is not a valid tar"):
        extract_tar(io.BytesIO(_tar(_file("a", b"x" * 5000))[:1000]), tmp_path / "out")


# --- the handlers ----------------------------------------------------------------------


def _writers(tmp_path: Path, *outputs: OutputSpec) -> tuple[OutputWriters, io.BytesIO]:
    stdout = io.BytesIO()
    return OutputWriters(outputs, stdout), stdout  # type: ignore[arg-type]


def test_file_outputs_are_written_in_order_and_appear_at_close(tmp_path: Path) -> None:
    dest = tmp_path / "image.tar"
    writers, stdout = _writers(tmp_path, OutputSpec("oci", str(dest)), OutputSpec("tar", "-"))
    writers.write({"index": 0, "offset": 0, "data": b"abc"})
    writers.write({"index": 1, "offset": 0, "data": b"to stdout"})
    writers.write({"index": 0, "offset": 3, "data": b"def"})
    assert not dest.exists(), "dest appears whole, at close"
    writers.close({"index": 0})
    writers.close({"index": 1})
    assert dest.read_bytes() == b"abcdef"
    assert stdout.getvalue() == b"to stdout"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.tar"]


def test_local_output_is_unpacked_at_close(tmp_path: Path) -> None:
    data = _tar(_file("hello", b"world"))
    writers, _ = _writers(tmp_path, OutputSpec("local", str(tmp_path / "dir")))
    writers.write({"index": 0, "offset": 0, "data": data[:700]})
    writers.write({"index": 0, "offset": 700, "data": data[700:]})
    writers.close({"index": 0})
    assert (tmp_path / "dir" / "hello").read_bytes() == b"world"


def test_abort_leaves_nothing(tmp_path: Path) -> None:
    writers, _ = _writers(tmp_path, OutputSpec("docker", str(tmp_path / "i.tar")),
                          OutputSpec("local", str(tmp_path / "dir")))
    writers.write({"index": 0, "offset": 0, "data": b"half"})
    writers.write({"index": 1, "offset": 0, "data": b"half"})
    writers.abort()
    assert list(tmp_path.iterdir()) == []


REFUSED_ASKS = [
    ({"index": 5, "offset": 0, "data": b""},
     "an output ask for output 5, which this build does not have (2 outputs)"),
    ({"index": "0", "offset": 0, "data": b""},
     "an output ask for output '0', which this build does not have (2 outputs)"),
    ({"index": 1, "offset": 0, "data": b""},
     "output 1 is of type 'image', which the client does not write"),
    ({"index": 0, "offset": 4, "data": b""},
     "output {dest}: a write at offset 4, expected 0 (writes are sequential)"),
    ({"index": 0, "offset": 0, "data": "text"},
     "an output.write without an integer offset and bytes data"),
    ({"index": 0, "offset": 0, "data": b"x" * (MAX_WRITE_BYTES + 1)},
     f"an output.write of {MAX_WRITE_BYTES + 1} bytes (at most {MAX_WRITE_BYTES})"),
]


@pytest.mark.parametrize(("params", "message"), REFUSED_ASKS)
def test_refused_asks(tmp_path: Path, params: dict[str, object], message: str) -> None:
    dest = tmp_path / "i.tar"
    writers, _ = _writers(tmp_path, OutputSpec("tar", str(dest)),
                          OutputSpec("image", None, ("r/i",)))
    with pytest.raises(ExportError) as caught:
        writers.write(params)  # type: ignore[arg-type]
    assert caught.value.message == message.format(dest=repr(str(dest)))


def test_a_closed_output_takes_no_more(tmp_path: Path) -> None:
    writers, _ = _writers(tmp_path, OutputSpec("tar", str(tmp_path / "t")))
    writers.close({"index": 0})
    assert (tmp_path / "t").read_bytes() == b""
    with pytest.raises(ExportError, match="output 0 was already closed"):
        writers.write({"index": 0, "offset": 1, "data": b"x"})
    with pytest.raises(ExportError, match="output 0 was already closed"):
        writers.close({"index": 0})


@pytest.mark.parametrize("closed", [False, True])
def test_an_output_sent_again_from_its_start_replaces_the_first(tmp_path: Path,
                                                                closed: bool) -> None:
    """An export whose worker died runs again and sends its outputs again: a write at
    offset 0 starts the output over, whether the first was closed or half sent."""
    dest = tmp_path / "t.tar"
    writers, _ = _writers(tmp_path, OutputSpec("tar", str(dest)))
    writers.write({"index": 0, "offset": 0, "data": b"first "})
    if closed:
        writers.close({"index": 0})
    writers.write({"index": 0, "offset": 0, "data": b"again"})
    writers.close({"index": 0})
    assert dest.read_bytes() == b"again"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".dockyard-")] == []


def test_an_output_to_stdout_cannot_be_sent_again(tmp_path: Path) -> None:
    writers, stdout = _writers(tmp_path, OutputSpec("tar", "-"))
    writers.write({"index": 0, "offset": 0, "data": b"first"})
    with pytest.raises(ExportError, match="its first bytes already went to stdout"):
        writers.write({"index": 0, "offset": 0, "data": b"again"})
