"""The stat indexes on disk (workers/_context_index.py): one per context path, written
whole or not at all, the most recently used kept, and anything damaged, foreign or of
another version ignored (rebuilt by the build, never trusted, never an error)."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest

from dockyard.workers._context_digest import INDEX_VERSION, RACY_NS, ContextDigests
from dockyard.workers._context_index import ContextIndexes

FILES = {"a.txt": b"alpha\n", "dir/b.txt": b"beta\n", "dir/c.bin": b"\x00" * 4096}


def _later() -> int:
    return time.time_ns() + 10 * RACY_NS


def _context(where: Path) -> Path:
    for name, data in FILES.items():
        (where / name).parent.mkdir(parents=True, exist_ok=True)
        (where / name).write_bytes(data)
    return where


def _indexed(tmp_path: Path) -> tuple[ContextIndexes, Path]:
    """An index of a context holding ``FILES``, every file hashed once."""
    root = _context(tmp_path / "ctx")
    indexes = ContextIndexes(tmp_path / "index", clock=_later)
    digests = indexes.load(root)
    for name in FILES:
        digests.digest(name)
    indexes.save(digests)
    return indexes, root


def _all_read(indexes: ContextIndexes, root: Path) -> ContextDigests:
    digests = indexes.load(root)
    for name, data in FILES.items():
        assert digests.digest(name) == hashlib.sha256(data).hexdigest()
    return digests


def test_a_second_build_reads_nothing(tmp_path: Path) -> None:
    indexes, root = _indexed(tmp_path)
    stats = _all_read(indexes, root).statistics()
    assert (stats.hits, stats.files_hashed, stats.bytes_hashed) == (3, 0, 0)


def test_one_changed_file_is_the_only_one_read(tmp_path: Path) -> None:
    indexes, root = _indexed(tmp_path)
    (root / "dir" / "b.txt").write_bytes(b"BETA!!\n")
    digests = indexes.load(root)
    assert digests.digest("dir/b.txt") == hashlib.sha256(b"BETA!!\n").hexdigest()
    for name in ("a.txt", "dir/c.bin"):
        digests.digest(name)
    stats = digests.statistics()
    assert (stats.hits, stats.files_hashed, stats.bytes_hashed) == (2, 1, 7)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-7])


def _flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # in the last digest: without the check, a wrong digest would come out
    path.write_bytes(bytes(data))


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _garbage(path: Path) -> None:
    path.write_bytes(b"\xc1" * 100)


def _checked(body: bytes) -> bytes:
    return hashlib.sha256(body).digest() + body


def _rewrite(change: Callable[[dict[str, object]], None]) -> Callable[[Path], None]:
    """A well-formed, correctly checksummed index file with ``change`` applied."""
    def rewrite(path: Path) -> None:
        data = msgpack.unpackb(path.read_bytes()[32:], raw=False)
        change(data)
        path.write_bytes(_checked(msgpack.packb(data)))
    return rewrite


def _version(data: dict[str, object]) -> None:
    data["v"] = INDEX_VERSION + 1


def _root(data: dict[str, object]) -> None:
    data["root"] = "/elsewhere"


def _short_entry(data: dict[str, object]) -> None:
    entries = data["entries"]
    assert isinstance(entries, list)
    entries[0] = entries[0][:7]


def _text_digest(data: dict[str, object]) -> None:
    entries = data["entries"]
    assert isinstance(entries, list)
    entries[0][7] = entries[0][7].hex()


def _negative(data: dict[str, object]) -> None:
    entries = data["entries"]
    assert isinstance(entries, list)
    entries[0][1] = -1


def _not_a_map(path: Path) -> None:
    path.write_bytes(_checked(msgpack.packb([1, 2, 3])))


DAMAGE: list[tuple[str, Callable[[Path], None]]] = [
    ("truncated", _truncate), ("bit-flipped", _flip_a_bit), ("empty", _empty),
    ("not-msgpack", _garbage), ("not-a-map", _not_a_map),
    ("other-version", _rewrite(_version)), ("other-context", _rewrite(_root)),
    ("short-entry", _rewrite(_short_entry)), ("text-digest", _rewrite(_text_digest)),
    ("negative-size", _rewrite(_negative)),
]


@pytest.mark.parametrize("damage", [d for _, d in DAMAGE], ids=[n for n, _ in DAMAGE])
def test_a_damaged_or_foreign_index_is_ignored_then_rebuilt(
        tmp_path: Path, damage: Callable[[Path], None]) -> None:
    indexes, root = _indexed(tmp_path)
    damage(indexes.path(root))
    rebuilt = _all_read(indexes, root)  # right digests, every file read again
    assert (rebuilt.statistics().hits, rebuilt.statistics().files_hashed) == (0, 3)
    indexes.save(rebuilt)
    assert _all_read(indexes, root).statistics().hits == 3


def test_an_index_is_keyed_by_the_real_path(tmp_path: Path) -> None:
    indexes, root = _indexed(tmp_path)
    (tmp_path / "via-link").symlink_to(root)
    assert indexes.path(tmp_path / "via-link") == indexes.path(root)
    assert _all_read(indexes, tmp_path / "via-link").statistics().hits == 3
    other = _context(tmp_path / "other")
    assert indexes.path(other) != indexes.path(root)
    assert _all_read(indexes, other).statistics().hits == 0


def test_the_least_recently_used_index_goes_first(tmp_path: Path) -> None:
    indexes = ContextIndexes(tmp_path / "index", limit=2, clock=_later)
    roots = [_context(tmp_path / name) for name in ("one", "two", "three")]
    for when, root in enumerate(roots[:2]):
        indexes.save(_all_read(indexes, root))
        _age(indexes.path(root), when)
    indexes.save(_all_read(indexes, roots[0]))  # used again (unchanged: only touched)
    indexes.save(_all_read(indexes, roots[2]))
    kept = {root.name for root in roots if indexes.path(root).exists()}
    assert kept == {"one", "three"}


def _age(path: Path, when: int) -> None:
    os.utime(path, ns=(when * 1_000_000_000, when * 1_000_000_000))


def test_deleted_files_leave_the_index_and_unread_listed_ones_stay(tmp_path: Path) -> None:
    indexes, root = _indexed(tmp_path)
    (root / "a.txt").unlink()
    digests = indexes.load(root)
    digests.listed(["dir/b.txt", "dir/c.bin"])  # a walk listed them; nothing was read
    indexes.save(digests)
    assert digests.statistics().entries == 2
    again = indexes.load(root)
    again.digest("dir/c.bin")
    assert again.statistics().hits == 1


def test_a_failed_save_is_logged_not_raised(tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    root = _context(tmp_path / "ctx")
    (tmp_path / "index").write_text("a file where the directory should be")
    indexes = ContextIndexes(tmp_path / "index", clock=_later)
    digests = indexes.load(root)
    digests.digest("a.txt")
    with caplog.at_level(logging.WARNING):
        indexes.save(digests)
    assert "cannot save the stat index" in caplog.text


def test_the_index_is_written_atomically(tmp_path: Path) -> None:
    """Nothing but index files is left in the directory: the write went through a
    temporary file renamed into place."""
    indexes, root = _indexed(tmp_path)
    (root / "a.txt").write_bytes(b"changed\n")
    indexes.save(_all_read_but(indexes, root))
    assert [p.name for p in indexes.directory.iterdir()] == [indexes.path(root).name]


def _all_read_but(indexes: ContextIndexes, root: Path) -> ContextDigests:
    digests = indexes.load(root)
    for name in FILES:
        digests.digest(name)
    return digests


def test_a_file_read_again_but_racy_leaves_the_index(tmp_path: Path) -> None:
    """Its old entry is stale: neither it nor the racy new one is written."""
    indexes, root = _indexed(tmp_path)
    (root / "a.txt").write_bytes(b"just now\n")
    now = ContextIndexes(indexes.directory)  # the real clock: a.txt is racy
    digests = now.load(root)
    digests.listed(FILES)
    for name in FILES:
        digests.digest(name)
    now.save(digests)
    assert digests.statistics().entries == 2
