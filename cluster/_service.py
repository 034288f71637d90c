"""The client side of the embedded local service: find the root's daemon, or start it, and
talk to it.

``connect(settings)`` connects to ``<root>/run/dockyard.sock``.  When nobody answers, it
takes ``<root>/run/start.lock`` (so concurrent clients start one daemon between them),
looks again, and if still nobody answers starts ``python -m dockyard.cluster._daemon --root R``
detached (its own session, output to ``<root>/run/daemon.log``) and waits until the socket
answers: the daemon binds it only once Ray and both actors are up (the ready handshake).

A running daemon holds ``<root>/run/daemon.lock`` (flock) for its whole life, so a client
tells "starting or hung" (lock held) from "crashed" (lock free; the kernel released it):
a crashed daemon's socket and pid file are removed and a new daemon is started.

``connect_running`` is the warm path without an event loop: a ``BlockingClient`` of a
service that already answers, or None.  asyncio (and subprocess, for starting a daemon)
are imported inside the functions that use them: a build against a running service never
pays their import (~30 ms of a ~200 ms no-op build).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dockyard
from dockyard.scheduler._errors import DockyardError, ServiceError
from dockyard.scheduler._progress import EventSink, event_from_wire

from ._wire import (
    Ask,
    BlockingWebSocket,
    Cancel,
    Endpoint,
    EventFrame,
    Failure,
    Frame,
    Handlers,
    Reply,
    Request,
    Response,
    WebSocket,
    WireClosed,
    WireError,
    answer,
    decode_frame,
    encode_frame,
    error_from_failure,
)

if TYPE_CHECKING:
    import subprocess

__all__ = [
    "BlockingClient", "Proc", "RunPaths", "ServiceClient", "ServiceSettings", "alive",
    "clean_root", "connect", "connect_endpoint", "connect_endpoint_async", "connect_running",
    "daemon_running", "default_root", "kill_processes",
    "process_tree", "stop_service", "try_flock",
]

#: The directory holding the ``dockyard`` package (site-packages, or a source tree), put
#: on PYTHONPATH of the processes started here; not the package's own folder, which would
#: make ``scheduler`` a top-level name again (PyPI has another ``scheduler``).
_PROJECT = Path(dockyard.__file__).parent.parent
_POLL = 0.05  # seconds between looks at a starting daemon or a held lock


def default_root(environ: Mapping[str, str] = os.environ) -> Path:
    """``DOCKYARD_ROOT``, else ``$XDG_DATA_HOME/dockyard`` (``~/.local/share/dockyard``)."""
    if environ.get("DOCKYARD_ROOT"):
        return Path(environ["DOCKYARD_ROOT"]).absolute()
    data = environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "dockyard"


@dataclass(frozen=True, slots=True)
class RunPaths:
    """The files of a root's service, all under ``<root>/run``."""

    root: Path

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def socket(self) -> Path:
        return self.run / "dockyard.sock"

    @property
    def pid(self) -> Path:
        return self.run / "dockyard.pid"

    @property
    def start_lock(self) -> Path:
        return self.run / "start.lock"

    @property
    def daemon_lock(self) -> Path:
        return self.run / "daemon.lock"

    @property
    def log(self) -> Path:
        return self.run / "daemon.log"

    @property
    def procs(self) -> Path:
        """The processes the daemon started ("pid starttime" lines), for a client to kill
        when the daemon died without cleaning up."""
        return self.run / "daemon.procs"


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    """How a client finds or starts the service of one root."""

    root: Path
    idle_timeout: float = 600.0  # the daemon exits after this long without a call
    start_timeout: float = 120.0  # how long a client waits for a new daemon to be ready
    python: str = sys.executable  # the interpreter that runs the daemon


# --- locks -----------------------------------------------------------------------------


@contextlib.contextmanager
def try_flock(path: Path) -> Iterator[bool]:
    """Hold an exclusive flock on ``path`` if it is free (yields True), else yield False."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the lock


@contextlib.asynccontextmanager
async def _flock(path: Path, timeout: float) -> AsyncIterator[None]:
    """Hold an exclusive flock on ``path``, waiting (cancellably) up to ``timeout``."""
    import asyncio  # noqa: PLC0415 -- see the module doc

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await asyncio.sleep(_POLL)
        yield
    except TimeoutError:
        raise ServiceError(f"another dockyard client has held {path} for {timeout:.0f}s",
                           hint="if no other dockyard is starting, remove the file") from None
    finally:
        os.close(fd)


def daemon_running(paths: RunPaths) -> bool:
    """Whether a daemon process holds the root's daemon lock (alive, ready or not)."""
    if not paths.daemon_lock.exists():
        return False
    with try_flock(paths.daemon_lock) as free:
        return not free


