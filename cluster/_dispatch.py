"""How the coordinator's solver reaches the workers: placement, and a ``SolveBackend``
whose every call is a call to the worker actor that serves the vertex's platform.

- ``Placement``: architecture -> the worker handle serving it.  A platform nobody serves is
  a ``SolveError`` *before* anything is dispatched (Ray would leave such a task pending
  forever, NOTES-ray.md).
- ``DispatchBackend``: one build's ``SolveBackend``.  ``source_identity`` and
  ``content_checksum`` are plain calls, ``execute`` a stream of the worker's events
  (re-emitted to the solver's sink as they come) ending in its ``StateResult``; cancelling
  it cancels the worker's call.
- ``WorkerRecords``: one build's ``RecordCache``, kept by a worker (the cache is on its
  disk, the build's ``--cache-from``/``--cache-to`` are opened there; the coordinator does
  no file or network I/O).  The events a worker's answer carries (remote-cache warnings)
  go to the build's sink.

What crosses to the worker is plain data: vertices in the graph's wire form, selectors
and results as maps, records as their stored bytes.  A worker answers a plain call with
``{"result": value}`` or ``{"failure": <Failure fields>}`` (errors cross Ray as data).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, Protocol

from cache_backends._records import CacheRecord, StateResult
from scheduler._cachekey import Selector, selector_to_wire
from scheduler._errors import DockyardError, SolveError
from scheduler._graph import BuildGraph, Vertex, vertex_to_wire
from scheduler._platform import Platform, default_platform
from scheduler._progress import EventSink, event_from_wire

from ._wire import Failure, error_from_failure, failure_from_error

__all__ = [
    "DispatchBackend", "Placement", "WorkerHandle", "WorkerRecords", "WorkerStream",
    "answer", "failure_map", "forward_events", "roots_of", "unwrap",
]


class WorkerStream(Protocol):
    """The items of one streaming worker call; ``cancel`` stops the call."""

    def __aiter__(self) -> AsyncIterator[Any]: ...

    def cancel(self) -> None: ...


class WorkerHandle(Protocol):
    """A worker actor as the coordinator calls it (``cluster._ray.ActorRef``, or a fake)."""

    async def call(self, method: str, *args: Any) -> Any: ...

    def stream(self, method: str, *args: Any) -> WorkerStream: ...


# --- wire forms ------------------------------------------------------------------------


def failure_map(error: DockyardError) -> dict[str, Any]:
    """``error`` as the ``failure`` map of a worker's answer."""
    failure = failure_from_error(0, error)
    return {"error": failure.error, "message": failure.message, "hint": failure.hint,
            "details": failure.details}


def answer(value: Any) -> dict[str, Any]:
    return {"result": value}


def unwrap(item: Mapping[str, Any]) -> Any:
    """The value of a worker's answer; its ``failure`` raised as the error it names."""
    if "failure" in item:
        raise error_from_failure(Failure(0, **item["failure"]))
    return item["result"]


# --- placement -------------------------------------------------------------------------


class Placement:
    """Which worker runs a vertex: today by architecture only (DESIGN.md: platform, then
    cache locality, then load)."""

    def __init__(self, workers: Mapping[str, WorkerHandle]) -> None:
        # arch ("amd64", "arm64") -> the worker serving it; fixed after construction.
        self._workers = dict(workers)

    def __repr__(self) -> str:
        return f"<Placement arches={','.join(sorted(self._workers))}>"

    def workers(self) -> list[WorkerHandle]:
        """Every distinct worker, in the order of their first architecture."""
        unique: dict[int, WorkerHandle] = {}
        for worker in self._workers.values():
            unique.setdefault(id(worker), worker)
        return list(unique.values())

    def worker_for(self, platform: Platform | None) -> WorkerHandle:
        """The worker for ``platform`` (the coordinator's own when None)."""
        arch = (platform or default_platform()).architecture
        worker = self._workers.get(arch)
        if worker is None:
            served = ", ".join(sorted(self._workers)) or "none"
            raise SolveError(f"no worker serves platform {platform}: this cluster runs "
                             f"{served}",
                             hint="build for a platform the cluster serves (--platform), "
                                  "or add a node of that architecture")
        return worker

    def check(self, graph: BuildGraph) -> None:
        """Every vertex of ``graph`` has a worker: a ``SolveError`` naming the first that
        has none, before anything runs."""
        for vertex in graph.vertices.values():
            try:
                self.worker_for(vertex.platform)
            except SolveError as error:
                error.vertex = vertex.name or vertex.op.kind
                error.location = vertex.location
                raise


# --- the solver's backend --------------------------------------------------------------


class DispatchBackend:
    """The ``SolveBackend`` of one build (``build_id``: its session on the workers)."""

    def __init__(self, build_id: str, placement: Placement) -> None:
        self.build_id = build_id
        self._placement = placement

    async def source_identity(self, vertex: Vertex) -> str:
        worker = self._placement.worker_for(vertex.platform)
        item = await worker.call("source_identity", self.build_id, vertex_to_wire(vertex))
        return str(unwrap(item))

    async def content_checksum(self, vertex: Vertex, input_index: int, source: Vertex,
                               selector: Selector) -> str:
        worker = self._placement.worker_for(source.platform)
        item = await worker.call("content_checksum", self.build_id, vertex_to_wire(source),
                                 selector_to_wire(selector))
        return str(unwrap(item))

    async def execute(self, vertex: Vertex, inputs: Sequence[StateResult],
                      events: EventSink) -> StateResult:
        worker = self._placement.worker_for(vertex.platform)
        stream = worker.stream("execute", self.build_id, vertex_to_wire(vertex),
                               [result.to_wire() for result in inputs])
        try:
            return await _result_of(stream, events)
        except (asyncio.CancelledError, GeneratorExit):
            stream.cancel()
            raise


async def _result_of(stream: WorkerStream, events: EventSink) -> StateResult:
    async for item in stream:
        if "event" in item:
            events.emit(event_from_wire(item["event"]))
        else:
            return StateResult.from_wire(unwrap(item))
    raise SolveError("the worker ended an execute without a result",
                     hint="this is a bug in dockyard; see the daemon log")


class WorkerRecords:
    """Build ``build_id``'s ``RecordCache``, kept by ``worker``; ``events`` gets what the
    worker's answers carry."""

    def __init__(self, worker: WorkerHandle, build_id: str, events: EventSink) -> None:
        self._worker = worker
        self._build_id = build_id
        self._events = events

    async def get(self, key: str) -> CacheRecord | None:
        item = await self._worker.call("get_record", key, self._build_id)
        data = unwrap(forward_events(item, self._events))
        return None if data is None else CacheRecord.from_bytes(data)

    async def put(self, record: CacheRecord) -> None:
        item = await self._worker.call("put_record", record.to_bytes(), self._build_id)
        unwrap(forward_events(item, self._events))


def forward_events(item: Mapping[str, Any], events: EventSink) -> Mapping[str, Any]:
    """``item``, after emitting the events it carries (``"events"``) to ``events``."""
    for wire in item.get("events", ()):
        events.emit(event_from_wire(wire))
    return item


def roots_of(graph: BuildGraph, records: Mapping[str, CacheRecord]) -> dict[str, bytes]:
    """The records the export needs (its images' roots), as stored bytes."""
    roots: Iterable[str] = (r.root for r in graph.results if r.root is not None)
    return {root: records[root].to_bytes() for root in roots}
