"""A context's file digests (workers/_context_digest.py) on real files: a digest is reused
only while everything stat says of the file is unchanged, and never for a file changed
within the racy window (timestamps advance in ticks)."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dockyard.scheduler._errors import SolveError
from dockyard.workers._context_digest import RACY_NS, ContextDigests
from dockyard.workers._context_index import ContextIndexes

LATER = 10 * RACY_NS  # a clock this far ahead: every file is old enough to be remembered


def _later() -> int:
    return time.time_ns() + LATER


def _same_size_edit(path: Path) -> None:
    path.write_bytes(b"ZZZZ\n")
    os.utime(path, ns=(1, 1_000_000_000))  # a different mtime whatever the tick


def _same_size_edit_same_mtime(path: Path) -> None:
    mtime = path.stat().st_mtime_ns
    path.write_bytes(b"ZZZZ\n")
    os.utime(path, ns=(1, mtime))  # only the ctime tells


def _grown(path: Path) -> None:
    mtime = path.stat().st_mtime_ns
    path.write_bytes(b"abcde\n")
    os.utime(path, ns=(1, mtime))


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


# (name, change after the first hash, is the second digest served from the index)
CASES: list[tuple[str, Callable[[Path], None], bool]] = [
    ("unchanged", _nothing, True),
    ("same-size-edit", _same_size_edit, False),
    ("same-size-edit-same-mtime", _same_size_edit_same_mtime, False),
    ("size", _grown, False),
    ("touched", _touch, False),
    ("chmod", _chmod, False),
    ("replaced", _replace, False),
]


@pytest.mark.parametrize(("change", "hit"), [(c, h) for _, c, h in CASES],
                         ids=[name for name, _, _ in CASES])
def test_digest_reused_only_while_stat_is_unchanged(tmp_path: Path,
                                                    change: Callable[[Path], None],
                                                    hit: bool) -> None:
    """Through the index on disk, as the next build (another process) would see it."""
    root = tmp_path / "ctx"
    root.mkdir()
    path = root / "f.txt"
    path.write_bytes(b"abcd\n")
    indexes = ContextIndexes(tmp_path / "index", clock=_later)
    first = indexes.load(root)
    assert first.digest("f.txt") == hashlib.sha256(b"abcd\n").hexdigest()
    indexes.save(first)
    change(path)
    second = indexes.load(root)
    assert second.digest("f.txt") == hashlib.sha256(path.read_bytes()).hexdigest()
    stats = second.statistics()
    assert (stats.hits, stats.files_hashed) == (int(hit), int(not hit))


def test_a_file_changed_just_now_is_read_again_next_time(tmp_path: Path) -> None:
    """Git's racily clean rule: with the real clock, a file written just now is hashed
    and never remembered, however often; once older than the window, it is."""
    (tmp_path / "new").write_bytes(b"fresh\n")
    indexes = ContextIndexes(tmp_path / "index")
    for _ in range(2):
        digests = indexes.load(tmp_path)
        digests.digest("new")
        indexes.save(digests)
        assert (digests.statistics().files_hashed, digests.statistics().entries) == (1, 0)
    later = ContextIndexes(tmp_path / "index", clock=_later)
    digests = later.load(tmp_path)
    digests.digest("new")
    later.save(digests)
    assert later.load(tmp_path).digest("new") == hashlib.sha256(b"fresh\n").hexdigest()
    assert digests.statistics().entries == 1


def test_the_racy_window_counts_from_before_the_walk(tmp_path: Path) -> None:
    """A timestamp within ``RACY_NS`` of when the digests were made is racy, one just
    older is not (the mtime and the ctime both count)."""
    path = tmp_path / "f"
    path.write_bytes(b"x")
    info = path.stat()
    newest = max(info.st_mtime_ns, info.st_ctime_ns)
    racy = ContextDigests(tmp_path, clock=lambda: newest + RACY_NS)
    racy.digest("f")
    kept = ContextDigests(tmp_path, clock=lambda: newest + RACY_NS + 1)
    kept.digest("f")
    assert (racy.statistics().entries, kept.statistics().entries) == (0, 1)


@pytest.mark.parametrize("swap", ["symlink", "fifo"])
def test_a_file_swapped_since_the_walk_is_refused(tmp_path: Path, swap: str) -> None:
    """Its walk said a regular file; a symlink is not followed, a fifo not waited on."""
    (tmp_path / "f").write_bytes(b"walked\n")
    (tmp_path / "elsewhere").write_bytes(b"not in the context\n")
    digests = ContextDigests(tmp_path)
    walked = os.lstat(tmp_path / "f")
    (tmp_path / "f").unlink()
    if swap == "symlink":
        (tmp_path / "f").symlink_to(tmp_path / "elsewhere")
    else:
        os.mkfifo(tmp_path / "f")
    with pytest.raises(SolveError, match="'f' in the build context"):
        digests.digest("f", walked)
