"""The endpoint's half of the session channel: workers' asks relayed to the client.

Per ``solve`` call the service opens a ``Session`` (``SessionRelay.open``): a random id and
token, and the session map the request carries to the workers (``{"url", "id",
"token"}``).  A worker connects to ``/session`` presenting the id and token in the
headers of its handshake (``X-Dockyard-Session``, ``X-Dockyard-Session-Token``; compared
in constant time; anything else is a 401), and sends asks (workers/_session_channel.py
codec).  Each is sent to the client's connection as an ``Ask`` frame of the call, under a
number unique within the call; the client's ``Reply`` goes back to the worker that asked,
under the worker's own number.  Several workers may hold sockets to one session, and
their asks are in flight together.  When the call ends (``close``), its workers' sockets
are closed and what they still wait for fails on their side.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import secrets
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from dockyard.scheduler._errors import DockyardError, ServiceError
from dockyard.workers._session_channel import (
    MAX_MESSAGE_BYTES,
    SESSION_HEADER,
    SESSION_TOKEN_HEADER,
    decode_ask,
    encode_answer,
)

from ._wire import Ask, Frame, Reply, failure_from_error

__all__ = ["Session", "SessionRelay"]

Send = Callable[[Frame], Awaitable[None]]


class _WorkerSocket:
    """One worker's websocket to a session; its sends never interleave."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self._lock = asyncio.Lock()

    async def send(self, data: bytes) -> None:
        async with self._lock:
            with contextlib.suppress(ConnectionError, RuntimeError):
                if not self.ws.closed:
                    await self.ws.send_bytes(data)


class Session:
    """The session channel of one call: where its asks go and who waits for answers."""

    def __init__(self, call_id: int, send: Send) -> None:
        self.id = uuid.uuid4().hex  # the build's session id (not secret)
        self.token = secrets.token_urlsafe(32)  # proves a worker was given the session
        self.call_id = call_id  # the call on the client's connection
        self._send = send  # sends a frame on the client's connection
        self._next = 1  # number of the next ask sent to the client
        # client ask number -> (the worker socket that asked, its own number); an entry
        # leaves when the reply comes, or when that worker's socket ends.
        self._pending: dict[int, tuple[_WorkerSocket, int]] = {}
        self.workers: set[_WorkerSocket] = set()  # sockets connected now
        self.closed = False  # the call ended: no more asks

    def statistics(self) -> dict[str, int]:
        return {"workers": len(self.workers), "in_flight": len(self._pending)}

    async def ask(self, worker: _WorkerSocket, number: int, what: str,
                  params: dict[str, Any]) -> None:
        """Relay a worker's ask to the client (its reply comes through ``reply``)."""
        if self.closed:
            await worker.send(_failure_answer(number, ServiceError(
                "the build's call has ended")))
            return
        mine, self._next = self._next, self._next + 1
        self._pending[mine] = (worker, number)
        try:
            await self._send(Ask(self.call_id, mine, what, params))
        except (ConnectionError, RuntimeError):
            self._pending.pop(mine, None)
            await worker.send(_failure_answer(number, ServiceError(
                "the client's connection is gone")))

    async def reply(self, frame: Reply) -> None:
        """The client's reply: to the worker that asked (dropped if it left)."""
        asked = self._pending.pop(frame.ask, None)
        if asked is None:
            return
        worker, number = asked
        await worker.send(encode_answer(number, frame.result, frame.error, frame.message,
                                        frame.hint))

    def forget(self, worker: _WorkerSocket) -> None:
        """``worker``'s socket ended: its asks are no longer waited for."""
        self.workers.discard(worker)
        for mine in [n for n, (w, _) in self._pending.items() if w is worker]:
            del self._pending[mine]

    async def close(self) -> None:
        self.closed = True
        for worker in list(self.workers):
            await worker.ws.close(code=WSCloseCode.GOING_AWAY,
                                  message=b"the build's call ended")
        self._pending.clear()


def _failure_answer(number: int, error: DockyardError) -> bytes:
    failure = failure_from_error(0, error)
    return encode_answer(number, None, failure.error, failure.message, failure.hint)


class SessionRelay:
    """The open sessions of one service, and its ``/session`` resource."""

    def __init__(self, url: str, ca_pem: str | None = None) -> None:
        self.url = url  # the session URL workers connect to (unix://PATH or http(s)://)
        # The endpoint's certificate (PEM, public): what a worker trusts for an https://
        # session URL, besides its system store (a self-signed endpoint works too).
        self.ca_pem = ca_pem
        self._sessions: dict[str, Session] = {}  # id -> the session of a running call

    def statistics(self) -> dict[str, int]:
        return {"sessions": len(self._sessions),
                "workers": sum(len(s.workers) for s in self._sessions.values())}

    def open(self, call_id: int, send: Send) -> Session:
        session = Session(call_id, send)
        self._sessions[session.id] = session
        return session

    def session_map(self, session: Session) -> dict[str, str]:
        """What the request carries to the workers about ``session``."""
        found = {"url": self.url, "id": session.id, "token": session.token}
        if self.ca_pem:
            found["ca_pem"] = self.ca_pem
        return found

    async def close(self, session: Session) -> None:
        self._sessions.pop(session.id, None)
        await session.close()

    def _authorized(self, request: web.Request) -> Session:
        session = self._sessions.get(request.headers.get(SESSION_HEADER, ""))
        given = request.headers.get(SESSION_TOKEN_HEADER, "").encode()
        expected = session.token.encode() if session is not None else secrets.token_bytes(32)
        if not hmac.compare_digest(given, expected) or session is None:
            raise web.HTTPUnauthorized(text="unknown session, or a wrong session token\n")
        return session

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        """``/session``: one worker's socket, its asks relayed until it or the call ends."""
        session = self._authorized(request)
        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE_BYTES)
        await ws.prepare(request)
        worker = _WorkerSocket(ws)
        session.workers.add(worker)
        try:
            await self._relay(session, worker)
        finally:
            session.forget(worker)
        return ws

    async def _relay(self, session: Session, worker: _WorkerSocket) -> None:
        async for message in worker.ws:
            if message.type != WSMsgType.BINARY:
                break
            try:
                number, what, params = decode_ask(message.data)
            except DockyardError as error:
                await worker.send(_failure_answer(0, error))
                await worker.ws.close(code=WSCloseCode.UNSUPPORTED_DATA,
                                      message=b"not a session ask")
                break
            await session.ask(worker, number, what, params)
