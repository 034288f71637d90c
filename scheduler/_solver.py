"""The solver: turns the vertices a build needs into cache records, doing as little as it can.

One ``solve`` runs in three steps:

1. **keys** -- the vertices the targets need, and their cache keys (scheduler/_cachekey.py),
   from the sources' pinned identities and the content checksums of the context paths
   each vertex reads, asked of the backend all at once;
2. **resolve** -- from the targets down: a vertex whose key has a record is done (its
   inputs are never looked at); otherwise its inputs are resolved in parallel, then it
   executes and its record is written.  A fully cached target costs one lookup;
3. **report** -- the targets' records (``created``: when the result was first built).

Progress lists every step of the build, as BuildKit's does: a vertex the build does not
need because everything that uses it came from the cache (its users hit, or were not
needed either) is reported ``VertexCached`` too -- it was never looked up nor run --
once per build, inputs first, just before the hit that made it unneeded.  A vertex stays
unreported while any user may still need it (not yet looked up, or executing).

Work is shared by cache key through *flights*: every vertex being resolved, by any
``solve`` on this ``Solver``, is one flight that all interested solves wait on, so a vertex
two builds need runs once.  A flight ends when its work ends or when its last waiter
leaves (cancelled): then its task is cancelled and awaited, so a cancelled build leaves
nothing running.  Records are written only after an execute succeeds.  A flight reads and
writes records through the record cache of the build that started it; every other build
that joined it then reads the record through its own (a build's cache may push what it
sees: ``--cache-to mode=max``).

**Lost layers.** A record from a shared cache is trusted, and its layer blobs are
fetched only when something needs them; one may then turn out missing or corrupt, and
the backend's ``execute`` raises ``BlobLost`` naming it. That is a cache miss, never a
failed build: the solver rebuilds the *owner* of the lost layer -- walking down from the
input whose record names it to the vertex whose own layer it is (its record names it,
none of its inputs' records does) -- re-executes it, and re-executes the vertices
between only if the rebuilt result differs (a reproducible layer comes back with the
same diff_id, so nothing above re-runs; the worker makes the lost compressed blob again
from it). Then the vertex is retried, at most once per lost digest (a second loss of one
digest is a ``SolveError``). A rebuild is a flight of its own (slot: the key and the
lost digests), never a join of the flight that returned the stale record; it keeps the
stale record's ``created`` (the result's first build) and its ``put`` replaces the stale
record, locally and in the build's ``--cache-to``. ``solve(..., rebuild=digests)`` does
the same for the targets (an exporter that found a layer lost asks for fresh records).

**Failures.**  When several vertices fail, the build's error is always the same one:
the first failing vertex in depth-first order of the graph (targets in their order, each
vertex's inputs in theirs).  A failure cancels at once what comes after it in that order
(progress reports those ``VertexFailed(cancelled=True)``), while what comes before it runs
on and, if it fails too, is the error instead; progress reports every failure as it
happens.  BuildKit ends on whichever fails first in time, so two parallel failing stages
give either error from run to run; here the price of one answer is that a later failure
waits for the earlier branches still running.

The solver does no I/O of its own: everything goes through ``SolveBackend`` (the worker
side) and ``RecordCache`` (a cache backend), and news through an ``EventSink``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NoReturn, Protocol, TypeVar

from dockyard.cache_backends._records import CacheRecord, RecordError, StateResult

from ._cachekey import ContentRead, Selector, cache_key, content_reads, source_key
from ._errors import BlobLost, DockyardError, GraphError, SolveError
from ._graph import BuildGraph, SourceOp, Vertex
from ._progress import (
    Event,
    EventSink,
    StatusUpdate,
    VertexCached,
    VertexCompleted,
    VertexFailed,
    VertexStarted,
)

__all__ = ["RecordCache", "SolveBackend", "Solver", "SolverStatistics"]

T = TypeVar("T")


class SolveBackend(Protocol):
    """The worker side of a solve: everything that reads or writes a filesystem."""

    async def source_identity(self, vertex: Vertex) -> str:
        """The pinned identity of a source vertex: an image's manifest digest, the
        context's content checksum, an http checksum or etag, a git commit."""
        ...

    async def content_checksum(self, vertex: Vertex, input_index: int, source: Vertex,
                               selector: Selector) -> str:
        """The content checksum of what ``vertex`` reads at ``selector`` from its input
        ``input_index``, the source vertex ``source`` (the build context): what a copy with
        this selector would read, never mtimes or host paths."""
        ...

    async def execute(self, vertex: Vertex, inputs: Sequence[StateResult],
                      events: EventSink) -> StateResult:
        """Run ``vertex`` on its inputs' results (in ``vertex.inputs`` order); ``events``
        takes its ``VertexLog`` and ``StatusUpdate`` news.  Raise a ``SolveError`` (an
        ``ExecError`` for a non-zero exit) or another ``DockyardError``."""
        ...


