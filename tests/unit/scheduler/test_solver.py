"""The solver against a fake backend that counts executions (a cache hit means zero) and a
memory record cache.  Vertices are "arithmetic": a vertex's result is one fake layer
whose digest is the hash of its command and its inputs' layers."""

from __future__ import annotations

import asyncio
import fnmatch
import functools
import hashlib
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dockyard.cache_backends._records import CacheRecord, LayerDescriptor, RecordError, StateResult
from dockyard.scheduler._cachekey import Selector
from dockyard.scheduler._errors import (
    CacheError,
    DockyardError,
    ExecError,
    GraphError,
    RegistryError,
    SolveError,
)
from dockyard.scheduler._graph import (
    BuildGraph,
    Copy,
    ExecMount,
    ExecOp,
    FileOp,
    MergeOp,
    SourceOp,
    Vertex,
)
from dockyard.scheduler._platform import Platform
from dockyard.scheduler._progress import (
    PROGRESS_VERSION,
    Event,
    EventSink,
    ProgressError,
    StatusUpdate,
    VertexCached,
    VertexCompleted,
    VertexFailed,
    VertexLog,
    VertexStarted,
    VertexWarning,
    event_from_wire,
    event_to_wire,
)
from dockyard.scheduler._solver import Solver
from dockyard.scheduler.dockerfile._frontend import build_graph

T = TypeVar("T")
AMD64 = Platform("linux", "amd64")
ROOT = ExecMount("/", input=0, output=True)


# --- fakes -----------------------------------------------------------------------------


def _sha(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


class FakeBackend:
    """Commands are ``("cmd", delay-seconds)``; a command starting with ``fail`` exits 1,
    ``boom`` raises a RuntimeError.  Counts executions by vertex name, tracks how many
    run at once, and which were cancelled."""

    def __init__(self, files: dict[str, str] | None = None, secret: str = "") -> None:
        self.files = dict(files or {"a": "A", "b": "B"})
        self.secret = secret  # a secret value the fake "mounts"; must never leak
        self.executions: Counter[str] = Counter()
        self.cancelled: list[str] = []
        self.running = 0
        self.max_running = 0
        self.identity_error: DockyardError | None = None
        self.cleanup = 0.0  # seconds a cancelled execute takes to clean up (runc kill)

    async def source_identity(self, vertex: Vertex) -> str:
        assert isinstance(vertex.op, SourceOp)
        if self.identity_error is not None:
            raise self.identity_error
        if vertex.op.identifier.startswith("local://"):
            return _sha(repr(sorted(self.files.items())))
        return _sha(vertex.op.identifier)

    async def content_checksum(self, vertex: Vertex, input_index: int, source: Vertex,
                               selector: Selector) -> str:
        assert vertex.inputs[input_index] == source.digest
        hits = sorted((p, c) for p, c in self.files.items()
                      if fnmatch.fnmatch("/" + p, selector.path))
        return _sha(repr(hits))

    async def execute(self, vertex: Vertex, inputs: Sequence[StateResult],
                      events: EventSink) -> StateResult:
        self.executions[vertex.name] += 1
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            return await self._run(vertex, inputs, events)
        except asyncio.CancelledError:
            self.cancelled.append(vertex.name)
            await asyncio.sleep(self.cleanup)
            raise
        finally:
            self.running -= 1

    async def _run(self, vertex: Vertex, inputs: Sequence[StateResult],
                   events: EventSink) -> StateResult:
        command, delay = _command(vertex)
        if isinstance(vertex.op, ExecOp) and any(m.secret_id for m in vertex.op.mounts):
            command += f" with a {len(self.secret)}-character secret"  # mounted, not shown
        await asyncio.sleep(delay)
        events.emit(VertexLog(vertex.digest, 1, f"ran {command}\n".encode()))
        if command.startswith("fail"):
            raise ExecError(f"process \"{command}\" did not complete successfully: exit code 1",
                            exit_code=1, output_tail="ran " + command)
        if command.startswith("boom"):
            raise RuntimeError("the fake worker broke")
        below = [layer.digest for result in inputs for layer in result.layers]
        layer = _sha(repr([command, below]))
        return StateResult((LayerDescriptor(layer, 1, layer),))


def _command(vertex: Vertex) -> tuple[str, float]:
    op = vertex.op
    if isinstance(op, ExecOp):
        return op.args[0], float(op.args[1]) if len(op.args) > 1 else 0.0
    if isinstance(op, SourceOp):
        return op.identifier, 0.0
    return vertex.name, 0.0


class MemoryCache:
    def __init__(self) -> None:
        self.records: dict[str, bytes] = {}
        self.gets = 0

    async def get(self, key: str) -> CacheRecord | None:
        self.gets += 1
        data = self.records.get(key)
        return None if data is None else CacheRecord.from_bytes(data)

    async def put(self, record: CacheRecord) -> None:
        self.records[record.key] = record.to_bytes()


class Events:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: type[Event]) -> list[str]:
        return [getattr(e, "name", e.vertex) for e in self.events if isinstance(e, kind)]


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- graphs ----------------------------------------------------------------------------

IMAGE = Vertex(SourceOp("docker-image://docker.io/library/busybox:1"), platform=AMD64,
               name="[1/4] FROM busybox")
