"""The embedded local service, for real: a detached daemon with a private Ray head and the
coordinator and worker actors, reached through its unix socket.

One service (module-scoped) serves the call tests; the lifecycle tests start their own
roots.  Every test stops what it started and checks that no process of it survives.
Roots are short directories in /tmp (Ray's session sockets must fit a unix socket path).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from devkit.processes import kind
from dockyard.cluster._ray import ray_temp_dir
from dockyard.cluster._service import (
    Proc,
    RunPaths,
    ServiceSettings,
    alive,
    connect,
    daemon_running,
    kill_processes,
    process_tree,
    stop_service,
)
from dockyard.scheduler._errors import ServiceError
from dockyard.scheduler._progress import Event, VertexCompleted, VertexLog, VertexStarted

T = TypeVar("T")
PROJECT = Path(__file__).resolve().parents[3]


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


class Sink:
    """An EventSink that keeps the events."""

    def __init__(self, on_event: Callable[[Event], None] | None = None) -> None:
        self.events: list[Event] = []
        self.on_event = on_event

    def emit(self, event: Event) -> None:
        self.events.append(event)
        if self.on_event is not None:
            self.on_event(event)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class Service:
    """A started root: its settings, daemon pid and the processes it runs."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.paths = RunPaths(settings.root)
        self.daemon = 0
        self.processes: set[Proc] = set()

    async def call(self, method: str, params: dict[str, Any] | None = None,
                   sink: Sink | None = None) -> Any:
        client = await connect(self.settings, start=False)
        async with client:
            return await client.call(method, params, sink)

    def start(self) -> Service:
        info = run(self._start())
        self.daemon = info["daemon"]
        self.processes = process_tree(self.daemon) | {(self.daemon, _start_time(self.daemon))}
        return self

    async def _start(self) -> Any:
        async with await connect(self.settings) as client:
            return await client.call("ping")

    def stop(self) -> None:
        """Stop it (if it runs) and check that nothing it started survives."""
        try:
            run(stop_service(self.settings, timeout=30))
            # The lock frees as the daemon exits; give its last processes a moment.
            deadline = time.monotonic() + 10
            while any(alive(p) for p in self.processes) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            leftovers = {p for p in self.processes if alive(p)}
            kill_processes(leftovers)
        assert not leftovers, f"processes left running after stop: {sorted(leftovers)}"
        assert not self.paths.socket.exists()


def _start_time(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]


@pytest.fixture
def new_root() -> Iterator[Callable[[], Path]]:
    """Makes short, fresh roots; removes them (and any Ray dir outside them) at the end."""
    made: list[Path] = []

    def make() -> Path:
        made.append(Path(tempfile.mkdtemp(prefix="dy-", dir="/tmp")))
        return made[-1]

    yield make
    for root in made:
        shutil.rmtree(ray_temp_dir(root), ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def service() -> Iterator[Service]:
    root = Path(tempfile.mkdtemp(prefix="dy-", dir="/tmp"))
    started = Service(ServiceSettings(root, idle_timeout=600))
    try:
        began = time.monotonic()
        started.start()
        print(f"\ncold start: {time.monotonic() - began:.2f}s", file=sys.stderr)
        yield started
    finally:
        try:
            started.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)


# --- calls ---------------------------------------------------------------------------


def test_solve_streams_events_through_coordinator_and_worker(service: Service) -> None:
    sink = Sink()
    result = run(service.call("solve", {"lines": ["one", "two"], "message": "hi"}, sink))
    assert result["echo"] == "hi"
    assert [type(e) for e in sink.events] == [VertexStarted, VertexLog, VertexLog,
                                             VertexCompleted]
    assert [e.data for e in sink.events if isinstance(e, VertexLog)] == [b"one\n", b"two\n"]
    ping = run(service.call("ping"))
    assert result["coordinator"] == ping["coordinator"]["pid"]
    assert ping["coordinator"]["worker"]["arches"] == ["amd64", "arm64"]
    assert len({service.daemon, ping["coordinator"]["pid"],
                ping["coordinator"]["worker"]["pid"]}) == 3