class RecordCache(Protocol):
    """Cache records by key.  ``put`` publishes atomically: a reader never sees half."""

    async def get(self, key: str) -> CacheRecord | None: ...

    async def put(self, record: CacheRecord) -> None: ...


@dataclass(frozen=True, slots=True)
class SolverStatistics:
    """``executed``: executes that succeeded; ``cached``: vertices answered by a record;
    ``in_flight``: vertices being resolved now, by any build."""

    executed: int
    cached: int
    in_flight: int


@dataclass(frozen=True, slots=True, eq=False)
class _Build:
    """One ``solve`` call: its graph, keys and choices (compared by identity)."""

    graph: BuildGraph
    keys: Mapping[str, str]
    backend: SolveBackend
    cache: RecordCache
    events: EventSink
    positions: Mapping[str, str]
    no_cache: bool
    skips: _Skips
    # Vertices run without a lookup: those marked ``ignore_cache`` and what depends on them.
    fresh: frozenset[str] = frozenset()

    def vertex(self, digest: str) -> Vertex:
        return self.graph.vertices[digest]


@dataclass(frozen=True, slots=True)
class _Watcher:
    """A build that wants to hear about a flight, and its own vertex for that flight."""

    build: _Build
    vertex: Vertex

    def input(self, index: int) -> _Watcher:
        return _Watcher(self.build, self.build.vertex(self.vertex.inputs[index]))

    def emit(self, event: Event) -> None:
        if isinstance(event, VertexCompleted):
            self.build.skips.ended(self.vertex.digest)
        elif isinstance(event, VertexCached):
            if not self.build.skips.ended(self.vertex.digest):
                return  # ended already in this build (a target that is another's input)
            for skipped in self.build.skips.hit(self.vertex.digest):
                self.build.events.emit(VertexCached(skipped.digest, _name(skipped)))
        self.build.events.emit(_readdressed(event, self.vertex))


class _Skips:
    """One build's bookkeeping of the vertices it does not need: those no flight of the
    build watches whose every user hit the cache or is not needed either."""

    def __init__(self, graph: BuildGraph, needed: Sequence[Vertex],
                 targets: Iterable[str]) -> None:
        self._graph = graph
        self._order = {v.digest: i for i, v in enumerate(needed)}  # inputs first
        self._users: dict[str, set[str]] = {v.digest: set() for v in needed}
        for vertex in needed:
            for digest in vertex.inputs:
                self._users[digest].add(vertex.digest)
        self._watched = set(targets)  # vertices a flight of the build resolves
        # Vertices the build has no more use for: watched ones answered by a record, and
        # unwatched ones reported as not needed (``_skipped``).
        self._settled: set[str] = set()
        self._skipped: set[str] = set()
        self._ended: set[str] = set()  # vertices reported cached or completed

    def ended(self, digest: str) -> bool:
        """Whether ``digest`` ends now for the first time in this build (once only)."""
        first = digest not in self._ended
        self._ended.add(digest)
        return first

    def watch(self, digest: str) -> None:
        self._watched.add(digest)

    def hit(self, digest: str) -> list[Vertex]:
        """``digest`` came from the cache: the vertices that makes unneeded, inputs first."""
        self._settled.add(digest)
        found: list[str] = []
        stack = list(self._graph.vertices[digest].inputs)
        while stack:
            below = stack.pop()
            if below in self._watched or below in self._skipped:
                continue
            if self._users[below] <= self._settled:
                self._skipped.add(below)
                self._settled.add(below)
                self._ended.add(below)
                found.append(below)
                stack.extend(self._graph.vertices[below].inputs)
        found.sort(key=self._order.__getitem__)
        return [self._graph.vertices[d] for d in found]


