"""Removing what a dead worker left under its root: containers, mounts, bundles, scratch.

A worker killed during a RUN (its actor, or the whole service) leaves the runc container
running (re-parented to init), its overlay and its secrets tmpfs mounted, its bundle and
its scratch files behind.  Ray restarts a worker actor on the same node with the same
``DOCKYARD_ROOT``, so the next runtime cleans up before it takes work:
``claim_root(root)`` takes ``<root>/run/worker.lock`` (an flock the live runtime holds for
its whole life: a second runtime on the same root refuses to start instead of cleaning
under a live one), then, in order:

1. every container of ``<root>/run/runc`` named ``dockyard-...``: ``runc kill KILL``, then
   SIGKILL of what is left of its init's process tree, a wait until runc sees it stopped,
   ``runc delete --force``;
2. every mount (``/proc/self/mountinfo``) below the places where dockyard mounts --
   ``snapshots/work``, ``run/bundles``, ``run/runc``, ``tmp`` of THIS root -- deepest
   first; never the root itself or a volume mounted elsewhere in it (``cache``, say);
3. the bundle directories, the overlay work directories (``upper``/``work``/``merged``)
   and the entries of ``tmp`` and ``contexts/tmp`` (staging dirs, temp files), but
   prune's trash (``gc-*``, prune removes it itself).  A directory that still holds a
   mount is kept and named in the report's ``problems``: removing through a mount would
   delete what it shows.

``clean_stale(root)`` is the same with the lock released at the end (``dockyard stop``,
once the service has exited).  ``open_runtime(root)`` claims the root and makes the
``WorkerRuntime`` that holds the lock until its ``aclose``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dockyard.scheduler._errors import LayerError, ServiceError

from ._snapshots import unmount

if TYPE_CHECKING:
    from ._runtime import WorkerRuntime

__all__ = ["CONTAINER_PREFIX", "JanitorReport", "MountEntry", "RootLock", "claim_root",
           "clean_stale", "entry_size", "leftover_entries", "lock_root", "log_report",
           "open_runtime", "parse_mountinfo", "stale_mounts"]

_log = logging.getLogger(__name__)

#: The executor's container ids: ``dockyard-<16 hex>`` (workers/_executor.py).
CONTAINER_PREFIX = "dockyard-"
#: Below the root, where dockyard mounts (and nothing else should).
_MOUNT_PLACES = ("snapshots/work", "run/bundles", "run/runc", "tmp")
#: Below the root, directories whose every entry belongs to a run (but ``_KEEP``).
_SCRATCH_PLACES = ("run/bundles", "snapshots/work", "tmp", "contexts/tmp")
_KEEP = ("gc-",)  # prune's trash in tmp: prune removes it (cluster/_gc_cmd.py)
_GONE_TIMEOUT = 5.0  # seconds to wait for a killed container to stop
_POLL = 0.05


@dataclass(frozen=True, slots=True)
class JanitorReport:
    """What one clean-up removed; ``problems`` says what it had to leave and why."""

    containers_killed: int = 0    # dockyard containers killed (if running) and deleted
    mounts_removed: int = 0       # mounts unmounted below the root
    directories_removed: int = 0  # bundles, work dirs, staging dirs
    files_removed: int = 0        # temp files
    bytes_freed: int = 0          # bytes of the files removed
    problems: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.containers_killed or self.mounts_removed or self.directories_removed
                    or self.files_removed or self.problems)

    def line(self, root: Path) -> str:
        """The report as one log line."""
        if not self:
            return f"clean-up of {root}: nothing left by a previous worker"
        text = (f"clean-up of {root}: {self.containers_killed} containers killed, "
                f"{self.mounts_removed} mounts removed, {self.directories_removed} "
                f"directories and {self.files_removed} files removed, "
                f"{self.bytes_freed} bytes freed")
        return text + "".join(f"; kept {problem}" for problem in self.problems)


# --- the lock ------------------------------------------------------------------------


class RootLock:
    """``<root>/run/worker.lock`` held (flock) by this process until ``release``."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd  # the open lock file; None once released

    def __repr__(self) -> str:
        return f"<RootLock {self.path} {'held' if self._fd is not None else 'released'}>"

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # releases the flock

    def __enter__(self) -> RootLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _lock_path(root: Path) -> Path:
    return root / "run" / "worker.lock"


