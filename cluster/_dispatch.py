"""How the coordinator's solver reaches the workers: one build's sessions on them, a
``SolveBackend`` whose every call is a call to a worker the placement chose, and the
build's record cache across the cluster.

- ``BuildSessions``: a build is opened on a worker (``open_session``) the first time it
  uses that worker, so a node that joins mid-build takes work; the first worker opened
  is the build's *home*: it answers the frontend's questions (ignore patterns, base
  images), the sources' identities and the context checksums, and keeps the build's
  ``--cache-from`` lookups.  ``close`` closes the build everywhere it was opened.
- ``DispatchBackend``: one build's ``SolveBackend``.  ``execute`` asks the placement
  (cluster/_registry.py) for a worker, takes one of its slots, names the peers holding
  the input layers it lacks, and streams the worker's events to the solver's sink as they
  come; when the worker dies mid-vertex (``WorkerLost``) the vertex runs again on another
  worker of the same architecture (at most ``ATTEMPTS`` times, then a ``SolveError``
  naming the vertex and the lost workers).  Inputs that only the dead worker held are
  then lost blobs: the solver rebuilds the steps that made them.
- ``ClusterRecords``: one build's ``RecordCache`` across the cluster: a lookup asks every
  live worker's local store and the home worker's remote caches at once, and the first
  hit wins (its layers are then known to be on the worker that answered); a record is
  written where its blobs are (the worker that executed the vertex).

What crosses to a worker is plain data: vertices in the graph's wire form, selectors
and results as maps, records as their stored bytes, peers as actor names.  A worker
answers a plain call with ``{"result": value}`` or ``{"failure": <Failure fields>}``
(errors cross Ray as data).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, Protocol

from dockyard.cache_backends._records import CacheRecord, LayerDescriptor, StateResult
from dockyard.scheduler._cachekey import Selector, selector_to_wire
from dockyard.scheduler._errors import (
    BlobLost,
    DockyardError,
    SolveError,
    WorkerLost,
    error_from_wire,
    error_to_wire,
)
from dockyard.scheduler._graph import BuildGraph, Vertex, vertex_to_wire
from dockyard.scheduler._progress import EventSink, StatusUpdate, VertexLog, event_from_wire

from ._metrics import ClusterMetrics
from ._registry import Placement, WorkerEntry, needed_arch

__all__ = [
    "ATTEMPTS", "BuildSessions", "ClusterRecords", "DispatchBackend", "WorkerHandle",
    "WorkerStream", "answer", "failure_map", "forward_events", "roots_of", "unwrap",
]

_log = logging.getLogger(__name__)


class WorkerStream(Protocol):
    """The items of one streaming worker call; ``cancel`` stops the call."""

    def __aiter__(self) -> AsyncIterator[Any]: ...

    def cancel(self) -> None: ...


class WorkerHandle(Protocol):
    """A worker actor as the coordinator calls it (``dockyard.cluster._ray.ActorRef``, or a
    fake)."""

    async def call(self, method: str, *args: Any) -> Any: ...

    def stream(self, method: str, *args: Any) -> WorkerStream: ...


# --- wire forms ------------------------------------------------------------------------


def failure_map(error: DockyardError) -> dict[str, Any]:
    """``error`` as the ``failure`` map of a worker's answer."""
    return error_to_wire(error)


def answer(value: Any) -> dict[str, Any]:
    return {"result": value}


def unwrap(item: Mapping[str, Any]) -> Any:
    """The value of a worker's answer; its ``failure`` raised as the error it names."""
    if "failure" in item:
        raise error_from_wire(item["failure"])
    return item["result"]


# --- a build's sessions on the workers -------------------------------------------------


