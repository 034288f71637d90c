"""A cached result whose layer blob turns out lost (the backend raises ``BlobLost``) is a
cache miss the solver repairs: it rebuilds the vertex that owns the layer, re-runs the
vertices between only if the rebuilt layer differs, and retries; at most once per digest.

The fake backend keeps layer chains as the real one does (a result is its first input's
layers plus its own), and a set of layer digests that are ``gone`` from this "machine".
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import Callable, Sequence

import pytest

from dockyard.cache_backends._records import CacheRecord, LayerDescriptor, StateResult
from dockyard.scheduler._cachekey import Selector
from dockyard.scheduler._errors import BlobLost, SolveError
from dockyard.scheduler._graph import BuildGraph, ExecMount, ExecOp, SourceOp, Vertex
from dockyard.scheduler._platform import Platform
from dockyard.scheduler._progress import Event, EventSink, StatusUpdate, VertexStarted
from dockyard.scheduler._solver import Solver

AMD64 = Platform("linux", "amd64")
ROOT = ExecMount("/", input=0, output=True)


def _sha(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


class ChainBackend:
    """Results are layer chains.  Executing a vertex whose inputs name a ``gone`` layer
    raises ``BlobLost``; executing brings its own layer back (unless ``sticky``).  With
    ``reproducible`` False a re-execution makes a different layer."""

    def __init__(self, gone: set[str] = frozenset(),  # type: ignore[assignment]
                 *, reproducible: bool = True, sticky: bool = False) -> None:
        self.gone = set(gone)
        self.reproducible = reproducible
        self.sticky = sticky
        self.executions: Counter[str] = Counter()
        self.losses: list[str] = []

    async def source_identity(self, vertex: Vertex) -> str:
        assert isinstance(vertex.op, SourceOp)
        return _sha(vertex.op.identifier)

    async def content_checksum(self, vertex: Vertex, input_index: int, source: Vertex,
                               selector: Selector) -> str:
        raise AssertionError("no context reads in these graphs")

    async def execute(self, vertex: Vertex, inputs: Sequence[StateResult],
                      events: EventSink) -> StateResult:
        self.executions[vertex.name] += 1
        await asyncio.sleep(0)
        lost = sorted({layer.digest for result in inputs for layer in result.layers}
                      & self.gone)
        if lost:
            self.losses.append(vertex.name)
            raise BlobLost(f"layer {lost[0]} is gone", digests=lost)
        chain = inputs[0].layers if inputs else ()
        made = vertex.name
        if not self.reproducible:
            made += f" #{self.executions[vertex.name]}"
        own = _sha(repr([made, [layer.digest for layer in chain]]))
        if not self.sticky:
            self.gone.discard(own)
        return StateResult((*chain, LayerDescriptor(own, 1, own)))


class MemoryCache:
    def __init__(self) -> None:
        self.records: dict[str, CacheRecord] = {}
        self.puts: list[str] = []

    async def get(self, key: str) -> CacheRecord | None:
        return self.records.get(key)

    async def put(self, record: CacheRecord) -> None:
        self.puts.append(str(record.meta.get("name")))
        self.records[record.key] = record


class Events:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def run(name: str, *inputs: Vertex) -> Vertex:
    return Vertex(ExecOp((name,), mounts=(ROOT,)), tuple(v.digest for v in inputs),
                  name=name, platform=AMD64)


IMAGE = Vertex(SourceOp("docker-image://docker.io/library/busybox:1"), platform=AMD64,
               name="FROM")
R1 = run("R1", IMAGE)
R2 = run("R2", R1)
R3 = run("R3", R2)
R4 = run("R4", R3)  # the step added on the second machine: the one that needs the blobs
CHAIN = (IMAGE, R1, R2, R3)


def graph_of(*vertices: Vertex) -> BuildGraph:
    graph = BuildGraph()
    for vertex in vertices:
        graph.add(vertex)
    return graph


def warm_cache() -> tuple[MemoryCache, dict[str, str]]:
    """The first machine's build of the chain: its records, and each vertex's own layer."""
    cache = MemoryCache()
    solver = Solver(ChainBackend(), cache, clock=Clock(1_000))
    records = asyncio.run(solver.solve(graph_of(*CHAIN), [R3.digest]))
    chain = records[R3.digest].result.layers
    owners = {v.name: layer.digest for v, layer in zip(CHAIN, chain, strict=True)}
    return cache, owners


# (case, whose layer is gone, reproducible, executions on the second machine)
LOSSES = [
    ("top layer", "R3", True, {"R3": 1, "R4": 2}),
    ("middle layer", "R2", True, {"R2": 1, "R4": 2}),
    ("base run layer", "R1", True, {"R1": 1, "R4": 2}),
    ("image layer", "FROM", True, {"FROM": 1, "R4": 2}),
    ("base run layer, rebuilt differently", "R1", False,
     {"R1": 1, "R2": 1, "R3": 1, "R4": 2}),
]


@pytest.mark.parametrize(("owner", "reproducible", "executions"),
                         [case[1:] for case in LOSSES], ids=[case[0] for case in LOSSES])
def test_a_lost_layer_rebuilds_its_owner_and_retries(owner: str, reproducible: bool,
                                                     executions: dict[str, int]) -> None:
    cache, owners = warm_cache()
    backend = ChainBackend({owners[owner]}, reproducible=reproducible)
    events = Events()
    solver = Solver(backend, cache, clock=Clock(2_000), events=events)
    graph = graph_of(*CHAIN, R4)
    records = asyncio.run(solver.solve(graph, [R4.digest]))
    assert dict(backend.executions) == executions
    assert backend.losses == ["R4"]
    for record in cache.records.values():  # no record names a layer still gone
        assert not {layer.digest for layer in record.result.layers} & backend.gone
    rebuilt = cache.records[records[R4.digest].key]
    assert rebuilt == records[R4.digest] and rebuilt.created == 2_000
    owner_record = next(r for r in cache.records.values() if r.meta.get("name") == owner)
    assert owner_record.created == 1_000  # the rebuild keeps the result's first build time
    started = [e.name for e in events.events if isinstance(e, VertexStarted)]
    assert sorted(started) == sorted(executions)  # a retry is the same run: started once
    [status] = [e.id for e in events.events if isinstance(e, StatusUpdate)]
    assert status == f"cache: rebuilding lost layer {owners[owner]}"


class Losing(ChainBackend):
    """Every execute loses ``digests`` (whatever its inputs)."""

    def __init__(self, digests: list[str]) -> None:
        super().__init__()
        self.digests = digests

    async def execute(self, vertex: Vertex, inputs: Sequence[StateResult],
                      events: EventSink) -> StateResult:
        self.executions[vertex.name] += 1
        raise BlobLost("a layer is gone", digests=self.digests, hint="look")


HINT = "hint: check the cache backends (--cache-from) and the local store's disk"
# (case, the second machine's backend from each vertex's own layer, its pinned error
#  ({R2}: R2's own layer), what ran)
LOSS_ERRORS: list[tuple[str, Callable[[dict[str, str]], ChainBackend], str, dict[str, int]]] = [
    ("lost again after its rebuild",
     lambda owners: ChainBackend({owners["R2"]}, sticky=True),
     "R4: layer {R2} was lost again after rebuilding what made it: layer {R2} is gone\n"
     + HINT, {"R2": 1, "R4": 2}),
    ("no input has it", lambda owners: Losing(["sha256:00"]),
     "R4: layer sha256:00 was lost, and no input of this step has it\n"
     "hint: prune the local cache and build again", {"R4": 1}),
    ("no digest named", lambda owners: Losing([]), "R4: a layer is gone\nhint: look",
     {"R4": 1}),
]


@pytest.mark.parametrize(("make", "message", "executions"),
                         [case[1:] for case in LOSS_ERRORS],
                         ids=[case[0] for case in LOSS_ERRORS])
def test_a_loss_that_cannot_be_repaired_is_a_solve_error(
        make: Callable[[dict[str, str]], ChainBackend], message: str,
        executions: dict[str, int]) -> None:
    cache, owners = warm_cache()
    backend = make(owners)
    solver = Solver(backend, cache, clock=Clock(2_000))
    with pytest.raises(SolveError) as caught:
        asyncio.run(solver.solve(graph_of(*CHAIN, R4), [R4.digest]))
    assert str(caught.value) == message.format(R2=owners["R2"])
    assert dict(backend.executions) == executions


def test_rebuild_gives_fresh_records_for_targets_that_lost_a_layer() -> None:
    cache, owners = warm_cache()
    backend = ChainBackend()
    solver = Solver(backend, cache, clock=Clock(2_000))
    graph = graph_of(*CHAIN)
    stale = asyncio.run(solver.solve(graph, [R3.digest]))
    assert backend.executions == Counter()
    fresh = asyncio.run(solver.solve(graph, [R3.digest], rebuild=frozenset({owners["R2"]})))
    assert dict(backend.executions) == {"R2": 1}
    assert fresh[R3.digest] == stale[R3.digest]  # reproducible: the same record is right
    assert cache.puts == ["FROM", "R1", "R2", "R3", "R2"]  # the rebuilt one replaced


def test_rebuild_of_an_unreproducible_layer_replaces_the_records_above() -> None:
    cache, owners = warm_cache()
    backend = ChainBackend(reproducible=False)
    solver = Solver(backend, cache, clock=Clock(2_000))
    graph = graph_of(*CHAIN)
    stale = asyncio.run(solver.solve(graph, [R3.digest]))
    fresh = asyncio.run(solver.solve(graph, [R3.digest], rebuild=frozenset({owners["R2"]})))
    assert dict(backend.executions) == {"R2": 1, "R3": 1}
    assert fresh[R3.digest].result != stale[R3.digest].result
    assert fresh[R3.digest].created == stale[R3.digest].created == 1_000
    assert cache.records[fresh[R3.digest].key] == fresh[R3.digest]


def test_two_builds_losing_one_layer_share_one_rebuild() -> None:
    cache, owners = warm_cache()
    backend = ChainBackend({owners["R2"]})
    solver = Solver(backend, cache, clock=Clock(2_000))
    other = run("R4b", R3)

    async def both() -> None:
        await asyncio.gather(solver.solve(graph_of(*CHAIN, R4), [R4.digest]),
                             solver.solve(graph_of(*CHAIN, other), [other.digest]))
    asyncio.run(both())
    assert dict(backend.executions) == {"R2": 1, "R4": 2, "R4b": 2}
