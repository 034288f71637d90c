"""The frames a client and the dockyard service exchange over the websocket: msgpack maps,
versioned, one frame per websocket binary message.

Every frame is ``{"v": WIRE_VERSION, "kind": <kind>, "id": <request id>, ...}``::

    client -> service   request   {method, params}     start a call (id chosen by the client)
                        cancel    {}                   stop call ``id`` (Ctrl-C)
    service -> client   event     {event}              progress of call ``id`` (a progress event
                                                       map, scheduler/_progress.py)
                        response  {result}             call ``id`` finished
                        failure   {error, message, hint, details}
                                                       call ``id`` failed with a DockyardError

The session channel (docs/cluster.md) rides the same websocket::

    service -> client   ask       {ask, what, params}  a question of call ``id``'s build
    client -> service   reply     {ask, result, error, message, hint}
                                                       its answer (``error`` None), or a
                                                       failure (``error``: an error class)

``answer(ask, handlers)`` is the client's side of an ask, without I/O: the handler of
``ask.what`` called, its ``DockyardError`` (or a missing handler, or an answer too big for
a frame) turned into a failure reply.

A call ends with exactly one ``response`` or ``failure``; ``event`` frames come before it.
A frame of another version, or one that is not such a map, raises ``WireError``: the peer
speaks another dockyard version.  Secrets never travel in frames (the session channel
serves them on demand; see DESIGN.md).

The client's end of the websocket itself is here too (the RFC 6455 handshake and frames:
``WebSocket`` over asyncio streams, ``BlockingWebSocket`` over a plain socket); the daemon
serves it with aiohttp.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import socket
from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

import msgpack

from dockyard.scheduler._errors import DockyardError, ServiceError, error_from_wire, error_to_wire

if TYPE_CHECKING:
    import asyncio

__all__ = [
    "MAX_FRAME_BYTES", "WIRE_VERSION", "Ask", "Cancel", "EventFrame", "Failure", "Frame",
    "Handler", "Handlers", "Reply", "Request", "Response", "WireRefused", "answer", "reply_failure",
    "BlockingWebSocket", "Endpoint", "WebSocket", "WireClosed", "WireError", "accept_key",
    "client_ssl_context", "parse_endpoint", "refused",
    "check_handshake", "decode_frame", "encode_frame", "encode_ws_frame", "error_from_failure",
    "failure_from_error", "handshake_request", "parse_ws_frame", "read_ws_frame",
    "read_ws_frame_blocking",
]

WIRE_VERSION = 1
MAX_FRAME_BYTES = 64 * 1024 * 1024  # larger payloads (contexts, blobs) never travel as one frame


class WireError(ServiceError):
    """A frame that cannot be decoded: another dockyard version, or not a dockyard peer."""


@dataclass(frozen=True, slots=True)
class Request:
    """Start call ``id``: ``method`` with ``params`` (a msgpack-able map)."""

    id: int
    method: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Cancel:
    """Stop call ``id``; the service answers with a ``failure`` (or nothing if it ended)."""

    id: int


@dataclass(frozen=True, slots=True)
class EventFrame:
    """One progress event of call ``id``, in its wire form (``event_to_wire``)."""

    id: int
    event: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Response:
    """Call ``id`` finished with ``result`` (msgpack-able)."""

    id: int
    result: Any = None


@dataclass(frozen=True, slots=True)
class Failure:
    """Call ``id`` failed: ``error`` names a class of the error tree, ``details`` holds the
    attributes that class takes besides message and hint (vertex, exit_code, ...)."""

    id: int
    error: str
    message: str
    hint: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Ask:
    """A question of call ``id``'s build (a worker's, relayed by the service): ``ask`` is
    its number within the call, ``what`` names it (``secret.get``...), ``params`` its map."""

    id: int
    ask: int
    what: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Reply:
    """The client's answer to ask ``ask`` of call ``id``: ``result`` when ``error`` is
    None, else a failure (``error`` names a class of the error tree)."""

    id: int
    ask: int
    result: Any = None
    error: str | None = None
    message: str = ""
    hint: str | None = None


Frame = Union[Request, Cancel, EventFrame, Response, Failure, Ask, Reply]  # noqa: UP007
Handler = Callable[[dict[str, Any]], Any]
Handlers = Mapping[str, Handler]  # what -> the client's answer to such asks

_KINDS: dict[str, type[Any]] = {
    "request": Request, "cancel": Cancel, "event": EventFrame, "response": Response,
    "failure": Failure, "ask": Ask, "reply": Reply,
}
_NAMES: dict[type[Any], str] = {cls: name for name, cls in _KINDS.items()}

# The fields of each frame and the types they must have on the wire.
_FIELDS: dict[type[Any], dict[str, tuple[type, ...]]] = {
    Request: {"id": (int,), "method": (str,), "params": (dict,)},
    Cancel: {"id": (int,)},
    EventFrame: {"id": (int,), "event": (dict,)},
    Response: {"id": (int,), "result": (object,)},
    Failure: {"id": (int,), "error": (str,), "message": (str,), "hint": (str, type(None)),
              "details": (dict,)},
    Ask: {"id": (int,), "ask": (int,), "what": (str,), "params": (dict,)},
    Reply: {"id": (int,), "ask": (int,), "result": (object,), "error": (str, type(None)),
            "message": (str,), "hint": (str, type(None))},
}


def encode_frame(frame: Frame) -> bytes:
    """``frame`` as one msgpack message."""
    body = {name: getattr(frame, name) for name in _FIELDS[type(frame)]}
    message = {"v": WIRE_VERSION, "kind": _NAMES[type(frame)]} | body
    packed: bytes = msgpack.packb(message, use_bin_type=True)
    return packed


def decode_frame(data: bytes) -> Frame:
    """The frame in ``data``; anything that is not a frame of this version is a ``WireError``."""
    message = _unpack(data)
    if message.get("v") != WIRE_VERSION:
        raise WireError(f"a frame of wire version {message.get('v')!r} (this dockyard speaks "
                        f"version {WIRE_VERSION})",
                        hint="use the same dockyard version on the client and the service")
    cls = _KINDS.get(message.get("kind"))  # type: ignore[arg-type]
    if cls is None:
        raise WireError(f"a frame of unknown kind {message.get('kind')!r}")
    return _build(cls, {k: v for k, v in message.items() if k not in ("v", "kind")})


def _unpack(data: bytes) -> dict[str, Any]:
    if len(data) > MAX_FRAME_BYTES:
        raise WireError(f"a frame of {len(data)} bytes (at most {MAX_FRAME_BYTES})")
    try:
        message = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise WireError(f"a frame that is not msgpack: {exc}") from None
    if not isinstance(message, dict):
        raise WireError(f"a frame that is not a map but {type(message).__name__}")
    return message


def _build(cls: type[Any], fields: dict[str, Any]) -> Frame:
    expected = _FIELDS[cls]
    unknown = sorted(str(name) for name in set(fields) - set(expected))
    if unknown:
        raise WireError(f"a {_NAMES[cls]!r} frame with unknown field {unknown[0]!r}")
    for name, value in fields.items():
        if not isinstance(value, expected[name]) or (isinstance(value, bool) and
                                                     bool not in expected[name]):
            raise WireError(f"a {_NAMES[cls]!r} frame whose {name!r} is "
                            f"{type(value).__name__}")
    try:
        frame: Frame = cls(**fields)
    except TypeError:
        missing = sorted(set(expected) - set(fields))
        raise WireError(f"a {_NAMES[cls]!r} frame without {missing[0]!r}") from None
    return frame


# --- errors across the wire ------------------------------------------------------------

# The keyword attributes each error class takes besides message and hint.
def failure_from_error(call_id: int, error: DockyardError) -> Failure:
    """The ``failure`` frame that carries ``error`` to the client."""
    data = error_to_wire(error)
    return Failure(call_id, data["error"], data["message"], data["hint"], data["details"])


def error_from_failure(failure: Failure) -> DockyardError:
    """The ``DockyardError`` a ``failure`` frame describes (a ``ServiceError`` for a class
    this dockyard does not know)."""
    return error_from_wire({"error": failure.error, "message": failure.message,
                            "hint": failure.hint, "details": failure.details})


# --- the session channel: the client's answers ------------------------------------------

_REPLY_OVERHEAD = 1024  # a reply frame's bytes besides its result, generously


def reply_failure(ask: Ask, error: DockyardError) -> Reply:
    """The failure reply carrying ``error`` (its nearest public class, message, hint)."""
    failure = failure_from_error(ask.id, error)
    return Reply(ask.id, ask.ask, None, failure.error, failure.message, failure.hint)


def answer(ask: Ask, handlers: Handlers) -> Reply:
    """The reply to ``ask``: its handler's result, or a failure reply for a handler's
    ``DockyardError``, an unknown ``what``, or a result that a frame cannot carry."""
    handler = handlers.get(ask.what)
    if handler is None:
        return reply_failure(ask, ServiceError(
            f"this client answers no {ask.what!r} ask",
            hint="use the same dockyard version on the client and the service"))
    try:
        reply = Reply(ask.id, ask.ask, handler(ask.params))
    except DockyardError as error:
        return reply_failure(ask, error)
    return _bounded(ask, reply)


def _bounded(ask: Ask, reply: Reply) -> Reply:
    """``reply`` if it encodes into one frame, else a failure reply saying why."""
    try:
        size = len(encode_frame(reply))
    except (TypeError, ValueError, OverflowError) as exc:
        return reply_failure(ask, ServiceError(
            f"the answer to {ask.what!r} cannot be sent: {exc}",
            hint="this is a bug in dockyard's client"))
    if size > MAX_FRAME_BYTES - _REPLY_OVERHEAD:
        return reply_failure(ask, ServiceError(
            f"the answer to {ask.what!r} is {size} bytes (a reply may be at most "
            f"{MAX_FRAME_BYTES - _REPLY_OVERHEAD})", hint="ask for less at a time"))
    return reply


# --- the websocket the frames travel in: the client's side (RFC 6455) -------------------
#
# The service serves websocket messages over its unix socket (aiohttp's server).  A client
# needs only a handshake, masked binary frames out and unmasked frames in: a few lines
# instead of importing aiohttp (its import was most of a CLI start-up).  The parsing is
# sans-IO (``parse_ws_frame``, ``_Messages``); two drivers use it: ``WebSocket`` over
# asyncio streams (the service's async client) and ``BlockingWebSocket`` over a plain
# socket (``dockyard build`` against a running service: no event loop, no asyncio import).

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455's fixed accept suffix
OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_OP_NAMES = {OP_CONTINUATION: "CONTINUATION", OP_TEXT: "TEXT", OP_BINARY: "BINARY",
             OP_CLOSE: "CLOSE", OP_PING: "PING", OP_PONG: "PONG"}
CLOSE_NORMAL = 1000
_MAX_HEAD_BYTES = 64 * 1024  # the handshake answer's status line and headers
_HEAD_END = b"\r\n\r\n"


class WireClosed(ServiceError):
    """The websocket ended (closed by the peer, or the connection dropped); the message is
    why, as the peer gave it."""


def handshake_request(resource: str, key: str, host: str = "dockyard",
                      headers: Mapping[str, str] | None = None) -> bytes:
    """The HTTP/1.1 upgrade request a client opens with (``key``: 16 random bytes, base64;
    ``headers``: more header lines, e.g. ``Authorization``)."""
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    for text in (resource, host, extra[:-2]):
        if any(c in text for c in "\r\n\0"):
            raise WireError("a websocket handshake field with a line break in it")
    return (f"GET {resource} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n{extra}\r\n").encode("ascii")


# --- where the service is: a unix socket, or an endpoint over TCP (TLS or not) -----------


@dataclass(frozen=True, slots=True)
class Endpoint:
    """How a client reaches a service: ``unix`` (a socket path), or ``host``:``port``
    over TLS when ``tls`` (verified against ``ca_file``, else the system store); ``token``
    goes in the handshake as ``Authorization: Bearer``; ``url`` is as the user gave it."""

    url: str
    unix: str | None = None
    host: str = ""
    port: int = 0
    tls: bool = False
    ca_file: str | None = None
    token: str | None = field(default=None, repr=False)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    @property
    def host_header(self) -> str:
        if self.unix is not None:
            return "dockyard"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


_DEFAULT_PORTS = {"tcp": 8375, "http": 80, "https": 443}


def parse_endpoint(url: str, token: str | None = None, ca_file: str | None = None
                   ) -> Endpoint:
    """``unix://PATH``, ``tcp://HOST:PORT`` or ``http://HOST[:PORT]`` (plain),
    ``https://HOST[:PORT]`` (TLS); a ``UsageError`` for anything else."""
    from dockyard.scheduler._errors import UsageError  # noqa: PLC0415

    scheme, sep, rest = url.partition("://")
    if sep and scheme == "unix" and rest:
        return Endpoint(url, unix=rest, token=token)
    host, _, port = rest.rstrip("/").rpartition(":") if ":" in rest else (rest, "", "")
    if not sep or scheme not in _DEFAULT_PORTS or "/" in rest.rstrip("/") or not (
            host or port) or (port and not port.isdigit()):
        raise UsageError(f"invalid endpoint {url!r}: not unix://PATH, tcp://HOST:PORT, "
                         f"http://HOST:PORT or https://HOST:PORT")
    host, port_number = host or rest.rstrip("/"), int(port) if port else _DEFAULT_PORTS[scheme]
    return Endpoint(url, host=host.strip("[]"), port=port_number, tls=scheme == "https",
                    ca_file=ca_file, token=token)


