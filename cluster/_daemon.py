"""The embedded local service: ``python -m dockyard.cluster._daemon --root R [--idle-timeout S]``.

Started detached by a client (cluster/_service.py), it

1. takes ``<root>/run/daemon.lock`` for its whole life (a second daemon for the root exits
   at once with status 3);
2. starts a private Ray head (cluster/_ray.py) and the coordinator and worker actors, and
   pings them through;
3. only then binds ``<root>/run/dockyard.sock`` (the ready handshake: a client that gets an
   answer talks to a complete service) and writes ``dockyard.pid``;
4. serves websocket calls (cluster/_wire.py frames) until ``stop`` is called, SIGTERM or
   SIGINT arrives, or no call has run for the idle timeout;
5. closes the socket, shuts Ray down, kills whatever it started that is still alive and
   removes what its worker left under the root (containers, mounts, bundles:
   ``clean_root``, workers/_janitor.py).

Calls: ``ping``, ``statistics``, ``metrics`` (cluster/_metrics.py), ``solve`` (streams
events; its session channel is open while it runs, cluster/_relay.py), ``history`` (the
coordinator's build records, cluster/_history.py; their retention from
``DOCKYARD_HISTORY_MAX_RECORDS`` and ``DOCKYARD_HISTORY_MAX_AGE``), ``stop``.  A call is
cancelled by a ``cancel`` frame or when its websocket closes (the client died or the user
pressed Ctrl-C); cancelling ``solve`` cancels the coordinator's task.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import msgpack
from aiohttp import WSCloseCode, WSMsgType, web

from dockyard.scheduler._build_request import BuildOptions, CacheSpec
from dockyard.scheduler._errors import DockyardError, ServiceError, UsageError, WorkerLost
from dockyard.workers._logs import configure_logging

from ._history import Retention, history_settings
from ._ray import ActorRef, RayRuntime, RaySettings, ray_environment
from ._relay import Session, SessionRelay
from ._service import RunPaths, clean_root, kill_processes, process_tree, try_flock
from ._wire import (
    MAX_FRAME_BYTES,
    WIRE_VERSION,
    Cancel,
    EventFrame,
    Failure,
    Frame,
    Reply,
    Request,
    Response,
    WireError,
    decode_frame,
    encode_frame,
    error_from_failure,
    failure_from_error,
)

__all__ = ["Daemon", "main"]

Send = Callable[[Frame], Awaitable[None]]
_logger = logging.getLogger("dockyard.cluster.daemon")
_EXIT_ALREADY_RUNNING = 3
#: How long a solve whose coordinator died waits for Ray's restart of it (seconds).
COORDINATOR_RESTART_TIMEOUT = 30.0
#: Submissions of one solve: a second when the coordinator died before it sent anything.
SOLVE_ATTEMPTS = 2


def _log(text: str) -> None:
    _logger.info(text)


class _Socket(web.WebSocketResponse):
    """aiohttp's server websocket, whose own closes say why: it closes a connection on a
    message over ``max_msg_size`` or a broken websocket frame with a bare close code,
    which a client could only report as "CLOSE"."""

    _WHY: dict[int, str] = {
        WSCloseCode.MESSAGE_TOO_BIG: f"a message over {MAX_FRAME_BYTES} bytes, the most a "
                                     "dockyard frame may have",
        WSCloseCode.PROTOCOL_ERROR: "a broken websocket frame",
        WSCloseCode.INVALID_TEXT: "a websocket message that is not valid",
    }

    async def close(self, *, code: int = WSCloseCode.OK, message: bytes = b"",
                    drain: bool = True) -> bool:
        why = message or self._WHY.get(code, "").encode()
        return await super().close(code=code, message=why, drain=drain)


class _Connection:
    """One client connection: its calls, and the sessions of its running solves."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self._lock = asyncio.Lock()  # frames of concurrent calls never interleave
        self.calls: dict[int, asyncio.Task[None]] = {}  # call id -> its running task
        self.sessions: dict[int, Session] = {}  # call id -> the session of its solve

    async def send(self, frame: Frame) -> None:
        async with self._lock:
            if not self.ws.closed:
                await self.ws.send_bytes(encode_frame(frame))


