"""The coordinator with FAKE worker actors (no Ray, no runc): it runs the frontend and the
shared solver itself and sends every worker call through ``call``/``stream`` as plain data;
the fake counts executes, so a cache hit is zero executes (STYLE.md habits 5 and 9)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from dockyard.cache_backends._records import StateResult
from dockyard.cluster._build_options import BuildOptions
from dockyard.cluster._coordinator import Coordinator
from dockyard.cluster._dispatch import failure_map
from dockyard.scheduler._errors import ExecError
from dockyard.scheduler._graph import vertex_from_wire
from dockyard.scheduler._progress import StatusUpdate, VertexLog, event_to_wire

DOCKERFILE = b"FROM scratch\nCOPY a.txt /a\nRUN make\nRUN make install\n"
SECRET_ID = "token-of-one-build"


class FakeStream:
    def __init__(self, items: AsyncIterator[Any]) -> None:
        self._items = items
        self.cancelled = False

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._items

    def cancel(self) -> None:
        self.cancelled = True


class FakeWorker:
    """A worker actor's answers, from memory; ``calls`` records every call's method and
    arguments, ``executed`` each executed vertex name."""

    def __init__(self, *, fail: str = "", block: str = "", delay: float = 0.0) -> None:
        self.delay = delay  # seconds each execute takes
        self.fail = fail  # a vertex whose name contains this exits 2
        self.block = block  # a vertex whose name contains this runs until cancelled
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.executed: list[str] = []
        self.records: dict[str, bytes] = {}
        self.streams: list[FakeStream] = []
        self.started = asyncio.Event()

    async def call(self, method: str, *args: Any) -> Any:
        self.calls.append((method, args))
        answer = getattr(self, "_" + method)(*args)
        return {"result": await answer if asyncio.iscoroutine(answer) else answer}

    def stream(self, method: str, *args: Any) -> FakeStream:
        self.calls.append((method, args))
        stream = FakeStream(self._execute(*args))
        self.streams.append(stream)
        return stream

    def methods(self) -> list[str]:
        return [method for method, _ in self.calls]

    def _open_session(self, build_id: str, part: dict[str, Any]) -> dict[str, Any]:
        return {"ignore_patterns": [], "epoch": None}

    def _statistics(self) -> dict[str, int]:
        return {"running": 0}

    def _close_session(self, build_id: str) -> None:
        return None

    def _source_identity(self, build_id: str, vertex: dict[str, Any]) -> str:
        return "identity-of-" + vertex_from_wire(vertex).digest

    def _content_checksum(self, build_id: str, source: dict[str, Any],
                          selector: dict[str, Any]) -> str:
        return "sha256:" + "a" * 64

    def _content_checksums(self, build_id: str, sources: dict[str, Any],
                           items: list[list[Any]]) -> list[dict[str, Any]]:
        return [{"result": self._content_checksum(build_id, sources[digest], selector)}
                for digest, selector in items]

    def _resolve_image(self, build_id: str, ref: str, platform: str) -> dict[str, Any]:
        return {"digest": "sha256:" + "b" * 64, "config": b'{"config": {"Env": ["A=1"]}}'}

    def _get_record(self, key: str, build_id: str | None) -> bytes | None:
        return self.records.get(key)

    def _put_record(self, data: bytes, build_id: str) -> None:
        from dockyard.cache_backends._records import CacheRecord

        self.records[CacheRecord.from_bytes(data).key] = data

    def _export(self, build_id: str, graph: bytes, records: dict[str, bytes],
                peers: dict[str, str] | None = None) -> dict[str, Any]:
        return {"metadata": {"roots": len(records)}, "stdout_file": None, "pushed": []}

    async def _execute(self, build_id: str, vertex: dict[str, Any],
                       inputs: list[dict[str, Any]], peers: dict[str, str] | None = None
                       ) -> AsyncIterator[dict[str, Any]]:
        found = vertex_from_wire(vertex)
        self.executed.append(found.name)
        await asyncio.sleep(self.delay)
        yield {"event": event_to_wire(VertexLog(found.digest, 1, b"working\n"))}
        if self.block and self.block in found.name:
            self.started.set()
            await asyncio.Event().wait()
        if self.fail and self.fail in found.name:
            error = ExecError("process exited with code 2", exit_code=2, output_tail="boom")
            yield {"failure": failure_map(error)}
            return
        yield {"result": StateResult().to_wire()}


def request(*, platforms: tuple[str, ...] = (), no_cache: bool = False,
            dockerfile: bytes = DOCKERFILE) -> dict[str, Any]:
    options = BuildOptions(context="/ctx", platforms=platforms, no_cache=no_cache)
    return {"dockerfile": dockerfile, "options": options.to_wire(),
            "session": {"secret_ids": [SECRET_ID], "ignore_patterns": []}}


async def items_of(coordinator: Coordinator, req: dict[str, Any]) -> list[dict[str, Any]]:
    return [item async for item in coordinator.solve(req)]


def run_builds(worker: FakeWorker, *requests: dict[str, Any]) -> list[list[dict[str, Any]]]:
    async def main() -> list[list[dict[str, Any]]]:
        coordinator = Coordinator(worker)
        return list(await asyncio.gather(*(items_of(coordinator, r) for r in requests)))
    return asyncio.run(main())


def test_a_build_executes_on_the_worker_and_streams_its_events() -> None:
    worker = FakeWorker()
    [items] = run_builds(worker, request())
    assert worker.executed == ["[internal] load build context", "[1/3] COPY a.txt /a",
                               "[2/3] RUN make", "[3/3] RUN make install"]
    logs = [i["event"] for i in items if "event" in i and i["event"]["type"] == "log"]
    assert len(logs) == len(worker.executed)
    assert items[-1]["result"]["statistics"] == {"executed": len(worker.executed),
                                                 "cached": 0}
    assert worker.methods()[0] == "open_session"
    assert worker.methods()[-2:] == ["export", "close_session"]


def test_secret_ids_go_to_the_session_only() -> None:
    worker = FakeWorker()
    run_builds(worker, request())
    carrying = [method for method, args in worker.calls if SECRET_ID in repr(args)]
    assert carrying == ["open_session"]


def test_a_request_without_the_clients_ignore_patterns_is_refused() -> None:
    worker = FakeWorker()
    req = request()
    del req["session"]["ignore_patterns"]
    [items] = run_builds(worker, req)
    assert items[-1]["failure"]["message"] == (
        "the build request lists no .dockerignore patterns of its context")
    assert worker.executed == []


def test_a_second_build_is_answered_by_records() -> None:
    worker = FakeWorker()

    async def twice() -> list[dict[str, Any]]:
        coordinator = Coordinator(worker)
        await items_of(coordinator, request())
        executed = len(worker.executed)
        items = await items_of(coordinator, request())
        assert len(worker.executed) == executed  # zero executes
        return items
    items = asyncio.run(twice())
    assert items[-1]["result"]["statistics"]["executed"] == 0
    assert items[-1]["result"]["statistics"]["cached"] >= 1


class WarningWorker(FakeWorker):
    """Its record and export answers carry a remote-cache warning, as the worker actor's
    do when a build's --cache-from is unreachable or its --cache-to fails."""

    async def call(self, method: str, *args: Any) -> Any:
        item = await super().call(method, *args)
        if method in ("get_record", "export"):
            warning = StatusUpdate("cache", f"warning: from {method}", done=True)
            item["events"] = [event_to_wire(warning)]
        return item