_Slot = tuple[str, bool, frozenset[str]]
_NONE_LOST: frozenset[str] = frozenset()


@dataclass(eq=False)
class _Flight:
    """One vertex being resolved, shared by every solve that needs its key."""

    # Where the solver files it: (cache key, no_cache, the lost layer digests a rebuild
    # repairs: empty for a lookup-or-execute flight).  A newer flight may take the slot
    # once this one is being cancelled.
    slot: _Slot
    # The work; set right after creation, done when the flight is over.
    task: asyncio.Task[CacheRecord] = field(init=False)
    # Solves waiting on ``task`` now; when it drops to 0 before ``task`` is done, the
    # task is cancelled.
    waiters: int = 0
    # Who hears this flight's events; only grows.  Every watcher of a flight also
    # watches the flights of its inputs (``inputs``), so a build that joins late sees
    # the whole subgraph, not just the vertex it joined.
    watchers: list[_Watcher] = field(default_factory=list)
    # The flights of the vertex's inputs, once it needs them (empty before).
    inputs: list[_Flight] = field(default_factory=list)
    # Unix time the execute started, None before (late watchers get a VertexStarted).
    started: float | None = None
    # The lookup hit (late watchers get a VertexCached).
    cached: bool = False

    def emit(self, event: Event) -> None:
        for watcher in self.watchers:
            watcher.emit(event)

    def watch(self, watcher: _Watcher) -> None:
        if watcher in self.watchers:
            return
        self.watchers.append(watcher)
        watcher.build.skips.watch(watcher.vertex.digest)
        if self.cached:
            watcher.emit(VertexCached(watcher.vertex.digest, ""))
        if self.started is not None:
            watcher.emit(VertexStarted(watcher.vertex.digest, "", self.started))
        for index, child in enumerate(self.inputs):
            child.watch(watcher.input(index))


def _readdressed(event: Event, vertex: Vertex) -> Event:
    if isinstance(event, VertexStarted | VertexCached | VertexCompleted | VertexFailed):
        return dataclasses.replace(event, vertex=vertex.digest, name=_name(vertex))
    return dataclasses.replace(event, vertex=vertex.digest)


class _NoEvents:
    def emit(self, event: Event) -> None:
        pass


