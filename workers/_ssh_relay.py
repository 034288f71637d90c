"""The client's ssh agent, relayed into a RUN over the build's session channel.

The agent stays on the client.  For a ``RUN --mount=type=ssh`` the worker listens on a
unix socket of its own (``listening``: in a private directory of the worker's scratch,
removed when the RUN ends), which the executor binds at the mount's target; each
connection a process in the container makes to it is relayed to the client's agent for
that id by asks (docs/cluster.md)::

    ssh.open  {"id"}            -> conn (int)     the client connects to its agent
    ssh.write {"conn", "data"}  -> None           bytes for the agent
    ssh.read  {"conn"}          -> bytes | None   what the agent said within a short wait
                                                  (b"": nothing yet; None: it hung up)
    ssh.close {"conn"}          -> None

Every connection the client opened for a RUN is closed there before the RUN's socket
goes away: the end of the RUN cancels the relays, but not their ``ssh.open`` and
``ssh.close`` asks.

An in-process build's agent is a host socket: ``forwarding`` serves a socket of the same
kind that passes each connection's bytes to it, so a RUN never sees the host's socket and
gets the owner and mode its mount asks for.

The client answers asks one at a time, so a read never waits long and is only asked
while an answer is due: the ssh-agent protocol is request/response, each message a
4-byte big-endian length and its body, so the relay counts the messages it passed to the
agent and reads until as many came back.  Agent traffic (keys, signatures) is never
logged, kept, or put in an event; only the ids the request named are served.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

from dockyard.scheduler._errors import ServiceError

from ._snapshots import finish_shielded, wait_shielded

__all__ = ["ChannelSshAgents", "FrameCounter", "SshAsker", "forwarding", "socket_directory"]

_CHUNK = 64 * 1024  # bytes read from the container at once
_MAX_SOCKET_PATH = 100  # a unix socket path has at most 107 bytes (sun_path)


class SshAsker(Protocol):
    """What the relay needs of a channel (``SessionChannel`` is one)."""

    async def ask(self, what: str, params: dict[str, Any]) -> Any: ...


class FrameCounter:
    """Counts the complete ssh-agent messages (length-prefixed) in a byte stream."""

    def __init__(self) -> None:
        self._buffer = b""  # the start of an incomplete message (at most 4 bytes kept)
        self._remaining = 0  # body bytes still to come of the current message
        self.complete = 0  # messages seen whole

    def feed(self, data: bytes) -> None:
        while data:
            if self._remaining:
                taken = min(self._remaining, len(data))
                data, self._remaining = data[taken:], self._remaining - taken
                self.complete += self._remaining == 0
                continue
            need = 4 - len(self._buffer)
            self._buffer, data = self._buffer + data[:need], data[need:]
            if len(self._buffer) == 4:
                self._remaining = int.from_bytes(self._buffer, "big")
                self._buffer = b""
                self.complete += self._remaining == 0


def socket_directory(scratch: Path) -> Path:
    """A private directory for a RUN's agent sockets: under ``scratch`` (the worker's
    tmp, cleaned by the janitor) unless that path is too long for a unix socket."""
    parent = scratch if len(str(scratch)) + 20 < _MAX_SOCKET_PATH else None
    return Path(tempfile.mkdtemp(prefix="ssh-", dir=parent))


class ChannelSshAgents:
    """The agents of one build, by id, served through ``channel``; ``ids`` are those
    the request named."""

    def __init__(self, channel: SshAsker, ids: Collection[str]) -> None:
        self._channel = channel
        self.ids = frozenset(ids)
        self.connections = 0  # connections relayed, all RUNs

    def __repr__(self) -> str:
        return f"<ChannelSshAgents ids={sorted(self.ids)} connections={self.connections}>"

    @asynccontextmanager
    async def listening(self, ident: str, scratch: Path, uid: int, gid: int,
                        mode: int) -> AsyncIterator[Path]:
        """A socket relaying to agent ``ident`` while the context lasts (owned by
        ``uid``/``gid`` with ``mode``, as BuildKit makes it); its directory removed after."""
        async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._relay(ident, reader, writer)
        async with _serving(relay, scratch, uid, gid, mode) as path:
            yield path

    async def _relay(self, ident: str, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        try:
            async with self._client_connection(ident) as conn:
                self.connections += 1
                await _Connection(self._channel, conn, reader, writer).run()
        except ServiceError:
            pass  # the container sees its connection closed, as with a dead agent
        finally:
            await _close(writer)

    @asynccontextmanager
    async def _client_connection(self, ident: str) -> AsyncIterator[int]:
        """The client's connection to agent ``ident``, closed there when the context ends.

        The RUN's end cancels its relays just as the container hangs up, often while this
        asks ``ssh.close``.  So the ``ssh.open`` and ``ssh.close`` asks run to their answer
        whatever cancellation arrives (the channel answers or fails every ask), and the
        cancellation is re-raised after: cut short, they left the client's connection open
        until the build ended."""
        opening = asyncio.ensure_future(self._open(ident))
        cancelled = await wait_shielded(opening)
        failed = opening.exception()
        if failed is not None:
            raise cancelled or failed
        conn = opening.result()
        try:
            if cancelled is not None:
                raise cancelled
            yield conn
        finally:
            with contextlib.suppress(ServiceError, OSError):
                await finish_shielded(self._channel.ask("ssh.close", {"conn": conn}))

    async def _open(self, ident: str) -> int:
        conn = await self._channel.ask("ssh.open", {"id": ident})
        if not isinstance(conn, int):
            raise ServiceError(f"the client answered ssh.open {ident!r} with a "
                               f"{type(conn).__name__}, not a connection number")
        return conn


_Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def _serving(handle: _Handler, scratch: Path, uid: int, gid: int, mode: int
                   ) -> AsyncIterator[Path]:
    """A unix socket of the worker's own (``uid``/``gid``, ``mode``) in a private directory
    under ``scratch``, each connection served by ``handle``; closed, its connections
    cancelled and its directory removed when the context ends."""
    directory = socket_directory(scratch)
    path = directory / "agent.sock"
    tasks: set[asyncio.Task[None]] = set()

    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handle(reader, writer)
        finally:
            tasks.discard(task)

    try:
        server = await asyncio.start_unix_server(connected, path=str(path))
        directory.chmod(0o711)
        if os.geteuid() == 0:
            os.chown(path, uid, gid)
        path.chmod(mode)
        try:
            yield path
        finally:
            server.close()
            await _cancel(tasks)
            await server.wait_closed()
    finally:
        await asyncio.to_thread(shutil.rmtree, directory, True)


@asynccontextmanager
async def forwarding(socket: Path, scratch: Path, uid: int, gid: int, mode: int
                     ) -> AsyncIterator[Path]:
    """A socket forwarding each connection to the host socket ``socket`` (the agent of an
    in-process build), so the RUN sees it owned by ``uid``/``gid`` with ``mode`` as
    BuildKit makes it, and the host's own socket is never mounted into a container."""
    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            agent_reader, agent_writer = await asyncio.open_unix_connection(str(socket))
        except OSError:  # no agent there: the container sees its connection closed
            await _close(writer)
            return
        try:
            await _first_done(_copy(reader, agent_writer), _copy(agent_reader, writer))
        finally:
            await _close(agent_writer)
            await _close(writer)
    async with _serving(forward, scratch, uid, gid, mode) as path:
        yield path


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(_CHUNK):
        writer.write(data)
        await writer.drain()


