"""The session channel on the client's websocket (cluster/_wire.py): ask and reply frames,
the client's answers (``answer``), the clients answering asks in the middle of a call
(fake websockets), endpoints and the token in the handshake."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import pytest

from dockyard.cluster._service import BlockingClient, ServiceClient
from dockyard.cluster._wire import (
    MAX_FRAME_BYTES,
    WIRE_VERSION,
    Ask,
    Endpoint,
    Frame,
    Reply,
    Response,
    WireError,
    answer,
    decode_frame,
    encode_frame,
    handshake_request,
    parse_endpoint,
    refused,
)
from dockyard.scheduler._errors import DockyardError, ExportError, ServiceError, UsageError

ROUND_TRIPS: list[Frame] = [
    Ask(3, 1, "secret.get", {"id": "token"}),
    Ask(3, 2, "context.read", {"name": "context", "items": [["a", 0, 10]]}),
    Reply(3, 1, b"value"),
    Reply(3, 2, [b"a", b"b"]),
    Reply(3, 3, None),
    Reply(3, 4, None, "UsageError", "secret 'x' too big", "use a smaller one"),
]


@pytest.mark.parametrize("frame", ROUND_TRIPS, ids=lambda f: f"{type(f).__name__}")
def test_round_trip(frame: Frame) -> None:
    assert decode_frame(encode_frame(frame)) == frame


def _pack(message: dict[str, Any]) -> bytes:
    packed: bytes = msgpack.packb(message, use_bin_type=True)
    return packed


BAD = [
    (_pack({"v": WIRE_VERSION, "kind": "ask", "id": 1, "ask": "1", "what": "x",
            "params": {}}), "a 'ask' frame whose 'ask' is str"),
    (_pack({"v": WIRE_VERSION, "kind": "ask", "id": 1, "ask": 1, "params": {}}),
     "a 'ask' frame without 'what'"),
    (_pack({"v": WIRE_VERSION, "kind": "reply", "id": 1, "ask": 1, "error": 5}),
     "a 'reply' frame whose 'error' is int"),
    (_pack({"v": WIRE_VERSION, "kind": "reply", "id": 1, "ask": 1, "value": 5}),
     "a 'reply' frame with unknown field 'value'"),
    (_pack({"v": 2, "kind": "reply", "id": 1, "ask": 1}),
     "a frame of wire version 2 (this dockyard speaks version 1)\n"
     "hint: use the same dockyard version on the client and the service"),
]


@pytest.mark.parametrize(("data", "message"), BAD)
def test_bad_frames(data: bytes, message: str) -> None:
    with pytest.raises(WireError) as caught:
        decode_frame(data)
    assert str(caught.value) == message


def _boom(params: dict[str, Any]) -> Any:
    raise ExportError(f"cannot write {params['index']}", hint="free some space")


def _bug(params: dict[str, Any]) -> Any:
    return {1, 2}  # a set: not msgpack


HANDLERS = {"echo": lambda p: p, "none": lambda p: None, "boom": _boom, "bug": _bug,
            "huge": lambda p: b"x" * MAX_FRAME_BYTES}
ANSWERS: list[tuple[str, dict[str, Any], Reply]] = [
    ("echo", {"a": [1, b"2"]}, Reply(9, 4, {"a": [1, b"2"]})),
    ("none", {}, Reply(9, 4, None)),
    ("boom", {"index": 2}, Reply(9, 4, None, "ExportError", "cannot write 2", "free some space")),
    ("unknown", {}, Reply(9, 4, None, "ServiceError", "this client answers no 'unknown' ask",
                          "use the same dockyard version on the client and the service")),
    ("bug", {}, Reply(9, 4, None, "ServiceError",
                      "the answer to 'bug' cannot be sent: can not serialize 'set' object",
                      "this is a bug in dockyard's client")),
    ("huge", {}, Reply(9, 4, None, "ServiceError",
                       f"the answer to 'huge' is {MAX_FRAME_BYTES + 32} bytes (a reply may be "
                       f"at most {MAX_FRAME_BYTES - 1024})", "ask for less at a time")),
]


@pytest.mark.parametrize(("what", "params", "reply"), ANSWERS, ids=[a[0] for a in ANSWERS])
def test_answer(what: str, params: dict[str, Any], reply: Reply) -> None:
    got = answer(Ask(9, 4, what, params), HANDLERS)
    if what == "huge":  # the exact overhead of the frame's own fields does not matter
        assert got.message.startswith("the answer to 'huge' is ")
        assert got.message.endswith(reply.message[reply.message.index(" bytes"):])
        got = Reply(got.id, got.ask, got.result, got.error, reply.message, got.hint)
    assert got == reply
    assert len(encode_frame(got)) <= MAX_FRAME_BYTES


# --- the clients answer asks in the middle of a call -------------------------------------


class _FakeBlockingWs:
    """A BlockingWebSocket's surface: scripted messages in, frames sent kept."""

    def __init__(self, incoming: list[Frame]) -> None:
        self.incoming = [encode_frame(f) for f in incoming]
        self.sent: list[Frame] = []

    def send(self, payload: bytes) -> None:
        self.sent.append(decode_frame(payload))

    def receive(self) -> bytes:
        return self.incoming.pop(0)

    def close(self) -> None:
        return None