class Daemon:
    """The calls of one service, and when it should stop.  The embedded daemon serves it
    on its unix socket, ``dockyard serve`` over TCP (cluster/_endpoint.py): ``/ws`` for
    clients (``handle``), ``/session`` for workers (``relay.handle``)."""

    def __init__(self, coordinator: ActorRef, idle_timeout: float, session_url: str,
                 session_ca: str | None = None, *, remote: bool = False,
                 caches: Sequence[CacheSpec] = ()) -> None:
        self.coordinator = coordinator
        # The cluster's shared caches (``serve --cache``): every build imports from them
        # and exports to them, so any node reuses what any other built.
        self.caches = tuple(caches)
        # An endpoint for clients on other machines: a request naming a path of the
        # cluster's machines (a type=local cache directory) is refused.
        self.remote = remote
        self.idle_timeout = idle_timeout
        # the session channels of running solves
        self.relay = SessionRelay(session_url, session_ca)
        self.stopping = asyncio.Event()  # set once: the service is going away
        self._calls = 0  # calls in progress, all connections (>= 0)
        self._idle_since = time.monotonic()  # when _calls last became 0
        self.served = 0  # calls started since the daemon began
        self._sockets: set[web.WebSocketResponse] = set()  # open client connections

    def statistics(self) -> dict[str, int]:
        """Calls in progress, calls served, client connections open."""
        return {"calls": self._calls, "served": self.served, "connections": len(self._sockets)}

    def routes(self, app: web.Application) -> None:
        """Add the service's resources to ``app``."""
        app.router.add_get("/ws", self.handle)
        app.router.add_get("/session", self.relay.handle)

    async def run_until_stopped(self) -> None:
        """Return on ``stop``, a signal, or after ``idle_timeout`` without calls."""
        tick = min(1.0, self.idle_timeout / 4)
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(tick):
                    await self.stopping.wait()
            idle = time.monotonic() - self._idle_since
            if self._calls == 0 and idle >= self.idle_timeout:
                _log(f"idle for {idle:.0f}s: stopping")
                self.stopping.set()

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        """One client connection: its calls run concurrently; all are cancelled when it
        closes."""
        ws = _Socket(max_msg_size=MAX_FRAME_BYTES)
        await ws.prepare(request)
        self._sockets.add(ws)
        try:
            await self._session(_Connection(ws))
        finally:
            self._sockets.discard(ws)
        return ws

    async def close_connections(self) -> None:
        """Close every client connection (their calls are cancelled)."""
        for ws in list(self._sockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"dockyard service stopping")

    async def _session(self, connection: _Connection) -> None:
        async with asyncio.TaskGroup() as group:
            try:
                await self._read(connection, group)
            finally:
                for task in connection.calls.values():
                    task.cancel()

    async def _read(self, connection: _Connection, group: asyncio.TaskGroup) -> None:
        async for message in connection.ws:
            if message.type == WSMsgType.TEXT:
                await connection.ws.close(code=WSCloseCode.UNSUPPORTED_DATA,
                                          message=b"a text message: dockyard frames are "
                                                  b"binary msgpack messages")
            if message.type != WSMsgType.BINARY:
                break
            try:
                frame = decode_frame(message.data)
            except WireError as error:
                await connection.send(failure_from_error(_frame_id(message.data), error))
                if not _looks_like_a_frame(message.data):
                    await connection.ws.close(code=WSCloseCode.UNSUPPORTED_DATA,
                                              message=b"not a dockyard frame")
                    break
                continue
            await self._received(connection, frame, group)

    async def _received(self, connection: _Connection, frame: Frame,
                        group: asyncio.TaskGroup) -> None:
        if isinstance(frame, Request):
            task = group.create_task(self._call(frame, connection))
            connection.calls[frame.id] = task
            task.add_done_callback(functools.partial(_forget, connection.calls, frame.id))
        elif isinstance(frame, Cancel) and frame.id in connection.calls:
            connection.calls[frame.id].cancel()
        elif isinstance(frame, Reply) and frame.id in connection.sessions:
            await connection.sessions[frame.id].reply(frame)

    async def _call(self, request: Request, connection: _Connection) -> None:
        self._calls += 1
        self.served += 1
        try:
            result = await self._dispatch(request, connection)
            await connection.send(Response(request.id, result))
        except DockyardError as error:
            await connection.send(failure_from_error(request.id, error))
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                cancelled = ServiceError(f"call {request.method!r} was cancelled")
                await asyncio.shield(connection.send(failure_from_error(request.id,
                                                                        cancelled)))
            raise
        finally:
            self._calls -= 1
            if self._calls == 0:
                self._idle_since = time.monotonic()

    async def _dispatch(self, request: Request, connection: _Connection) -> Any:
        if request.method == "ping":
            return {"daemon": os.getpid(), "coordinator": await self.coordinator.call("ping")}
        if request.method == "statistics":
            stats = await self.coordinator.call("statistics")
            return {"daemon": {"calls": self._calls - 1, "served": self.served} |
                    self.relay.statistics()} | stats
        if request.method == "metrics":  # the text exposition (cluster/_metrics.py)
            return bytes(await self.coordinator.call("metrics"))
        if request.method == "solve":
            return await self._solve(request, connection)
        if request.method == "history":
            return await self.coordinator.call("history", dict(request.params))
        if request.method == "stop":
            self.stopping.set()
            return {"stopping": True}
        raise ServiceError(f"the dockyard service has no call {request.method!r}",
                           hint="use the same dockyard version on the client and the service")

    async def _solve(self, request: Request, connection: _Connection) -> Any:
        """The coordinator's solve, the call's session channel open while it runs."""
        if self.remote:
            refuse_server_paths(request.params)
        session = self.relay.open(request.id, connection.send)
        connection.sessions[request.id] = session
        params = with_caches(dict(request.params), self.caches)
        params["session"] = dict(params.get("session") or {}) | self.relay.session_map(session)
        try:
            return await self._solve_stream(request.id, params, connection.send)
        finally:
            connection.sessions.pop(request.id, None)
            await asyncio.shield(self.relay.close(session))

    async def _solve_stream(self, call_id: int, params: dict[str, Any], send: Send) -> Any:
        """The coordinator's solve, its events sent on as they come.  A solve whose
        coordinator died before it sent anything (a build submitted while Ray restarts
        it) is submitted once more to the restarted one: the client saw nothing yet."""
        for attempt in range(1, SOLVE_ATTEMPTS + 1):
            stream = self.coordinator.stream("solve", params)
            last: dict[str, Any] | None = None  # the solve's result or failure item
            sent = False  # whether an event of this solve reached the client
            try:
                async for item in stream:
                    if "event" not in item:
                        last = item
                        break
                    sent = True
                    await send(EventFrame(call_id, item["event"]))
            except asyncio.CancelledError:
                stream.cancel()
                raise
            except WorkerLost:  # raised by the stream itself: the coordinator died
                back = await self._coordinator_answers()
                if back and not sent and attempt < SOLVE_ATTEMPTS:
                    continue
                raise self._coordinator_lost(back) from None
            if last is None:
                raise ServiceError("the coordinator ended a solve without a result")
            if "failure" in last:
                raise error_from_failure(Failure(call_id, **last["failure"]))
            return last.get("result")
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _coordinator_lost(self, back: bool) -> ServiceError:
        """The error of a solve whose coordinator died; ``back``: whether Ray restarted it
        (it answered a ping within ``COORDINATOR_RESTART_TIMEOUT``).  The embedded service
        stops when it did not, so that the next build starts a whole new one: either way
        the hint is true."""
        what = "the coordinator of the dockyard service died while running this build"
        if back:
            return ServiceError(f"{what}; Ray restarted it", hint="build again")
        gone = f"{what}, and it did not come back in {COORDINATOR_RESTART_TIMEOUT:.0f}s"
        if self.remote:
            return ServiceError(gone, hint="see the endpoint's log ('dockyard serve') and "
                                           "'dockyard node ls'")
        self.stopping.set()
        return ServiceError(gone, hint="build again: this service is stopping, and the "
                                       "next build starts a new one")

    async def _coordinator_answers(self) -> bool:
        """Whether the coordinator (restarted by Ray) answers a ping in time."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(COORDINATOR_RESTART_TIMEOUT):
                while True:
                    try:
                        await self.coordinator.call("ping")
                        return True
                    except DockyardError:  # still restarting
                        await asyncio.sleep(0.2)
        return False


def with_caches(params: dict[str, Any], caches: Sequence[CacheSpec]) -> dict[str, Any]:
    """``params`` of a build whose options also import from and export to ``caches``
    (mode=max, a failing export a warning: the build is the client's, the cache the
    cluster's)."""
    if not caches or params.get("options") is None:
        return params
    options = BuildOptions.from_wire(params["options"])
    exports = tuple(dataclasses.replace(spec, mode="max", ignore_error=True) for spec in caches)
    merged = dataclasses.replace(options, cache_from=(*options.cache_from, *caches),
                                 cache_to=(*options.cache_to, *exports))
    return params | {"options": merged.to_wire()}


def refuse_server_paths(params: Any) -> None:
    """A ``UsageError`` for a build request that names a directory on the cluster's
    machines (a ``type=local`` cache): through an endpoint nothing of the client's disk is
    there, and the cluster's own disks are not the client's to name."""
    wire = params.get("options") if isinstance(params, dict) else None
    if wire is None:
        return
    options = BuildOptions.from_wire(wire)  # malformed options: a UsageError saying so
    for flag, specs in (("cache_to", options.cache_to), ("cache_from", options.cache_from)):
        for spec in specs:
            if spec.type == "local":
                name = "--" + flag.replace("_", "-")
                raise UsageError(f"{name} type=local names a directory on the cluster's "
                                 f"machines, which a build through an endpoint may not use",
                                 hint=f"use {name} type=s3,... for a cache the cluster and "
                                      "you share, or build without --endpoint")


def _frame_id(data: bytes) -> int:
    """The call id a malformed frame names, if it names one (else 0)."""
    with contextlib.suppress(Exception):
        message = msgpack.unpackb(data, raw=False, strict_map_key=False)
        if isinstance(message, dict) and type(message.get("id")) is int:
            return int(message["id"])
    return 0


def _looks_like_a_frame(data: bytes) -> bool:
    """Whether ``data`` is a dockyard frame map of this version (a frame with a bad field,
    answered with a failure) rather than something else (the connection is closed)."""
    with contextlib.suppress(Exception):
        message = msgpack.unpackb(data, raw=False, strict_map_key=False)
        return isinstance(message, dict) and message.get("v") == WIRE_VERSION and \
            type(message.get("id")) is int
    return False


def _forget(calls: dict[int, asyncio.Task[None]], call_id: int, _: object) -> None:
    calls.pop(call_id, None)


# --- process lifecycle -----------------------------------------------------------------


async def _serve(paths: RunPaths, runtime: RayRuntime, idle_timeout: float,
                 retention: Retention) -> None:
    coordinator = runtime.create_actors(paths.root, history_settings(paths.root, retention))
    async with asyncio.timeout(120):  # the coordinator up, and the node's worker found
        while (info := await coordinator.call("ping"))["worker"] is None:
            await asyncio.sleep(0.1)
    _log(f"actors up: coordinator {info['pid']}, worker {info['worker']['pid']}")
    # What a client kills if this daemon dies without cleaning up (see _service._start).
    paths.procs.write_text("".join(f"{pid} {start}\n" for pid, start in
                                   sorted(process_tree(os.getpid()))))
    daemon = Daemon(coordinator, idle_timeout, f"unix://{paths.socket}")
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, daemon.stopping.set)
    app = web.Application()
    daemon.routes(app)
    runner = web.AppRunner(app, shutdown_timeout=5.0, handle_signals=False)
    await runner.setup()
    try:
        await web.UnixSite(runner, str(paths.socket)).start()
        paths.pid.write_text(f"{os.getpid()}\n")
        _log(f"ready on {paths.socket}")
        await daemon.run_until_stopped()
    finally:
        paths.socket.unlink(missing_ok=True)
        paths.pid.unlink(missing_ok=True)
        await daemon.close_connections()
        await runner.cleanup()
        _log("socket closed")


