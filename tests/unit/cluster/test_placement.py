"""The coordinator over several FAKE workers (no Ray): which worker runs each vertex --
platform, then cache locality, then load --, the peers named for the layers a worker
lacks, slot limits, a worker lost mid-vertex, a worker that joins mid-build, and the
refusal of a platform nobody runs (STYLE.md habits 5 and 9: fakes that count)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import pytest
from test_coordinator import FakeWorker, items_of

import dockyard.cluster._coordinator as coordinator_module
from dockyard.cache_backends._records import CacheRecord, LayerDescriptor, StateResult
from dockyard.cluster._build_options import BuildOptions
from dockyard.cluster._coordinator import Coordinator
from dockyard.cluster._dispatch import BuildSessions, ClusterRecords
from dockyard.cluster._registry import Placement, Registry
from dockyard.scheduler._errors import SolveError, WorkerLost
from dockyard.scheduler._graph import vertex_from_wire

#: Two independent stages and a final one using both (parallel work for the placement).
STAGES = (b"FROM scratch AS a\nRUN make a\n"
          b"FROM scratch AS b\nRUN make b\n"
          b"FROM scratch\nCOPY --from=a /a /a\nCOPY --from=b /b /b\nRUN make final\n")
CHAIN = b"FROM scratch\nCOPY a.txt /a\nRUN make\nRUN make install\n"


def layer_of(name: str, size: int = 1000) -> LayerDescriptor:
    digest = "sha256:" + hashlib.sha256(name.encode()).hexdigest()
    return LayerDescriptor(digest=digest, size=size, diff_id=digest)


class LayerWorker(FakeWorker):
    """A fake worker whose every execute yields a layer of its own (so locality has bytes
    to weigh); it records which vertex ran here, the peers it was given, and how many
    executes ran here at once at most."""

    def __init__(self, name: str, arches: tuple[str, ...], native: tuple[str, ...] = (),
                 slots: int = 2, lose: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.name = name
        self.arches = arches
        self.native = native or arches[:1]
        self.slots = slots
        self.lose = lose  # a vertex whose name contains this kills the worker
        self.peers: list[dict[str, str]] = []
        self.now = 0
        self.most = 0

    async def call(self, method: str, *args: Any) -> Any:
        if method == "info":  # as WorkerActor.info: its answer as is
            return self._info()
        return await super().call(method, *args)

    def _info(self) -> dict[str, Any]:
        return {"arches": list(self.arches), "native": list(self.native),
                "slots": self.slots, "node_ip": "127.0.0.9", "root": f"/roots/{self.name}"}

    async def _execute(self, build_id: str, vertex: dict[str, Any],
                       inputs: list[dict[str, Any]], peers: dict[str, str] | None = None
                       ) -> AsyncIterator[dict[str, Any]]:
        found = vertex_from_wire(vertex)
        self.peers.append(dict(peers or {}))
        self.now += 1
        self.most = max(self.most, self.now)
        try:  # "now" drops before the result: the caller stops reading at the result
            await asyncio.sleep(self.delay)
            if self.lose and self.lose in found.name:
                raise WorkerLost(f"the actor of {self.name}.execute died or vanished")
            if self.block and self.block in found.name:
                self.started.set()
                await asyncio.Event().wait()
            self.executed.append(found.name)
            below = [LayerDescriptor.from_wire(layer) for item in inputs
                     for layer in item["layers"]]
            mine = layer_of(found.digest)
        finally:
            self.now -= 1
        yield {"result": StateResult(layers=(*below, mine)).to_wire()}


def registry_of(*workers: LayerWorker) -> Registry:
    registry = Registry()
    for worker in workers:
        registry.add(worker.name, worker, worker._info())
    return registry


def build(dockerfile: bytes, *, platforms: tuple[str, ...] = ()) -> dict[str, Any]:
    options = BuildOptions(context="/ctx", platforms=platforms, no_cache=True)
    return {"dockerfile": dockerfile, "options": options.to_wire(),
            "session": {"ignore_patterns": []}}


def run(registry: Registry, *requests: dict[str, Any]) -> list[list[dict[str, Any]]]:
    async def main() -> list[list[dict[str, Any]]]:
        coordinator = Coordinator(registry=registry)
        return list(await asyncio.gather(*(items_of(coordinator, r) for r in requests)))
    return asyncio.run(main())


def ran_on(*workers: LayerWorker) -> dict[str, str]:
    return {vertex: worker.name for worker in workers for vertex in worker.executed}


def test_exec_vertices_go_to_a_native_worker_of_their_platform() -> None:
    amd, arm = LayerWorker("amd", ("amd64",)), LayerWorker("arm", ("arm64",))
    [items] = run(registry_of(amd, arm), build(CHAIN, platforms=("linux/arm64",)))
    assert "result" in items[-1]
    runs = [name for name in arm.executed + amd.executed if "RUN" in name]
    assert runs and all(name in arm.executed for name in runs)


def test_an_emulating_worker_runs_only_when_no_native_one_exists_and_says_so() -> None:
    amd = LayerWorker("amd", ("amd64", "arm64"), native=("amd64",))
    [items] = run(registry_of(amd), build(CHAIN, platforms=("linux/arm64",)))
    assert "result" in items[-1]
    statuses = [i["event"]["id"] for i in items
                if "event" in i and i["event"]["type"] == "status"]
    assert "running on amd at 127.0.0.9 (emulating arm64)" in statuses
    native = LayerWorker("arm", ("arm64",))
    emulating = LayerWorker("amd", ("amd64", "arm64"), native=("amd64",))
    run(registry_of(native, emulating), build(CHAIN, platforms=("linux/arm64",)))
    assert not [name for name in emulating.executed if "RUN" in name]


def test_a_chain_stays_on_the_worker_holding_its_layers() -> None:
    first, second = LayerWorker("w1", ("amd64",)), LayerWorker("w2", ("amd64",))
    run(registry_of(first, second), build(CHAIN))
    ran = ran_on(first, second)
    assert len(set(ran.values())) == 1, ran
    assert all(not peers for peers in first.peers + second.peers)


def test_a_worker_lacking_an_input_layer_is_told_which_peer_holds_it() -> None:
    amd, arm = LayerWorker("amd", ("amd64",)), LayerWorker("arm", ("arm64",))
    dockerfile = (b"FROM --platform=linux/amd64 scratch AS tools\nRUN make tools\n"
                  b"FROM --platform=linux/arm64 scratch\nCOPY --from=tools /t /t\n"
                  b"RUN make\n")
    [items] = run(registry_of(amd, arm), build(dockerfile, platforms=("linux/arm64",)))
    assert "result" in items[-1]
    assert "[tools 1/1] RUN make tools" in amd.executed
    assert "[stage-1 2/2] RUN make" in arm.executed
    named = {peer for peers in arm.peers for peer in peers.values()}
    assert named == {"amd"} or not any(arm.peers) and "COPY" in str(amd.executed)


def test_a_worker_never_runs_more_than_its_slots() -> None:
    only = LayerWorker("w1", ("amd64",), slots=1, delay=0.05)
    [items] = run(registry_of(only), build(STAGES))
    assert "result" in items[-1]
    assert only.most == 1
    roomy = LayerWorker("w2", ("amd64",), slots=4, delay=0.05)
    run(registry_of(roomy), build(STAGES))
    assert roomy.most >= 2


def test_load_spreads_independent_stages_over_free_workers() -> None:
    first = LayerWorker("w1", ("amd64",), slots=1, delay=0.1)
    second = LayerWorker("w2", ("amd64",), slots=1, delay=0.1)
    run(registry_of(first, second), build(STAGES))
    ran = ran_on(first, second)
    assert {ran["[a 1/1] RUN make a"], ran["[b 1/1] RUN make b"]} == {"w1", "w2"}


def test_a_vertex_whose_worker_dies_runs_again_on_another() -> None:
    doomed = LayerWorker("w1", ("amd64",), lose="RUN make install")
    spare = LayerWorker("w2", ("amd64",))
    registry = registry_of(doomed, spare)
    [items] = run(registry, build(CHAIN))
    assert "result" in items[-1], items[-1]
    assert "[3/3] RUN make install" in spare.executed
    assert "w1" not in registry.entries and registry.lost_names == ["w1"]
    logs = b"".join(bytes(i["event"]["data"]) for i in items
                    if "event" in i and i["event"]["type"] == "log")
    assert b"was lost while running this step: running it again" in logs


def test_a_vertex_is_tried_on_a_bounded_number_of_workers() -> None:
    workers = [LayerWorker(f"w{i}", ("amd64",), lose="RUN make install") for i in range(4)]
    [items] = run(registry_of(*workers), build(CHAIN))
    failure = items[-1]["failure"]
    assert failure["error"] == "SolveError"
    assert "the workers running this step were lost 3 times" in failure["message"]
    assert failure["details"]["vertex"] == "[3/3] RUN make install"


def test_a_worker_that_joins_mid_build_takes_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(coordinator_module, "REFRESH_SECONDS", 0.05)
    first = LayerWorker("w1", ("amd64",), slots=1, delay=0.3)
    late = LayerWorker("w2", ("amd64",), slots=1, delay=0.3)
    present: dict[str, Any] = {"w1": first}

    async def discover() -> Mapping[str, Any]:
        return dict(present)

    async def main() -> list[dict[str, Any]]:
        coordinator = Coordinator(registry=Registry(discover))
        task = asyncio.create_task(items_of(coordinator, build(STAGES)))
        await asyncio.sleep(0.1)  # w1 runs the first stage now; the other waits for it
        present["w2"] = late
        return await task
    items = asyncio.run(main())
    assert "result" in items[-1]
    assert late.executed, (first.executed, late.executed)


def test_a_build_executing_nothing_on_its_platform_needs_no_worker_of_it() -> None:
    amd = LayerWorker("amd", ("amd64",))
    dockerfile = (b"FROM --platform=$BUILDPLATFORM scratch AS build\nRUN make\n"
                  b"FROM scratch\nCOPY --from=build /out /out\n")
    [items] = run(registry_of(amd), build(dockerfile, platforms=("darwin/ppc64le",)))
    assert "result" in items[-1], items[-1]
    [items] = run(registry_of(LayerWorker("amd", ("amd64",))),
                  build(CHAIN, platforms=("darwin/ppc64le",)))
    assert items[-1]["failure"]["message"] == (
        "no worker can run platform darwin/ppc64le: this cluster offers linux/amd64 (1 "
        "worker)")


class SessionWorker(LayerWorker):
    """A ``LayerWorker`` that, as ``WorkerActor``, executes only for a build opened on it
    (a restarted actor has no session)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.opened: set[str] = set()

    def _open_session(self, build_id: str, part: dict[str, Any]) -> dict[str, Any]:
        self.opened.add(build_id)
        return super()._open_session(build_id, part)

    async def _execute(self, build_id: str, vertex: dict[str, Any],
                       inputs: list[dict[str, Any]], peers: dict[str, str] | None = None
                       ) -> AsyncIterator[dict[str, Any]]:
        if build_id not in self.opened:
            raise SolveError(f"the worker has no open session for build {build_id}")
        async for item in super()._execute(build_id, vertex, inputs, peers):
            yield item


