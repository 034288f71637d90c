"""ADD's auto-extraction on real archives: each compression told apart by content, a
non-archive copied as a file, hostile archives (escaping names, symlinks and hardlinks,
odd names and types) as BuildKit treats them, and the bounds on what an ADD expands to."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard
from workers_helpers import tree_listing

from dockyard.scheduler._errors import LayerError, SolveError
from dockyard.scheduler._graph import Copy
from dockyard.workers._archive import LARGE_WRITE, ArchiveLimits
from dockyard.workers._disk import DISK_FULL_HINT
from dockyard.workers._fileops import apply_file_actions


def target_root(tmp: Path) -> Path:
    root = tmp / "target"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/:/bin/sh\n")
    return root


BASE = {"/etc", "/etc/passwd"}  # what target_root makes: left out of listings


def _entry(kind: str, name: str, data: str = "", link: str = "", mode: int = 0o644,
           owner: tuple[int, int] = (0, 0)) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = {"f": tarfile.REGTYPE, "d": tarfile.DIRTYPE, "l": tarfile.SYMTYPE,
                 "h": tarfile.LNKTYPE, "p": tarfile.FIFOTYPE, "c": tarfile.CONTTYPE}[kind]
    info.mode, (info.uid, info.gid), info.linkname = mode, owner, link
    info.mtime = 1_600_000_000
    info.size = len(data.encode())
    return info, data.encode()


SIMPLE = [_entry("d", "pkg", mode=0o750, owner=(7, 8)),
          _entry("f", "pkg/a", "alpha", mode=0o4755, owner=(1000, 1000)),
          _entry("l", "pkg/l", link="a"), _entry("h", "pkg/h", link="pkg/a"),
          _entry("p", "pkg/fifo", mode=0o600)]
SIMPLE_LISTING = ["d /dst 755 0:0", "d /dst/pkg 750 7:8",
                  "f /dst/pkg/a 4755 1000:1000 5 links=2",
                  "f /dst/pkg/h 4755 1000:1000 5 links=2", "l /dst/pkg/l -> a 0:0",
                  "f /dst/pkg/fifo 600 0:0 0"]


def _tar(entries: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT,
                      errors="surrogateescape") as archive:  # names as bytes, as tar's
        for info, data in entries:
            archive.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


COMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "plain": lambda raw: raw,
    "gzip": lambda raw: _with_mode("w:gz", raw),
    "bzip2": lambda raw: _with_mode("w:bz2", raw),
    "xz": lambda raw: _with_mode("w:xz", raw),
    "zstd": lambda raw: zstandard.ZstdCompressor().compress(raw),
}


def _with_mode(mode: Any, raw: bytes) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(raw)) as src, \
            tarfile.open(fileobj=out, mode=mode) as dst:
        for member in src:
            dst.addfile(member, src.extractfile(member) if member.isreg() else None)
    return out.getvalue()


def _add(tmp_path: Path, data: bytes, name: str = "archive.bin", **kwargs: object) -> Path:
    context = tmp_path / "ctx"
    context.mkdir()
    (context / name).write_bytes(data)
    target = target_root(tmp_path)
    action = Copy(1, "/" + name, "/dst/", attempt_unpack=True, **kwargs)  # type: ignore[arg-type]
    apply_file_actions([action], target, [target, context])
    return target


@pytest.mark.parametrize("compression", sorted(COMPRESS))
def test_archives_are_extracted(tmp_path: Path, compression: str) -> None:
    target = _add(tmp_path, COMPRESS[compression](_tar(SIMPLE)))
    assert tree_listing(target, BASE) == sorted(SIMPLE_LISTING)
    assert os.lstat(target / "dst/pkg/a").st_mtime == 1_600_000_000


def test_chown_applies_to_every_entry(tmp_path: Path) -> None:
    target = _add(tmp_path, _tar(SIMPLE[:3]), chown="app")
    assert tree_listing(target, BASE) == sorted([
        "d /dst 755 1000:1000", "d /dst/pkg 750 1000:1000",
        "f /dst/pkg/a 4755 1000:1000 5", "l /dst/pkg/l -> a 1000:1000"])


@pytest.mark.parametrize("data", [b"just text\n", b"", b"\x1f\x8bnot really gzip",
                                  b"\0" * 1024], ids=["text", "empty", "bad-gzip", "zeros"])
def test_non_archives_are_copied(tmp_path: Path, data: bytes) -> None:
    target = _add(tmp_path, data, name="f.tar.gz")
    assert tree_listing(target, BASE) == ["d /dst 755 0:0", f"f /dst/f.tar.gz 644 0:0 {len(data)}"]


def test_without_attempt_unpack_an_archive_is_a_file(tmp_path: Path) -> None:
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "a.tar").write_bytes(_tar(SIMPLE))
    target = target_root(tmp_path)
    apply_file_actions([Copy(1, "/a.tar", "/dst/")], target, [target, context])
    assert tree_listing(target, BASE) == ["d /dst 755 0:0",
                                          f"f /dst/a.tar 644 0:0 {len(_tar(SIMPLE))}"]


# --- hostile archives ----------------------------------------------------------------
# What BuildKit makes of each (Docker 20.10's, which untars in a chroot at the
# destination; asked with `docker build` on the oracle daemon of tests/oracle): names are
# cleaned against the destination, symlinks are made as written and followed inside it.
# Where 20.10 failed with "no such file or directory" (writing through a symlink to a
# directory the archive lacks: relative-out, var-run, absolute-etc), BuildKit's newer
# unpacker (and moby/go-archive's TestUntarThroughAbsoluteSymlink) makes the missing
# directories inside the destination, as dockyard does.

# (id, entries, the tree under the target, or the exact error message)
HOSTILE: list[tuple[str, list[tuple[tarfile.TarInfo, bytes]], list[str] | str]] = [
    ("dotdot", [_entry("f", "../evil", "x"), _entry("f", "a/../../evil2", "y"),
                _entry("f", "../../../up/deep", "z")],
     ["d /dst 755 0:0", "f /dst/evil 644 0:0 1", "f /dst/evil2 644 0:0 1",
      "d /dst/up 755 0:0", "f /dst/up/deep 644 0:0 1"]),
    ("absolute", [_entry("f", "/etc/x", "abs")],
     ["d /dst 755 0:0", "d /dst/etc 755 0:0", "f /dst/etc/x 644 0:0 3"]),
    ("symlink-relative-out", [_entry("l", "a/up", link="../../../etc"),
                              _entry("f", "a/up/passwd", "pw")],
     ["d /dst 755 0:0", "d /dst/a 755 0:0", "l /dst/a/up -> ../../../etc 0:0",
      "d /dst/etc 755 0:0", "f /dst/etc/passwd 644 0:0 2"]),
    ("symlink-absolute-var-run", [_entry("d", "var", mode=0o755),
                                  _entry("l", "var/run", link="/run"),
                                  _entry("f", "var/run/x", "x"),
                                  _entry("f", "var/run/sub/y", "y")],
     ["d /dst 755 0:0", "d /dst/run 755 0:0", "d /dst/run/sub 755 0:0",
      "f /dst/run/sub/y 644 0:0 1", "f /dst/run/x 644 0:0 1", "d /dst/var 755 0:0",
      "l /dst/var/run -> /run 0:0"]),
    ("symlink-absolute-etc", [_entry("l", "sys", link="/etc"),
                              _entry("f", "sys/passwd", "pwned")],
     ["d /dst 755 0:0", "d /dst/etc 755 0:0", "f /dst/etc/passwd 644 0:0 5",
      "l /dst/sys -> /etc 0:0"]),
    ("dir-over-symlink", [_entry("l", "d", link="/etc"), _entry("d", "d", mode=0o700),
                          _entry("f", "d/x", "x")],
     ["d /dst 755 0:0", "d /dst/d 700 0:0", "f /dst/d/x 644 0:0 1"]),
    ("file-over-dir", [_entry("d", "d", mode=0o755), _entry("f", "d/x", "x"),
                       _entry("f", "d", "file")],
     ["d /dst 755 0:0", "f /dst/d 644 0:0 4"]),
    ("root-entry-skipped", [_entry("d", "./", mode=0o700, owner=(5, 5)),
                            _entry("f", "./x", "x")],
     ["d /dst 755 0:0", "f /dst/x 644 0:0 1"]),
    ("symlink-loop", [_entry("l", "a", link="b"), _entry("l", "b", link="a"),
                      _entry("f", "a/x", "x")],
     "ADD /archive.bin: archive entry 'a/x': too many levels of symbolic links"),
    ("through-a-file", [_entry("f", "f", "x"), _entry("f", "f/x", "x")],
     "ADD /archive.bin: archive entry 'f/x': '/f' is not a directory"),
    ("hardlink-out-missing", [_entry("h", "h", link="../../etc/passwd")],
     "ADD /archive.bin: archive entry 'h' hardlinks to '../../etc/passwd', which is not "
     "in the destination before it"),
    ("hardlink-dotdot-present", [_entry("f", "f", "ff"), _entry("h", "sub/h", link="../../f")],
     ["d /dst 755 0:0", "f /dst/f 644 0:0 2 links=2", "d /dst/sub 755 0:0",
      "f /dst/sub/h 644 0:0 2 links=2"]),
    ("hardlink-directory", [_entry("d", "d", mode=0o755), _entry("h", "h", link="d")],
     "ADD /archive.bin: archive entry 'h' hardlinks to the directory 'd'"),
    ("hardlink-to-absolute-symlink", [_entry("l", "evil", link="/etc/passwd"),
                                      _entry("h", "grab", link="evil")],
     ["d /dst 755 0:0", "l /dst/evil -> /etc/passwd 0:0", "l /dst/grab -> /etc/passwd 0:0"]),
    ("hardlink-through-absolute-symlink", [_entry("d", "run", mode=0o755),
                                           _entry("l", "var/run", link="/run"),
                                           _entry("f", "var/run/src", "s"),
                                           _entry("h", "var/run/link", link="var/run/src")],
     ["d /dst 755 0:0", "d /dst/run 755 0:0", "f /dst/run/link 644 0:0 1 links=2",
      "f /dst/run/src 644 0:0 1 links=2", "d /dst/var 755 0:0",
      "l /dst/var/run -> /run 0:0"]),
    ("name-with-newline", [_entry("f", "new\nline", "n")],
     ["d /dst 755 0:0", "f /dst/new\nline 644 0:0 1"]),
    ("name-not-utf8", [_entry("f", "caf\udce9", "c")],
     ["d /dst 755 0:0", "f /dst/caf\udce9 644 0:0 1"]),
    ("name-component-too-long", [_entry("f", "x" * 300, "l")],
     f"ADD /archive.bin: archive entry {repr('x' * 300)[:80]}...' (300 characters): "
     "File name too long"),
    ("name-path-too-long", [_entry("f", "/".join(["y" * 200] * 25), "l")],
     f"ADD /archive.bin: archive entry {repr('y' * 200)[:80]}...' (5024 characters): "
     "File name too long"),
    ("contiguous-type", [_entry("c", "c", "x")],
     "ADD /archive.bin: archive entry 'c': unhandled tar header type 55"),
]


@pytest.mark.parametrize(("entries", "expected"), [e[1:] for e in HOSTILE],
                         ids=[e[0] for e in HOSTILE])
def test_hostile_archives(tmp_path: Path, entries: list[tuple[tarfile.TarInfo, bytes]],
                          expected: list[str] | str) -> None:
    passwd = target_root(tmp_path) / "etc/passwd"
    before = passwd.read_bytes(), os.lstat(passwd)
    shutil.rmtree(tmp_path / "target")
    if isinstance(expected, str):
        with pytest.raises(LayerError) as caught:
            _add(tmp_path, _tar(entries))
        assert caught.value.message == expected
        assert caught.value.hint
    else:
        assert tree_listing(_add(tmp_path, _tar(entries)), BASE) == sorted(expected)
    after = os.lstat(passwd)  # the rootfs' own /etc/passwd: untouched
    assert (passwd.read_bytes(), after.st_mode, after.st_nlink) == (
        before[0], before[1].st_mode, before[1].st_nlink)


def test_symlink_destination_is_followed_by_a_later_copy(tmp_path: Path) -> None:
    """BuildKit's testSymlinkDestination: ADD an archive holding ``symlink ->
    ../tmp/symlink-target``, then COPY into ``/symlink/``."""
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "t.tar").write_bytes(_tar([_entry("l", "symlink",
                                                 link="../tmp/symlink-target")]))
    (context / "foo").write_text("content0")
    target = target_root(tmp_path)
    apply_file_actions([Copy(1, "/t.tar", "/", attempt_unpack=True),
                        Copy(1, "/foo", "/symlink/")], target, [target, context])
    assert os.readlink(target / "symlink") == "../tmp/symlink-target"
    assert (target / "tmp/symlink-target/foo").read_text() == "content0"


def test_a_replaced_directory_keeps_outside_mtimes(tmp_path: Path) -> None:
    """Directory mtimes are set last: a directory since replaced by a symlink (to a host
    path) is left alone, never the directory the symlink leads to."""
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    os.utime(victim / "sub", (1000, 1000))
    _add(tmp_path, _tar([_entry("d", "d", mode=0o755), _entry("d", "d/sub", mode=0o755),
                         _entry("l", "d", link=str(victim))]))
    assert os.stat(victim / "sub").st_mtime == 1000


def test_truncated_archive_is_a_layer_error(tmp_path: Path) -> None:
    big = _tar([_entry("f", "big", "y" * 100_000)])
    with pytest.raises(LayerError, match="corrupt archive"):
        _add(tmp_path, big[:5000])
# --- sparse files, and the bounds on what an ADD expands to -------------------------------

def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def _gnu_sparse_tar(name: str, size: int) -> bytes:
    """A tar holding one GNU sparse entry (type S, as ``tar --sparse --format=gnu``
    writes it) of ``size`` bytes, all of them a hole."""
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.GNUTYPE_SPARSE, 0o644, 1_600_000_000
    header = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    header[386:398], header[398:410] = _octal(size, 12), _octal(0, 12)  # one map entry
    header[483:495] = _octal(size, 12)  # the real size
    header[148:156] = b" " * 8
    header[148:155] = b"%06o\0" % tarfile.calc_chksums(bytes(header))[0]
    return bytes(header) + b"\0" * 1024


def _pax_sparse_tar(name: str, size: int, data: bytes) -> bytes:
    """A tar holding one PAX sparse file (format 1.0, as ``tar --sparse --format=posix``
    writes it) of ``size`` bytes: a hole, then ``data`` at its end."""
    sparse_map = f"1\n{size - len(data)}\n{len(data)}\n".encode().ljust(512, b"\0")
    info = tarfile.TarInfo(f"GNUSparseFile.0/{name}")
    info.mode, info.mtime, info.size = 0o644, 1_600_000_000, 512 + len(data)
    info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                        "GNU.sparse.name": name, "GNU.sparse.realsize": str(size)}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        archive.addfile(info, io.BytesIO(sparse_map + data))
    return buffer.getvalue()


def test_a_gnu_sparse_entry_is_refused_as_buildkit_does(tmp_path: Path) -> None:
    """The issue's archive: 2 GiB of hole in a gzip of ~100 bytes.  BuildKit: "unhandled
    tar header type 83"; nothing of it is written."""
    data = gzip.compress(_gnu_sparse_tar("big", 2 * 1024**3), mtime=0)
    assert len(data) < 129
    with pytest.raises(LayerError) as caught:
        _add(tmp_path, data, name="big.tar.gz")
    assert caught.value.message == ("ADD /big.tar.gz: archive entry 'big': unhandled tar "
                                    "header type 83")
    assert "tar --sparse" in (caught.value.hint or "")
    assert tree_listing(tmp_path / "target", BASE) == ["d /dst 755 0:0"]