class BuildSessions:
    """Build ``build_id`` opened on the workers it uses (``part``: the ``options`` and
    ``session`` maps of its request, given to each worker's ``open_session``)."""

    def __init__(self, build_id: str, part: Mapping[str, Any], placement: Placement) -> None:
        self.build_id = build_id
        self.placement = placement
        self._part = dict(part)
        # worker name -> its open_session answer, once asked (the task is shared).
        self._opened: dict[str, asyncio.Task[Any]] = {}
        self._entries: dict[str, WorkerEntry] = {}  # worker name -> entry, opened there
        self.home: WorkerEntry | None = None  # the first worker opened; None until then

    def __repr__(self) -> str:
        home = self.home.name if self.home else None
        return f"<BuildSessions {self.build_id[:12]} opened={len(self._opened)} home={home}>"

    async def open(self, entry: WorkerEntry) -> Any:
        """Open the build on ``entry`` (once): its ``open_session`` answer."""
        task = self._opened.get(entry.name)
        if task is None:
            task = asyncio.ensure_future(entry.handle.call(
                "open_session", self.build_id, self._part))
            self._opened[entry.name] = task
            self._entries[entry.name] = entry
        try:
            return unwrap(await asyncio.shield(task))
        except WorkerLost:
            self.lost(entry)
            raise

    def lost(self, entry: WorkerEntry) -> None:
        """``entry`` died: the registry forgets it, and this build forgets it was opened
        there (Ray restarts a worker under the same name, with no session open)."""
        self.placement.registry.lost(entry)
        if self._opened.pop(entry.name, None) is not None:
            del self._entries[entry.name]

    async def home_worker(self) -> tuple[WorkerEntry, Any]:
        """The build's home worker and its ``open_session`` answer; a new home when the
        old one died (at most ``ATTEMPTS`` tries)."""
        tried: list[str] = []
        for _ in range(ATTEMPTS):
            home = self.home  # concurrent callers share it: each keeps its own look
            if home is None or home.name not in self.placement.registry.entries:
                home = self.home = self.placement.any_worker(avoid=tried)
            try:
                return home, await self.open(home)
            except WorkerLost:
                tried.append(home.name)
                self._forget_home(home)
                await self.placement.registry.rejoined(REJOIN_TIMEOUT)
        raise _all_lost("open the build", tried)

    def _forget_home(self, entry: WorkerEntry) -> None:
        """``entry`` died: it is no longer the home (unless another caller chose anew)."""
        if self.home is entry:
            self.home = None

    async def on_home(self, method: str, *args: Any) -> Any:
        """``method(build_id, *args)`` on the home worker (a new home if it died)."""
        tried: list[str] = []
        for _ in range(ATTEMPTS):
            entry, _ = await self.home_worker()
            try:
                return unwrap(await entry.handle.call(method, self.build_id, *args))
            except WorkerLost:
                tried.append(entry.name)
                self.lost(entry)
                self._forget_home(entry)
        raise _all_lost(method, tried)

    async def close(self) -> None:
        """Close the build on every worker it was opened on (a dead one has nothing left)."""
        for name, task in list(self._opened.items()):
            if not task.done():
                task.cancel()
                await asyncio.wait([task])
            entry = self._entries[name]
            try:
                await entry.handle.call("close_session", self.build_id)
            except DockyardError:
                continue


def _all_lost(what: str, workers: Sequence[str]) -> WorkerLost:
    return WorkerLost(f"cannot {what}: every worker tried was lost ({', '.join(workers)})",
                      hint="check the cluster's nodes ('dockyard node ls') and build again")


# --- the solver's backend --------------------------------------------------------------

#: How many workers a vertex may be tried on when the one running it dies.
ATTEMPTS = 3
#: After a loss, how long a vertex waits for a worker that can run it to (re)join (Ray
#: restarts a killed worker actor on its node in seconds) before it is refused.
REJOIN_TIMEOUT = 30.0