def test_a_vertex_whose_only_worker_dies_runs_again_on_the_restarted_one() -> None:
    """Ray restarts a killed worker under the same name, after a while, with no session:
    the vertex waits for it and opens the build on it again."""
    doomed = SessionWorker("w1", ("amd64",), lose="RUN make install")
    reborn = SessionWorker("w1", ("amd64",))
    items, looks = _build_across_a_restart(
        doomed, reborn, lambda: not doomed.now and "[3/3] RUN make install" in str(doomed.calls))
    assert "result" in items[-1], items[-1]
    assert reborn.executed == ["[3/3] RUN make install"] and looks > 2


def _build_across_a_restart(doomed: SessionWorker, reborn: SessionWorker,
                            lost: Callable[[], bool]) -> tuple[list[dict[str, Any]], int]:
    """CHAIN built on a one-worker cluster whose worker ``doomed`` is lost once ``lost()``
    holds: the registry then finds no worker twice, then ``reborn`` (Ray's restart, after
    a while). The build's items, and how many times the registry looked after the loss."""
    looks = 0

    async def discover() -> Mapping[str, Any]:
        nonlocal looks
        if lost():
            looks += 1
            return {"w1": reborn} if looks > 2 else {}
        return {"w1": doomed}

    async def main() -> list[dict[str, Any]]:
        return await items_of(Coordinator(registry=Registry(discover)), build(CHAIN))
    return asyncio.run(main()), looks


