"""The janitor against real runc and overlayfs: a worker process SIGKILLed during a RUN
leaves its container running and its mounts mounted; the next runtime on the root (or
``dockyard stop``'s ``clean_stale``) removes them, and nothing of another root."""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from workers_helpers import aio, mounts_under

from dockyard.cluster._gc_cmd import local_usage
from dockyard.scheduler._errors import ServiceError
from dockyard.workers._janitor import JanitorReport, claim_root, clean_stale, open_runtime

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 and os.environ.get("CI") != "true",
    reason="runc and overlayfs need root (under CI=true this is a failure)")

_PROJECT = Path(__file__).resolve().parents[3]

#: A worker in a child process: one overlay over the busybox layer, one RUN with a secret
#: (so a tmpfs in its bundle) that prints "started" and sleeps.
_WORKER = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from dockyard.workers._executor import Executor, SecretFile
    from dockyard.workers._snapshots import SnapshotStore
    from dockyard.workers._spec import ProcessSpec

    async def main(root: Path, base: Path) -> None:
        store, executor = SnapshotStore(root), Executor(root)
        def out(line: bytes) -> None:
            sys.stdout.buffer.write(line)
            sys.stdout.flush()
        async with store.mount([base], writable=True) as state:
            (state.upper / "written").write_bytes(b"x" * 4096)
            await executor.run(ProcessSpec(args=("/bin/sh", "-c", "echo started; exec sleep 1000")),
                               state.path, [SecretFile("/run/secrets/token", b"s3cret")],
                               stdout=out)

    asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2])))