class Solver:
    """Solves build graphs against one backend and one record cache.

    ``solve`` may run concurrently several times on one instance: vertices with equal
    cache keys run once for all of them."""

    def __init__(self, backend: SolveBackend, cache: RecordCache, *,
                 events: EventSink | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._backend = backend
        self._cache = cache
        self._events: EventSink = events or _NoEvents()
        self._clock = clock
        # _Flight.slot -> the flight resolving it; a flight leaves when done or when it
        # starts being cancelled, so a new waiter never joins a dying flight.
        self._flights: dict[_Slot, _Flight] = {}
        # Counters for statistics(): only ever grow.
        self._executed = 0
        self._cached = 0

    def statistics(self) -> SolverStatistics:
        return SolverStatistics(executed=self._executed, cached=self._cached,
                                in_flight=len(self._flights))

    def __repr__(self) -> str:
        stats = self.statistics()
        return (f"<Solver executed={stats.executed} cached={stats.cached} "
                f"in_flight={stats.in_flight}>")

    async def solve(self, graph: BuildGraph, targets: Iterable[str] | None = None, *,
                    no_cache: bool = False, positions: Mapping[str, str] | None = None,
                    events: EventSink | None = None, backend: SolveBackend | None = None,
                    cache: RecordCache | None = None,
                    rebuild: frozenset[str] = frozenset()) -> dict[str, CacheRecord]:
        """Resolve ``targets`` (vertex digests; default: the roots of ``graph.results``)
        and return their records by digest.

        ``no_cache`` skips lookups (records are still written), as a vertex marked
        ``ignore_cache`` does.  ``positions`` maps a
        vertex digest to its Dockerfile position (``Dockerfile:7:1``) for errors; a vertex
        it does not name (all of them, by default) is placed at its own ``location``;
        ``events``, ``backend`` and ``cache`` override the solver's for this build (a
        build's own progress stream, session and remote caches).  A vertex with the key
        another build is resolving joins that flight, which reads and writes the
        records through the cache of the build that started it.

        ``rebuild``: layer digests found lost after an earlier solve (an exporter's
        ``BlobLost``): a target whose record names one is rebuilt (see the module
        docstring) and its fresh record returned."""
        wanted = _targets(graph, targets)
        needed = _needed(graph, wanted)
        build = _Build(graph=graph, keys={}, backend=backend or self._backend,
                       cache=cache or self._cache, events=events or self._events,
                       positions=positions or {}, no_cache=no_cache,
                       skips=_Skips(graph, needed, wanted), fresh=_fresh(graph))
        keys = await _compute_keys(build, needed)
        build = dataclasses.replace(build, keys=keys)
        records = await _all(self._resolve(build, digest) for digest in wanted)
        if rebuild:
            records = [await self._refresh(build, build.vertex(digest), record, rebuild)
                       if _layers(record) & rebuild else record
                       for digest, record in zip(wanted, records, strict=True)]
        return dict(zip(wanted, records, strict=True))

    # -- resolving --

    async def _resolve(self, build: _Build, digest: str) -> CacheRecord:
        vertex = build.vertex(digest)
        flight = self._flight(build, vertex)
        flight.watch(_Watcher(build, vertex))
        return await self._wait(flight)

    def _flight(self, build: _Build, vertex: Vertex) -> _Flight:
        """The flight resolving ``vertex``'s key, started now if there is none."""
        return self._flight_in((build.keys[vertex.digest], _skips_cache(build, vertex),
                                _NONE_LOST),
                               lambda flight: self._fly(flight, build, vertex))

    def _flight_in(self, slot: _Slot,
                   work: Callable[[_Flight], Coroutine[None, None, CacheRecord]]
                   ) -> _Flight:
        """The flight in ``slot``, started now on ``work`` if there is none."""
        flight = self._flights.get(slot)
        if flight is None:
            flight = _Flight(slot)
            flight.task = asyncio.create_task(work(flight))
            self._flights[slot] = flight
            flight.task.add_done_callback(lambda _: self._forget(flight))
        return flight

    def _forget(self, flight: _Flight) -> None:
        if self._flights.get(flight.slot) is flight:
            del self._flights[flight.slot]

    async def _wait(self, flight: _Flight) -> CacheRecord:
        flight.waiters += 1
        try:
            return await asyncio.shield(flight.task)
        except asyncio.CancelledError:
            await self._leave(flight)
            raise
        finally:
            flight.waiters -= 1

    async def _leave(self, flight: _Flight) -> None:
        """A waiter was cancelled: if it was the last, cancel the work and wait for it."""
        if flight.waiters > 1 or flight.task.done():
            return
        self._forget(flight)
        flight.task.cancel()
        await asyncio.wait([flight.task])
        if not flight.task.cancelled():
            flight.task.exception()  # retrieved: the build is being cancelled anyway

    async def _fly(self, flight: _Flight, build: _Build, vertex: Vertex) -> CacheRecord:
        key = build.keys[vertex.digest]
        if not _skips_cache(build, vertex):
            record = await _at_vertex(build, vertex, self._lookup(build.cache, key))
            if record is not None:
                self._cached += 1
                flight.cached = True
                flight.emit(VertexCached(vertex.digest, _name(vertex)))
                await _share(flight, build, key)
                return record
        inputs = await self._resolve_inputs(flight, build, vertex)
        record = await self._executed_record(flight, build, vertex, inputs, None)
        await _share(flight, build, key)
        return record

    async def _executed_record(self, flight: _Flight, build: _Build, vertex: Vertex,
                               inputs: Sequence[CacheRecord],
                               created: int | None) -> CacheRecord:
        """Execute ``vertex`` on ``inputs`` (repairing lost layers) and store its record,
        made now unless ``created`` (a rebuild keeps its result's first build time)."""
        result = await self._execute_repairing(flight, build, vertex, inputs)
        made = int(self._clock()) if created is None else created
        record = CacheRecord(key=build.keys[vertex.digest], result=result, created=made,
                             meta={"name": vertex.name, "kind": result_kind(vertex)})
        await _at_vertex(build, vertex, build.cache.put(record))
        self._executed += 1
        return record

    # -- lost layers (see the module docstring) --

    async def _execute_repairing(self, flight: _Flight, build: _Build, vertex: Vertex,
                                 inputs: Sequence[CacheRecord]) -> StateResult:
        """``_execute``; on a ``BlobLost``, rebuild what owns the layers and retry."""
        repaired: set[str] = set()  # digests rebuilt for this vertex: a 2nd loss is fatal
        while True:
            try:
                return await self._execute(flight, build, vertex, [r.result for r in inputs])
            except BlobLost as lost:
                digests = _lost_digests(lost, repaired, build, vertex)
                repaired |= digests
                flight.emit(StatusUpdate(vertex.digest, "cache: rebuilding lost layer "
                                         f"{', '.join(sorted(digests))}", done=True))
                inputs = await self._repaired(build, vertex, inputs, digests)

    async def _repaired(self, build: _Build, vertex: Vertex,
                        inputs: Sequence[CacheRecord], lost: frozenset[str]
                        ) -> list[CacheRecord]:
        """``inputs`` with those naming a ``lost`` layer refreshed."""
        if not any(_layers(record) & lost for record in inputs):
            raise _located(SolveError(f"layer {', '.join(sorted(lost))} was lost, and no "
                                      "input of this step has it",
                                      hint="prune the local cache and build again"),
                           vertex, build.positions)
        fresh = list(inputs)
        for index, record in enumerate(inputs):
            if _layers(record) & lost:
                below = build.vertex(vertex.inputs[index])
                fresh[index] = await self._refresh(build, below, record, lost)
        return fresh

    async def _refresh(self, build: _Build, vertex: Vertex, record: CacheRecord,
                       lost: frozenset[str]) -> CacheRecord:
        """``vertex``'s record with its ``lost`` layers back: its inputs refreshed first,
        then ``vertex`` re-executed only if one of them is its own layer or a refreshed
        input changed; otherwise ``record`` is still right."""
        below = await _all(self._resolve(build, digest) for digest in vertex.inputs)
        inherited = set().union(*(_layers(r) for r in below))
        fresh = list(below)
        changed = False
        for index, input_record in enumerate(below):
            if _layers(input_record) & lost:
                fresh[index] = await self._refresh(
                    build, build.vertex(vertex.inputs[index]), input_record, lost)
                changed = changed or not _same_content(fresh[index], input_record)
        if not changed and not (_layers(record) & lost) - inherited:
            return record
        return await self._rebuild(build, vertex, fresh, record.created, lost)

    async def _rebuild(self, build: _Build, vertex: Vertex, inputs: Sequence[CacheRecord],
                       created: int, lost: frozenset[str]) -> CacheRecord:
        """Execute ``vertex`` afresh in a flight of its own (never the one that returned
        the stale record); builds repairing the same loss share it."""
        slot = (build.keys[vertex.digest], False, lost)
        flight = self._flight_in(slot, lambda flight: self._executed_record(
            flight, build, vertex, inputs, created))
        flight.watch(_Watcher(build, vertex))
        return await self._wait(flight)

    async def _resolve_inputs(self, flight: _Flight, build: _Build,
                              vertex: Vertex) -> list[CacheRecord]:
        flight.inputs = [self._flight(build, build.vertex(d)) for d in vertex.inputs]
        for watcher in list(flight.watchers):
            for index, child in enumerate(flight.inputs):
                child.watch(watcher.input(index))
        return await _all(self._wait(child) for child in flight.inputs)

    @staticmethod
    async def _lookup(cache: RecordCache, key: str) -> CacheRecord | None:
        try:
            record = await cache.get(key)
        except RecordError:  # unreadable or from another version: a miss, rebuilt
            return None
        return record if record is not None and record.key == key else None

    async def _execute(self, flight: _Flight, build: _Build, vertex: Vertex,
                       inputs: Sequence[StateResult]) -> StateResult:
        name = _name(vertex)
        if flight.started is None:  # a retry after a lost layer is the same run
            flight.started = self._clock()
            flight.emit(VertexStarted(vertex.digest, name, flight.started))
        begun = time.monotonic()
        try:
            result = await build.backend.execute(vertex, inputs, flight)
        except BlobLost:
            raise  # a cache miss found late: the caller rebuilds and retries
        except asyncio.CancelledError:
            flight.emit(VertexFailed(vertex.digest, name, "cancelled", cancelled=True))
            raise
        except Exception as exc:  # the backend's boundary: every error gets its vertex
            error = _located(exc, vertex, build.positions)
            flight.emit(VertexFailed(vertex.digest, name, str(error)))
            _raise(error, exc)
        flight.emit(VertexCompleted(vertex.digest, name, time.monotonic() - begun))
        return result


async def _share(flight: _Flight, build: _Build, key: str) -> None:
    """Every other build that joined ``flight`` reads its record through its own record
    cache, so that cache sees it too (a build's ``--cache-to mode=max`` pushes what it
    looks up); its answer is not used, and its failure only loses that push."""
    caches = {id(w.build.cache): w.build.cache for w in flight.watchers}
    caches.pop(id(build.cache), None)
    for cache in caches.values():
        with contextlib.suppress(DockyardError):
            await cache.get(key)


# --- keys ------------------------------------------------------------------------------


async def _compute_keys(build: _Build, needed: Sequence[Vertex]) -> dict[str, str]:
    """Ask for every identity and checksum at once, then key vertices inputs-first."""
    identities: dict[str, Awaitable[str]] = {}
    checksums: dict[tuple[str, ContentRead], Awaitable[str]] = {}
    for vertex in needed:
        if isinstance(vertex.op, SourceOp):
            identities[vertex.digest] = _at_vertex(
                build, vertex, build.backend.source_identity(vertex))
            continue
        sources = [build.vertex(d) for d in vertex.inputs]
        for read in content_reads(vertex, sources):
            checksums[(vertex.digest, read)] = _at_vertex(
                build, vertex, build.backend.content_checksum(
                    vertex, read.index, sources[read.index], read.selector))
    answers = await _all([*identities.values(), *checksums.values()])
    known = dict(zip(identities, answers, strict=False))
    sums = dict(zip(checksums, answers[len(identities):], strict=True))
    return _keys_in_order(needed, known, sums)


def _keys_in_order(needed: Sequence[Vertex], identities: Mapping[str, str],
                   checksums: Mapping[tuple[str, ContentRead], str]) -> dict[str, str]:
    by_vertex: dict[str, dict[ContentRead, str]] = {}  # vertex digest -> its checksums
    for (digest, read), checksum in checksums.items():
        by_vertex.setdefault(digest, {})[read] = checksum
    keys: dict[str, str] = {}
    for vertex in needed:
        if vertex.digest in identities:
            keys[vertex.digest] = source_key(vertex, identities[vertex.digest])
            continue
        own = by_vertex.get(vertex.digest, {})
        keys[vertex.digest] = cache_key(vertex, [keys[d] for d in vertex.inputs], own)
    return keys


async def _at_vertex(build: _Build, vertex: Vertex, answer: Awaitable[T]) -> T:
    """``answer``, with any error it raises turned into a SolveError naming ``vertex``."""
    try:
        return await answer
    except Exception as exc:  # the backend's or the cache's boundary
        _raise(_located(exc, vertex, build.positions), exc)


# --- helpers ---------------------------------------------------------------------------


def _targets(graph: BuildGraph, targets: Iterable[str] | None) -> list[str]:
    if targets is None:
        targets = [r.root for r in graph.results if r.root is not None]
    wanted = list(dict.fromkeys(targets))
    for digest in wanted:
        if digest not in graph.vertices:
            raise GraphError(f"cannot solve {digest}: it is not a vertex of the graph")
    return wanted


def _needed(graph: BuildGraph, targets: Sequence[str]) -> list[Vertex]:
    """The targets and everything they depend on, inputs before users."""
    seen: set[str] = set()
    stack = list(targets)
    while stack:
        digest = stack.pop()
        if digest not in seen:
            seen.add(digest)
            stack.extend(graph.vertices[digest].inputs)
    return [v for d, v in graph.vertices.items() if d in seen]


async def _all(awaitables: Iterable[Awaitable[T]]) -> list[T]:
    """Await all in parallel and raise the failure of the first one, in their order, that
    fails, whatever the timing (see "Failures" in the module docstring): a failure
    cancels those after it at once, those before it run on."""
    pending = list(awaitables)
    # Index -> result or failure; each index lands in exactly one of the two.
    results: dict[int, T] = {}
    failures: dict[int, Exception] = {}
    tasks: list[asyncio.Task[None]] = []

    async def one(index: int, awaitable: Awaitable[T]) -> None:
        try:
            results[index] = await awaitable
        except Exception as exc:  # a CancelledError is not caught: it ends the task
            failures[index] = exc
            for later in tasks[index + 1:]:
                later.cancel()

    try:
        async with asyncio.TaskGroup() as group:
            tasks += [group.create_task(one(i, a)) for i, a in enumerate(pending)]
    except BaseExceptionGroup as errors:  # a BaseException that is not an Exception
        failure: BaseException = errors
        while isinstance(failure, BaseExceptionGroup):
            failure = failure.exceptions[0]
        raise failure from None
    if failures:
        raise failures[min(failures)]
    return [results[index] for index in range(len(pending))]


def _raise(error: SolveError, cause: Exception) -> NoReturn:
    if error is cause:
        raise error
    raise error from cause


def _same_content(one: CacheRecord, other: CacheRecord) -> bool:
    """Whether two records hold the same filesystem: the same layers by diff_id (one may
    be compressed where the other is not, as a rebuilt step's layer is before an image
    or a remote cache needs it compressed) and the same base config."""
    return (one.result.image_config == other.result.image_config
            and [layer.diff_id for layer in one.result.layers]
            == [layer.diff_id for layer in other.result.layers])


def _layers(record: CacheRecord) -> set[str]:
    """The layer blob digests ``record``'s result names."""
    return {layer.digest for layer in record.result.layers}


def _lost_digests(lost: BlobLost, repaired: set[str], build: _Build,
                  vertex: Vertex) -> frozenset[str]:
    """The digests ``lost`` names, unless one was already rebuilt for ``vertex``."""
    if not lost.digests:  # nothing to rebuild
        raise _located(SolveError(lost.message, hint=lost.hint), vertex,
                       build.positions) from lost
    again = sorted(set(lost.digests) & repaired)
    if again:
        raise _located(SolveError(f"layer {', '.join(again)} was lost again after "
                                  f"rebuilding what made it: {lost.message}",
                                  hint="check the cache backends (--cache-from) and the "
                                  "local store's disk"), vertex, build.positions) from lost
    return frozenset(lost.digests)


def _skips_cache(build: _Build, vertex: Vertex) -> bool:
    """Whether ``vertex`` runs without a cache lookup: ``--no-cache``, or a step of a
    ``--no-cache-filter`` stage or one that depends on such a step, as BuildKit finds no
    cache match past an ignored one (its record is written all the same)."""
    return build.no_cache or vertex.digest in build.fresh


def _fresh(graph: BuildGraph) -> frozenset[str]:
    """The vertices marked ``ignore_cache`` and every vertex that depends on one (the
    graph's order is topological: inputs first)."""
    fresh: set[str] = set()
    for digest, vertex in graph.vertices.items():
        if vertex.ignore_cache or any(d in fresh for d in vertex.inputs):
            fresh.add(digest)
    return frozenset(fresh)


def _name(vertex: Vertex) -> str:
    return vertex.name or f"{vertex.op.kind} {vertex.digest[7:19]}"


def _located(exc: Exception, vertex: Vertex, positions: Mapping[str, str]) -> SolveError:
    """``exc`` as a SolveError naming ``vertex`` and its Dockerfile position."""
    location = positions.get(vertex.digest) or vertex.location
    if isinstance(exc, SolveError):
        exc.vertex = exc.vertex or _name(vertex)
        exc.location = exc.location or location
        return exc
    if isinstance(exc, DockyardError):
        return SolveError(exc.message, vertex=_name(vertex), location=location,
                          hint=exc.hint)
    return SolveError(f"internal error: {type(exc).__name__}: {exc}", vertex=_name(vertex),
                      location=location,
                      hint="this is a bug in dockyard; please report it")


def result_kind(vertex: Vertex) -> str:
    """What a worker's garbage collector calls the result of ``vertex`` (its record's
    ``meta["kind"]``, workers/_gc_policy.py): ``image`` for a base image's layers,
    ``context`` for a snapshot of a build context, ``exec`` for every other step."""
    op = vertex.op
    if isinstance(op, SourceOp):
        if op.identifier.startswith("docker-image://"):
            return "image"
        if op.identifier.startswith("local://"):
            return "context"
    return "exec"