def lock_root(root: Path, *, wait: float = 0.0) -> RootLock:
    """Hold the root's worker lock, waiting up to ``wait`` seconds for it; a
    ``ServiceError`` when a live worker keeps it."""
    path = _lock_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return RootLock(path, fd)
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise _busy(root, path) from None
            time.sleep(_POLL)


def _busy(root: Path, path: Path) -> ServiceError:
    return ServiceError(f"a live dockyard worker already uses {root} (it holds {path}); "
                        "a second one would remove its running containers and mounts",
                        hint="give each worker its own DOCKYARD_ROOT, or stop the other "
                             "one first (dockyard stop / dockyard node stop)")


# --- the entry points --------------------------------------------------------------------


def claim_root(root: Path, *, runc: str = "runc", wait: float = 0.0
               ) -> tuple[RootLock, JanitorReport]:
    """Take the root's lock and clean what dead workers left; the caller keeps the lock
    for as long as it runs containers there (blocking: call it in a thread)."""
    lock = lock_root(root, wait=wait)
    try:
        return lock, _clean(root, runc)
    except BaseException:
        lock.release()
        raise


def clean_stale(root: Path, *, runc: str = "runc", wait: float = 0.0) -> JanitorReport:
    """``claim_root`` and release the lock again: what ``dockyard stop`` runs once the
    service has exited (``wait``: for a dying worker to let go of the lock)."""
    lock, report = claim_root(root, runc=runc, wait=wait)
    lock.release()
    return report


def open_runtime(root: Path, **options: Any) -> WorkerRuntime:
    """A ``WorkerRuntime(root, **options)`` on a cleaned root, holding the root's lock
    until its ``aclose`` (blocking: an event loop calls it in a thread)."""
    from ._runtime import WorkerRuntime  # noqa: PLC0415 -- heavy; the CLI needs none of it

    lock, report = claim_root(root)
    try:
        runtime = WorkerRuntime(root, **options)
    except BaseException:
        lock.release()
        raise
    runtime.root_lock = lock
    log_report(root, report)
    return runtime


def log_report(root: Path, report: JanitorReport) -> None:
    """One log line: a warning when a dead worker had left something, else info."""
    _log.log(logging.WARNING if report else logging.INFO, "%s", report.line(root))


def _clean(root: Path, runc: str) -> JanitorReport:
    killed, problems = _remove_containers(root, runc)
    if problems:  # a container may still run: its mounts and bundle stay with it
        return JanitorReport(killed, problems=(*problems, "every mount and directory "
                                               "(a container may still use them)"))
    unmounted, mount_problems = _remove_mounts(root)
    dirs, files, size, dir_problems = _remove_scratch(root)
    return JanitorReport(killed, unmounted, dirs, files, size,
                         tuple(problems + mount_problems + dir_problems))


# --- 1. containers ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Container:
    id: str
    pid: int
    status: str