def client_ssl_context(ca_file: str | None) -> Any:
    """An ``ssl.SSLContext`` verifying the server against ``ca_file`` (else the system
    store); ``ssl`` is imported only by a client that speaks TLS."""
    import ssl  # noqa: PLC0415

    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ServiceError(f"cannot load the TLS CA file {ca_file!r}: {exc}",
                           hint="pass a PEM file with --tls-ca or DOCKYARD_TLS_CA") from None


class WireRefused(ServiceError):
    """The endpoint refused the connection's token (HTTP 401/403)."""


def _status(head: bytes) -> int:
    parts = head.split(b"\r\n", 1)[0].split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def _content_length(head: bytes) -> int:
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length" and value.strip().isdigit():
            return min(int(value.strip()), 4096)
    return 0


def refused(endpoint: Endpoint, head: bytes, body: bytes) -> WireRefused | None:
    """The error for a handshake the endpoint refused as unauthorized, else None (one
    line: the endpoint's own answer says how to pass the token)."""
    if _status(head) not in (401, 403):
        return None
    said = body.decode("utf-8", "replace").strip().splitlines()
    why = said[0] if said else head.split(b"\r\n", 1)[0].decode("latin-1")
    return WireRefused(f"the endpoint {endpoint.url} refused the token: {why}")