CONTEXT = Vertex(SourceOp("local://context"), name="[internal] load build context")


def run(name: str, command: str, *inputs: Vertex, delay: float = 0.0) -> Vertex:
    args = (command, str(delay)) if delay else (command,)
    return Vertex(ExecOp(args, mounts=(ROOT,)), tuple(v.digest for v in inputs), name=name,
                  platform=AMD64)


def copy(name: str, base: Vertex, path: str) -> Vertex:
    return Vertex(FileOp((Copy(1, path, "/dst/"),)), (base.digest, CONTEXT.digest), name=name,
                  platform=AMD64)


def graph_of(*vertices: Vertex) -> BuildGraph:
    graph = BuildGraph()
    for vertex in vertices:
        for digest in vertex.inputs:
            assert digest in graph.vertices, f"{vertex.name}: add its inputs first"
        graph.add(vertex)
    return graph


def solver(backend: FakeBackend, cache: MemoryCache | None = None,
           events: Events | None = None, clock: Clock | None = None) -> Solver:
    return Solver(backend, cache or MemoryCache(), events=events, clock=clock or Clock())


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.001)


def go(coro: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        async with asyncio.timeout(10):
            return await coro()
    return asyncio.run(main())


# Two independent slow RUNs on one image, merged: the shape of most parallel tests.
LEFT = run("[2/4] RUN left", "left", IMAGE, delay=0.2)
RIGHT = run("[3/4] RUN right", "right", IMAGE, delay=0.2)
JOIN = Vertex(MergeOp(), (LEFT.digest, RIGHT.digest), name="[4/4] merge", platform=AMD64)
FORK = graph_of(IMAGE, LEFT, RIGHT, JOIN)

# A context with two COPYs each reading one file, then a RUN after each.
COPY_A = copy("[2/5] COPY a", IMAGE, "/a")
RUN_A = run("[3/5] RUN after a", "after-a", COPY_A)
COPY_B = copy("[4/5] COPY b", RUN_A, "/b")
RUN_B = run("[5/5] RUN after b", "after-b", COPY_B)
CHAIN = graph_of(IMAGE, CONTEXT, COPY_A, RUN_A, COPY_B, RUN_B)


# --- tests -----------------------------------------------------------------------------


def test_independent_vertices_run_in_parallel() -> None:
    backend = FakeBackend()
    records = go(lambda: solver(backend).solve(FORK, [JOIN.digest]))
    assert backend.max_running == 2
    assert set(records) == {JOIN.digest}
    assert sum(backend.executions.values()) == 4


def test_cache_hit_means_zero_executions_and_one_lookup() -> None:
    backend, cache = FakeBackend(), MemoryCache()
    first = go(lambda: solver(backend, cache).solve(FORK, [JOIN.digest]))
    backend.executions.clear()
    cache.gets = 0
    events = Events()
    second = go(lambda: solver(backend, cache, events, Clock(1_800_000_000.0)).solve(
        FORK, [JOIN.digest]))
    assert sum(backend.executions.values()) == 0
    assert cache.gets == 1  # the target only: its inputs are never looked at
    assert second == first  # same result, same created time: a cached rebuild reproduces
    # every step is listed, inputs first; only the target was looked up
    assert events.of(VertexCached) == ["[1/4] FROM busybox", "[2/4] RUN left",
                                       "[3/4] RUN right", "[4/4] merge"]


def test_record_created_is_when_it_was_built() -> None:
    records = go(lambda: solver(FakeBackend(), clock=Clock(1_234.9)).solve(FORK, [JOIN.digest]))
    assert records[JOIN.digest].created == 1234
    assert records[JOIN.digest].meta == {"name": "[4/4] merge", "kind": "exec"}


def test_partial_cache_reruns_only_downstream_of_a_change() -> None:
    backend, cache = FakeBackend({"a": "A", "b": "B"}), MemoryCache()
    go(lambda: solver(backend, cache).solve(CHAIN, [RUN_B.digest]))
    assert set(backend.executions.values()) == {1} and len(backend.executions) == 6
    backend.executions.clear()
    backend.files["b"] = "B changed"
    go(lambda: solver(backend, cache).solve(CHAIN, [RUN_B.digest]))
    assert sorted(backend.executions) == ["[4/5] COPY b", "[5/5] RUN after b",
                                          "[internal] load build context"]


def test_unrelated_context_change_reruns_nothing_downstream() -> None:
    backend, cache = FakeBackend({"a": "A", "b": "B"}), MemoryCache()
    go(lambda: solver(backend, cache).solve(CHAIN, [RUN_B.digest]))
    backend.executions.clear()
    backend.files["unread.txt"] = "new"
    go(lambda: solver(backend, cache).solve(CHAIN, [RUN_B.digest]))
    assert sum(backend.executions.values()) == 0


def test_no_cache_executes_everything_and_still_writes_records() -> None:
    backend, cache = FakeBackend(), MemoryCache()
    go(lambda: solver(backend, cache).solve(FORK, [JOIN.digest]))
    cache.records.clear()
    cache.gets = 0
    go(lambda: solver(backend, cache).solve(FORK, [JOIN.digest], no_cache=True))
    assert set(backend.executions.values()) == {2}
    assert cache.gets == 0
    assert len(cache.records) == 4


def test_default_targets_are_the_graph_results() -> None:
    from dockyard.scheduler._graph import ImageResult
    graph = graph_of(IMAGE, LEFT)
    graph.add_result(ImageResult(AMD64, LEFT.digest))
    records = go(lambda: solver(FakeBackend()).solve(graph))
    assert list(records) == [LEFT.digest]


def test_an_unknown_target_is_a_graph_error() -> None:
    with pytest.raises(GraphError, match="cannot solve sha256:nope: it is not a vertex"):
        go(lambda: solver(FakeBackend()).solve(FORK, ["sha256:nope"]))


def test_two_concurrent_solves_share_each_vertex() -> None:
    backend, cache = FakeBackend(), MemoryCache()
    one, two = Events(), Events()
    shared = solver(backend, cache)

    async def both() -> tuple[dict[str, CacheRecord], dict[str, CacheRecord]]:
        return await asyncio.gather(shared.solve(FORK, [JOIN.digest], events=one),
                                    shared.solve(FORK, [JOIN.digest], events=two))
    first, second = go(both)
    assert first == second
    assert set(backend.executions.values()) == {1}
    assert one.of(VertexCompleted) == two.of(VertexCompleted)
    assert len(one.of(VertexCompleted)) == 4
    assert shared.statistics().executed == 4
    assert shared.statistics().in_flight == 0


def test_a_build_joining_another_reads_each_shared_record_through_its_own_cache() -> None:
    """Builds with their own record caches (each its --cache-to) share flights; the one that
    joined still sees every record, so its mode=max export gets them all."""
    backend, one, two = FakeBackend(), MemoryCache(), MemoryCache()
    shared = solver(backend, MemoryCache())

    async def both() -> None:
        await asyncio.gather(shared.solve(FORK, [JOIN.digest], cache=one),
                             shared.solve(FORK, [JOIN.digest], cache=two))
    go(both)
    assert set(backend.executions.values()) == {1}
    started, joined = (one, two) if one.records else (two, one)
    assert len(started.records) == 4  # the flights' records went through its cache
    assert joined.records == {} and joined.gets >= 4  # the joiner looked each one up


def test_a_shared_vertex_survives_one_build_being_cancelled() -> None:
    backend, cache = FakeBackend(), MemoryCache()
    shared = solver(backend, cache)

    async def cancel_one() -> dict[str, CacheRecord]:
        doomed = asyncio.create_task(shared.solve(FORK, [LEFT.digest]))
        kept = asyncio.create_task(shared.solve(FORK, [LEFT.digest]))
        await until(lambda: backend.running == 1)
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        return await kept
    records = go(cancel_one)
    assert backend.executions[LEFT.name] == 1 and backend.cancelled == []
    assert LEFT.digest in records


def test_a_build_arriving_while_a_shared_vertex_is_cancelled_gets_its_own_run() -> None:
    backend, cache = FakeBackend(), MemoryCache()
    backend.cleanup = 0.1
    shared = solver(backend, cache)

    async def cancel_then_arrive() -> dict[str, CacheRecord]:
        doomed = asyncio.create_task(shared.solve(FORK, [LEFT.digest]))
        await until(lambda: backend.running == 1)
        doomed.cancel()
        # Arrive only once the first run is dying (its clean-up takes 0.1 s): started at
        # once, the late build could join the flight before the cancellation reached it,
        # and rightly keep it alive, so nothing would be cancelled.
        await until(lambda: len(backend.cancelled) == 1)
        late = asyncio.create_task(shared.solve(FORK, [LEFT.digest]))
        with pytest.raises(asyncio.CancelledError):
            await doomed
        return await late
    records = go(cancel_then_arrive)
    assert LEFT.digest in records
    assert backend.executions[LEFT.name] == 2 and backend.cancelled == [LEFT.name]


def test_a_cache_that_fails_names_the_vertex() -> None:
    class Full(MemoryCache):
        async def put(self, record: CacheRecord) -> None:
            raise CacheError(f"local cache: cannot write record {record.key[:15]}: disk full")
    with pytest.raises(SolveError) as caught:
        go(lambda: solver(FakeBackend(), Full()).solve(FORK, [LEFT.digest]))
    assert str(caught.value).startswith("[1/4] FROM busybox: local cache: cannot write record "
                                        "sha256:")
    assert str(caught.value).endswith(": disk full")


ERRORS: list[tuple[str, str, str]] = [
    ("a RUN exiting non-zero",
     "fail",
     "Dockerfile:3:1 [2/2] RUN it: process \"fail\" did not complete successfully: "
     "exit code 1"),
    ("a worker bug",
     "boom",
     "Dockerfile:3:1 [2/2] RUN it: internal error: RuntimeError: the fake worker broke\n"
     "hint: this is a bug in dockyard; please report it"),
]


# Where the position comes from: the caller's ``positions``, or (by default) the vertex's
# own ``location``; a caller's position wins over the vertex's.
PLACEMENTS = [
    ("positions", "", True),
    ("vertex location", "Dockerfile:3:1", False),
    ("positions win", "Dockerfile:9:9", True),
]


@pytest.mark.parametrize(("case", "command", "message"), ERRORS, ids=[e[0] for e in ERRORS])
@pytest.mark.parametrize(("placement", "location", "given"), PLACEMENTS,
                         ids=[p[0] for p in PLACEMENTS])
def test_a_failure_names_the_vertex_and_its_position(
        case: str, command: str, message: str, placement: str, location: str,
        given: bool) -> None:
    vertex = replace(run("[2/2] RUN it", command, IMAGE), location=location)
    graph = graph_of(IMAGE, vertex)
    positions = {vertex.digest: "Dockerfile:3:1"} if given else None
    with pytest.raises(SolveError) as caught:
        go(lambda: solver(FakeBackend()).solve(graph, [vertex.digest], positions=positions))
    assert str(caught.value) == message
    assert caught.value.vertex == "[2/2] RUN it"
    assert caught.value.location == "Dockerfile:3:1"


def test_a_failing_run_from_a_dockerfile_names_its_line() -> None:
    """The converter's locations reach the error and the failure event with no
    ``positions`` from the caller."""
    dockerfile = b'FROM busybox:1\nRUN ["true"]\n\n  RUN ["fail"]\n'
    graph = build_graph(dockerfile, platforms=[AMD64], filename="ci/Dockerfile").graph
    events = Events()
    with pytest.raises(ExecError) as caught:
        go(lambda: solver(FakeBackend(), events=events).solve(graph))
    assert str(caught.value) == ('ci/Dockerfile:4:3 [3/3] RUN ["fail"]: process "fail" did '
                                 "not complete successfully: exit code 1")
    assert caught.value.location == "ci/Dockerfile:4:3"
    failed = [e for e in events.events if isinstance(e, VertexFailed)]
    assert [e.error for e in failed] == [str(caught.value)]


def test_an_unresolvable_image_names_its_from_line() -> None:
    backend = FakeBackend()
    backend.identity_error = RegistryError("GET https://127.0.0.1:1/v2/: connection refused")
    graph = build_graph(b"ARG V=1\nFROM busybox:$V\nRUN [\"true\"]\n", platforms=[AMD64]).graph
    with pytest.raises(SolveError) as caught:
        go(lambda: solver(backend).solve(graph))
    assert str(caught.value) == ("Dockerfile:2:1 [1/2] FROM docker.io/library/busybox:1: GET "
                                 "https://127.0.0.1:1/v2/: connection refused")


def test_an_exec_error_keeps_its_exit_code_and_output() -> None:
    vertex = run("[2/2] RUN it", "fail", IMAGE)
    with pytest.raises(ExecError) as caught:
        go(lambda: solver(FakeBackend()).solve(graph_of(IMAGE, vertex), [vertex.digest]))
    assert (caught.value.exit_code, caught.value.output_tail) == (1, "ran fail")
    assert caught.value.location == ""


def test_a_source_that_cannot_be_resolved_names_its_vertex() -> None:
    backend = FakeBackend()
    backend.identity_error = RegistryError("GET https://127.0.0.1:1/v2/: connection refused",
                                           hint="is the registry running?")
    with pytest.raises(SolveError) as caught:
        go(lambda: solver(backend).solve(FORK, [JOIN.digest],
                                         positions={IMAGE.digest: "Dockerfile:1:1"}))
    assert str(caught.value) == ("Dockerfile:1:1 [1/4] FROM busybox: GET https://127.0.0.1:1"
                                 "/v2/: connection refused\nhint: is the registry running?")
    assert isinstance(caught.value.__cause__, RegistryError)
    assert sum(backend.executions.values()) == 0


def test_a_failure_cancels_what_comes_after_it_and_writes_no_records_for_them() -> None:
    backend, cache, events = FakeBackend(), MemoryCache(), Events()
    slow = run("[3/4] RUN slow", "slow", IMAGE, delay=5)
    bad = run("[2/4] RUN bad", "fail", IMAGE, delay=0.05)
    after = Vertex(MergeOp(), (bad.digest, slow.digest), name="[4/4] merge", platform=AMD64)
    the_solver = solver(backend, cache, events)

    async def fail() -> None:
        with pytest.raises(ExecError, match=r"\[2/4\] RUN bad"):
            await the_solver.solve(graph_of(IMAGE, slow, bad, after), [after.digest])
        # Checked inside the loop: asyncio.run would cancel any leftover task at exit.
        assert backend.cancelled == ["[3/4] RUN slow"] and backend.running == 0
        assert the_solver.statistics().in_flight == 0
    go(fail)
    assert "[4/4] merge" not in backend.executions
    assert len(cache.records) == 1  # the image only
    assert events.of(VertexFailed) == ["[2/4] RUN bad", "[3/4] RUN slow"]
    failed = [e for e in events.events if isinstance(e, VertexFailed)]
    assert [e.cancelled for e in failed] == [False, True]


def test_a_branch_before_a_failure_runs_on_and_its_own_failure_is_the_error() -> None:
    """The error is the first failing vertex in graph order, not the first in time: an
    earlier branch still running is not cancelled by a later one's failure."""
    backend, cache, events = FakeBackend(), MemoryCache(), Events()
    slow_ok = run("[2/5] RUN slow", "slow", IMAGE, delay=0.2)
    slow_bad = run("[3/5] RUN slow bad", "fail-slowly", IMAGE, delay=0.2)
    quick_bad = run("[4/5] RUN quick bad", "fail-quickly", IMAGE)
    after = Vertex(MergeOp(), (slow_ok.digest, slow_bad.digest, quick_bad.digest),
                   name="[5/5] merge", platform=AMD64)
    with pytest.raises(ExecError, match=r"\[3/5\] RUN slow bad"):
        go(lambda: solver(backend, cache, events).solve(
            graph_of(IMAGE, slow_ok, slow_bad, quick_bad, after), [after.digest]))
    assert backend.cancelled == []
    assert events.of(VertexFailed) == ["[4/5] RUN quick bad", "[3/5] RUN slow bad"]
    assert events.of(VertexCompleted)[-1] == "[2/5] RUN slow"  # its record is kept
    assert len(cache.records) == 2


def test_two_failing_parallel_stages_give_the_same_error_every_time() -> None:
    """Two stages failing at about the same time (each after a random 0-20 ms), merged:
    every run ends on the first stage's error, and progress reports both failures."""
    delays = random.Random(9)
    outcomes: Counter[str] = Counter()
    for _ in range(40):
        first = run("[a 2/2] RUN exit 3", "fail-a", IMAGE, delay=delays.uniform(0, 0.02))
        second = run("[b 2/2] RUN exit 4", "fail-b", IMAGE, delay=delays.uniform(0, 0.02))
        final = Vertex(MergeOp(), (first.digest, second.digest), name="[3/3] COPY --from",
                       platform=AMD64)
        events = Events()
        graph = graph_of(IMAGE, first, second, final)
        solve = solver(FakeBackend(), events=events).solve
        with pytest.raises(ExecError) as caught:
            go(functools.partial(solve, graph, [final.digest]))
        outcomes[str(caught.value.vertex)] += 1
        failed = [e for e in events.events if isinstance(e, VertexFailed)]
        assert sorted(e.name for e in failed if not e.cancelled) in (
            ["[a 2/2] RUN exit 3"], ["[a 2/2] RUN exit 3", "[b 2/2] RUN exit 4"])
    assert outcomes == Counter({"[a 2/2] RUN exit 3": 40})


def test_cancelling_a_solve_cancels_running_executes_and_leaves_no_records() -> None:
    backend, cache = FakeBackend(), MemoryCache()
    slow_left = run("[2/4] RUN left", "left", IMAGE, delay=5)
    slow_right = run("[3/4] RUN right", "right", IMAGE, delay=5)
    join = Vertex(MergeOp(), (slow_left.digest, slow_right.digest), platform=AMD64)
    the_solver = solver(backend, cache)

    async def cancel() -> None:
        task = asyncio.create_task(the_solver.solve(
            graph_of(IMAGE, slow_left, slow_right, join), [join.digest]))
        await until(lambda: backend.running == 2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Checked inside the loop: asyncio.run would cancel any leftover task at exit.
        assert sorted(backend.cancelled) == ["[2/4] RUN left", "[3/4] RUN right"]
        assert backend.running == 0
        assert the_solver.statistics().in_flight == 0
    go(cancel)
    assert list(cache.records) != [] and all(
        CacheRecord.from_bytes(r).meta["name"] == IMAGE.name for r in cache.records.values())
    assert the_solver.statistics().in_flight == 0


def test_events_of_one_build() -> None:
    events = Events()
    go(lambda: solver(FakeBackend(), events=events).solve(FORK, [JOIN.digest]))
    assert events.of(VertexStarted)[0] == "[1/4] FROM busybox"
    assert sorted(events.of(VertexCompleted)) == sorted(
        ["[1/4] FROM busybox", "[2/4] RUN left", "[3/4] RUN right", "[4/4] merge"])
    logs = [e for e in events.events if isinstance(e, VertexLog)]
    assert {e.vertex for e in logs} == {IMAGE.digest, LEFT.digest, RIGHT.digest, JOIN.digest}


def test_secret_values_reach_no_key_record_or_event() -> None:
    secret_mount = ExecMount("/run/secrets/token", type="secret", secret_id="token")
    vertex = Vertex(ExecOp(("use-secret",), mounts=(ROOT, secret_mount)), (IMAGE.digest,),
                    name="[2/2] RUN --mount=type=secret,id=token use-secret", platform=AMD64)
    graph = graph_of(IMAGE, vertex)

    def build_with(value: str) -> tuple[list[str], list[str]]:
        cache, events = MemoryCache(), Events()
        the_solver = solver(FakeBackend(secret=value), cache, events)
        go(lambda: the_solver.solve(graph, [vertex.digest]))
        leaks = [value for blob in cache.records.values() if value.encode() in blob]
        leaks += [value for event in events.events if value in repr(event)]
        return sorted(cache.records), leaks
    keys_one, leaks_one = build_with("hunter2")
    keys_two, leaks_two = build_with("correct horse")
    assert keys_one == keys_two
    assert leaks_one == leaks_two == []


def test_an_unreadable_record_is_a_miss() -> None:
    backend = FakeBackend()

    class Broken(MemoryCache):
        async def get(self, key: str) -> CacheRecord | None:
            raise RecordError("cache record of an unknown version")
    go(lambda: solver(backend, Broken()).solve(FORK, [JOIN.digest]))
    assert sum(backend.executions.values()) == 4


def test_statistics_and_repr() -> None:
    the_solver = solver(FakeBackend())
    go(lambda: the_solver.solve(FORK, [JOIN.digest]))
    go(lambda: the_solver.solve(FORK, [JOIN.digest]))
    assert repr(the_solver) == "<Solver executed=4 cached=1 in_flight=0>"


# --- progress events on the wire ---------------------------------------------------------

EVENTS: list[Event] = [
    VertexStarted("sha256:1", "[1/2] FROM busybox", 1_700_000_000.5),
    VertexCached("sha256:1", "[1/2] FROM busybox"),
    VertexCompleted("sha256:1", "[1/2] FROM busybox", 1.25),
    VertexFailed("sha256:2", "[2/2] RUN false", "exit code 1"),
    VertexFailed("sha256:2", "[2/2] RUN sleep", "cancelled", cancelled=True),
    VertexLog("sha256:2", 2, b"\xff not utf-8\n"),
    StatusUpdate("sha256:3", "transferring context", 512, 1024),
    StatusUpdate("sha256:3", "sha256:abc", done=True),
    VertexWarning("sha256:4", "StageNameCasing: Stage name 'A' should be lowercase (line 1)",
                  "Stage names should be lowercase", "https://docs.docker.com/", "Dockerfile",
                  1),
    VertexWarning("sha256:4", "a warning with nothing more"),
]


@pytest.mark.parametrize("event", EVENTS, ids=[type(e).__name__ for e in EVENTS])
def test_events_round_trip_through_msgpack(event: Event) -> None:
    wire = msgpack.unpackb(msgpack.packb(event_to_wire(event), use_bin_type=True), raw=False)
    assert wire["version"] == PROGRESS_VERSION
    assert event_from_wire(wire) == event


_LOG = {"version": 1, "type": "log", "vertex": "sha256:2", "stream": 1, "data": b"x"}

# (case, wire form, exact error)
BAD_WIRE: list[tuple[str, object, str]] = [
    ("another version", _LOG | {"version": 2},
     "progress event of an unknown version (this dockyard reads version 1)\n"
     "hint: use the same dockyard version on the client and the cluster"),
    ("not a map", [1, "log"],
     "progress event of an unknown version (this dockyard reads version 1)\n"
     "hint: use the same dockyard version on the client and the cluster"),
    ("unknown type", _LOG | {"type": "exploded"}, "unknown progress event type 'exploded'"),
    ("unknown field", _LOG | {"secret": "x"},
     "progress event 'log' has unknown field 'secret'"),
    ("missing field", {k: v for k, v in _LOG.items() if k != "data"},
     "progress event 'log' lacks field 'data'"),
    ("text for bytes", _LOG | {"data": "x"},
     "malformed progress event 'log': data must be bytes, got str"),
    ("bool for int", _LOG | {"stream": True},
     "malformed progress event 'log': stream must be int, got bool"),
]


@pytest.mark.parametrize(("case", "wire", "message"), BAD_WIRE, ids=[b[0] for b in BAD_WIRE])
def test_bad_wire_events_are_refused(case: str, wire: Any, message: str) -> None:
    with pytest.raises(ProgressError) as caught:
        event_from_wire(wire)
    assert str(caught.value) == message


# --- any graph: each vertex runs at most once, and a rebuild runs nothing ----------------


@st.composite
def dags(draw: st.DrawFn) -> tuple[BuildGraph, list[str]]:
    graph = BuildGraph([IMAGE, CONTEXT])
    made = [IMAGE]
    for index in range(draw(st.integers(1, 12))):
        picks = draw(st.lists(st.sampled_from(made), min_size=1, max_size=3))
        if draw(st.booleans()):
            vertex = copy(f"copy {index}", picks[0], draw(st.sampled_from(["/a", "/b", "/*"])))
        else:
            vertex = run(f"run {index}", f"cmd-{index}", *picks)
        graph.add(vertex)
        made.append(vertex)
    targets = draw(st.lists(st.sampled_from(made), min_size=1, max_size=3))
    return graph, [t.digest for t in targets]


@settings(max_examples=40, deadline=None)
@given(dags())
def test_any_graph_runs_each_vertex_once_and_a_rebuild_runs_nothing(
        case: tuple[BuildGraph, list[str]]) -> None:
    graph, targets = case
    backend, cache = FakeBackend(), MemoryCache()
    first = go(lambda: solver(backend, cache).solve(graph, targets))
    assert set(backend.executions.values()) <= {1}
    backend.executions.clear()
    again = go(lambda: solver(backend, cache).solve(graph, targets))
    assert sum(backend.executions.values()) == 0 and again == first


# --- a cached build lists every step -----------------------------------------------------

# A diamond: two COPYs of the context on one image, merged, then a RUN.
D_COPY_A = copy("[2/5] COPY a", IMAGE, "/a")
D_COPY_B = copy("[3/5] COPY b", IMAGE, "/b")
D_JOIN = Vertex(MergeOp(), (D_COPY_A.digest, D_COPY_B.digest), name="[4/5] merge",
                platform=AMD64)
D_RUN = run("[5/5] RUN last", "last", D_JOIN)
DIAMOND = graph_of(IMAGE, CONTEXT, D_COPY_A, D_COPY_B, D_JOIN, D_RUN)

F, C = "[1/4] FROM busybox", "[internal] load build context"
# (graph, targets, reported): after a first build, a rebuild reports every needed vertex
# cached once, with one lookup per target and no execution.  A vertex nothing needs any
# more comes just before the hit that settled it, inputs first; a target's own hit is not
# held back for its inputs (LEFT before the FROM below it, while RIGHT is still unknown).
FULLY_CACHED = [
    (FORK, [JOIN], [F, "[2/4] RUN left", "[3/4] RUN right", "[4/4] merge"]),
    (FORK, [LEFT, RIGHT], ["[2/4] RUN left", F, "[3/4] RUN right"]),
    (FORK, [LEFT, JOIN], ["[2/4] RUN left", F, "[3/4] RUN right", "[4/4] merge"]),
    (CHAIN, [RUN_B], [F, C, "[2/5] COPY a", "[3/5] RUN after a", "[4/5] COPY b",
                      "[5/5] RUN after b"]),
    (CHAIN, [RUN_A], [F, C, "[2/5] COPY a", "[3/5] RUN after a"]),
    (DIAMOND, [D_RUN], [F, C, "[2/5] COPY a", "[3/5] COPY b", "[4/5] merge",
                        "[5/5] RUN last"]),
    # a target below another one hits on its own lookup: not reported again as unneeded
    (CHAIN, [IMAGE, RUN_A], [F, C, "[2/5] COPY a", "[3/5] RUN after a"]),
    (DIAMOND, [D_COPY_A, D_RUN], ["[2/5] COPY a", F, C, "[3/5] COPY b", "[4/5] merge",
                                  "[5/5] RUN last"]),
]


def _needed_names(graph: BuildGraph, targets: Sequence[Vertex]) -> list[str]:
    seen: set[str] = set()
    stack = [t.digest for t in targets]
    while stack:
        digest = stack.pop()
        if digest not in seen:
            seen.add(digest)
            stack.extend(graph.vertices[digest].inputs)
    return [v.name for d, v in graph.vertices.items() if d in seen]


def _rebuild(graph: BuildGraph, targets: Sequence[Vertex], backend: FakeBackend,
             cache: MemoryCache) -> Events:
    backend.executions.clear()
    cache.gets = 0
    events = Events()
    go(lambda: solver(backend, cache, events).solve(graph, [t.digest for t in targets]))
    return events


@pytest.mark.parametrize(("graph", "targets", "reported"), FULLY_CACHED)
def test_a_fully_cached_build_reports_every_vertex_once(
        graph: BuildGraph, targets: list[Vertex], reported: list[str]) -> None:
    backend, cache = FakeBackend(), MemoryCache()
    go(lambda: solver(backend, cache).solve(graph, [t.digest for t in targets]))
    events = _rebuild(graph, targets, backend, cache)
    assert sum(backend.executions.values()) == 0
    assert cache.gets == len(targets)  # the targets only, as before: no extra lookups
    assert events.of(VertexCached) == reported
    assert [type(e) for e in events.events] == [VertexCached] * len(reported)


# (graph, first build's targets, rebuild's change, rebuild's targets, cached, executed,
# lookups):
# a partially cached rebuild: what ran reports as run, what was looked up and hit, and
# what the hits made unneeded, as cached -- each exactly once.
PARTIAL = [
    (CHAIN, [RUN_B], {"b": "B changed"}, [RUN_B],
     ["[1/4] FROM busybox", "[2/5] COPY a", "[3/5] RUN after a"],
     ["[internal] load build context", "[4/5] COPY b", "[5/5] RUN after b"], 4),
    (FORK, [LEFT], {}, [JOIN],
     ["[1/4] FROM busybox", "[2/4] RUN left"], ["[3/4] RUN right", "[4/4] merge"], 4),
    (DIAMOND, [D_COPY_A], {}, [D_RUN],
     ["[1/4] FROM busybox", "[internal] load build context", "[2/5] COPY a"],
     ["[3/5] COPY b", "[4/5] merge", "[5/5] RUN last"], 6),
    # a target another target needs is looked up again (its flight ended in between), and
    # hits again: reported once
    (CHAIN, [IMAGE], {}, [IMAGE, RUN_A], ["[1/4] FROM busybox"],
     ["[internal] load build context", "[2/5] COPY a", "[3/5] RUN after a"], 5),
    (CHAIN, [RUN_A], {}, [RUN_B],
     ["[1/4] FROM busybox", "[2/5] COPY a", "[3/5] RUN after a",
      "[internal] load build context"],
     ["[4/5] COPY b", "[5/5] RUN after b"], 4),
]


@pytest.mark.parametrize(
    ("graph", "first", "change", "targets", "cached", "executed", "lookups"), PARTIAL)
def test_a_partially_cached_build_reports_what_ran_as_run(
        graph: BuildGraph, first: list[Vertex], change: dict[str, str], targets: list[Vertex],
        cached: list[str], executed: list[str], lookups: int) -> None:
    backend, cache = FakeBackend(), MemoryCache()
    go(lambda: solver(backend, cache).solve(graph, [t.digest for t in first]))
    backend.files.update(change)
    events = _rebuild(graph, targets, backend, cache)
    assert sorted(events.of(VertexCached)) == sorted(cached)
    assert sorted(events.of(VertexCompleted)) == sorted(executed)
    assert sorted(backend.executions) == sorted(executed)
    assert sorted(events.of(VertexStarted)) == sorted(executed)
    assert cache.gets == lookups


def test_concurrent_cached_builds_each_report_every_vertex() -> None:
    backend, cache = FakeBackend(), MemoryCache()
    go(lambda: solver(backend, cache).solve(DIAMOND, [D_RUN.digest]))
    shared = solver(backend, cache)
    one, two = Events(), Events()

    async def both() -> None:
        await asyncio.gather(shared.solve(DIAMOND, [D_RUN.digest], events=one),
                             shared.solve(DIAMOND, [D_RUN.digest], events=two))
    go(both)
    names = [v.name for v in DIAMOND.vertices.values()]
    assert one.of(VertexCached) == two.of(VertexCached) == names


def test_a_cached_dockerfile_rebuild_prints_every_step_as_buildkit_does() -> None:
    from io import StringIO

    from dockyard.cluster._render import PlainRenderer
    dockerfile = (b'FROM busybox AS build\nWORKDIR /src\nCOPY . .\nRUN ["make"]\n'
                  b"FROM busybox\nCOPY --from=build /src/out /out\n")
    graph = build_graph(dockerfile, platforms=[AMD64]).graph
    backend, cache = FakeBackend(), MemoryCache()
    go(lambda: solver(backend, cache).solve(graph))
    out = StringIO()
    go(lambda: Solver(backend, cache, events=PlainRenderer(out)).solve(graph))
    assert out.getvalue() == (
        "#1 [build 1/4] FROM docker.io/library/busybox:latest\n#1 CACHED\n\n"
        "#2 [build 2/4] WORKDIR /src\n#2 CACHED\n\n"
        "#3 [internal] load build context\n#3 CACHED\n\n"
        "#4 [build 3/4] COPY . .\n#4 CACHED\n\n"
        '#5 [build 4/4] RUN ["make"]\n#5 CACHED\n\n'
        "#6 [stage-1 2/2] COPY --from=build /src/out /out\n#6 CACHED\n")


def test_a_build_joining_late_hears_of_the_hits_below_it() -> None:
    slow = run("[5/5] RUN slow", "slow", RUN_A, delay=0.2)
    graph = graph_of(IMAGE, CONTEXT, COPY_A, RUN_A, slow)
    backend, cache = FakeBackend(), MemoryCache()
    go(lambda: solver(backend, cache).solve(graph, [RUN_A.digest]))
    shared = solver(backend, cache)
    one, two = Events(), Events()

    async def late() -> None:
        first = asyncio.create_task(shared.solve(graph, [slow.digest], events=one))
        await until(lambda: backend.running == 1)  # RUN_A hit, the slow RUN runs
        await shared.solve(graph, [slow.digest], events=two)
        await first
    go(late)
    below = [F, C, "[2/5] COPY a", "[3/5] RUN after a"]
    assert one.of(VertexCached) == [*below]
    assert two.of(VertexCached) == [*below]
    assert one.of(VertexCompleted) == two.of(VertexCompleted) == ["[5/5] RUN slow"]
    assert backend.executions["[5/5] RUN slow"] == 1


@st.composite
def _dags(draw: st.DrawFn) -> tuple[BuildGraph, list[Vertex], list[Vertex]]:
    """A random graph over IMAGE, the targets of a first build, those of a rebuild."""
    vertices = [IMAGE]
    for i in range(draw(st.integers(1, 7))):
        inputs = draw(st.lists(st.sampled_from(vertices), min_size=1, max_size=3,
                               unique_by=lambda v: v.digest))
        vertices.append(run(f"[{i + 2}] RUN v{i}", f"v{i}", *inputs))
    pick = st.lists(st.sampled_from(vertices), min_size=1, max_size=3,
                    unique_by=lambda v: v.digest)
    return graph_of(*vertices), draw(pick), draw(pick)


@settings(max_examples=60, deadline=None)
@given(_dags())
def test_every_needed_vertex_ends_once_as_cached_or_as_run(
        case: tuple[BuildGraph, list[Vertex], list[Vertex]]) -> None:
    graph, first, targets = case
    backend, cache = FakeBackend(), MemoryCache()
    go(lambda: solver(backend, cache).solve(graph, [t.digest for t in first]))
    events = _rebuild(graph, targets, backend, cache)
    ends = [e.vertex for e in events.events if isinstance(e, VertexCached | VertexCompleted)]
    needed = {v.digest for v in graph.vertices.values()
              if v.name in _needed_names(graph, targets)}
    assert sorted(ends) == sorted(needed)  # each needed vertex once, nothing else
    ran = [e.name for e in events.events if isinstance(e, VertexCompleted)]
    assert sorted(ran) == sorted(backend.executions.elements())


def test_an_ignore_cache_vertex_and_what_follows_run_again() -> None:
    """``--no-cache-filter``: the marked vertex skips its lookup (and runs), and so does
    what depends on it; the vertices beside it are cache hits."""
    backend, cache = FakeBackend(), MemoryCache()
    go(lambda: solver(backend, cache).solve(FORK, [JOIN.digest]))
    backend.executions.clear()
    marked = graph_of(IMAGE, replace(LEFT, ignore_cache=True), RIGHT, JOIN)
    assert marked.vertices[LEFT.digest].ignore_cache
    go(lambda: solver(backend, cache).solve(marked, [JOIN.digest]))
    assert dict(backend.executions) == {LEFT.name: 1, JOIN.name: 1}
