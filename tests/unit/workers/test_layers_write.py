"""The differ on hand-made upper dirs: what each overlay artefact becomes in the tar, the
order, the header fields, determinism, SOURCE_DATE_EPOCH, the three compressions, and the
round trip through ``unpack_layer``.  (A real overlay mount: tests/integration/workers.)"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, cast

import pytest
import zstandard

from dockyard.cache_backends._records import GZIP_LAYER, ZSTD_LAYER, LayerDescriptor
from dockyard.scheduler._errors import LayerError
from dockyard.workers._disk import DISK_FULL_HINT
from dockyard.workers._layers import is_empty_diff, unpack_layer, write_layer

_CAP_NET_RAW = bytes.fromhex("0100000200200000000000000000000000000000")
_T = 1_700_000_000

Maker = Callable[[Path], None]


def _file(rel: str, data: bytes = b"", mode: int = 0o644) -> Maker:
    def make(root: Path) -> None:
        (root / rel).write_bytes(data)
        (root / rel).chmod(mode)
    return make


def _dir(rel: str, *, opaque: str | None = None) -> Maker:
    def make(root: Path) -> None:
        (root / rel).mkdir()
        if opaque:
            os.setxattr(root / rel, opaque, b"y")
    return make


def _whiteout(rel: str) -> Maker:
    return lambda root: os.mknod(root / rel, stat.S_IFCHR, os.makedev(0, 0))


def _symlink(rel: str, target: str) -> Maker:
    return lambda root: (root / rel).symlink_to(target)


def _hardlink(rel: str, target: str) -> Maker:
    return lambda root: os.link(root / target, root / rel)


def _build(root: Path, makers: list[Maker]) -> Path:
    root.mkdir(exist_ok=True)
    for make in makers:
        make(root)
    for path in [root, *root.rglob("*")]:
        os.utime(path, (_T, _T), follow_symlinks=False)
    return root


def _entries(blob: bytes) -> list[str]:
    """``type name [-> link]`` per tar member, in order."""
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:*") as tar:
        return [f"{m.type.decode()} {m.name}" + (f" -> {m.linkname}" if m.linkname else "")
                for m in tar]


def _export(upper: Path, **kwargs: object) -> tuple[bytes, LayerDescriptor]:
    out = io.BytesIO()
    desc = write_layer(upper, out, **kwargs)  # type: ignore[arg-type]
    return out.getvalue(), desc


CASES: list[tuple[str, list[Maker], list[str]]] = [
    ("files-sorted-depth-first", [_dir("b"), _file("b/z"), _file("a-b"), _file("a"),
                                  _dir("a.d"), _file("a.d/x")],
     ["0 a", "0 a-b", "5 a.d", "0 a.d/x", "5 b", "0 b/z"]),
    ("whiteout", [_whiteout("gone"), _file("f")], ["0 .wh.gone", "0 f"]),
    ("whiteout-sorted-by-tar-name", [_whiteout("a"), _file(".wh.b-not-really")],
     ["0 .wh.a", "0 .wh.b-not-really"]),
    ("opaque-trusted", [_dir("d", opaque="trusted.overlay.opaque"), _file("d/-x")],
     ["5 d", "0 d/.wh..wh..opq", "0 d/-x"]),
    ("opaque-user", [_dir("d", opaque="user.overlay.opaque")], ["5 d", "0 d/.wh..wh..opq"]),
    ("symlink-and-fifo", [_symlink("l", "../../etc/passwd"), lambda r: os.mkfifo(r / "p")],
     ["2 l -> ../../etc/passwd", "6 p"]),
    ("devices", [lambda r: os.mknod(r / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3)),
                 lambda r: os.mknod(r / "blk", stat.S_IFBLK | 0o600, os.makedev(7, 0))],
     ["4 blk", "3 null"]),
    ("hardlinks", [_file("b", b"data"), _hardlink("a", "b"), _hardlink("c", "b")],
     ["0 a", "1 b -> a", "1 c -> a"]),
    ("shared-whiteout-inode-is-no-hardlink", [_whiteout("w1"), _hardlink("w2", "w1")],
     ["0 .wh.w1", "0 .wh.w2"]),
]


@pytest.mark.parametrize(("makers", "expected"),
                         [pytest.param(m, e, id=n) for n, m, e in CASES])
def test_what_the_tar_holds(tmp_path: Path, makers: list[Maker], expected: list[str]) -> None:
    blob, _ = _export(_build(tmp_path / "upper", makers))
    assert _entries(blob) == expected


def test_header_fields(tmp_path: Path) -> None:
    def setup(root: Path) -> None:
        (root / "suid").write_bytes(b"x")
        os.chown(root / "suid", 1000, 50)
        os.chmod(root / "suid", 0o4755)
        os.setxattr(root / "suid", "security.capability", _CAP_NET_RAW)
        os.setxattr(root / "suid", "user.not-exported", b"1")
        (root / "sticky").mkdir(mode=0o755)
        os.chmod(root / "sticky", 0o1777)
    blob, _ = _export(_build(tmp_path / "upper", [setup]))
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        sticky, suid = tar.getmembers()
    assert (suid.mode, suid.uid, suid.gid, suid.uname, suid.gname, suid.mtime) == \
        (0o4755, 1000, 50, "", "", _T)
    assert suid.pax_headers == {"SCHILY.xattr.security.capability":
                                _CAP_NET_RAW.decode("ascii")}
    assert (sticky.mode, sticky.isdir()) == (0o1777, True)


def test_markers_are_root_owned_mode_0_time_0_or_epoch(tmp_path: Path) -> None:
    upper = _build(tmp_path / "upper", [_whiteout("w")])
    for epoch, expected in ((None, 0), (123, 123)):
        blob, _ = _export(upper, epoch=epoch)
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
            (marker,) = tar.getmembers()
        assert (marker.mode, marker.uid, marker.gid, marker.mtime, marker.size) == \
            (0, 0, 0, expected, 0)


def test_epoch_clamps_only_later_mtimes(tmp_path: Path) -> None:
    upper = _build(tmp_path / "upper", [_file("new"), _file("old")])
    os.utime(upper / "old", (1000, 1000))
    blob, _ = _export(upper, epoch=_T - 10)
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        assert {m.name: m.mtime for m in tar} == {"new": _T - 10, "old": 1000}


def test_deterministic_and_compressions_agree(tmp_path: Path) -> None:
    big = os.urandom(1 << 14) * 160   # 2.5 MiB: 3 gzip blocks, each primed by the last
    upper = _build(tmp_path / "upper", [_file("big", big), _file("small", b"s"),
                                        _whiteout("w")])
    plain, plain_desc = _export(upper, compression="none")
    first, gz_desc = _export(upper, compression="gzip")
    again, _ = _export(upper, compression="gzip")
    zst, zst_desc = _export(upper, compression="zstd")
    assert first == again
    assert gzip.decompress(first) == plain
    assert zstandard.ZstdDecompressor().decompressobj().decompress(zst) == plain
    diff_id = "sha256:" + hashlib.sha256(plain).hexdigest()
    assert plain_desc == LayerDescriptor(diff_id, len(plain), diff_id,
                                         "application/vnd.oci.image.layer.v1.tar")
    assert gz_desc == LayerDescriptor("sha256:" + hashlib.sha256(first).hexdigest(),
                                      len(first), diff_id, GZIP_LAYER)
    assert (zst_desc.diff_id, zst_desc.media_type, zst_desc.size) == \
        (diff_id, ZSTD_LAYER, len(zst))
    # blocks primed with the previous window compress like one stream (not + 2 x 16 KiB)
    assert len(first) < len(gzip.compress(plain, 6)) + 4096


def test_round_trip_through_unpack(tmp_path: Path) -> None:
    def setup(root: Path) -> None:
        (root / "d").mkdir()
        os.setxattr(root / "d", "trusted.overlay.opaque", b"y")
        (root / "d" / "f").write_bytes(b"content")
        os.chown(root / "d" / "f", 1000, 1000)
        os.chmod(root / "d" / "f", 0o2755)
        os.setxattr(root / "d" / "f", "security.capability", _CAP_NET_RAW)
        os.link(root / "d" / "f", root / "hl")
        (root / "s").symlink_to("d/f")
        os.mknod(root / "gone", stat.S_IFCHR, os.makedev(0, 0))
        os.mkfifo(root / "fifo")
    upper = _build(tmp_path / "upper", [setup])
    blob, desc = _export(upper)
    dest = tmp_path / "dest"
    assert unpack_layer(io.BytesIO(blob), dest, media_type=GZIP_LAYER,
                        expected_digest=desc.digest) == desc.diff_id
    assert _snapshot(dest) == _snapshot(upper)


def _snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    found: dict[str, tuple[object, ...]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        xattrs = {n: os.getxattr(path, n, follow_symlinks=False)
                  for n in os.listxattr(path, follow_symlinks=False)}
        content = path.read_bytes() if stat.S_ISREG(st.st_mode) else \
            os.readlink(path) if stat.S_ISLNK(st.st_mode) else st.st_rdev
        found[path.relative_to(root).as_posix()] = (
            st.st_mode, st.st_uid, st.st_gid, st.st_nlink, content, xattrs,
            None if stat.S_ISDIR(st.st_mode) or stat.S_ISCHR(st.st_mode) else st.st_mtime)
    return found


def test_empty_diff(tmp_path: Path) -> None:
    assert is_empty_diff(tmp_path)
    (tmp_path / "x").mkdir()
    assert not is_empty_diff(tmp_path)


WRITE_ERRORS: list[tuple[str, list[Maker], dict[str, object], str]] = [
    ("redirect-dir", [_dir("d"), lambda r: os.setxattr(r / "d", "trusted.overlay.redirect",
                                                         b"/old")], {},
     "{upper}/d carries overlay metadata trusted.overlay.redirect that a layer cannot "
     "express\nhint: mount the overlay with redirect_dir=off,metacopy=off"),
    ("metacopy", [_file("f"), lambda r: os.setxattr(r / "f", "trusted.overlay.metacopy", b"")],
     {}, "{upper}/f carries overlay metadata trusted.overlay.metacopy that a layer cannot "
     "express\nhint: mount the overlay with redirect_dir=off,metacopy=off"),
    ("unknown-compression", [], {"compression": "lz4"},
     "unknown layer compression 'lz4'\nhint: use one of: gzip, zstd, none"),
    ("socket", [lambda r: __import__("socket").socket(1).bind(str(r / "sock"))], {},
     "cannot put {upper}/sock in a layer: a socket or unknown file type\n"
     "hint: remove it before the step ends"),
]


@pytest.mark.parametrize(("makers", "kwargs", "message"),
                         [pytest.param(m, k, e, id=n) for n, m, k, e in WRITE_ERRORS])
def test_write_errors(tmp_path: Path, makers: list[Maker], kwargs: dict[str, object],
                      message: str) -> None:
    upper = _build(tmp_path / "upper", makers)
    with pytest.raises(LayerError) as caught:
        _export(upper, **kwargs)
    assert str(caught.value) == message.format(upper=upper)


def test_missing_upper(tmp_path: Path) -> None:
    with pytest.raises(LayerError) as caught:
        _export(tmp_path / "nope")
    assert str(caught.value) == \
        f"the upper dir {tmp_path / 'nope'} does not exist or is not a directory"


def test_output_errors_are_layer_errors(tmp_path: Path) -> None:
    upper = _build(tmp_path / "upper", [_file("f", b"x")])
    closed = io.BytesIO()
    closed.close()
    with pytest.raises(LayerError, match="cannot write the layer blob") as caught:
        write_layer(upper, closed)
    assert "stream was closed" in (caught.value.hint or "")


class _FullDisk(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_gets_the_disk_full_hint(tmp_path: Path) -> None:
    """Not "check the output stream": the layer is written to the store's disk."""
    upper = _build(tmp_path / "upper", [_file("f", b"x")])
    with pytest.raises(LayerError) as caught:
        write_layer(upper, cast(BinaryIO, _FullDisk()))
    assert caught.value.message == ("cannot write the layer blob: [Errno 28] No space left "
                                    "on device")
    assert caught.value.hint == DISK_FULL_HINT
