"""The coordinator's metrics (cluster/_metrics.py) counted over FAKE workers (the fakes of
test_coordinator.py: no Ray, no runc): each vertex of each build once -- run for it
(executed), run once for another build at the same time (deduplicated), failed -- and
builds by status, read back from the exposition with prometheus_client's parser; and a
scrape's workers: their reports summed, one that does not answer left out in time."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_coordinator import FakeWorker, items_of, request

from dockyard.cluster import _coordinator as coordinator_module
from dockyard.cluster._coordinator import Coordinator
from dockyard.cluster._registry import Registry


def _scraped(worker: FakeWorker, *requests: dict[str, Any]) -> dict[tuple[str, str], float]:
    """The builds' samples after they ran together: (sample name, its labels) -> value."""
    async def main() -> str:
        coordinator = Coordinator(worker)
        await asyncio.gather(*(items_of(coordinator, r) for r in requests))
        return (await coordinator.metrics()).decode()
    samples: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(asyncio.run(main())):
        for s in family.samples:
            samples[(s.name, ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())))] = \
                s.value
    return samples


def _total(samples: dict[tuple[str, str], float], name: str, *labels: str) -> float:
    return sum(value for (sample, found), value in samples.items()
               if sample == name and all(label in found.split(",") for label in labels))


def test_a_vertex_two_builds_need_at_once_runs_once_and_counts_once_deduplicated() -> None:
    worker = FakeWorker(delay=0.2)
    samples = _scraped(worker, request(no_cache=True), request(no_cache=True))
    executed = _total(samples, "dockyard_vertices_total", "outcome=executed")
    assert executed == len(worker.executed) == 4
    assert _total(samples, "dockyard_vertices_total", "outcome=deduplicated") == 4
    assert _total(samples, "dockyard_vertices_total", "outcome=cached") == 0
    assert _total(samples, "dockyard_executions_total", "mode=native") == 4
    assert _total(samples, "dockyard_vertex_duration_seconds_count", "op=exec") == 2
    assert _total(samples, "dockyard_builds_total", "status=succeeded",
                  "tenant=default") == 2


def test_a_failed_vertex_and_its_build_are_counted_failed() -> None:
    samples = _scraped(FakeWorker(fail="RUN make install"), request())
    assert _total(samples, "dockyard_vertices_total", "outcome=failed") == 1
    assert _total(samples, "dockyard_vertices_total", "outcome=executed") == 3
    assert _total(samples, "dockyard_builds_total", "status=failed") == 1
    assert _total(samples, "dockyard_builds_total", "status=succeeded") == 0
    assert _total(samples, "dockyard_build_duration_seconds_count", "status=failed") == 1
    # the fake worker answers no report: the scrape goes on without its counts
    assert _total(samples, "dockyard_workers_reporting") == 0
    assert _total(samples, "dockyard_vertices_running") == 0


class _Reporting:
    """A worker handle that answers ``metrics`` with ``report`` (None: never answers)."""

    def __init__(self, report: dict[str, Any] | None) -> None:
        self.report = report

    async def call(self, method: str, *args: Any) -> Any:
        assert method == "metrics"
        if self.report is None:
            await asyncio.Event().wait()
        return self.report

    def stream(self, method: str, *args: Any) -> Any:
        raise AssertionError("a scrape streams nothing")


def _report(hits: int, written: int, context: int) -> dict[str, Any]:
    return {"version": 1, "cache": [["worker", "record", "hit", hits],
                                    ["s3", "blob", "miss", 1]],
            "cache_bytes": [["s3", "written", written]], "context_bytes": context}


def test_a_scrape_sums_the_workers_reports_and_leaves_out_one_that_is_late(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(coordinator_module, "METRICS_TIMEOUT", 0.2)
    registry = Registry()
    info = {"arches": ["amd64"], "native": ["amd64"], "slots": 2}
    registry.add("w1", _Reporting(_report(3, 100, 7)), info)
    registry.add("w2", _Reporting(_report(2, 50, 5)), info)
    registry.add("w3", _Reporting(None), {**info, "arches": ["arm64"], "native": ["arm64"]})
    registry.entries["w2"].running = 1

    async def scrape() -> tuple[str, float]:
        began = time.monotonic()
        text = (await Coordinator(registry=registry).metrics()).decode()
        return text, time.monotonic() - began
    text, took = asyncio.run(scrape())
    assert took < 2, "a worker that does not answer held the scrape"
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("dockyard_workers_reporting", ())] == 2
    assert samples[("dockyard_cache_requests_total", (("backend", "worker"),
                                                      ("object", "record"),
                                                      ("result", "hit")))] == 5
    assert samples[("dockyard_cache_requests_total", (("backend", "s3"), ("object", "blob"),
                                                      ("result", "miss")))] == 2
    assert samples[("dockyard_cache_bytes_total", (("backend", "s3"),
                                                   ("direction", "written")))] == 150
    assert samples[("dockyard_context_bytes_received_total", ())] == 12
    workers = {labels: value for (name, labels), value in samples.items()
               if name == "dockyard_workers" and value}
    assert workers == {
        (("arch", "amd64"), ("mode", "native"), ("state", "idle")): 1,
        (("arch", "amd64"), ("mode", "native"), ("state", "busy")): 1,
        (("arch", "arm64"), ("mode", "native"), ("state", "idle")): 1}
