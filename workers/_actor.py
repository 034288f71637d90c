"""The worker actor: one per node (here: one for the embedded service, holding both arch
resources), a thin shell between the coordinator and the engine on this machine.

Every method takes and returns plain data (msgpack-able maps).  Streaming methods are async
generators yielding progress events in their wire form (``event_to_wire``).  For now the
shell offers ``ping``, ``echo`` (a stand-in for ``execute`` that streams output lines and
can be slowed down, so the whole path and its cancellation can be tested) and
``statistics``; the engine's ``execute`` is wired here by the lead.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from scheduler._progress import VertexLog, event_to_wire

__all__ = ["WorkerActor"]


class WorkerActor:
    """The worker side of one node."""

    def __init__(self, root: str, arches: list[str]) -> None:
        self.root = root  # the DOCKYARD_ROOT whose store this worker uses
        self.arches = tuple(arches)  # the architectures this node runs
        self._running = 0  # calls in progress (>= 0)
        self._completed = 0  # calls that returned or finished streaming
        self._cancelled = 0  # calls stopped by a cancellation

    async def ping(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "root": self.root, "arches": list(self.arches),
                "time": time.time()}

    async def echo(self, vertex: str, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Stream ``request["lines"]`` back as stdout of ``vertex``, waiting
        ``request["delay"]`` seconds before each."""
        lines = [str(line) for line in request.get("lines", [])]
        delay = float(request.get("delay", 0.0))
        self._running += 1
        try:
            for line in lines:
                if delay:
                    await asyncio.sleep(delay)
                yield event_to_wire(VertexLog(vertex, 1, line.encode() + b"\n"))
            self._completed += 1
        except (asyncio.CancelledError, GeneratorExit):
            self._cancelled += 1
            raise
        finally:
            self._running -= 1

    async def statistics(self) -> dict[str, int]:
        return {"running": self._running, "completed": self._completed,
                "cancelled": self._cancelled}

    def __repr__(self) -> str:
        return (f"<WorkerActor arches={','.join(self.arches)} running={self._running} "
                f"completed={self._completed} cancelled={self._cancelled}>")