# --- processes the daemon started -----------------------------------------------------

Proc = tuple[int, str]  # (pid, start time in clock ticks): names one process across pid reuse


def _stat(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (state first)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_tree(pid: int) -> set[Proc]:
    """``pid``'s live descendants."""
    parents: dict[int, list[Proc]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = _stat(int(entry.name))
                parents.setdefault(int(fields[1]), []).append((int(entry.name), fields[19]))
    found: set[Proc] = set()
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.add(child)
            todo.append(child[0])
    return found


def alive(process: Proc) -> bool:
    """Whether ``process`` still runs (the same process, not a zombie)."""
    try:
        fields = _stat(process[0])
    except (OSError, IndexError):
        return False
    return fields[19] == process[1] and fields[0] not in ("Z", "X")


def kill_processes(processes: set[Proc]) -> int:
    """SIGKILL those of ``processes`` that still run; how many were."""
    killed = 0
    for process in processes:
        if alive(process):
            with contextlib.suppress(OSError):
                os.kill(process[0], signal.SIGKILL)
                killed += 1
    return killed


def _read_procs(path: Path) -> set[Proc]:
    found: set[Proc] = set()
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            pid, _, start = line.partition(" ")
            if pid.isdigit() and start:
                found.add((int(pid), start))
    return found


# --- the client ------------------------------------------------------------------------


Where = RunPaths | Endpoint  # a root's local service, or an endpoint: for error messages


class ServiceClient:
    """One connection to a root's daemon (or an endpoint); calls run one at a time."""

    def __init__(self, ws: WebSocket, paths: Where) -> None:
        import asyncio  # noqa: PLC0415 -- see the module doc

        self.paths = paths
        self._ws = ws  # the websocket (cluster/_wire.py); closed by close()
        self._next_id = 1  # id of the next call
        self._lock = asyncio.Lock()  # held by the running call

    async def call(self, method: str, params: dict[str, Any] | None = None,
                   events: EventSink | None = None, handlers: Handlers | None = None) -> Any:
        """Run ``method`` on the service; progress events go to ``events``, the call's
        asks to ``handlers`` (what -> handler; each answered with a reply).  Cancelling
        the caller cancels the call on the service (coordinator and worker included)."""
        import asyncio  # noqa: PLC0415 -- see the module doc

        async with self._lock:
            call_id, self._next_id = self._next_id, self._next_id + 1
            await self._send(Request(call_id, method, params or {}))
            try:
                return await self._receive(call_id, events, handlers or {})
            except asyncio.CancelledError:
                await asyncio.shield(self._cancel(call_id))
                raise

    async def close(self) -> None:
        await self._ws.close()

    async def __aenter__(self) -> ServiceClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _send(self, frame: Frame) -> None:
        try:
            await self._ws.send(encode_frame(frame))
        except ConnectionError as exc:
            raise self._lost(exc) from None

    async def _cancel(self, call_id: int) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self._ws.send(encode_frame(Cancel(call_id)))

    async def _receive(self, call_id: int, events: EventSink | None,
                       handlers: Handlers) -> Any:
        while True:
            try:
                data = await self._ws.receive()
            except WireClosed as closed:
                raise _lost(self.paths, closed.message) from None
            done, result = _handled(data, call_id, events, handlers)
            if isinstance(result, Reply):
                await self._send(result)
            elif done:
                return result

    def _lost(self, why: object) -> ServiceError:
        return _lost(self.paths, why)


class BlockingClient:
    """``ServiceClient`` without an event loop, for a process that makes one call and
    only waits for it (``dockyard build`` against a running service: it never imports
    asyncio).  Ctrl-C during a call cancels it on the service, then propagates."""

    def __init__(self, ws: BlockingWebSocket, paths: Where) -> None:
        self.paths = paths
        self._ws = ws  # closed by close()
        self._next_id = 1  # id of the next call

    def call(self, method: str, params: dict[str, Any] | None = None,
             events: EventSink | None = None, handlers: Handlers | None = None) -> Any:
        """Run ``method`` on the service, as ``ServiceClient.call``."""
        call_id, self._next_id = self._next_id, self._next_id + 1
        self._send(Request(call_id, method, params or {}))
        try:
            while True:
                done, result = _handled(self._receive(), call_id, events, handlers or {})
                if isinstance(result, Reply):
                    self._send(result)
                elif done:
                    return result
        except KeyboardInterrupt:
            with contextlib.suppress(OSError):
                self._ws.send(encode_frame(Cancel(call_id)))
            raise

    def _send(self, frame: Frame) -> None:
        try:
            self._ws.send(encode_frame(frame))
        except OSError as exc:
            raise _lost(self.paths, exc) from None

    def _receive(self) -> bytes:
        try:
            return self._ws.receive()
        except WireClosed as closed:
            raise _lost(self.paths, closed.message) from None

    def close(self) -> None:
        self._ws.close()

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _handled(data: bytes, call_id: int, events: EventSink | None,
             handlers: Handlers) -> tuple[bool, Any]:
    """One message while call ``call_id`` runs: (True, its result) when it ends, (False,
    None) for an event (given to ``events``) or the tail of an earlier, cancelled call,
    (False, the ``Reply`` to send) for an ask of the call; the call's failure raised as
    the error it names."""
    frame = decode_frame(data)
    if getattr(frame, "id", None) != call_id:
        return False, None
    if isinstance(frame, Ask):
        return False, answer(frame, handlers)
    if isinstance(frame, EventFrame):
        if events is not None:
            events.emit(event_from_wire(frame.event))
    elif isinstance(frame, Response):
        return True, frame.result
    elif isinstance(frame, Failure):
        raise error_from_failure(frame)
    return False, None


def _lost(paths: Where, why: object) -> ServiceError:
    if isinstance(paths, Endpoint):
        return ServiceError(f"lost the connection to the dockyard endpoint {paths.url}: "
                            f"{why}", hint="see the endpoint's log ('dockyard serve')")
    return ServiceError(f"lost the connection to the dockyard service at {paths.socket}: "
                        f"{why}", hint=f"see {paths.log}; the next build restarts the service")


def connect_running(settings: ServiceSettings, timeout: float = 60.0) -> BlockingClient | None:
    """A blocking client of the root's running service, or None when nobody answers (the
    caller then starts one through ``connect``)."""
    paths = RunPaths(settings.root)
    if not paths.socket.exists():
        return None
    try:
        ws = BlockingWebSocket.open(str(paths.socket), timeout=timeout)
    except (OSError, WireError):
        return None
    return BlockingClient(ws, paths)


def _unreachable(endpoint: Endpoint, exc: OSError) -> ServiceError:
    return ServiceError(f"cannot reach the dockyard endpoint {endpoint.url}: "
                        f"{exc.strerror or exc}",
                        hint="check the URL (and --tls-ca for https); is 'dockyard serve' "
                             "running there?")


def connect_endpoint(endpoint: Endpoint, timeout: float = 60.0) -> BlockingClient:
    """A blocking client of the service at ``endpoint`` (never starts one)."""
    try:
        ws = BlockingWebSocket.connect(endpoint, timeout=timeout)
    except OSError as exc:
        raise _unreachable(endpoint, exc) from None
    return BlockingClient(ws, endpoint)


async def connect_endpoint_async(endpoint: Endpoint, timeout: float = 60.0) -> ServiceClient:
    """``connect_endpoint`` with an async client."""
    import asyncio  # noqa: PLC0415 -- see the module doc

    try:
        async with asyncio.timeout(timeout):
            ws = await WebSocket.connect(endpoint)
    except TimeoutError:
        raise ServiceError(f"the dockyard endpoint {endpoint.url} did not answer in "
                           f"{timeout:.0f}s") from None
    except OSError as exc:
        raise _unreachable(endpoint, exc) from None
    return ServiceClient(ws, endpoint)


async def _open(paths: RunPaths, timeout: float = 60.0) -> ServiceClient | None:
    """A client connected to the socket, or None when nobody answers there."""
    import asyncio  # noqa: PLC0415 -- see the module doc

    if not paths.socket.exists():
        return None
    try:
        async with asyncio.timeout(timeout):
            ws = await WebSocket.open(str(paths.socket))
    except (OSError, WireError, TimeoutError):
        return None
    return ServiceClient(ws, paths)


async def connect(settings: ServiceSettings, *, start: bool = True) -> ServiceClient:
    """A client of the root's service, starting the service when ``start`` and nobody
    answers."""
    paths = RunPaths(settings.root)
    client = await _open(paths)
    if client is not None:
        return client
    if not start:
        raise ServiceError(f"no dockyard service is running for {settings.root}")
    _make_run_dir(paths)
    async with _flock(paths.start_lock, settings.start_timeout):
        client = await _open(paths)
        if client is None:
            client = await _start(settings, paths)
    return client


def _make_run_dir(paths: RunPaths) -> None:
    try:
        paths.run.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ServiceError(f"cannot create {paths.run}: {exc.strerror or exc}",
                           hint="set DOCKYARD_ROOT to a writable directory") from None


async def _start(settings: ServiceSettings, paths: RunPaths) -> ServiceClient:
    """Start a daemon unless one is starting; wait until it answers."""
    import asyncio  # noqa: PLC0415 -- see the module doc

    process = None
    if not daemon_running(paths):  # none, or one that crashed: clean up after it
        kill_processes(_read_procs(paths.procs))
        for stale in (paths.socket, paths.pid, paths.procs):
            stale.unlink(missing_ok=True)
        process = _spawn(settings, paths)
    try:
        async with asyncio.timeout(settings.start_timeout):
            return await _wait_ready(paths, process)
    except TimeoutError:
        raise ServiceError(f"the dockyard service for {settings.root} did not become ready "
                           f"in {settings.start_timeout:.0f}s",
                           hint=f"see {paths.log}") from None


def _spawn(settings: ServiceSettings, paths: RunPaths) -> subprocess.Popen[bytes]:
    import subprocess  # noqa: PLC0415 -- only a client that starts the service needs it
    import threading  # noqa: PLC0415

    from dockyard.workers._gc_policy import settings_from_environ  # noqa: PLC0415

    from ._ray import ray_environment  # noqa: PLC0415

    settings_from_environ(os.environ)  # a bad DOCKYARD_GC_* is refused here, not in the log
    env = ray_environment(settings.root, os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PROJECT), env.get("PYTHONPATH"))
                                        if p)
    argv = [settings.python, "-m", "dockyard.cluster._daemon", "--root", str(settings.root),
            "--idle-timeout", str(settings.idle_timeout)]
    try:
        with open(paths.log, "ab") as log:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, env=env, cwd=paths.run,
                                       start_new_session=True)
    except OSError as exc:
        raise ServiceError(f"cannot start the dockyard service ({settings.python}): "
                           f"{exc.strerror or exc}") from None
    # Reap the daemon when it exits, while this process lives (no zombie).
    threading.Thread(target=process.wait, name="dockyard-daemon-reaper", daemon=True).start()
    return process