async def _first_done(*jobs: Coroutine[Any, Any, None]) -> None:
    """Run ``jobs`` until one ends (a side hung up), then cancel the others."""
    tasks = [asyncio.ensure_future(job) for job in jobs]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def _cancel(tasks: set[asyncio.Task[None]]) -> None:
    for task in list(tasks):
        task.cancel()
    for task in list(tasks):
        with contextlib.suppress(asyncio.CancelledError):
            await task


class _Connection:
    """One container connection relayed to one client-side agent connection."""

    def __init__(self, channel: SshAsker, conn: int, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self._channel = channel
        self._conn = conn
        self._reader = reader  # from the container
        self._writer = writer  # to the container
        self._sent = FrameCounter()  # messages passed to the agent
        self._received = FrameCounter()  # messages the agent answered
        self._due = asyncio.Event()  # set while an answer is due
        self._settled = asyncio.Event()  # its opposite: set while no answer is due
        self._settled.set()

    async def run(self) -> None:
        """Relay until either side hangs up."""
        to_agent = asyncio.ensure_future(self._to_agent())
        from_agent = asyncio.ensure_future(self._from_agent())
        try:
            await asyncio.wait([to_agent, from_agent], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (to_agent, from_agent):
                task.cancel()
            for task in (to_agent, from_agent):
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _to_agent(self) -> None:
        while data := await self._reader.read(_CHUNK):
            await self._channel.ask("ssh.write", {"conn": self._conn, "data": data})
            self._sent.feed(data)
            if self._sent.complete > self._received.complete:
                self._settled.clear()
                self._due.set()
        await self._settled.wait()  # the container closed its end: answers due first

    async def _from_agent(self) -> None:
        while True:
            await self._due.wait()
            data = await self._channel.ask("ssh.read", {"conn": self._conn})
            if data is None:
                return
            if not isinstance(data, bytes):
                raise ServiceError(f"the client answered ssh.read with a "
                                   f"{type(data).__name__}, not bytes")
            if data:
                self._writer.write(data)
                await self._writer.drain()
                self._received.feed(data)
            if self._received.complete >= self._sent.complete:
                self._due.clear()
                self._settled.set()
