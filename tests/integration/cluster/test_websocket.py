"""The client websockets (cluster/_wire.py's ``WebSocket`` and ``BlockingWebSocket``, the
latter in a thread) against the server the daemon really runs (aiohttp's
``web.WebSocketResponse``) on a unix socket in a temp dir: big messages both ways, the
server's pings and close, a route that is no websocket, nobody listening."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgpack
import pytest
from aiohttp import WSCloseCode, WSMsgType, web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dockyard.cluster._daemon import Daemon
from dockyard.cluster._endpoint import make_app
from dockyard.cluster._wire import (
    MAX_FRAME_BYTES,
    OP_BINARY,
    OP_TEXT,
    BlockingWebSocket,
    Endpoint,
    Failure,
    Frame,
    Request,
    Response,
    WebSocket,
    WireClosed,
    WireError,
    check_handshake,
    decode_frame,
    encode_frame,
    encode_ws_frame,
    handshake_request,
    parse_endpoint,
)

Handler = Callable[[web.WebSocketResponse], Awaitable[None]]


@asynccontextmanager
async def _server(handler: Handler, autoping: bool = True) -> AsyncIterator[str]:
    """An aiohttp app serving ``handler`` at /ws on a fresh unix socket; its path."""
    async def route(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0, autoping=autoping)
        await ws.prepare(request)
        await handler(ws)
        return ws

    app = web.Application()
    app.router.add_get("/ws", route)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    with tempfile.TemporaryDirectory(prefix="dy-ws-") as tmp:
        path = str(Path(tmp) / "s.sock")
        try:
            await web.UnixSite(runner, path).start()
            yield path
        finally:
            await runner.cleanup()


async def _echo(ws: web.WebSocketResponse) -> None:
    async for message in ws:
        if message.type == WSMsgType.BINARY:
            await ws.send_bytes(message.data[::-1])


def run(coroutine: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coroutine, 30))


@pytest.mark.parametrize("size", [0, 10, 70_000, 5 * 1024 * 1024])
def test_messages_both_ways(size: int) -> None:
    payload = bytes(i % 253 for i in range(size))

    async def go() -> None:
        async with _server(_echo) as path:
            ws = await WebSocket.open(path)
            for _ in range(3):
                await ws.send(payload)
                assert await ws.receive() == payload[::-1]
            await ws.close()
    run(go())


def test_server_ping_is_answered_and_close_reason_reported() -> None:
    pongs: list[bytes] = []

    async def handler(ws: web.WebSocketResponse) -> None:
        await ws.ping(b"are you there")
        message = await ws.receive()  # autoping off: the pong comes through
        if message.type == WSMsgType.PONG:
            pongs.append(message.data)
        await ws.send_bytes(b"one")
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"dockyard service stopping")

    async def go() -> None:
        async with _server(handler, autoping=False) as path:
            ws = await WebSocket.open(path)
            assert await ws.receive() == b"one"
            with pytest.raises(WireClosed, match="^dockyard service stopping$"):
                await ws.receive()
            await ws.close()
    run(go())
    assert pongs == [b"are you there"]


def test_client_close_ends_the_server_loop() -> None:
    ended = asyncio.Event()

    async def handler(ws: web.WebSocketResponse) -> None:
        async for _ in ws:
            pass
        ended.set()

    async def go() -> None:
        async with _server(handler) as path:
            ws = await WebSocket.open(path)
            await ws.close(timeout=5)
            await asyncio.wait_for(ended.wait(), 5)
    run(go())


def test_a_route_that_is_no_websocket() -> None:
    async def go() -> None:
        async with _server(_echo) as path:
            with pytest.raises(WireError, match="^the service did not open a websocket: "
                                                "'HTTP/1.1 404 Not Found'$"):
                await WebSocket.open(path, "/nothing")
    run(go())


def test_nobody_listening() -> None:
    async def go() -> None:
        with tempfile.TemporaryDirectory(prefix="dy-ws-") as tmp, \
                pytest.raises(FileNotFoundError):
            await WebSocket.open(str(Path(tmp) / "none.sock"))
    run(go())


# --- the blocking client, run in a thread while the loop serves -------------------------


def _blocking_round_trips(path: str, payload: bytes) -> None:
    ws = BlockingWebSocket.open(path)
    try:
        for _ in range(3):
            ws.send(payload)
            assert ws.receive() == payload[::-1]
    finally:
        ws.close()


@pytest.mark.parametrize("size", [0, 10, 70_000, 5 * 1024 * 1024])
def test_blocking_messages_both_ways(size: int) -> None:
    payload = bytes(i % 251 for i in range(size))

    async def go() -> None:
        async with _server(_echo) as path:
            await asyncio.to_thread(_blocking_round_trips, path, payload)
    run(go())


def _blocking_until_closed(path: str) -> list[object]:
    ws = BlockingWebSocket.open(path)
    seen: list[object] = [ws.receive()]
    try:
        ws.receive()
    except WireClosed as closed:
        seen.append(str(closed))
    ws.close()
    return seen


def test_blocking_ping_answered_and_close_reason_reported() -> None:
    pongs: list[bytes] = []

    async def handler(ws: web.WebSocketResponse) -> None:
        await ws.ping(b"ping")
        message = await ws.receive()
        if message.type == WSMsgType.PONG:
            pongs.append(message.data)
        await ws.send_bytes(b"one")
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"dockyard service stopping")

    async def go() -> None:
        async with _server(handler, autoping=False) as path:
            seen = await asyncio.to_thread(_blocking_until_closed, path)
            assert seen == [b"one", "dockyard service stopping"]
    run(go())
    assert pongs == [b"ping"]


def test_blocking_close_ends_the_server_loop() -> None:
    ended = asyncio.Event()

    async def handler(ws: web.WebSocketResponse) -> None:
        async for _ in ws:
            pass
        ended.set()

    async def go() -> None:
        async with _server(handler) as path:
            await asyncio.to_thread(lambda: BlockingWebSocket.open(path).close())
            await asyncio.wait_for(ended.wait(), 5)
    run(go())


def test_blocking_route_that_is_no_websocket_and_nobody_listening() -> None:
    async def go() -> None:
        async with _server(_echo) as path:
            with pytest.raises(WireError, match="^the service did not open a websocket: "
                                                "'HTTP/1.1 404 Not Found'$"):
                await asyncio.to_thread(BlockingWebSocket.open, path, "/nothing")
    run(go())
    with tempfile.TemporaryDirectory(prefix="dy-ws-") as tmp, \
            pytest.raises(FileNotFoundError):
        BlockingWebSocket.open(str(Path(tmp) / "none.sock"))


# --- the service's side: hostile clients of the Daemon's /ws route ----------------------
#
# The embedded service's unix socket and the endpoint's TCP port (with its token) serve
# the same Daemon (cluster/_daemon.py); here over a coordinator that answers ``ping``.
# Whatever one client sends -- bytes that are no frame, a frame cut short, a frame with
# bad fields, a websocket frame claiming more than 64 MiB, a websocket frame cut short, a
# text message -- only its own connection fails, with a reason a person can read, nothing
# is logged as an error, and every other client (and the next one) is still answered.

TOKEN = "hostile-token-71b3"
HOSTILE = settings(max_examples=12, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow])


class _Coordinator:
    async def call(self, method: str, *args: Any) -> Any:
        return {"pid": 1}


class _Errors(logging.Handler):
    """Records logged at ERROR or above while a test runs (aiohttp's "Error handling
    request", asyncio's "Task exception was never retrieved")."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@asynccontextmanager
async def _service(transport: str) -> AsyncIterator[tuple[Endpoint, Daemon]]:
    """A Daemon serving the endpoint's app: on a unix socket, or on 127.0.0.1 with a
    token."""
    with tempfile.TemporaryDirectory(prefix="dy-ws-") as tmp:
        daemon = Daemon(_Coordinator(), float("inf"), f"unix://{tmp}/s.sock")  # type: ignore[arg-type]
        token = TOKEN if transport == "tcp" else None
        runner = web.AppRunner(make_app(daemon, token), handle_signals=False,
                               shutdown_timeout=1.0)
        await runner.setup()
        errors = _Errors()
        logging.getLogger().addHandler(errors)
        try:
            if transport == "tcp":
                sock = socket.socket()
                sock.bind(("127.0.0.1", 0))
                await web.SockSite(runner, sock).start()
                endpoint = parse_endpoint(f"http://127.0.0.1:{sock.getsockname()[1]}", TOKEN)
            else:
                await web.UnixSite(runner, f"{tmp}/s.sock").start()
                endpoint = parse_endpoint(f"unix://{tmp}/s.sock")
            yield endpoint, daemon
            assert [r.getMessage() for r in errors.records] == []
        finally:
            logging.getLogger().removeHandler(errors)
            await daemon.close_connections()
            await runner.cleanup()


async def _raw(endpoint: Endpoint) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A websocket connection, handshake done, as plain streams to write anything on."""
    if endpoint.unix is not None:
        reader, writer = await asyncio.open_unix_connection(endpoint.unix)
    else:
        reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(handshake_request("/ws", key, endpoint.host_header, endpoint.headers()))
    check_handshake(await reader.readuntil(b"\r\n\r\n"), key)
    return reader, writer


async def _ping(ws: WebSocket, call_id: int = 7) -> None:
    await ws.send(encode_frame(Request(call_id, "ping")))
    reply = decode_frame(await ws.receive())
    assert isinstance(reply, Response) and reply.id == call_id, reply


async def _still_serving(endpoint: Endpoint, daemon: Daemon, good: WebSocket) -> None:
    """The client that was there all along, and a new one, are answered; no call is left
    running and only the good connection is open."""
    await _ping(good)
    fresh = await WebSocket.connect(endpoint)
    await _ping(fresh, 8)
    await fresh.close()
    for _ in range(200):
        if _load(daemon) == (0, 1):
            break
        await asyncio.sleep(0.01)
    assert _load(daemon) == (0, 1)


def _load(daemon: Daemon) -> tuple[int, int]:
    """(calls in progress, connections open)."""
    stats = daemon.statistics()
    return stats["calls"], stats["connections"]


async def _until_closed(ws: WebSocket) -> tuple[list[Frame], str]:
    """The frames ``ws`` gets before the service closes it, and why it did."""
    frames: list[Frame] = []
    while True:
        try:
            frames.append(decode_frame(await ws.receive()))
        except WireClosed as closed:
            return frames, str(closed)


def _not_a_frame(data: bytes) -> str | None:
    """The WireError ``decode_frame`` raises for ``data`` (None: it is a frame) -- the
    message the service must answer with."""
    try:
        decode_frame(data)
    except WireError as error:
        return error.message
    return None


_ints = st.integers(-(2**63), 2**64 - 1)  # what msgpack carries
_truncated = st.builds(lambda frame, cut: frame[:cut % max(len(frame), 1)],
                       st.builds(lambda m, p: encode_frame(Request(3, m, p)),
                                 st.text(max_size=20),
                                 st.dictionaries(st.text(max_size=5), _ints)),
                       st.integers(min_value=0))
_garbage = st.binary(max_size=300).filter(lambda data: _not_a_frame(data) is not None)
_not_maps = st.builds(lambda value: msgpack.packb(value),
                      st.none() | _ints | st.text(max_size=10) | st.lists(_ints, max_size=3))


@pytest.mark.parametrize("transport", ["unix", "tcp"])
@HOSTILE
@given(data=_garbage | _truncated | _not_maps)
def test_bytes_that_are_no_frame_close_only_their_connection(transport: str,
                                                             data: bytes) -> None:
    """The sender gets a failure saying what was wrong (call id 0: there is none), then
    its connection is closed as "not a dockyard frame"."""
    expected = _not_a_frame(data)
    assert expected is not None

    async def go() -> None:
        async with _service(transport) as (endpoint, daemon):
            good = await WebSocket.connect(endpoint)
            bad = await WebSocket.connect(endpoint)
            await bad.send(data)
            frames, why = await _until_closed(bad)
            assert [(f.id, f.error, f.message) for f in frames
                    if isinstance(f, Failure)] == [(0, "ServiceError", expected)]
            assert len(frames) == 1 and why == "not a dockyard frame"
            await _still_serving(endpoint, daemon, good)
            await good.close()
    run(go())


_kinds = st.sampled_from(["request", "cancel", "reply", "response", "event", "failure",
                          "ask", "nonsense", ""])
_values = st.none() | st.booleans() | _ints | st.text(max_size=8) | st.binary(
    max_size=8) | st.lists(_ints, max_size=2) | st.dictionaries(
    st.text(max_size=4), _ints, max_size=2)
_frame_like = st.builds(
    lambda kind, call_id, fields: {**fields, "v": 1, "kind": kind, "id": call_id},
    _kinds, st.integers(1, 2**31), st.dictionaries(
        st.sampled_from(["method", "params", "ask", "result", "error", "message", "what",
                         "hint", "details", "event", "extra"]), _values, max_size=4))


@pytest.mark.parametrize("transport", ["unix", "tcp"])
@HOSTILE
@given(message=_frame_like)
def test_a_frame_with_bad_fields_gets_a_failure_and_the_connection_goes_on(
        transport: str, message: dict[str, Any]) -> None:
    """A dockyard frame of this version whose kind or fields are wrong: a failure for its
    call id; the connection stays usable.  A well-formed one is served or ignored."""
    data = msgpack.packb(message)
    expected = _not_a_frame(data)

    async def go() -> None:
        async with _service(transport) as (endpoint, daemon):
            good = await WebSocket.connect(endpoint)
            bad = await WebSocket.connect(endpoint)
            await bad.send(data)
            if expected is not None:
                reply = decode_frame(await bad.receive())
                assert isinstance(reply, Failure)
                assert (reply.id, reply.error, reply.message) == (
                    message["id"], "ServiceError", expected)
            elif message["kind"] == "request":  # a call of no such method, say
                reply = decode_frame(await bad.receive())
                assert isinstance(reply, Failure | Response) and reply.id == message["id"]
            await _ping(bad, 99)  # the same connection still works
            await bad.close()
            await _still_serving(endpoint, daemon, good)
            await good.close()
    run(go())


@pytest.mark.parametrize("transport", ["unix", "tcp"])
@HOSTILE
@given(size=st.integers(MAX_FRAME_BYTES + 1, 2**63 - 1), opcode=st.sampled_from(
    [OP_BINARY, OP_TEXT, 0x3]))
def test_a_websocket_frame_claiming_over_64_mib_closes_its_connection(
        transport: str, size: int, opcode: int) -> None:
    """Only the header is sent: the service refuses on the length alone (or the reserved
    opcode), saying why."""
    async def go() -> None:
        async with _service(transport) as (endpoint, daemon):
            good = await WebSocket.connect(endpoint)
            reader, writer = await _raw(endpoint)
            writer.write(bytes([0x80 | opcode, 0x80 | 127]) + size.to_bytes(8, "big")
                         + os.urandom(4) + b"x" * 100)
            bad = WebSocket(reader, writer)
            frames, why = await _until_closed(bad)
            assert frames == []
            assert why == ("a broken websocket frame" if opcode == 0x3 else  # reserved
                           f"a message over {MAX_FRAME_BYTES} bytes, the most a dockyard "
                           "frame may have")
            await bad.close()
            await _still_serving(endpoint, daemon, good)
            await good.close()
    run(go())


@pytest.mark.parametrize("transport", ["unix", "tcp"])
@HOSTILE
@given(size=st.sampled_from([0, 10, 200, 70_000]), cut=st.integers(min_value=0))
def test_a_websocket_frame_cut_short_by_a_dying_client(transport: str, size: int,
                                                       cut: int) -> None:
    """The client sends part of a frame and its connection drops: the service forgets
    that connection and goes on."""
    frame = encode_ws_frame(OP_BINARY, encode_frame(Request(4, "ping", {"x": b"y" * size})),
                            os.urandom(4))
    part = frame[:cut % len(frame)]

    async def go() -> None:
        async with _service(transport) as (endpoint, daemon):
            good = await WebSocket.connect(endpoint)
            _, writer = await _raw(endpoint)
            writer.write(part)
            await writer.drain()
            writer.close()
            await _still_serving(endpoint, daemon, good)
            await good.close()
    run(go())


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_a_text_message_and_a_real_oversized_message(transport: str) -> None:
    async def go() -> None:
        async with _service(transport) as (endpoint, daemon):
            good = await WebSocket.connect(endpoint)
            text = await WebSocket.connect(endpoint)
            await text.send(b'{"kind": "request"}', OP_TEXT)
            assert await _until_closed(text) == (
                [], "a text message: dockyard frames are binary msgpack messages")
            big = await WebSocket.connect(endpoint)
            with contextlib.suppress(ConnectionError):  # refused while still sending
                await big.send(b"\x00" * (MAX_FRAME_BYTES + 1))
            with contextlib.suppress(WireClosed):
                await big.receive()
            assert big.closed
            await _still_serving(endpoint, daemon, good)
            await good.close()
    run(go())
