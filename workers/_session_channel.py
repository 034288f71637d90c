"""The worker's end of a build's session channel: questions only the client can answer
(a secret's value, context file contents, an output to hand back), asked over the
worker's own websocket to the endpoint's ``/session`` resource (docs/cluster.md).

``SessionChannel(url, session_id, token)`` connects on its first ``ask`` (``unix://PATH``
through a unix socket; ``http://``/``https://`` over TCP, TLS verified against
``DOCKYARD_SESSION_CA`` or the system store), presents the build's session id and token
in the handshake, and multiplexes concurrent asks by number.  The endpoint relays each to
the client and its answer back.

This leg's messages are msgpack maps of their own (this package never imports
``cluster``), versioned::

    worker -> endpoint   {"v": 1, "ask": n, "what": str, "params": map}
    endpoint -> worker   {"v": 1, "ask": n, "result": any}
                         {"v": 1, "ask": n, "error": str, "message": str, "hint": str|None}

A failure answer is raised as the ``DockyardError`` class it names (with its message and
hint); a lost connection fails every ask in flight with a ``ServiceError`` (the next ask
connects again).  The session token is not a user secret, but it is still never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

import msgpack

from dockyard.scheduler import _errors
from dockyard.scheduler._errors import DockyardError, ServiceError

__all__ = [
    "MAX_MESSAGE_BYTES", "SESSION_HEADER", "SESSION_TOKEN_HEADER", "SESSION_VERSION",
    "Answer", "SessionChannel", "decode_answer", "decode_ask", "encode_answer", "encode_ask",
]

SESSION_VERSION = 1
SESSION_HEADER = "X-Dockyard-Session"
SESSION_TOKEN_HEADER = "X-Dockyard-Session-Token"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # as a client frame (cluster/_wire.py MAX_FRAME_BYTES)
SESSION_CA_ENV = "DOCKYARD_SESSION_CA"

Answer = tuple[int, Any, "str | None", str, "str | None"]  # ask, result, error, message, hint


# --- the codec of this leg -------------------------------------------------------------


def _pack(message: dict[str, Any]) -> bytes:
    packed: bytes = msgpack.packb({"v": SESSION_VERSION} | message, use_bin_type=True)
    return packed


def _unpack(data: bytes, what: str) -> dict[str, Any]:
    try:
        message = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise ServiceError(f"a session {what} that is not msgpack: {exc}") from None
    if not isinstance(message, dict) or message.get("v") != SESSION_VERSION:
        raise ServiceError(f"a session {what} that is not a version-{SESSION_VERSION} map",
                           hint="use the same dockyard version on the workers and the "
                                "endpoint")
    if not isinstance(message.get("ask"), int) or isinstance(message.get("ask"), bool):
        raise ServiceError(f"a session {what} without an ask number")
    return message


def encode_ask(number: int, what: str, params: dict[str, Any]) -> bytes:
    return _pack({"ask": number, "what": what, "params": params})


def decode_ask(data: bytes) -> tuple[int, str, dict[str, Any]]:
    """(number, what, params) of a worker's ask; a ``ServiceError`` if it is none."""
    message = _unpack(data, "ask")
    what, params = message.get("what"), message.get("params", {})
    if not isinstance(what, str) or not isinstance(params, dict):
        raise ServiceError("a session ask whose 'what' is no text or 'params' no map")
    return message["ask"], what, params


def encode_answer(number: int, result: Any = None, error: str | None = None,
                  message: str = "", hint: str | None = None) -> bytes:
    if error is None:
        return _pack({"ask": number, "result": result})
    return _pack({"ask": number, "error": error, "message": message, "hint": hint})


def decode_answer(data: bytes) -> Answer:
    message = _unpack(data, "answer")
    error = message.get("error")
    if error is not None:
        return (message["ask"], None, str(error), str(message.get("message", "")),
                _text_or_none(message.get("hint")))
    return message["ask"], message.get("result"), None, "", None


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def answer_error(error: str, message: str, hint: str | None) -> DockyardError:
    """The error a failure answer names (a ``ServiceError`` for a class not in the tree)."""
    cls = getattr(_errors, error, None)
    if isinstance(cls, type) and issubclass(cls, DockyardError):
        try:
            made: DockyardError = cls(message, hint=hint)
            return made
        except TypeError:
            pass
    return ServiceError(f"{error}: {message}", hint=hint)


# --- the channel -----------------------------------------------------------------------