async def _wait_ready(paths: RunPaths, process: subprocess.Popen[bytes] | None
                      ) -> ServiceClient:
    import asyncio  # noqa: PLC0415 -- see the module doc

    while True:
        client = await _open(paths)
        if client is not None:
            return client
        if process is not None and process.returncode is not None:
            raise ServiceError(f"the dockyard service exited while starting (status "
                               f"{process.returncode}):\n{_log_tail(paths)}",
                               hint=f"the whole log is {paths.log}")
        await asyncio.sleep(_POLL)


def _log_tail(paths: RunPaths, lines: int = 15) -> str:
    try:
        text = paths.log.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


async def stop_service(settings: ServiceSettings, *, timeout: float = 60.0) -> bool:
    """Ask the root's daemon to stop and wait until it has exited; False when none ran."""
    import asyncio  # noqa: PLC0415 -- see the module doc

    paths = RunPaths(settings.root)
    client = await _open(paths)
    if client is None:
        return False
    async with client:
        with contextlib.suppress(DockyardError):
            await client.call("stop")
    try:
        async with asyncio.timeout(timeout):
            while daemon_running(paths):
                await asyncio.sleep(_POLL)
    except TimeoutError:
        raise ServiceError(f"the dockyard service for {settings.root} did not stop in "
                           f"{timeout:.0f}s", hint=f"see {paths.log}") from None
    return True



def clean_root(root: Path, *, wait: float = 10.0) -> str:
    """Remove what the root's workers left (containers, mounts, bundles, scratch), once
    the service has exited, and say so in one line (never raises: a root a live worker
    still holds is left alone and the line says why).  ``wait``: for a worker process
    that is still dying to let go of the root's lock."""
    from dockyard.workers._janitor import JanitorReport, clean_stale  # noqa: PLC0415

    if not (root / "run").is_dir():  # nothing ever ran here: create nothing
        return JanitorReport().line(root)
    try:
        return clean_stale(root, wait=wait).line(root)
    except DockyardError as error:
        return f"clean-up of {root} not done: {error.message}"
