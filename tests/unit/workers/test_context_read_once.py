"""One build reads its context directory once, however many threads ask at once (a
source's identity and a copy's checksum are computed together, each in a thread):

- ``ContextDigests`` (workers/_context_digest.py) reads a file's content once per run,
  even when it is racy (written within ``RACY_NS`` of the run's start) and two threads
  ask for it at once; a racy file is still never kept by the index;
- ``LocalContext`` (workers/_context_source.py) walks the directory once.

The racy condition comes from the ``clock`` argument, and the threads' interleaving is
forced with events (no sleeps): the second thread asks only while the first one is
inside its read or walk, and is let go once it has been told "not yet known".
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from dockyard.scheduler._errors import SolveError
from dockyard.workers._context_digest import ContextDigests, StatKey
from dockyard.workers._context_source import LocalContext
from dockyard.workers._context_walk import ContextEntry

CONTENT = b"changed\n"
WAIT = 10  # seconds: only a broken test waits this long; nothing is timed by it


def _racy_file(tmp_path: Path) -> tuple[Path, int]:
    """A file and a clock reading for which it is racy (written "just now")."""
    path = tmp_path / "f.txt"
    path.write_bytes(CONTENT)
    info = path.stat()
    return path, max(info.st_mtime_ns, info.st_ctime_ns)


def test_a_racy_file_is_read_once_per_run_and_never_kept(tmp_path: Path) -> None:
    _, now = _racy_file(tmp_path)
    digests = ContextDigests(tmp_path, clock=lambda: now)
    digests.listed(["f.txt"])
    first, second = digests.digest("f.txt"), digests.digest("f.txt")
    assert first == second == hashlib.sha256(CONTENT).hexdigest()
    stats = digests.statistics()
    assert (stats.files_hashed, stats.bytes_hashed, stats.hits) == (1, len(CONTENT), 1)
    assert stats.entries == 0
    assert digests.to_wire(str(tmp_path))["entries"] == []


def test_a_racy_file_changed_in_the_run_is_read_again(tmp_path: Path) -> None:
    """What a racy file is remembered by is its stat: another stat, another read."""
    path, now = _racy_file(tmp_path)
    digests = ContextDigests(tmp_path, clock=lambda: now + 10**12)  # both writes racy
    digests.digest("f.txt")
    path.write_bytes(b"longer than before\n")
    assert digests.digest("f.txt") == hashlib.sha256(b"longer than before\n").hexdigest()
    assert digests.statistics().files_hashed == 2


class _Gated(ContextDigests):
    """Digests whose first read waits for ``go``, and which count lookups that miss."""

    def __init__(self, root: Path, now: int) -> None:
        super().__init__(root, clock=lambda: now)
        self.reading = threading.Event()  # the first read has begun
        self.go = threading.Event()  # the first read may go on
        self.misses = threading.Semaphore(0)  # released once per missed lookup
        self.reads = 0

    def _read(self, path: str) -> tuple[str, StatKey]:
        self.reads += 1
        if self.reads == 1:
            self.reading.set()
            assert self.go.wait(WAIT)
        return super()._read(path)

    def _lookup(self, path: str, key: StatKey) -> str | None:
        found = super()._lookup(path, key)
        if found is None:
            self.misses.release()
        return found


def test_a_racy_file_asked_for_by_two_threads_at_once_is_read_once(tmp_path: Path) -> None:
    """The second thread misses while the first is reading: it waits for that read."""
    _, now = _racy_file(tmp_path)
    digests = _Gated(tmp_path, now)
    results: dict[str, str] = {}

    def ask(name: str) -> None:
        results[name] = digests.digest("f.txt")

    first = threading.Thread(target=ask, args=("first",))
    first.start()
    assert digests.misses.acquire(timeout=WAIT)
    assert digests.reading.wait(WAIT)
    second = threading.Thread(target=ask, args=("second",))
    second.start()
    assert digests.misses.acquire(timeout=WAIT)  # it asked, and was not told
    digests.go.set()
    for thread in (first, second):
        thread.join(WAIT)
    assert results == {"first": hashlib.sha256(CONTENT).hexdigest(),
                       "second": hashlib.sha256(CONTENT).hexdigest()}
    stats = digests.statistics()
    assert (digests.reads, stats.files_hashed, stats.bytes_hashed) == (1, 1, len(CONTENT))
    assert (stats.hits, stats.entries) == (1, 0)


def test_a_failed_read_leaves_no_read_lock(tmp_path: Path) -> None:
    """A read that raised gives the path up: the next asker reads for itself."""
    path, now = _racy_file(tmp_path)
    info = path.stat()  # the walk's stat, then the file goes
    path.unlink()
    digests = ContextDigests(tmp_path, clock=lambda: now)
    for _ in range(2):
        with pytest.raises(SolveError, match="cannot read 'f.txt'"):
            digests.digest("f.txt", info)
    assert digests._reading == {}  # noqa: SLF001 -- the invariant under test
    path.write_bytes(CONTENT)
    assert digests.digest("f.txt") == hashlib.sha256(CONTENT).hexdigest()


class _GatedWalk(LocalContext):
    """A context whose first walk waits for ``go``, and which tells when a thread other
    than the walker finds the entries not listed yet."""

    def __init__(self, root: Path) -> None:
        self.walking = threading.Event()  # the first walk has begun
        self.go = threading.Event()  # the first walk may go on
        self.other_found_none = threading.Event()
        self.walker: threading.Thread | None = None
        self.walks = 0
        self._stored: dict[str, ContextEntry] | None = None
        super().__init__(root)

    @property  # type: ignore[override]
    def _entries(self) -> dict[str, ContextEntry] | None:
        if self._stored is None and threading.current_thread() is not self.walker:
            self.other_found_none.set()
        return self._stored

    @_entries.setter
    def _entries(self, value: dict[str, ContextEntry] | None) -> None:
        self._stored = value

    def _list_entries(self) -> list[ContextEntry]:
        self.walks += 1
        if self.walks == 1:
            self.walker = threading.current_thread()
            self.walking.set()
            assert self.go.wait(WAIT)
        return list(super()._list_entries())


def test_two_threads_asking_at_once_walk_the_context_once(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_bytes(CONTENT)
    context = _GatedWalk(tmp_path)
    found: dict[str, dict[str, ContextEntry]] = {}

    def ask(name: str) -> None:
        found[name] = context.entries

    first = threading.Thread(target=ask, args=("first",))
    first.start()
    assert context.walking.wait(WAIT)
    second = threading.Thread(target=ask, args=("second",))
    second.start()
    assert context.other_found_none.wait(WAIT)  # it asked while the walk was running
    context.go.set()
    for thread in (first, second):
        thread.join(WAIT)
    assert context.walks == 1
    assert found["first"] is found["second"]
    assert list(found["first"]) == ["f.txt"]