def test_a_pax_sparse_file_is_written_out_in_full(tmp_path: Path) -> None:
    target = _add(tmp_path, _pax_sparse_tar("s", 1 << 20, b"END"))
    assert tree_listing(target, BASE) == ["d /dst 755 0:0", f"f /dst/s 644 0:0 {1 << 20}"]
    assert (target / "dst/s").read_bytes() == b"\0" * ((1 << 20) - 3) + b"END"


def _tar_of_size(name: str, size: int) -> bytes:
    info, _ = _entry("f", name)
    info.size = size
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        archive.addfile(info, io.BytesIO(bytes(size)))
    return buffer.getvalue()


def _add_all(tmp_path: Path, archives: dict[str, bytes], limits: ArchiveLimits) -> Path:
    """ADD ``archives`` (name -> bytes) to /dst/ in one op, under ``limits``."""
    context = tmp_path / "ctx"
    context.mkdir()
    for name, data in archives.items():
        (context / name).write_bytes(data)
    target = target_root(tmp_path)
    actions = [Copy(1, "/" + name, "/dst/", attempt_unpack=True) for name in archives]
    apply_file_actions(actions, target, [target, context], archive_limits=limits)
    return target


def test_an_archive_bomb_is_stopped_before_its_entry_is_written(tmp_path: Path) -> None:
    bomb = gzip.compress(_tar_of_size("zeros", 64 << 20), mtime=0)
    assert len(bomb) < 128 << 10
    with pytest.raises(LayerError) as caught:
        _add_all(tmp_path, {"bomb.tar.gz": bomb}, ArchiveLimits(max_bytes=8 << 20))
    assert caught.value.message == ("ADD /bomb.tar.gz: archive entry 'zeros' (64MiB) would "
                                    "expand the ADD to 64MiB, past its limit of 8MiB")
    assert "DOCKYARD_ADD_MAX" in (caught.value.hint or "")
    assert not (tmp_path / "target/dst/zeros").exists()