def _new_key() -> str:
    return base64.b64encode(os.urandom(16)).decode("ascii")


def accept_key(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` a server must answer ``key`` with."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _WS_GUID).digest()).decode()


def check_handshake(head: bytes, key: str) -> None:
    """Accept the server's answer (status line and headers) to ``handshake_request(key)``;
    a ``WireError`` when it did not switch to a websocket."""
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ", 2)
    if len(status) < 2 or status[1] != "101":
        raise WireError(f"the service did not open a websocket: {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("upgrade", "").lower() != "websocket":
        raise WireError(f"the service upgraded to {headers.get('upgrade')!r}, not websocket")
    if headers.get("sec-websocket-accept") != accept_key(key):
        raise WireError("the service answered the websocket handshake with a wrong "
                        "Sec-WebSocket-Accept")


def _xor_mask(payload: bytes, mask: bytes) -> bytes:
    """``payload`` XOR the 4-byte ``mask`` repeated (masking and unmasking alike)."""
    size = len(payload)
    if not size:
        return payload
    key = (mask * (size // 4 + 1))[:size]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(
        size, "little")


def encode_ws_frame(opcode: int, payload: bytes, mask: bytes) -> bytes:
    """One final, masked frame (a client's frames are always masked)."""
    size = len(payload)
    if size < 126:
        length = bytes([0x80 | size])
    elif size < 1 << 16:
        length = bytes([0x80 | 126]) + size.to_bytes(2, "big")
    else:
        length = bytes([0x80 | 127]) + size.to_bytes(8, "big")
    return bytes([0x80 | opcode]) + length + mask + _xor_mask(payload, mask)


def _client_frame(opcode: int, payload: bytes) -> bytes:
    return encode_ws_frame(opcode, payload, os.urandom(4))


WsFrame = tuple[bool, int, bytes]  # (final, opcode, payload unmasked)
FrameParser = Generator[int, bytes, WsFrame]


def parse_ws_frame() -> FrameParser:
    """Sans-IO frame parser: yields how many bytes it needs next and is sent exactly that
    many; returns the frame.  A frame using an extension (RSV bits), or longer than a
    frame may be, is a ``WireError``."""
    first, second = yield 2
    if first & 0x70:
        raise WireError(f"a websocket frame with reserved bits {first & 0x70:#x} set (an "
                        f"extension this client did not ask for)")
    size = second & 0x7F
    if size == 126:
        size = int.from_bytes((yield 2), "big")
    elif size == 127:
        size = int.from_bytes((yield 8), "big")
    if size > MAX_FRAME_BYTES:
        raise WireError(f"a frame of {size} bytes (at most {MAX_FRAME_BYTES})")
    mask = (yield 4) if second & 0x80 else b""
    payload = (yield size) if size else b""
    return bool(first & 0x80), first & 0x0F, _xor_mask(payload, mask) if mask else payload


ReadExactly = Callable[[int], Awaitable[bytes]]


async def read_ws_frame(read: ReadExactly) -> WsFrame:
    """The next frame, ``read`` giving exactly the bytes asked for."""
    parser = parse_ws_frame()
    try:
        need = next(parser)
        while True:
            need = parser.send(await read(need))
    except StopIteration as done:
        frame: WsFrame = done.value
        return frame


def read_ws_frame_blocking(read: Callable[[int], bytes]) -> WsFrame:
    """``read_ws_frame`` for a blocking ``read``."""
    parser = parse_ws_frame()
    try:
        need = next(parser)
        while True:
            need = parser.send(read(need))
    except StopIteration as done:
        frame: WsFrame = done.value
        return frame


class _Messages:
    """Data frames -> messages: fragments joined, a finished message checked to be binary."""

    def __init__(self) -> None:
        self._kind = -1  # the opcode of the message being joined; -1: none
        self._parts: list[bytes] = []
        self._size = 0

    def add(self, final: bool, opcode: int, payload: bytes) -> bytes | None:
        """The finished message, or None while fragments are outstanding."""
        if (opcode == OP_CONTINUATION) != (self._kind >= 0):
            raise WireError(f"a websocket {_OP_NAMES.get(opcode, opcode)} frame out of order")
        self._kind = opcode if self._kind < 0 else self._kind
        self._parts.append(payload)
        self._size += len(payload)
        if self._size > MAX_FRAME_BYTES:
            raise WireError(f"a message of over {MAX_FRAME_BYTES} bytes")
        if not final:
            return None
        kind, message = self._kind, b"".join(self._parts)
        self._kind, self._parts, self._size = -1, [], 0
        if kind != OP_BINARY:
            raise WireClosed(_OP_NAMES.get(kind, str(kind)))
        return message


def _control_reply(opcode: int, payload: bytes) -> tuple[bytes | None, str | None]:
    """A control frame's answer (a frame to send, or None) and, for a close, why (the
    caller then drops the connection and raises ``WireClosed(why)``)."""
    if opcode == OP_PING:
        return _client_frame(OP_PONG, payload), None
    if opcode == OP_CLOSE:
        return _client_frame(OP_CLOSE, payload[:2]), payload[2:].decode("utf-8", "replace") \
            or "CLOSE"
    return None, None  # a pong, or a control opcode this client does not know


class WebSocket:
    """A client websocket over a unix socket and asyncio streams: binary messages out
    (``send``) and in (``receive``); pings answered, fragments joined.  ``open`` connects
    and shakes hands (``OSError`` when nobody listens, ``WireError`` when the listener is
    no websocket)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import asyncio  # noqa: PLC0415 -- the blocking client never pays its import

        self._reader = reader
        self._writer = writer
        self._send_lock = asyncio.Lock()  # frames of concurrent senders never interleave
        self._messages = _Messages()
        self.closed = False  # a close frame was sent or the connection dropped

    @classmethod
    async def open(cls, path: str, resource: str = "/ws") -> WebSocket:
        return await cls.connect(Endpoint(f"unix://{path}", unix=path), resource)

    @classmethod
    async def connect(cls, endpoint: Endpoint, resource: str = "/ws") -> WebSocket:
        """``open`` for any endpoint (``WireRefused`` when it refuses the token)."""
        import asyncio  # noqa: PLC0415

        if endpoint.unix is not None:
            reader, writer = await asyncio.open_unix_connection(endpoint.unix,
                                                                limit=_MAX_HEAD_BYTES)
        else:
            context = client_ssl_context(endpoint.ca_file) if endpoint.tls else None
            reader, writer = await asyncio.open_connection(
                endpoint.host, endpoint.port, limit=_MAX_HEAD_BYTES, ssl=context)
        key = _new_key()
        try:
            writer.write(handshake_request(resource, key, endpoint.host_header,
                                           endpoint.headers()))
            await writer.drain()
            head = await reader.readuntil(_HEAD_END)
            length = _content_length(head)
            error = refused(endpoint, head, await reader.read(length) if length else b"")
            if error is not None:
                raise error
            check_handshake(head, key)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            writer.close()
            raise WireError(f"the service closed the websocket handshake: {exc}") from None
        except BaseException:
            writer.close()
            raise
        return cls(reader, writer)

    async def send(self, payload: bytes, opcode: int = OP_BINARY) -> None:
        """Send one message (``ConnectionError`` when the connection is gone)."""
        await self._write(_client_frame(opcode, payload))

    async def _write(self, frame: bytes) -> None:
        async with self._send_lock:
            if self._writer.is_closing():
                raise ConnectionResetError("the websocket is closed")
            self._writer.write(frame)
            await self._writer.drain()

    async def receive(self) -> bytes:
        """The next binary message; ``WireClosed`` (saying why) when the websocket ends or
        the peer sends anything else."""
        while True:
            final, opcode, payload = await self._next_frame()
            if opcode < OP_CLOSE:
                message = self._messages.add(final, opcode, payload)
                if message is not None:
                    return message
                continue
            reply, closed = _control_reply(opcode, payload)
            if reply is not None and not self.closed:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await self._write(reply)
            if closed is not None:
                self.closed = True
                self._writer.close()
                raise WireClosed(closed)

    async def _next_frame(self) -> WsFrame:
        import asyncio  # noqa: PLC0415

        try:
            return await read_ws_frame(self._reader.readexactly)
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed = True
            raise WireClosed("CLOSED") from None

    async def close(self, timeout: float = 5.0) -> None:
        """The close handshake: send a close frame, wait (up to ``timeout``) for the
        peer's, then drop the connection."""
        import asyncio  # noqa: PLC0415

        if not self.closed:
            self.closed = True
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self._write(_client_frame(OP_CLOSE, CLOSE_NORMAL.to_bytes(2, "big")))
            with contextlib.suppress(TimeoutError, ServiceError, ConnectionError,
                                     asyncio.IncompleteReadError):
                async with asyncio.timeout(timeout):
                    while (await read_ws_frame(self._reader.readexactly))[1] != OP_CLOSE:
                        pass
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()


class BlockingWebSocket:
    """``WebSocket`` over a blocking unix socket, for a client with nothing else to do
    while it waits."""

    def __init__(self, sock: socket.socket, buffered: bytes = b"") -> None:
        self._sock = sock
        self._buffer = bytearray(buffered)  # received, not yet parsed
        self._messages = _Messages()
        self.closed = False  # a close frame was sent or the connection dropped

    @classmethod
    def open(cls, path: str, resource: str = "/ws", timeout: float = 60.0
             ) -> BlockingWebSocket:
        """Connect and shake hands (``OSError`` when nobody listens or answers in
        ``timeout`` seconds, ``WireError`` when the listener is no websocket)."""
        return cls.connect(Endpoint(f"unix://{path}", unix=path), resource, timeout)

    @classmethod
    def connect(cls, endpoint: Endpoint, resource: str = "/ws", timeout: float = 60.0
                ) -> BlockingWebSocket:
        """``open`` for any endpoint (``WireRefused`` when it refuses the token)."""
        sock = _blocking_socket(endpoint, timeout)
        try:
            key = _new_key()
            sock.sendall(handshake_request(resource, key, endpoint.host_header,
                                           endpoint.headers()))
            head, rest = _read_head(sock)
            if _status(head) in (401, 403):
                rest = _read_body(sock, rest, _content_length(head))
            error = refused(endpoint, head, rest[:_content_length(head)])
            if error is not None:
                raise error
            check_handshake(head, key)
            sock.settimeout(None)
        except BaseException:
            sock.close()
            raise
        return cls(sock, rest)

    def send(self, payload: bytes, opcode: int = OP_BINARY) -> None:
        """Send one message (``ConnectionError`` when the connection is gone)."""
        if self.closed:
            raise ConnectionResetError("the websocket is closed")
        self._sock.sendall(_client_frame(opcode, payload))

    def receive(self) -> bytes:
        """The next binary message; ``WireClosed`` as ``WebSocket.receive``."""
        while True:
            final, opcode, payload = self._next_frame()
            if opcode < OP_CLOSE:
                message = self._messages.add(final, opcode, payload)
                if message is not None:
                    return message
                continue
            reply, closed = _control_reply(opcode, payload)
            if reply is not None and not self.closed:
                with contextlib.suppress(OSError):
                    self._sock.sendall(reply)
            if closed is not None:
                self.closed = True
                self._sock.close()
                raise WireClosed(closed)

    def _next_frame(self) -> WsFrame:
        try:
            return read_ws_frame_blocking(self._read_exactly)
        except OSError:
            self.closed = True
            raise WireClosed("CLOSED") from None

    def _read_exactly(self, size: int) -> bytes:
        """``size`` bytes: small reads from the buffer (filled 64 KiB at a time), a large
        one (a frame's payload) received straight into its own buffer, one copy."""
        if size > len(self._buffer) + (1 << 16):
            return self._receive_whole(size)
        while len(self._buffer) < size:
            chunk = self._sock.recv(max(1 << 16, size - len(self._buffer)))
            if not chunk:
                raise ConnectionResetError("the connection closed")
            self._buffer += chunk
        data = bytes(memoryview(self._buffer)[:size])
        del self._buffer[:size]
        return data

    def _receive_whole(self, size: int) -> bytes:
        whole = bytearray(size)
        have = len(self._buffer)
        whole[:have] = self._buffer
        self._buffer.clear()
        with memoryview(whole) as view:
            while have < size:
                got = self._sock.recv_into(view[have:])
                if not got:
                    raise ConnectionResetError("the connection closed")
                have += got
        return bytes(whole)

    def close(self, timeout: float = 5.0) -> None:
        """The close handshake, as ``WebSocket.close``."""
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError, ServiceError):
                self._sock.sendall(_client_frame(OP_CLOSE, CLOSE_NORMAL.to_bytes(2, "big")))
                self._sock.settimeout(timeout)
                while read_ws_frame_blocking(self._read_exactly)[1] != OP_CLOSE:
                    pass
        self._sock.close()


def _blocking_socket(endpoint: Endpoint, timeout: float) -> socket.socket:
    """A connected socket (TLS-wrapped for an https endpoint)."""
    if endpoint.unix is not None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(endpoint.unix)
        except BaseException:
            sock.close()
            raise
        return sock
    sock = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout)
    if not endpoint.tls:
        return sock
    try:
        wrapped: socket.socket = client_ssl_context(endpoint.ca_file).wrap_socket(
            sock, server_hostname=endpoint.host)
    except BaseException:
        sock.close()
        raise
    return wrapped


def _read_body(sock: socket.socket, data: bytes, size: int) -> bytes:
    """``data`` and what follows it, until ``size`` bytes or the end of the connection."""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """The handshake answer up to its blank line, and what came after it."""
    data = b""
    while _HEAD_END not in data:
        if len(data) > _MAX_HEAD_BYTES:
            raise WireError(f"the service's handshake answer exceeds {_MAX_HEAD_BYTES} bytes")
        chunk = sock.recv(4096)
        if not chunk:
            raise WireError("the service closed the websocket handshake")
        data += chunk
    head, _, rest = data.partition(_HEAD_END)
    return head + _HEAD_END, rest
