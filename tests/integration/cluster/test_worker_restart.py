"""A worker actor killed during a RUN, for real: the embedded service of its own root,
a build whose RUN sleeps, SIGKILL of the worker actor's process.  Its container keeps
running and its mounts stay -- until Ray restarts the actor, whose start removes them;
``dockyard stop`` then leaves nothing running or mounted under the root.  And the same
for the coordinator actor: Ray restarts it, and the service goes on."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devkit.faults import settle
from devkit.root_state import service_processes
from dockyard.cluster._service import RunPaths, process_tree

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 and os.environ.get("CI") != "true",
    reason="runc and overlayfs need root (under CI=true this is a failure)")

PROJECT = Path(__file__).resolve().parents[3]


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="dyr-", dir="/tmp"))
    try:
        yield path
    finally:
        _cli(path, "stop", timeout=90)
        shutil.rmtree(path, ignore_errors=True)


def _environ(root: Path) -> dict[str, str]:
    return {**os.environ, "DOCKYARD_ROOT": str(root), "PYTHONPATH": str(PROJECT)}


def _cli(root: Path, *argv: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dockyard", *argv], env=_environ(root),
                          cwd=root, capture_output=True, text=True, timeout=timeout,
                          check=False)


def _containers(root: Path) -> dict[str, int]:
    """Running container id -> its init pid, under the root's runc state."""
    done = subprocess.run(["runc", "--root", str(root / "run" / "runc"), "list", "-f",
                           "json"], capture_output=True, text=True, check=True)
    return {c["id"]: c["pid"] for c in json.loads(done.stdout or "null") or []
            if c["status"] == "running"}


def _mounts(root: Path) -> list[str]:
    with open("/proc/self/mountinfo") as info:
        return [p for p in (line.split()[4] for line in info) if p.startswith(f"{root}/")]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _worker_pid(root: Path) -> int:
    daemon = int(RunPaths(root).pid.read_text())
    found = [pid for pid, _ in process_tree(daemon)
             if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::WorkerActor")]
    assert len(found) == 1, found
    return found[0]


def _until(check: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_a_restarted_worker_removes_its_predecessors_container(
        root: Path, busybox_image: Any) -> None:
    context = root.parent / f"{root.name}-context"
    context.mkdir()
    (context / "Dockerfile").write_text(
        f"FROM {busybox_image.reference}\nRUN echo sleeping && sleep 1003\n")
    build = subprocess.Popen([sys.executable, "-m", "dockyard", "build", "--progress=plain",
                              "--no-cache", str(context)], env=_environ(root), cwd=root,
                             stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        assert build.stderr is not None
        for raw in build.stderr:
            if raw.rstrip().endswith(b" sleeping"):
                break
        [(container, init)] = _containers(root).items()
        bundle = root / "run" / "bundles" / container
        assert bundle.is_dir() and any(m.endswith("/merged") for m in _mounts(root))

        old_worker = _worker_pid(root)
        os.kill(old_worker, signal.SIGKILL)

        # Ray restarts the actor; its start kills the orphan and removes its traces (the
        # coordinator may then run the step again: a new container, not the old one).
        _until(lambda: not _alive(init) and not bundle.exists(), 60, "the clean-up")
        assert container not in _containers(root)
        assert _worker_pid(root) != old_worker
    finally:
        build.kill()
        build.wait()
        shutil.rmtree(context, ignore_errors=True)

    done = _cli(root, "stop", timeout=90)
    assert done.returncode == 0, done.stderr
    assert f"clean-up of {root}:" in done.stderr
    assert _containers(root) == {}
    assert _mounts(root) == []
    assert list((root / "run" / "bundles").iterdir()) == []
    assert list((root / "snapshots" / "work").iterdir()) == []


def test_a_killed_coordinator_is_replaced_and_its_build_fails_with_a_true_hint(
        root: Path, busybox_image: Any) -> None:
    """Ray restarts the embedded service's coordinator: the build it ran fails saying so,
    the next build works without 'dockyard stop', and the worker closes the dead
    coordinator's build (its RUN, its scratch) when the new one opens a build there."""
    context = root.parent / f"{root.name}-context"
    context.mkdir()
    (context / "Dockerfile").write_text(
        f"FROM {busybox_image.reference}\nRUN echo sleeping && sleep 1004\n")
    try:
        build = subprocess.Popen([sys.executable, "-m", "dockyard", "build",
                                  "--progress=plain", str(context)], env=_environ(root),
                                 cwd=root, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
        assert build.stderr is not None
        for raw in build.stderr:
            if raw.rstrip().endswith(b" sleeping"):
                break
        service = service_processes(root)
        assert service is not None and service.coordinator is not None
        os.kill(service.coordinator, signal.SIGKILL)
        said = build.stderr.read().decode()
        assert build.wait(timeout=120) == 1, said
        assert ("error: the coordinator of the dockyard service died while running this "
                "build; Ray restarted it\nhint: build again\n") in said, said

        (context / "Dockerfile").write_text(f"FROM {busybox_image.reference}\nRUN true\n")
        done = _cli(root, "build", "--progress=plain", str(context))
        assert done.returncode == 0, done.stderr
        again = service_processes(root)
        assert again is not None and again.daemon == service.daemon  # the same service
        assert again.coordinator not in (None, service.coordinator)
        assert settle(root) == []  # the old build's RUN and scratch are gone
    finally:
        shutil.rmtree(context, ignore_errors=True)
