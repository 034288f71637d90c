"""The client websockets (cluster/_wire.py's ``WebSocket`` and ``BlockingWebSocket``, the
latter in a thread) against the server the daemon really runs (aiohttp's
``web.WebSocketResponse``) on a unix socket in a temp dir: big messages both ways, the
server's pings and close, a route that is no websocket, nobody listening."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import WSCloseCode, WSMsgType, web

from cluster._wire import BlockingWebSocket, WebSocket, WireClosed, WireError

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
