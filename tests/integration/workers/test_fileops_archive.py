"""ADD's auto-extraction on real archives: each compression told apart by content, a
non-archive copied as a file, and archives that try to leave their destination refused."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zstandard
from workers_helpers import tree_listing

from scheduler._errors import LayerError
from scheduler._graph import Copy
from workers._fileops import apply_file_actions


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
                 "h": tarfile.LNKTYPE, "p": tarfile.FIFOTYPE}[kind]
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
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
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


# (id, entries, a target tree made first, exact message)
ESCAPES = [
    ("dotdot", [_entry("f", "../evil", "x")],
     "ADD /archive.bin: archive entry '../evil' climbs out of the destination"),
    ("nested-dotdot", [_entry("f", "a/../../evil", "x")],
     "ADD /archive.bin: archive entry 'a/../../evil' climbs out of the destination"),
    ("symlink-out", [_entry("l", "a/up", link="../../../etc")],
     "ADD /archive.bin: archive entry 'a/up' links to '../../../etc', outside"),
    ("write-through-symlink", [_entry("l", "sys", link="/etc"),
                               _entry("f", "sys/passwd", "pwned")],
     "ADD /archive.bin: archive entry 'sys/passwd' would write through the symlink 'sys'"),
    ("hardlink-out", [_entry("h", "h", link="../../etc/passwd")],
     "ADD /archive.bin: archive entry '../../etc/passwd' climbs out of the destination"),
]


@pytest.mark.parametrize(("entries", "message"), [e[1:] for e in ESCAPES],
                         ids=[e[0] for e in ESCAPES])
def test_escaping_archives_are_refused(tmp_path: Path, entries: list[tuple[tarfile.TarInfo,
                                       bytes]], message: str) -> None:
    with pytest.raises(LayerError) as caught:
        _add(tmp_path, _tar(entries))
    assert caught.value.message == message
    assert (tmp_path / "target/etc/passwd").read_text().startswith("root:")


def test_absolute_names_land_inside(tmp_path: Path) -> None:
    target = _add(tmp_path, _tar([_entry("f", "/etc/x", "abs")]))
    assert (target / "dst/etc/x").read_text() == "abs"
    assert not (target / "etc/x").exists()


def test_truncated_archive_is_a_layer_error(tmp_path: Path) -> None:
    big = _tar([_entry("f", "big", "y" * 100_000)])
    with pytest.raises(LayerError, match="corrupt archive"):
        _add(tmp_path, big[:5000])