class DispatchBackend:
    """The ``SolveBackend`` of one build; ``metrics`` counts its executions (the cluster's,
    cluster/_metrics.py), ``ran`` gets the digest of each vertex it executed."""

    def __init__(self, sessions: BuildSessions, metrics: ClusterMetrics | None = None,
                 ran: set[str] | None = None) -> None:
        self.sessions = sessions
        self._placement = sessions.placement
        self._metrics = metrics or ClusterMetrics()
        self.ran = set() if ran is None else ran  # vertices executed for this build
        # Reads asked in this turn of the event loop, not yet sent (source, selector,
        # where the answer goes); sent together by ``_batch``, the task of the next send.
        self._checksums: list[tuple[Vertex, Selector, asyncio.Future[str]]] = []
        self._batch: asyncio.Task[None] | None = None
        # vertex digest -> the worker that ran it (its last attempt; the build's record)
        self.ran_on: dict[str, str] = {}

    @property
    def build_id(self) -> str:
        return self.sessions.build_id

    async def source_identity(self, vertex: Vertex) -> str:
        return str(await self.sessions.on_home("source_identity", vertex_to_wire(vertex)))

    async def content_checksum(self, vertex: Vertex, input_index: int, source: Vertex,
                               selector: Selector) -> str:
        """One read's checksum: the reads asked in the same turn of the event loop (the
        solver asks for all of a build's at once) go to the home worker as one call."""
        answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._checksums.append((source, selector, answer))
        if self._batch is None:
            self._batch = asyncio.ensure_future(self._checksum_batch())
        return await answer

    async def _checksum_batch(self) -> None:
        await asyncio.sleep(0)  # every read of this turn joins the batch
        batch, self._checksums, self._batch = self._checksums, [], None
        sources = {source.digest: vertex_to_wire(source) for source, _, _ in batch}
        items = [[source.digest, selector_to_wire(selector)] for source, selector, _ in batch]
        try:
            answers = await self.sessions.on_home("content_checksums", sources, items)
        except BaseException as exc:  # the call failed: each read fails with it
            for _, _, answer in batch:
                if not answer.done():
                    answer.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for (_, _, answer), item in zip(batch, answers, strict=True):
            if answer.done():
                continue
            try:
                answer.set_result(str(unwrap(item)))
            except DockyardError as error:
                answer.set_exception(error)

    async def execute(self, vertex: Vertex, inputs: Sequence[StateResult],
                      events: EventSink) -> StateResult:
        layers = [layer for result in inputs for layer in result.layers]
        lost: list[str] = []
        for _ in range(ATTEMPTS):
            with self._metrics.waiting(vertex):
                entry, emulated = await self._placement.take(vertex, layers, avoid=lost)
            try:
                await self.sessions.open(entry)
                self.ran_on[vertex.digest] = entry.describe() + (" (emulated)" if emulated
                                                                 else "")
                with self._metrics.executing(vertex, emulated):
                    result = await self._run_on(entry, vertex, inputs, layers, events,
                                                emulated)
            except BlobLost:
                self._metrics.vertex(vertex, "retried")  # the solver rebuilds, then retries
                raise
            except WorkerLost:
                self._metrics.vertex(vertex, "retried")
                _log.warning("worker %s lost while running a vertex: running it again",
                             entry.describe(), extra={"vertex": vertex.digest})
                lost.append(entry.describe())
                self.sessions.lost(entry)
                events.emit(VertexLog(vertex.digest, 2, f"worker {entry.describe()} was lost "
                                      f"while running this step: running it again\n".encode()))
                await self._rejoined(vertex)
                continue
            finally:
                self._placement.release(entry)
            self._placement.registry.index.add(entry.name, result.layers)
            self.ran.add(vertex.digest)
            return result
        raise SolveError(f"the workers running this step were lost {len(lost)} times "
                         f"({', '.join(lost)})",
                         hint="check the cluster's nodes ('dockyard node ls') and build again")

    async def _rejoined(self, vertex: Vertex) -> None:
        """Refresh the registry until a worker can run ``vertex`` again (the lost one,
        restarted, or another), at most ``REJOIN_TIMEOUT``; ``take`` refuses it after."""
        arch = needed_arch(vertex)
        await self._placement.registry.rejoined(
            REJOIN_TIMEOUT, lambda: bool(self._placement.candidates(arch)[0]))

    async def _run_on(self, entry: WorkerEntry, vertex: Vertex, inputs: Sequence[StateResult],
                      layers: Sequence[LayerDescriptor], events: EventSink,
                      emulated: bool) -> StateResult:
        """Run ``vertex`` on ``entry`` (whose slot the caller holds)."""
        peers = self._placement.registry.index.peers_for(entry.name, layers)
        self._announce(entry, vertex, events, emulated)
        stream = entry.handle.stream("execute", self.build_id, vertex_to_wire(vertex),
                                     [result.to_wire() for result in inputs], peers)
        try:
            result = await _result_of(stream, events)
        except (asyncio.CancelledError, GeneratorExit):
            stream.cancel()
            raise
        entry.executed += 1
        return result

    def _announce(self, entry: WorkerEntry, vertex: Vertex, events: EventSink,
                  emulated: bool) -> None:
        """Say which node runs the vertex (in a cluster of several workers, or emulated)."""
        if not emulated and len(self._placement.registry.entries) < 2:
            return
        arch = needed_arch(vertex)
        how = f" (emulating {arch})" if emulated else ""
        events.emit(StatusUpdate(vertex.digest, f"running on {entry.describe()}{how}"))


