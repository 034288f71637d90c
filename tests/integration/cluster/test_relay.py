"""The service's calls and the session relay for real (aiohttp server, the client's
websockets, the worker's ``SessionChannel``), in one process, with a stand-in for the Ray
coordinator: its ``solve`` does what a worker will do -- opens a ``SessionChannel`` with
the session map the request carries and asks the client -- and answers what it got.

Covers: ask/reply round trips through the relay (unix socket and TCP, TLS, token),
concurrent asks from several workers of one session, failure replies raised on the
worker side, a wrong session token, the worker's sockets closed when the call ends, a
malformed frame closing only its own connection, and a refused token."""

from __future__ import annotations

import asyncio
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgpack
import pytest
from aiohttp import web
from support.tls import self_signed

from dockyard.cluster._daemon import Daemon
from dockyard.cluster._endpoint import make_app, server_ssl_context
from dockyard.cluster._service import ServiceClient, connect_endpoint, connect_endpoint_async
from dockyard.cluster._wire import BlockingWebSocket, WireClosed, WireRefused, parse_endpoint
from dockyard.scheduler._errors import ExportError, ServiceError, UsageError
from dockyard.workers._session_channel import SessionChannel

Asks = list[tuple[str, dict[str, Any]]]


class _Stream:
    def __init__(self, items: AsyncIterator[dict[str, Any]]) -> None:
        self._items = items

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._items

    def cancel(self) -> None:
        return None


def _outcome(result: Any) -> Any:
    if isinstance(result, BaseException):
        return [type(result).__name__, str(result)]
    return result


class FakeCoordinator:
    """``solve`` plays the workers: ``params["workers"]`` lists, per worker, the asks it
    sends at once; the result is each worker's answers (an error as [class, text])."""

    def __init__(self) -> None:
        self.sessions: list[dict[str, Any]] = []  # the session maps solves were given
        self.late: asyncio.Future[Any] | None = None  # an ask left in flight, if asked
        self.channels: list[SessionChannel] = []  # the channels of that solve

    async def call(self, method: str, *args: Any) -> Any:
        return {"pid": 1, "method": method}

    def stream(self, method: str, params: dict[str, Any]) -> _Stream:
        return _Stream(self._solve(params))

    async def _solve(self, params: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        session = params["session"]
        self.sessions.append(session)
        token = session["token"] if not params.get("wrong_token") else "nope"
        channels = [SessionChannel(session["url"], session["id"], token)
                    for _ in params.get("workers", [])]
        try:
            answers = await asyncio.gather(*(self._worker(c, asks) for c, asks in
                                             zip(channels, params["workers"], strict=True)))
            if params.get("leave_one"):  # an ask the call's end must fail
                self.channels = channels
                self.late = asyncio.ensure_future(channels[0].ask("slow", {}))
                await asyncio.sleep(0.2)  # the ask has reached the client
        finally:
            if not params.get("leave_one"):
                for channel in channels:
                    await channel.aclose()
        yield {"result": answers}

    async def _worker(self, channel: SessionChannel, asks: Asks) -> list[Any]:
        results = await asyncio.gather(*(channel.ask(what, p) for what, p in asks),
                                       return_exceptions=True)
        return [_outcome(r) for r in results]


Server = tuple[str, Daemon, FakeCoordinator]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def _served(*, tcp: bool = False, token: str | None = None,
                  tls: tuple[Path, Path] | None = None) -> AsyncIterator[Server]:
    """A Daemon over the fake coordinator, on a unix socket or 127.0.0.1; its URL."""
    coordinator = FakeCoordinator()
    with tempfile.TemporaryDirectory(prefix="dy-relay-") as tmp:
        if tcp:
            port = _free_port()
            url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        else:
            url = f"unix://{tmp}/d.sock"
        daemon = Daemon(coordinator, float("inf"), url)  # type: ignore[arg-type]
        runner = web.AppRunner(make_app(daemon, token), handle_signals=False,
                               shutdown_timeout=1.0)
        await runner.setup()
        try:
            if tcp:
                context = server_ssl_context(str(tls[0]), str(tls[1])) if tls else None
                await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
            else:
                await web.UnixSite(runner, f"{tmp}/d.sock").start()
            yield url, daemon, coordinator
        finally:
            await daemon.close_connections()
            await runner.cleanup()


def run(coroutine: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 30))


def _secret(params: dict[str, Any]) -> bytes | None:
    if params["id"] == "big":
        raise UsageError("secret 'big' too big. max size 500KB", hint="make it smaller")
    return {"token": b"s3cret"}.get(params["id"])


def _write(params: dict[str, Any]) -> None:
    raise ExportError(f"cannot write output {params['index']}")


HANDLERS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "secret.get": _secret, "output.write": _write,
    "context.read": lambda p: [b"x" * n for _, _, n in p["items"]]}


async def _solve(url: str, params: dict[str, Any], token: str | None = None,
                 ca: Path | None = None) -> Any:
    endpoint = parse_endpoint(url, token, str(ca) if ca else None)
    client = await connect_endpoint_async(endpoint)
    async with client:
        return await client.call("solve", params, handlers=HANDLERS)


WORKERS: list[Asks] = [
    [("secret.get", {"id": "token"}), ("secret.get", {"id": "unknown"}),
     ("context.read", {"name": "context", "items": [["a", 0, 3], ["b", 0, 70_000]]})],
    [("secret.get", {"id": "big"}), ("output.write", {"index": 1}), ("ssh.sign", {}),
     ("secret.get", {"id": "token"})],
]
EXPECTED = [
    [b"s3cret", None, [b"xxx", b"x" * 70_000]],
    [["UsageError", "secret 'big' too big. max size 500KB\nhint: make it smaller"],
     ["ExportError", "cannot write output 1"],
     ["ServiceError", "this client answers no 'ssh.sign' ask\nhint: use the same dockyard "
                      "version on the client and the service"],
     b"s3cret"],
]