def test_record_calls_carry_the_build_id_and_their_events_reach_the_build() -> None:
    worker = WarningWorker()
    [items] = run_builds(worker, request())
    [opened] = [args[0] for method, args in worker.calls if method == "open_session"]
    record_ids = {args[1] for method, args in worker.calls
                  if method in ("get_record", "put_record")}
    assert record_ids == {opened}
    statuses = [i["event"]["id"] for i in items
                if "event" in i and i["event"]["type"] == "status"]
    assert "warning: from get_record" in statuses
    assert statuses[-1] == "warning: from export"
    assert "result" in items[-1]


def test_concurrent_builds_share_the_solver() -> None:
    worker = FakeWorker(delay=0.2)
    first, second = run_builds(worker, request(no_cache=True), request(no_cache=True))
    assert "result" in first[-1] and "result" in second[-1]
    assert len(worker.executed) == len(set(worker.executed)) == 4


FAILURES = [
    # (request, worker, expected failure fields)
    (request(platforms=("linux/riscv64",)), FakeWorker(),
     {"error": "SolveError",
      "message": "no worker can run platform linux/riscv64: this cluster offers "
                 "linux/amd64 (1 worker), linux/arm64 (1 worker)"}),
    (request(), FakeWorker(fail="RUN make install"),
     {"error": "ExecError", "message": "process exited with code 2"}),
]