""")


@dataclass
class Orphan:
    """A container whose worker was SIGKILLed mid-RUN."""

    root: Path
    container: str
    pid: int


def runc_list(root: Path) -> list[dict[str, object]]:
    done = subprocess.run(["runc", "--root", str(root / "run" / "runc"), "list", "-f",
                           "json"], capture_output=True, text=True, check=True)
    return list(json.loads(done.stdout or "null") or [])


def _read_started(child: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], timeout)
    line = child.stdout.readline() if ready else b""
    if line != b"started\n":
        child.kill()
        _, err = child.communicate()
        pytest.fail(f"the worker did not start its container: {line!r} {err.decode()}")


def start_orphan(root: Path, base: Path) -> Orphan:
    """Run ``sleep 1000`` through the Executor in a child, then SIGKILL the child: the
    executor's own clean-up never runs."""
    env = {**os.environ, "PYTHONPATH": str(_PROJECT)}
    child = subprocess.Popen([sys.executable, "-c", _WORKER, str(root), str(base)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    _read_started(child)
    os.kill(child.pid, signal.SIGKILL)
    child.communicate()
    [container] = runc_list(root)
    return Orphan(root, str(container["id"]), int(str(container["pid"])))


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.fixture
def roots(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """A factory of roots; whatever a test leaves in them is cleaned at the end."""
    made: list[Path] = []

    def make(name: str) -> Path:
        made.append(tmp_path / name)
        return made[-1]
    yield make
    for root in made:
        clean_stale(root, wait=5)


def assert_clean(root: Path) -> None:
    assert runc_list(root) == []
    assert mounts_under(root) == []
    assert list((root / "run" / "bundles").iterdir()) == []
    assert list((root / "snapshots" / "work").iterdir()) == []


def test_a_killed_worker_leaves_a_running_container_and_mounts(
        roots: Callable[[str], Path], busybox_rootfs: Callable[[str], Path]) -> None:
    root = roots("root")
    orphan = start_orphan(root, busybox_rootfs("amd64"))
    assert orphan.container.startswith("dockyard-") and alive(orphan.pid)
    mounted = mounts_under(root)
    assert any(m.endswith("/merged") for m in mounted)
    assert any(m.endswith(f"/run/bundles/{orphan.container}/secrets") for m in mounted)
    [scratch] = [kind for kind in local_usage(root).kinds if kind.kind == "run scratch"]
    assert scratch.count == 2 and 4096 <= scratch.size < 100_000  # not the mounted rootfs

    report = clean_stale(root)

    assert (report.containers_killed, report.mounts_removed, report.problems) == (1, 2, ())
    assert report.directories_removed == 2  # the bundle and the overlay work dir
    assert report.bytes_freed >= 4096       # the upper dir's file at least
    assert not alive(orphan.pid)
    assert_clean(root)
    assert "run scratch" not in [kind.kind for kind in local_usage(root).kinds]
    assert clean_stale(root) == JanitorReport()


def test_another_roots_container_and_mounts_survive(
        roots: Callable[[str], Path], busybox_rootfs: Callable[[str], Path]) -> None:
    base = busybox_rootfs("amd64")
    mine, other = roots("mine"), roots("other")
    start_orphan(mine, base)
    theirs = start_orphan(other, base)
    other_mounts = mounts_under(other)

    assert clean_stale(mine).containers_killed == 1

    assert_clean(mine)
    assert [c["status"] for c in runc_list(other)] == ["running"] and alive(theirs.pid)
    assert mounts_under(other) == other_mounts
    assert clean_stale(other).containers_killed == 1
    assert_clean(other)


_libc = ctypes.CDLL(None, use_errno=True)


def test_mounts_outside_dockyards_places_are_kept(roots: Callable[[str], Path]) -> None:
    """A volume mounted in the root (here a tmpfs on cachemounts/vol) is the user's."""
    root = roots("root")
    volume = root / "cachemounts" / "vol"
    volume.mkdir(parents=True)
    assert _libc.mount(b"tmpfs", bytes(volume), b"tmpfs", 0, b"size=1m") == 0
    try:
        (root / "tmp").mkdir()
        (root / "tmp" / "layer-123").mkdir()
        (root / "tmp" / "gc-abc").mkdir()
        (root / "tmp" / "cache-blob-x").write_bytes(b"12345")
        report = clean_stale(root)
        assert mounts_under(root) == [str(volume)]
        assert (report.mounts_removed, report.directories_removed, report.files_removed,
                report.bytes_freed) == (0, 1, 1, 5)
        assert sorted(p.name for p in (root / "tmp").iterdir()) == ["gc-abc"]
    finally:
        _libc.umount2(bytes(volume), 0)


@aio
async def test_a_live_runtime_holds_the_root(roots: Callable[[str], Path],
                                             busybox_rootfs: Callable[[str], Path]) -> None:
    """The restarted worker's runtime cleans first; while it lives, nothing else may."""
    root = roots("root")
    orphan = start_orphan(root, busybox_rootfs("amd64"))

    runtime = open_runtime(root)
    try:
        assert not alive(orphan.pid)
        assert_clean(root)
        with pytest.raises(ServiceError, match="a live dockyard worker already uses"):
            clean_stale(root)
        with pytest.raises(ServiceError, match="already uses"):
            open_runtime(root)
    finally:
        await runtime.aclose()
    assert clean_stale(root) == JanitorReport()


def test_the_lock_is_released_when_its_holder_dies(roots: Callable[[str], Path]) -> None:
    root = roots("root")
    lock, _ = claim_root(root)
    with pytest.raises(ServiceError):
        clean_stale(root, wait=0.2)
    lock.release()
    assert not lock.held
    env = {**os.environ, "PYTHONPATH": str(_PROJECT)}
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time; from pathlib import Path; "
                               "from dockyard.workers._janitor import claim_root; "
                               "claim_root(Path(sys.argv[1])); print('held', flush=True); "
                               "time.sleep(1000)", str(root)],
                              stdout=subprocess.PIPE, env=env)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        with pytest.raises(ServiceError):
            clean_stale(root)
    finally:
        holder.kill()
        holder.wait()
    assert clean_stale(root, wait=5) == JanitorReport()


def test_a_worker_actor_cleans_its_root_when_it_starts(
        roots: Callable[[str], Path], busybox_rootfs: Callable[[str], Path]) -> None:
    """What Ray does after a worker died: the same actor class, on the same root, again
    (here without Ray: the constructor is what a restart runs)."""
    from dockyard.workers._actor import WorkerActor

    root = roots("root")
    orphan = start_orphan(root, busybox_rootfs("amd64"))

    actor = WorkerActor(str(root), ["amd64"])
    try:
        assert not alive(orphan.pid)
        assert_clean(root)
        with pytest.raises(ServiceError, match="already uses"):
            WorkerActor(str(root), ["amd64"])
    finally:
        actor._root_lock.release()
    assert clean_stale(root) == JanitorReport()


@pytest.mark.parametrize("made", [True, False], ids=["left over", "never used"])
def test_dockyard_stop_removes_what_workers_left(
        made: bool, roots: Callable[[str], Path],
        busybox_rootfs: Callable[[str], Path]) -> None:
    """``dockyard stop`` with no service running (it crashed, or was killed) still leaves
    nothing running or mounted under the root, and creates nothing in an unused one."""
    root = roots("root")
    if made:
        start_orphan(root, busybox_rootfs("amd64"))
    env = {**os.environ, "PYTHONPATH": str(_PROJECT), "DOCKYARD_ROOT": str(root)}
    done = subprocess.run([sys.executable, "-m", "dockyard", "stop"], env=env,
                          capture_output=True, text=True, timeout=60, check=True)
    assert f"no dockyard service is running for {root}" in done.stderr
    if made:
        assert f"clean-up of {root}: 1 containers killed, 2 mounts removed" in done.stderr
        assert_clean(root)
    else:
        assert f"clean-up of {root}: nothing left by a previous worker" in done.stderr
        assert not root.exists()
