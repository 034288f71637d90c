"""The client's side of a build, in this process: for tests that drive the coordinator and
a worker actor without Ray or an endpoint.

``client_session(options, context, root)`` makes the request's session part as
``dockyard build`` does (the context's ignore patterns and manifest, its stat index kept
under the client's ``root``) and the build's channel: an
object with the session channel's ``ask``/``send``/``aclose`` that answers each ask with the
client's real handlers (cluster/_context_server.py, cluster/_outputs.py), only without
the network hop of the endpoint's relay.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from dockyard.cluster._build_cmd import _context
from dockyard.cluster._build_options import BuildOptions, CacheCredentials
from dockyard.cluster._context_forms import ClientContext
from dockyard.cluster._outputs import OutputWriters


class ClientChannel:
    """A build's session channel answered in process by the client's handlers."""

    def __init__(self, handlers: dict[str, Any]) -> None:
        self.handlers = handlers
        self.asked: list[str] = []  # the asks' ``what``, in order
        self._last: asyncio.Future[Any] | None = None  # the answer of the last ``send``

    async def ask(self, what: str, params: dict[str, Any]) -> Any:
        self.asked.append(what)
        return await asyncio.to_thread(self.handlers[what], params)

    async def send(self, what: str, params: dict[str, Any]) -> asyncio.Future[Any]:
        """An ask answered after every ask sent before it (the session channel's
        ``send``: the client handles asks in the order they were sent)."""
        previous = self._last

        async def answer() -> Any:
            if previous is not None:
                await asyncio.wait([previous])
            return await self.ask(what, params)

        self._last = asyncio.ensure_future(answer())
        return self._last

    async def aclose(self) -> None:
        return None


def client_session(options: BuildOptions, context: Path,
                   root: Path) -> tuple[dict[str, Any], ClientChannel]:
    """The request's session part and the build's in-process channel; ``root`` is the
    client's (``DOCKYARD_ROOT``), where it keeps its contexts' stat indexes."""
    session: dict[str, Any] = {}
    server = _context(session, ClientContext(context, b"", None), root)
    writers = OutputWriters(options.outputs, sys.stdout.buffer)
    return session, ClientChannel({"context.read": server.read, **writers.handlers(),
                                   "cache.credentials": CacheCredentials(options)})