#: The embedded service's processes (issue 10), one each: the daemon (Ray's driver), Ray's
#: GCS and raylet, the raylet's two agents (it will not run without them) and the two
#: actors.  No dashboard API server (dashboard.py), autoscaler monitor (monitor.py), log
#: monitor (log_monitor.py) or idle Python worker (ray::IDLE).
SERVICE_PROCESSES = ["dockyard.cluster._daemon", "gcs_server", "ray::Coordinator",
                     "ray::DashboardAgent", "ray::RuntimeEnvAgent", "ray::WorkerActor",
                     "raylet"]


def _service_kinds(service: Service) -> list[str]:
    pids = [service.daemon, *(pid for pid, _ in process_tree(service.daemon))]
    return sorted(k for k in map(kind, pids) if k)


def test_the_service_runs_only_the_processes_it_uses(service: Service) -> None:
    run(service.call("solve", {"lines": ["x"]}, Sink()))
    deadline = time.monotonic() + 15  # a Python worker Ray starts and ends settles in ~1 s
    while (kinds := _service_kinds(service)) != SERVICE_PROCESSES:
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert kinds == SERVICE_PROCESSES


def test_warm_round_trip_is_fast(service: Service) -> None:
    async def measure() -> list[float]:
        times = []
        for _ in range(10):
            began = time.monotonic()
            async with await connect(service.settings, start=False) as client:
                await client.call("solve", {"lines": ["x"]}, Sink())
            times.append(time.monotonic() - began)
        return times

    times = run(measure())
    print(f"\nwarm connect+solve: median {statistics.median(times) * 1000:.1f} ms, "
          f"max {max(times) * 1000:.1f} ms", file=sys.stderr)
    assert statistics.median(times) < 0.3


def _statistics(service: Service) -> dict[str, Any]:
    stats: dict[str, Any] = run(service.call("statistics"))
    return stats


def _wait_cancelled(service: Service, before: dict[str, Any]) -> None:
    def settled() -> bool:
        now = _statistics(service)
        return bool(now["active"] == 0 and now["worker"]["running"] == 0
                and now["cancelled"] == before["cancelled"] + 1
                and now["worker"]["cancelled"] == before["worker"]["cancelled"] + 1)

    wait_until(settled, 15, "the coordinator's and the worker's tasks to be cancelled")


def test_cancelling_the_call_cancels_coordinator_and_worker(service: Service) -> None:
    before = _statistics(service)

    async def cancel_after_first_line() -> None:
        first = asyncio.Event()
        sink = Sink(lambda e: first.set() if isinstance(e, VertexLog) else None)
        async with await connect(service.settings, start=False) as client:
            call = asyncio.create_task(client.call(
                "solve", {"lines": [str(i) for i in range(100)], "delay": 0.1}, sink))
            await asyncio.wait_for(first.wait(), 10)
            call.cancel()  # what Ctrl-C does to the CLI's task
            with pytest.raises(asyncio.CancelledError):
                await call

    run(cancel_after_first_line())
    _wait_cancelled(service, before)


CLIENT = """
import asyncio, sys
from pathlib import Path
from dockyard.cluster._service import ServiceSettings, connect

class Sink:
    def emit(self, event):
        print(type(event).__name__, flush=True)

async def main():
    client = await connect(ServiceSettings(Path(sys.argv[1])), start=False)
    await client.call("solve", {"lines": [str(i) for i in range(100)], "delay": 0.1}, Sink())

asyncio.run(main())
"""