class _FakeWs(_FakeBlockingWs):
    async def send(self, payload: bytes) -> None:  # type: ignore[override]
        super().send(payload)

    async def receive(self) -> bytes:  # type: ignore[override]
        return super().receive()


SCRIPT: list[Frame] = [
    Ask(1, 1, "secret.get", {"id": "a"}),
    Ask(2, 1, "secret.get", {"id": "a"}),  # another call's: not answered
    Ask(1, 2, "secret.get", {"id": "nope"}),
    Ask(1, 3, "output.close", {"index": 0}),
    Response(1, {"done": True}),
]
EXPECTED_SENT = [
    Reply(1, 1, b"A"),
    Reply(1, 2, None, "UsageError", "no secret nope", None),
    Reply(1, 3, None, "ServiceError", "this client answers no 'output.close' ask",
          "use the same dockyard version on the client and the service"),
]


def _secret(params: dict[str, Any]) -> bytes:
    if params["id"] != "a":
        raise UsageError(f"no secret {params['id']}")
    return b"A"


def test_blocking_client_answers_asks() -> None:
    ws = _FakeBlockingWs(SCRIPT)
    client = BlockingClient(ws, Endpoint("tcp://h:1", host="h", port=1))  # type: ignore[arg-type]
    assert client.call("solve", {}, handlers={"secret.get": _secret}) == {"done": True}
    assert ws.sent[1:] == EXPECTED_SENT


def test_async_client_answers_asks() -> None:
    ws = _FakeWs(SCRIPT)

    async def go() -> Any:
        client = ServiceClient(ws, Endpoint("tcp://h:1", host="h", port=1))  # type: ignore[arg-type]
        return await client.call("solve", {}, handlers={"secret.get": _secret})
    assert asyncio.run(go()) == {"done": True}
    assert ws.sent[1:] == EXPECTED_SENT


# --- endpoints ---------------------------------------------------------------------------

ENDPOINTS = [
    ("tcp://10.0.0.5:8375", Endpoint("tcp://10.0.0.5:8375", host="10.0.0.5", port=8375)),
    ("http://build.local", Endpoint("http://build.local", host="build.local", port=80)),
    ("https://build.local:9443/", Endpoint("https://build.local:9443/", host="build.local",
                                           port=9443, tls=True)),
    ("http://[::1]:81", Endpoint("http://[::1]:81", host="::1", port=81)),
    ("unix:///run/d.sock", Endpoint("unix:///run/d.sock", unix="/run/d.sock")),
]


@pytest.mark.parametrize(("url", "endpoint"), ENDPOINTS, ids=[e[0] for e in ENDPOINTS])
def test_parse_endpoint(url: str, endpoint: Endpoint) -> None:
    assert parse_endpoint(url) == endpoint


@pytest.mark.parametrize("url", ["build.local:80", "ftp://h:1", "http://h:x", "http://h/p",
                                 "unix://", "tcp://"])
def test_bad_endpoints(url: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_endpoint(url)
    assert str(caught.value) == (f"invalid endpoint {url!r}: not unix://PATH, tcp://HOST:PORT, "
                                 f"http://HOST:PORT or https://HOST:PORT")


def test_token_travels_in_the_handshake_and_never_in_a_repr() -> None:
    endpoint = parse_endpoint("https://h:1", token="s3cret", ca_file="/ca.pem")
    assert "s3cret" not in repr(endpoint)
    request = handshake_request("/ws", "k", endpoint.host_header, endpoint.headers())
    assert b"\r\nHost: h:1\r\n" in request
    assert request.endswith(b"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer s3cret\r\n\r\n")


def test_an_ipv6_host_header_is_bracketed() -> None:
    assert parse_endpoint("http://[::1]:81").host_header == "[::1]:81"


def test_a_header_with_a_line_break_is_refused() -> None:
    with pytest.raises(WireError):
        handshake_request("/ws", "k", headers={"Authorization": "Bearer a\r\nX: y"})


REFUSALS: list[tuple[bytes, bytes, str | None]] = [
    (b"HTTP/1.1 401 Unauthorized\r\n\r\n", b"wrong token: pass it\n",
     "the endpoint tcp://h:1 refused the token: wrong token: pass it"),
    (b"HTTP/1.1 401 Unauthorized\r\n\r\n", b"",
     "the endpoint tcp://h:1 refused the token: HTTP/1.1 401 Unauthorized"),
    (b"HTTP/1.1 404 Not Found\r\n\r\n", b"", None),
    (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", b"", None),
]


@pytest.mark.parametrize(("head", "body", "message"), REFUSALS)
def test_refused(head: bytes, body: bytes, message: str | None) -> None:
    error = refused(parse_endpoint("tcp://h:1"), head, body)
    assert (None if error is None else str(error)) == message
    assert error is None or isinstance(error, ServiceError)


def test_failure_reply_is_raised_on_the_worker_side_as_its_class() -> None:
    from dockyard.workers._session_channel import answer_error

    error = answer_error("ExportError", "cannot write", "free space")
    assert type(error) is ExportError and str(error) == "cannot write\nhint: free space"
    other = answer_error("NoSuchError", "m", None)
    assert type(other) is ServiceError and isinstance(other, DockyardError)
