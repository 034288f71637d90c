"""Outputs handed back to the client: the worker writes an output straight into the
build's session channel as the exporter produces it; the client writes it where it asked,
as its own user (docs/cluster.md, BuildKit's local exporter does the same).

An output is the client's ``--output`` number ``index``.  File outputs (``oci``,
``docker``, ``tar``) go as their bytes; ``local`` goes as a tar of the root filesystem(s)
(the client unpacks it into its directory, never taking the tar's owners).  The bytes
travel as ``output.write`` asks of at most ``CHUNK_BYTES``, in order, while the exporter
writes (``ChannelWriter``: no scratch file on the worker, and an export that overlaps the
blobs' fetches overlaps the send too); ``output.close`` follows once the build is sure to
succeed (the client keeps the bytes in a temporary file until then).  Stdout, which
the client cannot take back, gets its output only then: written to a scratch file first
and sent after (``send_file``).  Up to ``WINDOW``
writes are in flight at once (sent in order, and the channel keeps that order to the
client), so the worker, the endpoint's relay and the client work at once instead of
taking turns; a slow client still slows the exporter, with at most ``WINDOW x
CHUNK_BYTES`` on the way.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from dockyard.scheduler._errors import ExportError

__all__ = ["CHUNK_BYTES", "WINDOW", "ChannelWriter", "Send", "close_output", "send_file"]

CHUNK_BYTES = 4 * 1024 * 1024  # docs/cluster.md: an output.write carries at most this
#: ``output.write`` asks in flight at once.
WINDOW = 4

#: The session channel's ``send(what, params)``: the ask is sent (in order with the
#: channel's other sends) when it returns, and gives its answer to await.
Send = Callable[[str, dict[str, Any]], Awaitable[Awaitable[Any]]]


async def send_file(send: Send, index: int, path: Path) -> int:
    """The file ``path`` sent as the client's output ``index`` (written first, sent after:
    for stdout, which the client cannot take back), then closed; the bytes sent."""
    try:
        stream = await asyncio.to_thread(open, path, "rb")
    except OSError as err:
        raise ExportError(f"cannot read the output written at {path}: {err.strerror}",
                          hint="see the worker's log; build again") from None
    offset = 0
    answers: collections.deque[Awaitable[Any]] = collections.deque()
    try:
        while data := await asyncio.to_thread(stream.read, CHUNK_BYTES):
            if len(answers) >= WINDOW:
                await answers.popleft()
            answers.append(await send("output.write",
                                      {"index": index, "offset": offset, "data": data}))
            offset += len(data)
        while answers:
            await answers.popleft()
    finally:
        await asyncio.to_thread(stream.close)
        for answer in answers:  # not awaited: a failure ended the send
            if isinstance(answer, asyncio.Future):
                answer.cancel()
    await close_output(send, index)
    return offset


async def close_output(send: Send, index: int) -> None:
    """``output.close``: the client puts the output it received in place."""
    await (await send("output.close", {"index": index}))


class ChannelWriter:
    """A write-only binary stream to the client's output ``index``, for an exporter running
    in a thread: the bytes go as they are written (``output.write`` asks of
    ``CHUNK_BYTES``, up to ``WINDOW`` in flight), with no scratch file on the way.

    ``pump`` (a task on the event loop, started before the exporter writes) sends what the
    thread hands over, in order; ``write`` blocks the thread while ``WINDOW`` writes are
    unanswered and raises once one failed; ``finish`` (on the loop) sends the rest and waits
    for every answer.  The client writes into a temporary file and puts it in place only at
    ``close_output``, which the caller sends once the build is sure to succeed."""

    def __init__(self, send: Send, index: int, loop: asyncio.AbstractEventLoop) -> None:
        self._send = send
        self.index = index
        self._loop = loop
        # chunks handed to the pump (None: no more); filled from the thread
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        # free places in the window: taken by the thread per chunk, given back per answer
        self._room = threading.Semaphore(WINDOW)
        self._buffer = bytearray()  # written, not yet a whole chunk (thread side)
        self.sent = 0  # bytes handed to the pump
        # the first failed answer (the thread's next write raises it)
        self.error: BaseException | None = None

    def write(self, data: bytes) -> int:
        if self.error is not None:
            raise ExportError(f"the client could not take output {self.index}: {self.error}")
        self._buffer += data
        while len(self._buffer) >= CHUNK_BYTES:
            self._hand(bytes(self._buffer[:CHUNK_BYTES]))
            del self._buffer[:CHUNK_BYTES]
        return len(data)

    def flush(self) -> None:
        """Nothing: chunks go whole; ``finish`` sends the rest."""

    def _hand(self, chunk: bytes) -> None:
        self._room.acquire()
        if self.error is not None:
            raise ExportError(f"the client could not take output {self.index}: {self.error}")
        self.sent += len(chunk)
        self._loop.call_soon_threadsafe(self._queue.put_nowait, chunk)

    async def pump(self) -> None:
        """Send the chunks in order until ``finish``; then wait for every answer."""
        offset = 0
        answers: list[asyncio.Future[Any]] = []
        try:
            while (chunk := await self._queue.get()) is not None:
                answer = await self._send("output.write", {"index": self.index,
                                                           "offset": offset, "data": chunk})
                offset += len(chunk)
                awaited: asyncio.Future[Any] = asyncio.ensure_future(answer)
                awaited.add_done_callback(self._answered)
                answers.append(awaited)
            for each in answers:
                await each
        except BaseException as err:
            self.error = self.error or err
            for _ in range(WINDOW + 1):  # a thread waiting for room wakes and raises
                self._room.release()
            for each in answers:
                each.cancel()
            raise

    def _answered(self, future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is not None and self.error is None:
            self.error = future.exception()
        self._room.release()

    async def finish(self, pumping: asyncio.Task[None]) -> int:
        """The rest sent and every write answered (the first failure raised); the bytes."""
        if self._buffer:
            self.sent += len(self._buffer)
            self._queue.put_nowait(bytes(self._buffer))
            self._buffer.clear()
        self._queue.put_nowait(None)
        await pumping
        return self.sent
