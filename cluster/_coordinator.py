"""The coordinator actor: one async actor per cluster that owns builds and their event
streams.

``solve(request)`` is an async generator of plain maps, one of::

    {"event": <progress event wire map>}      news of the build, in order
    {"result": <msgpack-able value>}          the last item of a build that succeeded
    {"failure": <wire Failure fields>}        the last item of a build that failed

so errors cross Ray as data (keyword-only error attributes do not survive pickling).

A build request (``{"dockerfile", "options", "session"}``, see cluster/_build_cmd.py) is
run by the worker actor's ``build`` (frontend, solver, runc, exporters on the node's
``WorkerRuntime``); its items pass through unchanged.  The session part (secret values)
goes to that one worker call and nowhere else: not logged, not kept.  A request without
``options`` is the echo the service's own tests use (``request["lines"]``,
``request["delay"]``).

Cancellation: cancelling a ``solve`` (Ray cancels the actor's asyncio task) cancels the
worker stream it is reading, then re-raises.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from scheduler._errors import DockyardError
from scheduler._progress import VertexCompleted, VertexStarted, event_to_wire

from ._ray import ActorRef
from ._wire import failure_from_error

__all__ = ["Coordinator"]

ECHO_VERTEX = "sha256:" + "0" * 64  # the echo's stand-in vertex digest
ECHO_NAME = "[internal] echo"


class Coordinator:
    """Builds and their event streams.  Constructed by Ray with the worker's handle."""

    def __init__(self, worker: Any) -> None:
        self._worker = worker if isinstance(worker, ActorRef) else ActorRef(worker, "worker")
        self._active: dict[int, str] = {}  # solve number -> what it does; running solves
        self._next = 0  # number of the next solve
        self._completed = 0  # solves that ended with a result or a failure
        self._cancelled = 0  # solves stopped by cancellation

    async def ping(self) -> dict[str, Any]:
        worker = await self._worker.call("ping")
        return {"pid": os.getpid(), "worker": worker}

    async def statistics(self) -> dict[str, Any]:
        worker = await self._worker.call("statistics")
        return {"active": len(self._active), "completed": self._completed,
                "cancelled": self._cancelled, "worker": worker}

    async def solve(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        number, self._next = self._next, self._next + 1
        self._active[number] = "build" if "options" in request else "echo"
        try:
            async for item in self._guarded(request):
                yield item
            self._completed += 1
        except (asyncio.CancelledError, GeneratorExit):
            self._cancelled += 1
            raise
        finally:
            del self._active[number]

    async def _guarded(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """``_echo``'s items; a ``DockyardError`` becomes the final ``failure`` item."""
        try:
            items = self._build(request) if "options" in request else self._echo(request)
            async for item in items:
                yield item
        except DockyardError as error:
            failure = failure_from_error(0, error)
            yield {"failure": {"error": failure.error, "message": failure.message,
                               "hint": failure.hint, "details": failure.details}}

    async def _build(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        stream = self._worker.stream("build", request)
        try:
            async for item in stream:
                yield item
        except (asyncio.CancelledError, GeneratorExit):
            stream.cancel()
            raise

    async def _echo(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        began = time.time()
        yield {"event": event_to_wire(VertexStarted(ECHO_VERTEX, ECHO_NAME, began))}
        stream = self._worker.stream("echo", ECHO_VERTEX, request)
        try:
            async for event in stream:
                yield {"event": event}
        except (asyncio.CancelledError, GeneratorExit):
            stream.cancel()
            raise
        done = VertexCompleted(ECHO_VERTEX, ECHO_NAME, time.time() - began)
        yield {"event": event_to_wire(done)}
        yield {"result": {"echo": request.get("message"), "coordinator": os.getpid()}}

    def __repr__(self) -> str:
        return (f"<Coordinator active={len(self._active)} completed={self._completed} "
                f"cancelled={self._cancelled}>")
