"""The build context as a source (workers/_context_source.py) on real directories: content
checksums per selector (content and mode, never mtimes), what they match, what fails."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dockyard.scheduler._cachekey import Selector
from dockyard.scheduler._errors import SolveError
from dockyard.workers._context_source import EntryKey, LocalContext, Materialised
from dockyard.workers._snapshots import SnapshotStore

FILES = {"a.txt": "alpha\n", "b.txt": "beta\n", "src/main.c": "int main;\n",
         "src/util/x.h": "#x\n", "secret.key": "k\n"}
EXCLUDE = ["*.key"]


def _context(tmp_path: Path) -> Path:
    root = tmp_path / "ctx"
    for name, text in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "link").symlink_to("src")
    return root


def _touch(root: Path) -> None:
    os.utime(root / "a.txt", (1, 1))


def _edit_b(root: Path) -> None:
    (root / "b.txt").write_text("gamma\n")


def _chmod_a(root: Path) -> None:
    (root / "a.txt").chmod(0o755)


def _edit_deep(root: Path) -> None:
    (root / "src" / "util" / "x.h").write_text("#y\n")


def _edit_excluded(root: Path) -> None:
    (root / "secret.key").write_text("other\n")


# (selector, change, does the checksum change)
CASES: list[tuple[Selector, Callable[[Path], None], bool]] = [
    (Selector("/a.txt"), _touch, False),
    (Selector("/a.txt"), _edit_b, False),
    (Selector("/a.txt"), _chmod_a, True),
    (Selector("/b.txt"), _edit_b, True),
    (Selector("/*.txt", wildcard=True), _edit_b, True),
    (Selector("/src"), _edit_deep, True),
    (Selector("/src"), _edit_b, False),
    (Selector("/link"), _edit_deep, True),
    (Selector("/link", follow_symlinks=False), _edit_deep, False),
    (Selector("/src", exclude=("util",)), _edit_deep, False),
    (Selector("/"), _edit_excluded, False),
    (Selector("/"), _edit_b, True),
]


@pytest.mark.parametrize("selector,change,changes", CASES)
def test_selector_checksums_follow_content_only(tmp_path: Path, selector: Selector,
                                                change: Callable[[Path], None],
                                                changes: bool) -> None:
    root = _context(tmp_path)
    before = LocalContext(root, EXCLUDE).selector_checksum(selector)
    change(root)
    after = LocalContext(root, EXCLUDE).selector_checksum(selector)
    assert (before != after) is changes


@pytest.mark.parametrize("path,wildcard,message", [
    ("/missing.txt", False, '"/missing.txt": not found'),
    ("/missing.txt", True, '"/missing.txt": not found'),
    ("/src/missing", True, '"/src/missing": not found'),
    ("/secret.key", False, '"/secret.key": not found'),
])
def test_selectors_that_match_nothing_fail_at_key_time(tmp_path: Path, path: str,
                                                       wildcard: bool, message: str) -> None:
    context = LocalContext(_context(tmp_path), EXCLUDE)
    with pytest.raises(SolveError) as caught:
        context.selector_checksum(Selector(path, wildcard=wildcard))
    assert caught.value.message == message


@pytest.mark.parametrize("path", ["/nomatch*", "/src/*.h", "/src/util/[yz].h", "/*.key",
                                  "/none/*"])
def test_wildcards_matching_nothing_read_nothing(tmp_path: Path, path: str) -> None:
    """As BuildKit's content hash: no error at key time, the digest of no bytes; the
    copy's allow_empty_wildcard decides when the op runs."""
    context = LocalContext(_context(tmp_path), EXCLUDE)
    assert context.match(Selector(path, wildcard=True)) == []
    assert context.selector_checksum(Selector(path, wildcard=True)) == (
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")


def test_the_identity_ignores_mtimes_and_excluded_files(tmp_path: Path) -> None:
    root = _context(tmp_path)
    first = LocalContext(root, EXCLUDE).checksum()
    _touch(root)
    _edit_excluded(root)
    assert LocalContext(root, EXCLUDE).checksum() == first
    _edit_b(root)
    assert LocalContext(root, EXCLUDE).checksum() != first


def test_materialised_files_belong_to_root_and_keep_modes(tmp_path: Path) -> None:
    root = _context(tmp_path)
    os.chown(root / "a.txt", 1234, 5678)
    (root / "a.txt").chmod(0o751)
    dest = tmp_path / "out"
    dest.mkdir()
    LocalContext(root, EXCLUDE).materialise(dest)
    info = os.lstat(dest / "a.txt")
    assert (info.st_uid, info.st_gid, info.st_mode & 0o7777) == (0, 0, 0o751)
    assert os.readlink(dest / "link") == "src"
    assert not (dest / "secret.key").exists()
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == [
        "a.txt", "b.txt", "link", "src", "src/main.c", "src/util", "src/util/x.h"]


def _file(path: Path) -> None:
    path.write_text("x")


def _dir(path: Path) -> None:
    path.mkdir()


# (entry, how to make it, mode bits the materialised copy keeps); owners are 1234:5678 in
# the context, so the copy's chown to 0:0 happens on every entry.
MATERIALISED_MODES: list[tuple[str, Callable[[Path], None], int]] = [
    ("setuid", _file, 0o4755),
    ("setgid", _file, 0o2750),
    ("both", _file, 0o6711),
    ("private", _file, 0o600),
    ("sticky-dir", _dir, 0o1777),
    ("setgid-dir", _dir, 0o2775),
]


@pytest.mark.parametrize("name,make,mode", MATERIALISED_MODES)
def test_materialised_modes_survive_the_chown_to_root(tmp_path: Path, name: str,
                                                      make: Callable[[Path], None],
                                                      mode: int) -> None:
    root = tmp_path / "ctx"
    root.mkdir()
    make(root / name)
    os.chown(root / name, 1234, 5678)
    os.chmod(root / name, mode)
    dest = tmp_path / "out"
    dest.mkdir()
    LocalContext(root).materialise(dest)
    info = os.lstat(dest / name)
    assert (info.st_uid, info.st_gid, info.st_mode & 0o7777) == (0, 0, mode)


def test_materialised_symlinks_keep_their_own_mtime(tmp_path: Path) -> None:
    root = _context(tmp_path)
    (root / "dangling").symlink_to("nowhere")
    for name, when in (("link", 1_000_000_000), ("dangling", 1_100_000_000)):
        os.utime(root / name, (when, when), follow_symlinks=False)
    dest = tmp_path / "out"
    dest.mkdir()
    LocalContext(root, EXCLUDE).materialise(dest)
    times = {name: os.lstat(dest / name).st_mtime_ns for name in ("link", "dangling")}
    assert times == {"link": 1_000_000_000 * 10**9, "dangling": 1_100_000_000 * 10**9}
    assert os.readlink(dest / "dangling") == "nowhere"


def _tree(root: Path) -> list[tuple[str, int, int, int, int, bytes | str]]:
    """What a layer keeps of each entry below ``root``: path, mode, owner, mtime, content."""
    return sorted((p.relative_to(root).as_posix(), (i := os.lstat(p)).st_mode, i.st_uid,
                   i.st_mtime_ns, i.st_size,
                   os.readlink(p) if p.is_symlink() else
                   p.read_bytes() if p.is_file() else b"")
                  for p in root.rglob("*"))


def _kept(keys: dict[str, EntryKey], where: Path, written: set[str] | None = None,
          before: Materialised | None = None) -> Materialised:
    """The ``Materialised`` of a tree written at ``where`` (only ``written`` of it, over
    ``before``, for a delta)."""
    return Materialised((), {path: (key, where if written is None or path in written
                                    else before.entries[path][1] if before else where)
                             for path, key in keys.items()})


def test_a_second_materialise_links_what_did_not_change(tmp_path: Path) -> None:
    root = _context(tmp_path)
    first = tmp_path / "first"
    first.mkdir()
    previous = _kept(LocalContext(root, EXCLUDE).materialise(first), first)

    _edit_b(root)  # new content
    _touch(root)   # same content, another mtime
    second = tmp_path / "second"
    second.mkdir()
    LocalContext(root, EXCLUDE).materialise(second, previous)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    LocalContext(root, EXCLUDE).materialise(fresh)

    assert _tree(second) == _tree(fresh)  # the same tree as a copy of everything
    same = {p for p in ("a.txt", "b.txt", "src/main.c", "src/util/x.h")
            if os.lstat(second / p).st_ino == os.lstat(first / p).st_ino}
    assert same == {"src/main.c", "src/util/x.h"}


def test_a_previous_tree_that_is_gone_is_copied_instead(tmp_path: Path) -> None:
    root = _context(tmp_path)
    first = tmp_path / "first"
    first.mkdir()
    previous = _kept(LocalContext(root, EXCLUDE).materialise(first), first)
    (first / "src" / "main.c").unlink()  # a pruned layer
    second = tmp_path / "second"
    second.mkdir()
    LocalContext(root, EXCLUDE).materialise(second, previous)
    assert (second / "src" / "main.c").read_text() == FILES["src/main.c"]
    assert os.lstat(second / "a.txt").st_ino == os.lstat(first / "a.txt").st_ino


def _swap_dir_for_file(root: Path) -> None:
    shutil.rmtree(root / "src" / "util")
    (root / "src" / "util").write_text("now a file\n")


def _swap_file_for_dir(root: Path) -> None:
    (root / "b.txt").unlink()
    (root / "b.txt").mkdir()
    (root / "b.txt" / "inside").write_text("in\n")


def _remove_a_tree(root: Path) -> None:
    shutil.rmtree(root / "fill" / "d1")


def _add_deep(root: Path) -> None:
    (root / "new" / "deeper").mkdir(parents=True)
    (root / "new" / "deeper" / "n.txt").write_text("new\n")


def _retarget(root: Path) -> None:
    (root / "link").unlink()
    (root / "link").symlink_to("a.txt")


def _remove_one(root: Path) -> None:
    (root / "fill" / "d0" / "f3").unlink()


def _chmod_dir(root: Path) -> None:
    (root / "fill" / "d2").chmod(0o700)


DELTAS = [_edit_b, _touch, _chmod_a, _remove_one, _add_deep, _retarget, _edit_deep,
          _swap_dir_for_file, _remove_a_tree, _swap_file_for_dir, _chmod_dir]


def test_changes_layered_on_a_tree_show_what_a_whole_copy_gives(tmp_path: Path) -> None:
    """Each change of ``DELTAS``, in turn, as a delta on the layers before it: mounted
    together (overlayfs, as a COPY reads them) they are the tree a whole copy gives."""
    root = _context(tmp_path)
    for d in range(4):
        for f in range(6):
            (root / "fill" / f"d{d}").mkdir(parents=True, exist_ok=True)
            (root / "fill" / f"d{d}" / f"f{f}").write_text(f"{d}{f}\n")
    first = tmp_path / "layer0"
    first.mkdir()
    previous = _kept(LocalContext(root, EXCLUDE).materialise(first), first)
    layers = [first]
    store = SnapshotStore(tmp_path / "store")
    for index, change in enumerate(DELTAS, start=1):
        change(root)
        delta = tmp_path / f"layer{index}"
        delta.mkdir()
        made = LocalContext(root, EXCLUDE).materialise_delta(delta, previous)
        assert made is not None, change.__name__
        keys, written = made
        previous = _kept(keys, delta, written, previous)
        layers.append(delta)
        fresh = tmp_path / f"fresh{index}"
        fresh.mkdir()
        LocalContext(root, EXCLUDE).materialise(fresh)

        async def merged(lowers: list[Path] = layers) -> list[Any]:
            async with store.mount(lowers) as state:
                return _tree(state.path)
        assert asyncio.run(merged()) == _tree(fresh), change.__name__
        assert len(list(delta.rglob("*"))) < len(list(fresh.rglob("*"))) / 2


def test_a_delta_of_more_than_half_the_tree_is_not_written(tmp_path: Path) -> None:
    root = _context(tmp_path)
    first = tmp_path / "first"
    first.mkdir()
    previous = _kept(LocalContext(root, EXCLUDE).materialise(first), first)
    for name in FILES:
        if name != "secret.key":
            (root / name).write_text("all new\n")
    delta = tmp_path / "delta"
    delta.mkdir()
    assert LocalContext(root, EXCLUDE).materialise_delta(delta, previous) is None
    assert list(delta.iterdir()) == []
