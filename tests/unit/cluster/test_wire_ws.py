"""The client side of the service's websocket (cluster/_wire.py): the handshake, frames out
and in, and what a stream of server frames becomes -- fed from memory, no socket."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import pytest

from dockyard.cluster._wire import (
    MAX_FRAME_BYTES,
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    BlockingWebSocket,
    WebSocket,
    WireClosed,
    WireError,
    accept_key,
    check_handshake,
    encode_ws_frame,
    handshake_request,
    read_ws_frame,
    read_ws_frame_blocking,
)

KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 section 1.3's example
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def _answer(status: str = "101 Switching Protocols", upgrade: str = "websocket",
            accept: str = ACCEPT) -> bytes:
    return (f"HTTP/1.1 {status}\r\nUpgrade: {upgrade}\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept}\r\n\r\n").encode()


def test_accept_key_is_the_rfc_example() -> None:
    assert accept_key(KEY) == ACCEPT


def test_handshake_request() -> None:
    assert handshake_request("/ws", KEY) == (
        b"GET /ws HTTP/1.1\r\nHost: dockyard\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


BAD_HANDSHAKES: list[tuple[str, bytes, str]] = [
    ("not-found", _answer(status="404 Not Found"),
     "the service did not open a websocket: 'HTTP/1.1 404 Not Found'"),
    ("not-http", b"SSH-2.0-OpenSSH\r\n\r\n",
     "the service did not open a websocket: 'SSH-2.0-OpenSSH'"),
    ("other-upgrade", _answer(upgrade="h2c"), "the service upgraded to 'h2c', not websocket"),
    ("wrong-accept", _answer(accept="AAAA"),
     "the service answered the websocket handshake with a wrong Sec-WebSocket-Accept"),
]


def test_good_handshake() -> None:
    check_handshake(_answer(), KEY)
    check_handshake(_answer().replace(b"Upgrade: websocket", b"upgrade:  WebSocket"), KEY)


@pytest.mark.parametrize(("head", "message"), [(h, m) for _, h, m in BAD_HANDSHAKES],
                         ids=[name for name, _, _ in BAD_HANDSHAKES])
def test_bad_handshakes(head: bytes, message: str) -> None:
    with pytest.raises(WireError) as info:
        check_handshake(head, KEY)
    assert str(info.value) == message


def test_masked_frame_is_the_rfc_example() -> None:
    # RFC 6455 section 5.7: a masked "Hello" text frame with mask 37 fa 21 3d.
    assert encode_ws_frame(OP_TEXT, b"Hello", bytes.fromhex("37fa213d")) == bytes.fromhex(
        "818537fa213d7f9f4d5158")


def _reader(data: bytes, eof: bool = True) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    if eof:
        reader.feed_eof()
    return reader


def _read(data: bytes) -> tuple[bool, int, bytes]:
    async def go() -> tuple[bool, int, bytes]:
        return await read_ws_frame(_reader(data).readexactly)
    return asyncio.run(go())


# Payload sizes at each length encoding's edges (7 bit, 16 bit, 64 bit).
@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 300_001])
def test_frames_round_trip(size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    frame = encode_ws_frame(OP_BINARY, payload, b"\x01\x80\xff\x7f")
    header = 2 + 4 + (0 if size < 126 else 2 if size < 65536 else 8)
    assert len(frame) == header + size
    assert _read(frame) == (True, OP_BINARY, payload)
    assert _read_blocking(frame) == (True, OP_BINARY, payload)


def _read_blocking(data: bytes) -> tuple[bool, int, bytes]:
    """``read_ws_frame_blocking`` over ``data``, every read exactly the size asked."""
    view = memoryview(data)

    def read(size: int) -> bytes:
        nonlocal view
        assert len(view) >= size, "asked for more than the frame holds"
        chunk, view = bytes(view[:size]), view[size:]
        return chunk
    frame = read_ws_frame_blocking(read)
    assert not view, "the parser left bytes of the frame unread"
    return frame


BAD_FRAMES: list[tuple[str, bytes, str]] = [
    ("reserved-bits", b"\xc2\x00", "a websocket frame with reserved bits 0x40 set (an "
                                   "extension this client did not ask for)"),
    ("too-long", b"\x82\x7f" + (MAX_FRAME_BYTES + 1).to_bytes(8, "big"),
     f"a frame of {MAX_FRAME_BYTES + 1} bytes (at most {MAX_FRAME_BYTES})"),
]


@pytest.mark.parametrize(("data", "message"), [(d, m) for _, d, m in BAD_FRAMES],
                         ids=[name for name, _, _ in BAD_FRAMES])
def test_bad_frames(data: bytes, message: str) -> None:
    with pytest.raises(WireError) as info:
        _read(data)
    assert str(info.value) == message
    with pytest.raises(WireError) as info:
        _read_blocking(data)
    assert str(info.value) == message


class _Writer:
    """What the client writes, kept (a StreamWriter's surface as WebSocket uses it)."""

    def __init__(self) -> None:
        self.data = b""
        self.closing = False

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        return None

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    async def wait_closed(self) -> None:
        return None


def _server(opcode: int, payload: bytes, final: bool = True) -> bytes:
    """A server frame (unmasked, short)."""
    return bytes([(0x80 if final else 0) | opcode, len(payload)]) + payload


def _written_frames(data: bytes) -> list[tuple[int, bytes]]:
    async def go() -> list[tuple[int, bytes]]:
        reader, found = _reader(data), []
        while not reader.at_eof():
            _, opcode, payload = await read_ws_frame(reader.readexactly)
            found.append((opcode, payload))
        return found
    return asyncio.run(go())


def _receive(data: bytes) -> tuple[Any, list[tuple[int, bytes]]]:
    """What ``receive`` makes of the server's ``data`` (a message or the error), and the
    frames the client wrote meanwhile."""
    writer = _Writer()

    async def go() -> Any:
        ws = WebSocket(_reader(data), writer)  # type: ignore[arg-type]
        try:
            return await ws.receive()
        except (WireError, WireClosed) as error:
            return f"{type(error).__name__}: {error}"
    return asyncio.run(go()), _written_frames(writer.data)


CLOSE_1001 = (1001).to_bytes(2, "big")
RECEIVES: list[tuple[str, bytes, Any, list[tuple[int, bytes]]]] = [
    ("binary", _server(OP_BINARY, b"msg"), b"msg", []),
    ("empty", _server(OP_BINARY, b""), b"", []),
    ("ping-answered", _server(OP_PING, b"p") + _server(OP_BINARY, b"x"), b"x",
     [(OP_PONG, b"p")]),
    ("pong-ignored", _server(OP_PONG, b"") + _server(OP_BINARY, b"x"), b"x", []),
    ("fragments", _server(OP_BINARY, b"ab", final=False) + _server(OP_PING, b"")
     + _server(OP_CONTINUATION, b"cd", final=False) + _server(OP_CONTINUATION, b"e"),
     b"abcde", [(OP_PONG, b"")]),
    ("close-with-reason", _server(OP_CLOSE, CLOSE_1001 + b"dockyard service stopping"),
     "WireClosed: dockyard service stopping", [(OP_CLOSE, CLOSE_1001)]),
    ("close-bare", _server(OP_CLOSE, b""), "WireClosed: CLOSE", [(OP_CLOSE, b"")]),
    ("text", _server(OP_TEXT, b"hi"), "WireClosed: TEXT", []),
    ("eof", b"", "WireClosed: CLOSED", []),
    ("eof-mid-frame", b"\x82\x05ab", "WireClosed: CLOSED", []),
    ("stray-continuation", _server(OP_CONTINUATION, b"x"),
     "WireError: a websocket CONTINUATION frame out of order", []),
    ("interleaved-start", _server(OP_BINARY, b"a", final=False) + _server(OP_BINARY, b"b"),
     "WireError: a websocket BINARY frame out of order", []),
]


@pytest.mark.parametrize(("data", "result", "written"),
                         [(d, r, w) for _, d, r, w in RECEIVES],
                         ids=[name for name, _, _, _ in RECEIVES])
def test_receive(data: bytes, result: Any, written: list[tuple[int, bytes]]) -> None:
    assert _receive(data) == (result, written)


def test_send_is_one_masked_binary_frame() -> None:
    writer = _Writer()

    async def go() -> None:
        ws = WebSocket(_reader(b""), writer)  # type: ignore[arg-type]
        await ws.send(b"\x00payload\xff")
    asyncio.run(go())
    assert writer.data[1] & 0x80, "client frames are masked"
    assert _written_frames(writer.data) == [(OP_BINARY, b"\x00payload\xff")]


def test_close_sends_a_close_frame_and_waits_for_the_answer() -> None:
    writer = _Writer()

    async def go() -> None:
        ws = WebSocket(_reader(_server(OP_BINARY, b"late") + _server(OP_CLOSE, b"")),
                       writer)  # type: ignore[arg-type]
        await ws.close()
        assert ws.closed
    asyncio.run(go())
    assert writer.closing
    assert _written_frames(writer.data) == [(OP_CLOSE, (1000).to_bytes(2, "big"))]


def test_send_after_close_is_a_connection_error() -> None:
    writer = _Writer()
    writer.closing = True

    async def go() -> None:
        await WebSocket(_reader(b""), writer).send(b"x")  # type: ignore[arg-type]
    with pytest.raises(ConnectionError):
        asyncio.run(go())


@pytest.mark.parametrize("size", [3, 70_000, 4 * 1024 * 1024 + 3])
def test_blocking_receive_of_big_and_small_frames_in_pieces(size: int) -> None:
    """The blocking client reads messages of every size, however the bytes are cut up on
    the socket (a big payload is received straight into its own buffer)."""
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    frame = bytes([0x80 | OP_BINARY, 127]) + size.to_bytes(8, "big") + payload
    stream = frame + _server(OP_BINARY, b"after")
    ours, theirs = socket.socketpair()
    try:
        ws = BlockingWebSocket(ours, buffered=stream[:5])

        def feed() -> None:
            for start in range(5, len(stream), 65_521):
                theirs.sendall(stream[start:start + 65_521])
        sender = threading.Thread(target=feed)
        sender.start()
        assert ws.receive() == payload
        assert ws.receive() == b"after"
        sender.join(10)
    finally:
        ours.close()
        theirs.close()