def test_asks_of_two_workers_relayed_over_the_unix_socket() -> None:
    async def go() -> None:
        async with _served() as (url, daemon, coordinator):
            assert await _solve(url, {"workers": WORKERS, "session": {"ssh": {}}}) == EXPECTED
            session = coordinator.sessions[0]
            assert session["url"] == url and session["ssh"] == {}, "the request's own kept"
            assert len(session["token"]) >= 32
            assert daemon.relay.statistics() == {"sessions": 0, "workers": 0}
    run(go())


def test_asks_relayed_over_tls_with_a_token(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = self_signed(tmp_path)
    monkeypatch.setenv("DOCKYARD_SESSION_CA", str(cert))  # the workers verify it too

    async def go() -> None:
        async with _served(tcp=True, token="t0ken", tls=(cert, key)) as (url, _, _):
            assert await _solve(url, {"workers": WORKERS}, "t0ken", cert) == EXPECTED
    run(go())


def test_a_wrong_session_token_is_refused() -> None:
    async def go() -> None:
        async with _served() as (url, _, _):
            result = await _solve(url, {"workers": [[("secret.get", {"id": "token"})]],
                                        "wrong_token": True})
            assert result[0][0][0] == "ServiceError"
            assert "refused the build's session" in result[0][0][1]
    run(go())


def test_the_calls_end_closes_its_workers_sockets() -> None:
    def slow(params: dict[str, Any]) -> None:  # answers after the call has ended
        time.sleep(1.0)

    async def go() -> None:
        async with _served() as (url, daemon, coordinator):
            def call() -> Any:  # a blocking client, in a thread: the loop serves
                with connect_endpoint(parse_endpoint(url)) as client:
                    return client.call("solve", {"workers": [[]], "leave_one": True},
                                       handlers={"slow": slow})
            assert await asyncio.to_thread(call) == [[]]
            assert coordinator.late is not None
            with pytest.raises(ServiceError) as caught:
                await asyncio.wait_for(coordinator.late, 5)
            assert caught.value.message.startswith("lost the build's session channel to ")
            assert daemon.relay.statistics() == {"sessions": 0, "workers": 0}
            await coordinator.channels[0].aclose()
    run(go())


def test_a_malformed_frame_closes_only_its_connection() -> None:
    async def go() -> None:
        async with _served(tcp=True, token="t") as (url, _, _):
            endpoint = parse_endpoint(url, "t")
            other = await connect_endpoint_async(endpoint)
            bad = await asyncio.to_thread(BlockingWebSocket.connect, endpoint)
            await asyncio.to_thread(bad.send, b"\x00not msgpack at all")
            failure = msgpack.unpackb(await asyncio.to_thread(bad.receive))
            assert failure["kind"] == "failure" and failure["id"] == 0
            assert failure["message"].startswith("a frame that is not")
            with pytest.raises(WireClosed, match="not a dockyard frame"):
                await asyncio.to_thread(bad.receive)
            async with other:
                assert await other.call("ping") == {"daemon": __import__("os").getpid(),
                                                    "coordinator": {"pid": 1,
                                                                    "method": "ping"}}
    run(go())


def test_a_frame_with_a_bad_field_gets_a_failure_and_the_connection_lives() -> None:
    async def go() -> None:
        async with _served() as (url, _, _):
            ws = await asyncio.to_thread(BlockingWebSocket.connect, parse_endpoint(url))
            bad = msgpack.packb({"v": 1, "kind": "request", "id": 4, "method": 5,
                                 "params": {}})
            await asyncio.to_thread(ws.send, bad)
            failure = msgpack.unpackb(await asyncio.to_thread(ws.receive))
            assert (failure["id"], failure["message"]) == (
                4, "a 'request' frame whose 'method' is int")
            await asyncio.to_thread(ws.close)
            client = await connect_endpoint_async(parse_endpoint(url))
            async with client:
                assert (await client.call("ping"))["coordinator"]["method"] == "ping"
    run(go())


@pytest.mark.parametrize(("token", "message"), [
    (None, "refused the token: this endpoint needs a token: pass the endpoint's token "
           "with --token-file FILE or DOCKYARD_TOKEN"),
    ("wrong", "refused the token: wrong token: pass the endpoint's token with "
              "--token-file FILE or DOCKYARD_TOKEN"),
])
def test_a_missing_or_wrong_token_is_refused(token: str | None, message: str) -> None:
    async def go() -> None:
        async with _served(tcp=True, token="right") as (url, _, _):
            endpoint = parse_endpoint(url, token)
            with pytest.raises(WireRefused) as caught:
                await connect_endpoint_async(endpoint)
            assert str(caught.value) == f"the endpoint {url} {message}"
            with pytest.raises(WireRefused) as caught:
                await asyncio.to_thread(connect_endpoint, endpoint)
            assert str(caught.value) == f"the endpoint {url} {message}"
    run(go())


def test_an_untrusted_certificate_is_refused(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)

    async def go() -> None:
        async with _served(tcp=True, tls=(cert, key)) as (url, _, _):
            with pytest.raises(ServiceError, match="CERTIFICATE_VERIFY_FAILED"):
                await asyncio.to_thread(connect_endpoint, parse_endpoint(url))
            client: ServiceClient = await connect_endpoint_async(
                parse_endpoint(url, None, str(cert)))
            async with client:
                assert (await client.call("ping"))["coordinator"]["pid"] == 1
    run(go())
