"""The worker's file digest cache (workers/_context_digest.py) on real files: a digest is
reused only while everything stat says of the file is unchanged, and never for a file
changed within the racy window (timestamps advance in ticks)."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from workers._context_digest import _RACY_NS, _DigestCache, _hash_file

LATER = 10 * _RACY_NS  # a clock this far ahead: every file is old enough to be cached


def _later() -> int:
    return time.time_ns() + LATER


def _same_size_edit(path: Path) -> None:
    path.write_bytes(b"ZZZZ\n")
    os.utime(path, ns=(1, 1_000_000_000))  # a different mtime whatever the tick


def _touch(path: Path) -> None:
    os.utime(path, ns=(1, 2_000_000_000))


def _chmod(path: Path) -> None:
    path.chmod(0o600)  # the ctime moves, content and mtime do not


def _replace(path: Path) -> None:
    other = path.with_name("other")
    other.write_bytes(b"abcd\n")
    os.utime(other, ns=(1, path.stat().st_mtime_ns))
    other.replace(path)  # same content, size and mtime; another inode


def _nothing(path: Path) -> None:
    del path


# (name, change after the first hash, is the second hash served from the cache)
CASES: list[tuple[str, Callable[[Path], None], bool]] = [
    ("unchanged", _nothing, True),
    ("same-size-edit", _same_size_edit, False),
    ("touched", _touch, False),
    ("chmod", _chmod, False),
    ("replaced", _replace, False),
]


class _Counting(_DigestCache):
    def __init__(self, limit: int = 200_000) -> None:
        super().__init__(limit)
        self.hits = 0

    def get(self, key: tuple[str, int, int, int, int, int]) -> str | None:
        found = super().get(key)
        self.hits += found is not None
        return found


@pytest.mark.parametrize(("change", "hit"), [(c, h) for _, c, h in CASES],
                         ids=[name for name, _, _ in CASES])
def test_digest_reused_only_while_stat_is_unchanged(tmp_path: Path,
                                                    change: Callable[[Path], None],
                                                    hit: bool) -> None:
    path = tmp_path / "f.txt"
    path.write_bytes(b"abcd\n")
    cache = _Counting()
    assert _hash_file(tmp_path, "f.txt", cache, _later) == hashlib.sha256(b"abcd\n").hexdigest()
    change(path)
    assert _hash_file(tmp_path, "f.txt", cache, _later) == hashlib.sha256(
        path.read_bytes()).hexdigest()
    assert cache.hits == int(hit)


def test_a_file_changed_just_now_is_never_cached(tmp_path: Path) -> None:
    (tmp_path / "new").write_bytes(b"fresh\n")
    cache = _Counting()
    for _ in range(2):
        _hash_file(tmp_path, "new", cache)  # the real clock: inside the racy window
    assert (len(cache), cache.hits) == (0, 0)


def test_least_recently_used_digests_go_first(tmp_path: Path) -> None:
    cache = _Counting(limit=2)
    for name in ("a", "b", "c"):
        (tmp_path / name).write_bytes(name.encode())
        _hash_file(tmp_path, name, cache, _later)
    _hash_file(tmp_path, "a", cache, _later)  # dropped: hashed again
    _hash_file(tmp_path, "c", cache, _later)  # kept
    assert (len(cache), cache.hits) == (2, 1)