def _run(paths: RunPaths, idle_timeout: float) -> int:
    try:  # the build records' retention, checked before Ray starts
        retention = Retention.from_environ(os.environ)
    except DockyardError as error:
        _log(f"error: {error}")
        return 1
    os.environ.update(ray_environment(paths.root, os.environ))
    Path(os.environ["HOME"]).mkdir(parents=True, exist_ok=True)
    runtime = RayRuntime(RaySettings.for_machine(paths.root))
    began = time.monotonic()
    try:
        runtime.start()
        _log(f"Ray up in {time.monotonic() - began:.1f}s; its logs and the actors' in "
             f"{runtime.logs_dir}")
        asyncio.run(_serve(paths, runtime, idle_timeout, retention))
    except DockyardError as error:
        _log(f"error: {error}")
        return 1
    finally:
        started = process_tree(os.getpid())
        runtime.shutdown()
        _log(f"Ray shut down; {kill_processes(started)} leftover processes killed")
        _log(clean_root(paths.root))
        paths.procs.unlink(missing_ok=True)
        _log("stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dockyard.cluster._daemon")
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--idle-timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    configure_logging(sys.stdout)  # run/daemon.log: JSON lines (workers/_logs.py)
    paths = RunPaths(args.root.absolute())
    paths.run.mkdir(parents=True, exist_ok=True)
    with try_flock(paths.daemon_lock) as mine:
        if not mine:
            _log(f"another dockyard service holds {paths.daemon_lock}: exiting")
            return _EXIT_ALREADY_RUNNING
        return _run(paths, args.idle_timeout)


if __name__ == "__main__":
    sys.exit(main())