@dataclass(frozen=True, slots=True)
class _Runc:
    """runc over one state directory."""

    binary: str
    state: Path

    def argv(self, *args: str) -> list[str]:
        return [self.binary, "--root", str(self.state), *args]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(self.argv(*args), capture_output=True, text=True,
                                  timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise ServiceError(f"cannot run {self.binary} {args[0]} for {self.state}: {err}",
                               hint="install runc (Debian: apt-get install runc)") from err

    def containers(self) -> list[_Container]:
        done = self.run("list", "-f", "json")
        try:
            if done.returncode == 0:
                return _parse_list(done.stdout)
        except (ValueError, TypeError, KeyError, AttributeError):
            pass
        raise ServiceError(f"runc list of {self.state} failed: {done.stderr.strip()}",
                           hint="check the state directory is runc's and readable")

    def status(self, container_id: str) -> str:
        done = self.run("state", container_id)
        if done.returncode != 0:
            return "stopped"  # gone already
        return str(json.loads(done.stdout).get("status", "stopped"))


def _parse_list(text: str) -> list[_Container]:
    """dockyard's containers in ``runc list -f json``'s output (``null`` when none)."""
    entries: Any = json.loads(text or "null") or []
    return [_Container(str(e["id"]), int(e.get("pid") or 0), str(e.get("status", "")))
            for e in entries if str(e.get("id", "")).startswith(CONTAINER_PREFIX)]


def _remove_containers(root: Path, binary: str) -> tuple[int, list[str]]:
    """Kill and delete dockyard's containers of the root.  Without runc (a machine that
    never ran a RUN) or with runc failing, the rest of the clean-up still runs and the
    report names the containers' state directory."""
    runc = _Runc(binary, root / "run" / "runc")
    if not any(runc.state.glob(f"{CONTAINER_PREFIX}*")):
        return 0, []
    try:
        found = runc.containers()
    except ServiceError as err:
        return 0, [f"the containers in {runc.state} ({err.message})"]
    count, problems = 0, []
    for container in found:
        try:
            removed = _remove_container(runc, container)
        except ServiceError as err:
            problems.append(f"container {container.id} ({err.message})")
            continue
        if removed:
            count += 1
        else:
            problems.append(f"container {container.id} (runc could not delete it)")
    return count, problems


def _remove_container(runc: _Runc, container: _Container) -> bool:
    if container.status not in ("stopped", ""):
        tree = _process_tree(container.pid) if container.pid > 0 else set()
        if container.status == "paused":
            runc.run("resume", container.id)
        runc.run("kill", container.id, "KILL")
        _kill_all(tree)  # what runc's kill did not reach (a container without a pid ns)
        _wait_stopped(runc, container.id)
    runc.run("delete", "--force", container.id)
    return not (runc.state / container.id).exists()


def _wait_stopped(runc: _Runc, container_id: str) -> None:
    deadline = time.monotonic() + _GONE_TIMEOUT
    while runc.status(container_id) != "stopped" and time.monotonic() < deadline:
        time.sleep(_POLL)


_Proc = tuple[int, str]  # (pid, start time): one process, whatever reuses its pid later


def _stat(pid: int) -> list[str]:
    """/proc/<pid>/stat's fields after the command name (state first)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _process_tree(pid: int) -> set[_Proc]:
    """``pid`` and its live descendants."""
    children: dict[int, list[_Proc]] = {}
    found: set[_Proc] = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                fields = _stat(int(entry.name))
                proc = (int(entry.name), fields[19])
                children.setdefault(int(fields[1]), []).append(proc)
                if proc[0] == pid:
                    found.add(proc)
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child[0])
    return found


def _kill_all(processes: set[_Proc]) -> None:
    for pid, start in processes:
        with contextlib.suppress(OSError, IndexError):
            if _stat(pid)[19] == start:
                os.kill(pid, signal.SIGKILL)


# --- 2. mounts ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MountEntry:
    """One line of /proc/self/mountinfo (the fields the janitor needs)."""

    mount_id: int
    parent_id: int
    mountpoint: str
    fstype: str = ""


def _unescape(text: str) -> str:
    r"""mountinfo's octal escapes (``\040`` space, ``\011`` tab, ``\012`` newline,
    ``\134`` backslash) decoded."""
    out, index = [], 0
    while index < len(text):
        chunk = text[index:index + 4]
        if len(chunk) == 4 and chunk[0] == "\\" and all(c in "01234567" for c in chunk[1:]):
            out.append(chr(int(chunk[1:], 8)))
            index += 4
        else:
            out.append(text[index])
            index += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """The mounts of a mountinfo text, in its order (malformed lines skipped)."""
    entries = []
    for line in text.splitlines():
        fields = line.split()
        try:
            separator = fields.index("-", 6)
            entries.append(MountEntry(int(fields[0]), int(fields[1]), _unescape(fields[4]),
                                      fields[separator + 1]))
        except (ValueError, IndexError):
            continue
    return entries


def stale_mounts(entries: Sequence[MountEntry], root: Path) -> list[str]:
    """The mount points strictly below ``root``'s mount places (``_MOUNT_PLACES``), in
    the order to unmount them: deepest first; of one path, the latest mount first."""
    places = [os.path.join(os.path.normpath(root), place) + "/" for place in _MOUNT_PLACES]
    found = [e for e in entries if any(e.mountpoint.startswith(p) for p in places)]
    found.sort(key=lambda e: (e.mountpoint.count("/"), e.mount_id), reverse=True)
    return [entry.mountpoint for entry in found]


def _mounts_now() -> list[MountEntry]:
    return parse_mountinfo(Path("/proc/self/mountinfo").read_text())


def _real_root(root: Path) -> Path:
    """``root`` as mountinfo names it (symlinks resolved)."""
    return Path(os.path.realpath(root))


def _remove_mounts(root: Path) -> tuple[int, list[str]]:
    count, problems = 0, []
    for mountpoint in stale_mounts(_mounts_now(), _real_root(root)):
        try:
            unmount(Path(mountpoint), missing_ok=True)
            count += 1
        except LayerError as err:
            problems.append(f"the mount {mountpoint} ({err.message})")
    return count, problems


# --- 3. directories and files ------------------------------------------------------------


def leftover_entries(root: Path) -> list[Path]:
    """The entries of the root's scratch places (bundles, work dirs, staging dirs, temp
    files): a live worker's runs, or what a dead one left."""
    found = []
    for place in _SCRATCH_PLACES:
        with contextlib.suppress(OSError), os.scandir(root / place) as entries:
            found += [Path(e.path) for e in entries if not e.name.startswith(_KEEP)]
    return found