async def _result_of(stream: WorkerStream, events: EventSink) -> StateResult:
    async for item in stream:
        if "event" in item:
            events.emit(event_from_wire(item["event"]))
        else:
            return StateResult.from_wire(unwrap(item))
    raise SolveError("the worker ended an execute without a result",
                     hint="this is a bug in dockyard; see the daemon log")


class ClusterRecords:
    """Build ``sessions.build_id``'s ``RecordCache`` over every live worker; ``events``
    gets what the workers' answers carry (remote-cache warnings)."""

    def __init__(self, sessions: BuildSessions, events: EventSink) -> None:
        self._sessions = sessions
        self._registry = sessions.placement.registry
        self._events = events

    async def get(self, key: str) -> CacheRecord | None:
        home, _ = await self._sessions.home_worker()
        others = [w for w in self._registry.live() if w is not home]
        asks = [self._ask(home, key, self._sessions.build_id)]
        asks += [self._ask(worker, key, None) for worker in others]
        answers = await asyncio.gather(*asks, return_exceptions=True)
        for worker, found in zip([home, *others], answers, strict=True):
            if isinstance(found, CacheRecord):
                self._registry.index.add(worker.name, found.result.layers)
                return found
        for found in answers:
            if isinstance(found, BaseException) and not isinstance(found, WorkerLost):
                raise found
        return None

    async def _ask(self, worker: WorkerEntry, key: str, build_id: str | None
                   ) -> CacheRecord | None:
        try:
            item = await worker.handle.call("get_record", key, build_id)
        except WorkerLost:
            self._sessions.lost(worker)
            raise
        data = unwrap(forward_events(item, self._events))
        return None if data is None else CacheRecord.from_bytes(data)

    async def put(self, record: CacheRecord) -> None:
        """Write ``record`` on the worker holding its top layer (else the home worker)."""
        worker = self._holder(record)
        if worker is None:
            worker, _ = await self._sessions.home_worker()
        else:
            await self._sessions.open(worker)
        item = await worker.handle.call("put_record", record.to_bytes(),
                                        self._sessions.build_id)
        unwrap(forward_events(item, self._events))

    def _holder(self, record: CacheRecord) -> WorkerEntry | None:
        """A live worker holding the record's top layer, one that holds all its layers
        first: two platforms' steps can make the same top layer (a COPY of the same file)
        over different base layers, and a worker refuses a record naming blobs it lacks."""
        layers = record.result.layers
        if not layers:
            return None
        index = self._registry.index
        tops = sorted(index.holders(layers[-1].digest))
        whole = [name for name in tops
                 if all(name in index.holders(layer.digest) for layer in layers)]
        for name in whole + tops:
            if name in self._registry.entries:
                return self._registry.entries[name]
        return None


def forward_events(item: Mapping[str, Any], events: EventSink) -> Mapping[str, Any]:
    """``item``, after emitting the events it carries (``"events"``) to ``events``."""
    for wire in item.get("events", ()):
        events.emit(event_from_wire(wire))
    return item


def roots_of(graph: BuildGraph, records: Mapping[str, CacheRecord]) -> dict[str, bytes]:
    """The records the export needs (its images' roots), as stored bytes."""
    roots: Iterable[str] = (r.root for r in graph.results if r.root is not None)
    return {root: records[root].to_bytes() for root in roots}