@pytest.mark.parametrize(("req", "worker", "expected"), FAILURES)
def test_failures_are_data_and_close_the_session(req: dict[str, Any], worker: FakeWorker,
                                                 expected: dict[str, Any]) -> None:
    [items] = run_builds(worker, req)
    failure = items[-1]["failure"]
    assert {key: failure[key] for key in expected} == expected
    if failure["error"] == "SolveError":
        assert worker.executed == []  # refused before dispatch: nothing was even opened
        assert "open_session" not in worker.methods()
    else:
        assert worker.methods()[-1] == "close_session"
        assert failure["details"]["exit_code"] == 2


def test_cancelling_a_build_cancels_the_worker_call_and_closes_the_session() -> None:
    worker = FakeWorker(block="RUN make")

    async def cancel() -> None:
        coordinator = Coordinator(worker)
        task = asyncio.create_task(items_of(coordinator, request()))
        await asyncio.wait_for(worker.started.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await coordinator.statistics())["active"] == 0
    asyncio.run(cancel())
    assert any(stream.cancelled for stream in worker.streams)
    assert worker.methods()[-2:] == ["close_session", "statistics"]
    assert "export" not in worker.methods()


class MissingPathWorker(FakeWorker):
    """Its context lacks ``missing.txt``: that read fails as a worker's would."""

    def _content_checksums(self, build_id: str, sources: dict[str, Any],
                           items: list[list[Any]]) -> list[dict[str, Any]]:
        from dockyard.scheduler._errors import SolveError

        missing = SolveError('"/missing.txt": not found')
        return [{"failure": failure_map(missing)} if "missing" in str(selector)
                else {"result": "sha256:" + "a" * 64} for _, selector in items]


def test_a_builds_context_reads_go_to_the_worker_in_one_call() -> None:
    worker = FakeWorker()
    req = request()
    req["dockerfile"] = b"FROM scratch\nCOPY a.txt /a\nCOPY b.txt /b\nCOPY c* /c/\n"
    [items] = run_builds(worker, req)
    assert "result" in items[-1]
    batches = [args for method, args in worker.calls if method == "content_checksums"]
    assert "content_checksum" not in worker.methods()
    assert len(batches) == 1 and len(batches[0][2]) == 3


def test_a_failing_context_read_fails_its_own_step() -> None:
    worker = MissingPathWorker()
    req = request()
    req["dockerfile"] = b"FROM scratch\nCOPY a.txt /a\nCOPY missing.txt /m\n"
    [items] = run_builds(worker, req)
    failure = items[-1]["failure"]
    assert failure["message"] == '"/missing.txt": not found'
    assert failure["details"]["location"] == "Dockerfile:3:1"
    assert worker.executed == []


def test_a_base_image_is_resolved_once_per_build() -> None:
    """Three stages of one base and a second base ask the worker twice per build; the
    next build asks again (a tag moves between builds, never within one)."""
    stages = b"".join(b"FROM base:1 AS s%d\nRUN echo %d\n" % (n, n) for n in range(3))
    dockerfile = stages + b"FROM other:2\nCOPY --from=s0 /x /x\n"
    worker = FakeWorker()
    run_builds(worker, request(dockerfile=dockerfile))
    asked = [args[1] for method, args in worker.calls if method == "resolve_image"]
    assert sorted(asked) == ["docker.io/library/base:1", "docker.io/library/other:2"]
    run_builds(worker, request(dockerfile=dockerfile))
    asked = [args[1] for method, args in worker.calls if method == "resolve_image"]
    assert sorted(asked) == 2 * ["docker.io/library/base:1"] + 2 * ["docker.io/library/other:2"]