def entry_size(path: Path) -> int:
    """Bytes of the files at or below ``path`` (hard links once, symlinks not followed,
    other filesystems -- a mounted overlay, a tmpfs -- not entered, as ``du -x``)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    stack = [path]
    device: int | None = None
    while stack:
        current = stack.pop()
        try:
            info = os.lstat(current)
        except OSError:
            continue
        device = info.st_dev if device is None else device
        if stat.S_ISDIR(info.st_mode):
            if info.st_dev == device:
                with contextlib.suppress(OSError):
                    stack += [Path(e.path) for e in os.scandir(current)]
        elif (info.st_dev, info.st_ino) not in seen:
            seen.add((info.st_dev, info.st_ino))
            total += info.st_size
    return total


def _remove_scratch(root: Path) -> tuple[int, int, int, list[str]]:
    mounted = [m.mountpoint for m in _mounts_now()]
    real = _real_root(root)
    dirs = files = size = 0
    problems = []
    for path in leftover_entries(root):
        inside = str(real / path.relative_to(root)) + "/"
        held = [m for m in mounted if (m + "/").startswith(inside)]
        if held:
            problems.append(f"{path} (still mounted: {held[0]})")
            continue
        is_dir = path.is_dir() and not path.is_symlink()
        bytes_held = entry_size(path)
        if not _remove(path, is_dir):
            problems.append(f"{path} (could not be removed)")
            continue
        dirs, files = (dirs + 1, files) if is_dir else (dirs, files + 1)
        size += bytes_held
    return dirs, files, size, problems


def _remove(path: Path, is_dir: bool) -> bool:
    if is_dir:
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
            path.unlink()
    return not os.path.lexists(path)