class OpenLosingWorker(SessionWorker):
    """A ``SessionWorker`` whose actor dies at the first build opened on it."""

    async def call(self, method: str, *args: Any) -> Any:
        if method == "open_session":
            self.calls.append((method, args))
            raise WorkerLost(f"the actor of {self.name}.open_session died or vanished")
        return await super().call(method, *args)


def test_a_build_whose_only_worker_dies_as_it_opens_waits_for_the_restarted_one() -> None:
    """The home worker dies as the build opens and the cluster has no other: the build
    waits for Ray's restart (no 'the cluster has no live worker' while it restarts)."""
    doomed = OpenLosingWorker("w1", ("amd64",))
    reborn = SessionWorker("w1", ("amd64",))
    items, looks = _build_across_a_restart(doomed, reborn,
                                           lambda: "open_session" in doomed.methods())
    assert "result" in items[-1], items[-1]
    assert reborn.opened and looks > 2


class ExportLosingWorker(SessionWorker):
    """A ``SessionWorker`` whose actor dies during its first export."""

    async def call(self, method: str, *args: Any) -> Any:
        if method == "export" and not any(m == "export" for m, _ in self.calls):
            self.calls.append((method, args))
            raise WorkerLost(f"the actor of {self.name}.export died or vanished")
        return await super().call(method, *args)