def test_a_client_that_dies_cancels_its_solve(service: Service) -> None:
    before = _statistics(service)
    env = dict(os.environ, PYTHONPATH=str(PROJECT))
    client = subprocess.Popen([sys.executable, "-c", CLIENT, str(service.settings.root)],
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert client.stdout is not None
        while client.stdout.readline().strip() != "VertexLog":
            assert client.poll() is None, "the client ended before any output"
        client.kill()
    finally:
        client.kill()
        client.wait()
    _wait_cancelled(service, before)


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_client_that_dies_during_the_frontend_stops_it(service: Service,
                                                         tmp_path: Path) -> None:
    """A legal Dockerfile whose conversion takes minutes (200,000 ENV lines for four
    platforms); the client is killed while the coordinator converts it.  The frontend
    stops within a step: the coordinator counts no frontend and burns no CPU after."""
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(
        "FROM scratch\n" + "".join(f"ENV V{i}={i}\n" for i in range(200_000)))
    coordinator = run(service.call("ping"))["coordinator"]["pid"]
    before = _statistics(service)
    env = dict(os.environ, PYTHONPATH=str(PROJECT), DOCKYARD_ROOT=str(service.settings.root))
    client = subprocess.Popen(
        [sys.executable, "-m", "dockyard", "build", "--progress=plain",
         "--platform=linux/amd64,linux/arm64,linux/arm/v7,linux/s390x", str(context)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        wait_until(lambda: _statistics(service)["frontends"] == 1, 60,
                   "the coordinator to run the frontend")
        time.sleep(1)
        client.kill()
    finally:
        client.kill()
        client.wait()
    wait_until(lambda: _statistics(service)["frontends"] == 0, 15, "the frontend to stop")
    _wait_cancelled_build(service, before)
    began = _cpu_seconds(coordinator)
    time.sleep(3)
    assert _cpu_seconds(coordinator) - began < 0.75  # a running frontend takes ~3 s


def _wait_cancelled_build(service: Service, before: dict[str, Any]) -> None:
    def settled() -> bool:
        now = _statistics(service)
        return bool(now["active"] == 0 and now["cancelled"] == before["cancelled"] + 1)

    wait_until(settled, 15, "the coordinator's build to be cancelled")


def test_unknown_call(service: Service) -> None:
    with pytest.raises(ServiceError) as info:
        run(service.call("frobnicate"))
    assert str(info.value) == ("the dockyard service has no call 'frobnicate'\nhint: use the "
                               "same dockyard version on the client and the service")


def test_a_second_daemon_for_the_root_refuses(service: Service) -> None:
    env = dict(os.environ, PYTHONPATH=str(PROJECT))
    done = subprocess.run([sys.executable, "-m", "dockyard.cluster._daemon", "--root",
                           str(service.settings.root)], env=env, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 3
    assert "another dockyard service holds" in done.stdout
    assert run(service.call("ping"))["daemon"] == service.daemon


# --- lifecycle -----------------------------------------------------------------------


def test_two_roots_are_two_services_and_concurrent_clients_share_one(
        new_root: Callable[[], Path]) -> None:
    services = [Service(ServiceSettings(new_root(), idle_timeout=600)) for _ in range(2)]

    async def ping_all() -> list[Any]:
        async def ping(one: Service) -> Any:
            async with await connect(one.settings) as client:
                return await client.call("ping")
        # Two clients per root, all at once: each root must start exactly one daemon.
        return await asyncio.gather(*(ping(s) for s in services for _ in range(2)))

    try:
        pings = run(ping_all())
        daemons = [p["daemon"] for p in pings]
        assert daemons[0] == daemons[1] and daemons[2] == daemons[3]
        assert daemons[0] != daemons[2]
        for one, daemon in zip(services, daemons[::2], strict=True):
            one.daemon = daemon
            one.processes = process_tree(daemon) | {(daemon, _start_time(daemon))}
            log = one.paths.log.read_text()
            assert log.count("ready on") == 1, log
        assert not (services[0].processes & services[1].processes)
        assert ray_temp_dir(services[0].settings.root).is_dir()
        assert ray_temp_dir(services[1].settings.root).is_dir()
    finally:
        try:
            services[0].stop()
        finally:
            services[1].stop()
    assert not any(daemon_running(one.paths) for one in services)


def test_a_crashed_daemon_is_replaced_and_an_idle_one_exits(
        new_root: Callable[[], Path]) -> None:
    crashed = Service(ServiceSettings(new_root(), idle_timeout=600)).start()
    try:
        os.kill(crashed.daemon, signal.SIGKILL)
        wait_until(lambda: not daemon_running(crashed.paths), 10, "the daemon lock to free")
        assert crashed.paths.socket.exists()  # stale: nobody cleaned up
        idle = Service(ServiceSettings(crashed.settings.root, idle_timeout=2)).start()
        assert idle.daemon != crashed.daemon
        # The replacement killed what the crashed daemon had left running.
        wait_until(lambda: not any(alive(p) for p in crashed.processes), 10,
                   "the crashed daemon's processes to go")
        assert run(idle.call("solve", {"lines": ["back"]}, Sink()))["echo"] is None
        began = time.monotonic()
        wait_until(lambda: not daemon_running(idle.paths), 30, "the idle daemon to exit")
        print(f"\nidle exit after {time.monotonic() - began:.1f}s", file=sys.stderr)
        assert "idle for" in idle.paths.log.read_text()
        idle.stop()
    finally:
        kill_processes(crashed.processes)
