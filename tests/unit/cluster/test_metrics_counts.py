"""The coordinator's metrics (cluster/_metrics.py) counted over FAKE workers (the fakes of
test_coordinator.py: no Ray, no runc): each vertex of each build once -- run for it
(executed), run once for another build at the same time (deduplicated), failed -- and
builds by status, read back from the exposition with prometheus_client's parser."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from test_coordinator import FakeWorker, items_of, request

from cluster._coordinator import Coordinator


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