class SessionChannel:
    """A build's session channel from this worker; see the module docstring."""

    def __init__(self, url: str, session_id: str, token: str,
                 ca_pem: str | None = None) -> None:
        self.url = url  # the endpoint's session URL (unix://PATH, http(s)://HOST:PORT)
        self.session_id = session_id
        self._ca_pem = ca_pem  # the endpoint's certificate (PEM), trusted besides the store
        self._token = token  # never in a repr or a message
        self._lock = asyncio.Lock()  # held while connecting: one connection at a time
        self._http: Any = None  # the aiohttp ClientSession of the connection, or None
        self._ws: Any = None  # the connected websocket, or None (connect on next ask)
        self._reader: asyncio.Task[None] | None = None  # reads answers while connected
        self._next = 1  # number of the next ask
        self._pending: dict[int, asyncio.Future[Any]] = {}  # ask number -> its answer
        self.asked = 0  # asks sent, all connections

    def __repr__(self) -> str:
        return (f"<SessionChannel {self.url} session={self.session_id} "
                f"connected={self._ws is not None} in_flight={len(self._pending)}>")

    def statistics(self) -> dict[str, int]:
        return {"asked": self.asked, "in_flight": len(self._pending)}

    async def ask(self, what: str, params: dict[str, Any]) -> Any:
        """The client's answer to ``what`` with ``params``."""
        return await (await self.send(what, params))

    async def send(self, what: str, params: dict[str, Any]) -> asyncio.Future[Any]:
        """Send an ask and return its answer, to await later: asks sent one after the
        other reach the client in that order (one socket, relayed in order), so a caller
        may keep several in flight (``send_output``)."""
        ws = await self._connected()
        number, self._next = self._next, self._next + 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[number] = future
        future.add_done_callback(lambda _: self._pending.pop(number, None))
        try:
            if self._reader is None or self._reader.done():
                raise self._lost("the connection ended")
            try:
                await ws.send_bytes(encode_ask(number, what, params))
            except (ConnectionError, RuntimeError) as exc:
                raise self._lost(exc) from None
        except BaseException:
            future.cancel()
            raise
        self.asked += 1
        return future

    async def aclose(self) -> None:
        """Close the connection; asks in flight fail with a ``ServiceError``."""
        async with self._lock:
            await self._disconnect()

    # -- the connection --

    async def _connected(self) -> Any:
        async with self._lock:
            if self._ws is None or self._ws.closed:
                await self._disconnect()
                await self._connect()
            return self._ws

    async def _connect(self) -> None:
        import aiohttp  # noqa: PLC0415 -- only a worker that asks pays its import

        connector, target = _connector(aiohttp, self.url, self._ca_pem)
        http = aiohttp.ClientSession(connector=connector)
        headers = {SESSION_HEADER: self.session_id, SESSION_TOKEN_HEADER: self._token}
        try:
            ws = await http.ws_connect(target, headers=headers, max_msg_size=MAX_MESSAGE_BYTES,
                                       autoping=True, heartbeat=30.0)
        except aiohttp.WSServerHandshakeError as exc:
            await http.close()
            raise self._refused(exc.status) from None
        except (aiohttp.ClientError, OSError) as exc:
            await http.close()
            raise ServiceError(f"cannot reach the build's session channel at {self.url}: "
                               f"{exc}", hint="is the endpoint reachable from this "
                                              "worker (its --advertise-url)?") from None
        self._http, self._ws = http, ws
        self._reader = asyncio.ensure_future(self._read(ws))

    def _refused(self, status: int) -> ServiceError:
        if status == 401:
            return ServiceError(f"the endpoint at {self.url} refused the build's session "
                                f"{self.session_id} (unknown or ended)",
                                hint="the build's call has ended, or the endpoint restarted")
        return ServiceError(f"the endpoint at {self.url} has no session channel (HTTP "
                            f"{status})", hint="use the same dockyard version everywhere")

    async def _read(self, ws: Any) -> None:
        import aiohttp  # noqa: PLC0415

        why = "the endpoint closed it"
        try:
            async for message in ws:
                if message.type != aiohttp.WSMsgType.BINARY:
                    why = f"an unexpected {message.type.name} message"
                    break
                self._answered(decode_answer(message.data))
        except DockyardError as error:
            why = error.message
        finally:
            self._fail_pending(self._lost(why))
            await ws.close()

    def _answered(self, answer: Answer) -> None:
        number, result, error, message, hint = answer
        future = self._pending.get(number)
        if future is None or future.done():
            return
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(answer_error(error, message, hint))

    def _fail_pending(self, error: ServiceError) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)

    def _lost(self, why: object) -> ServiceError:
        return ServiceError(f"lost the build's session channel to {self.url}: {why}",
                            hint="the client went away or the endpoint stopped; build again")

    async def _disconnect(self) -> None:
        reader, ws, http = self._reader, self._ws, self._http
        self._reader = self._ws = self._http = None
        if ws is not None:
            await ws.close()
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        self._fail_pending(self._lost("the channel was closed"))
        if http is not None:
            await http.close()


def _connector(aiohttp: Any, url: str, ca_pem: str | None = None) -> tuple[Any, str]:
    """The aiohttp connector for ``url`` and the websocket URL to open through it."""
    if url.startswith("unix://"):
        return aiohttp.UnixConnector(path=url[len("unix://"):]), "http://dockyard/session"
    if url.startswith("https://"):
        import ssl  # noqa: PLC0415

        context = ssl.create_default_context(cafile=os.environ.get(SESSION_CA_ENV) or None)
        if ca_pem:
            context.load_verify_locations(cadata=ca_pem)
        return aiohttp.TCPConnector(ssl=context), url.rstrip("/") + "/session"
    if url.startswith("http://"):
        return aiohttp.TCPConnector(), url.rstrip("/") + "/session"
    raise ServiceError(f"a session channel URL that is not unix://, http:// or https://: "
                       f"{url!r}", hint="this is a bug in the endpoint's --advertise-url")