def test_the_limit_is_per_add_over_all_its_archives(tmp_path: Path) -> None:
    five = {f"{n}.tar": _tar_of_size(f"f{n}", 5 << 20) for n in "ab"}
    with pytest.raises(LayerError, match=r"'fb' \(5MiB\) would expand the ADD to 10MiB, "
                                         r"past its limit of 8MiB"):
        _add_all(tmp_path, five, ArchiveLimits(max_bytes=8 << 20))
    shutil.rmtree(tmp_path / "target")
    shutil.rmtree(tmp_path / "ctx")
    target = _add_all(tmp_path, five, ArchiveLimits(max_bytes=10 << 20))
    assert (target / "dst/fb").stat().st_size == 5 << 20


def test_a_large_entry_checks_the_free_space_first(tmp_path: Path) -> None:
    """A PAX sparse file of 1 TiB (an archive of a few KiB) with no size limit: refused by
    the free-space check before anything is written."""
    huge = _pax_sparse_tar("huge", 1 << 40, b"x")
    with pytest.raises(LayerError) as caught:
        _add_all(tmp_path, {"huge.tar": huge}, ArchiveLimits(max_bytes=None))
    assert caught.value.message.startswith("ADD /huge.tar: archive entry 'huge' needs 1TiB "
                                           "but its disk has ")
    assert caught.value.hint == DISK_FULL_HINT
    assert not (tmp_path / "target/dst/huge").exists()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, mounted for the test (as root, as the workers' tests run)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.parametrize(("large_write", "message"), [
    (1, "ADD /two.tar: archive entry 'two' needs 2MiB but its disk has 1MiB free"),
    (LARGE_WRITE, "ADD /two.tar: archive entry 'two': No space left on device"),
], ids=["checked-before", "full-while-writing"])
def test_a_full_disk_is_a_layer_error_with_a_hint_that_fits(
        tmp_path: Path, small_disk: Path, large_write: int, message: str) -> None:
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "two.tar").write_bytes(_tar_of_size("two", 2 << 20))
    limits = ArchiveLimits(large_write=large_write)
    with pytest.raises(LayerError) as caught:
        apply_file_actions([Copy(1, "/two.tar", "/", attempt_unpack=True)], small_disk,
                           [small_disk, context], archive_limits=limits)
    assert (caught.value.message, caught.value.hint) == (message, DISK_FULL_HINT)


def test_a_file_added_onto_a_full_disk_gets_the_disk_full_hint(tmp_path: Path,
                                                               small_disk: Path) -> None:
    """A file that is no archive is copied; the copy's ENOSPC says what to do too."""
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "two.bin").write_bytes(b"\1" * (2 << 20))
    with pytest.raises(SolveError) as caught:
        apply_file_actions([Copy(1, "/two.bin", "/", attempt_unpack=True)], small_disk,
                           [small_disk, context])
    assert caught.value.message == "copy /two.bin -> /: No space left on device"
    assert caught.value.hint == DISK_FULL_HINT