def test_an_export_whose_worker_dies_runs_again_on_the_restarted_one() -> None:
    """The worker exporting the images dies: Ray restarts it under the same name (with no
    session); the build opens there again and exports, its steps answered by records."""
    doomed = ExportLosingWorker("w1", ("amd64",))
    reborn = SessionWorker("w1", ("amd64",))

    async def discover() -> Mapping[str, Any]:
        return {"w1": reborn if "export" in doomed.methods() else doomed}

    async def main() -> list[dict[str, Any]]:
        return await items_of(Coordinator(registry=Registry(discover)), build(CHAIN))
    items = asyncio.run(main())
    assert "result" in items[-1], items[-1]
    assert "export" in reborn.methods() and reborn.opened
    assert reborn.executed == []  # the records of the first solve serve the second
    said = [i["event"]["id"] for i in items if "event" in i and i["event"]["type"] == "status"]
    assert "warning: the actor of w1.export died or vanished: exporting again" in said, said


@pytest.mark.parametrize(("holders", "expected"), [
    # worker -> the layers it holds; the record is base-arm + copy (the top layer)
    ({"a-amd": ("base-amd", "copy"), "b-arm": ("base-arm", "copy")}, "b-arm"),
    ({"a-amd": ("base-amd",), "b-arm": ("base-arm", "copy")}, "b-arm"),
    ({"a-amd": ("copy",), "b-arm": ("base-arm",)}, "a-amd"),  # a top holder, else none
])
def test_a_record_is_written_on_a_worker_holding_its_layers(
        holders: dict[str, tuple[str, ...]], expected: str) -> None:
    """Two platforms' steps can make the same top layer over different bases: the record
    goes to the worker holding all its layers (a worker refuses one naming blobs it
    lacks)."""
    workers = {name: LayerWorker(name, ("amd64",)) for name in holders}
    registry = registry_of(*workers.values())
    for name, layers in holders.items():
        registry.index.add(name, [layer_of(layer) for layer in layers])
    record = CacheRecord(key="k", created=0, result=StateResult(
        layers=(layer_of("base-arm"), layer_of("copy"))))

    async def main() -> None:
        sessions = BuildSessions("build", {}, Placement(registry))
        await ClusterRecords(sessions, lambda event: None).put(record)
    asyncio.run(main())
    assert [name for name, w in workers.items() if "k" in w.records] == [expected]
