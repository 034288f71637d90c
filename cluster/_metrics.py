"""The cluster's Prometheus metrics: one scrape of the endpoint's ``/metrics`` sees them all.

The coordinator holds a ``ClusterMetrics`` and counts what passes through it as it happens:

- builds, by tenant and status, and their durations (``Coordinator._queued_build``);
- each vertex of each build, once, by arch and outcome (``BuildCounts``, the build's event
  sink): ``cached`` (answered by a record, or not needed because its users were),
  ``executed`` (run for this build), ``deduplicated`` (run once for another build that
  needed the same key at the same time), ``failed``; plus ``retried``, one per re-run of
  a vertex whose worker died or whose input layer was lost (cluster/_dispatch.py);
- executions by op kind and arch (durations), native or emulated, and the vertices
  waiting for a worker slot and running now, per arch (cluster/_dispatch.py).

On a scrape (``Coordinator.metrics``) it adds what only the workers know, asked of every
live worker at once with a short timeout (a worker that does not answer in time is left
out of that scrape, never waited for): cache requests by backend and result, bytes moved
to and from remote caches, context bytes received (workers/_metrics.py), and the workers
per arch and state from its registry.

Label values are bounded: arches (``ARCHES``, else ``other``), op kinds, outcomes, states,
backend kinds, the tenant.  Never a build id, an image name or a worker name.  The tenant
is ``default``: the endpoint has one token, without a name.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from dockyard.scheduler._graph import BuildGraph, Vertex
from dockyard.scheduler._platform import default_platform
from dockyard.scheduler._progress import Event, VertexCached, VertexCompleted, VertexFailed

from ._ray import ARCHES
from ._registry import WorkerEntry

if TYPE_CHECKING:  # the coordinator's process needs no HTTP server (its start-up time)
    from aiohttp import web

__all__ = ["CONTENT_TYPE", "METRICS_PATH", "TENANT", "BuildCounts", "ClusterMetrics",
           "MetricsPage", "metric_arch", "run_metrics"]

METRICS_PATH = "/metrics"
#: How long ``/metrics`` waits for the coordinator's exposition (seconds).
SCRAPE_TIMEOUT = 8.0

#: The text exposition's content type (format 0.0.4).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: The tenant of every build: the endpoint's token has no name (one token per endpoint).
TENANT = "default"
OUTCOMES = ("executed", "cached", "deduplicated", "failed", "retried")
BUILD_STATUSES = ("succeeded", "failed", "cancelled")
OP_KINDS = ("source", "exec", "file", "merge")
WORKER_STATES = ("idle", "busy", "full")
#: The GC kinds a worker reports (workers/_gc_policy.py KINDS): the only label values taken.
_GC_KINDS = frozenset({"image", "exec", "context", "cachemount"})
_BUILD_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, float("inf"))
_VERTEX_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, float("inf"))


def metric_arch(vertex: Vertex) -> str:
    """The ``arch`` label of ``vertex``: its platform's (the coordinator's when it has
    none), ``other`` for any arch no worker runs (bounded whatever the user asked)."""
    arch = (vertex.platform or default_platform()).architecture
    return arch if arch in ARCHES else "other"


class ClusterMetrics:
    """The coordinator's metrics (a registry of its own: never the process's default)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.builds = Counter("dockyard_builds", "Builds that ended, by tenant and status",
                              ["tenant", "status"], registry=r)
        self.build_seconds = Histogram(
            "dockyard_build_duration_seconds", "Wall time of a build, by tenant and status",
            ["tenant", "status"], buckets=_BUILD_BUCKETS, registry=r)
        self.vertices = Counter(
            "dockyard_vertices", "Vertices of builds by arch and outcome (retried: re-runs)",
            ["arch", "outcome"], registry=r)
        self.vertex_seconds = Histogram(
            "dockyard_vertex_duration_seconds", "Execution time of a vertex, by op kind "
            "and arch", ["op", "arch"], buckets=_VERTEX_BUCKETS, registry=r)
        self.executions = Counter(
            "dockyard_executions", "Vertex executions by arch, natively or emulated (QEMU)",
            ["arch", "mode"], registry=r)
        self.queued = Gauge("dockyard_vertices_queued",
                            "Vertices waiting for a worker slot, by arch", ["arch"], registry=r)
        self.running = Gauge("dockyard_vertices_running", "Vertices executing now, by arch",
                             ["arch"], registry=r)
        for arch in (*ARCHES, "other"):
            self.queued.labels(arch)
            self.running.labels(arch)
            for outcome in OUTCOMES:
                self.vertices.labels(arch, outcome)
            for mode in ("native", "emulated"):
                self.executions.labels(arch, mode)
        for status in BUILD_STATUSES:
            self.builds.labels(TENANT, status)
        self._scrape = _ScrapeCollector()  # what the last scrape asked of the workers
        r.register(self._scrape)

    # -- builds --

    def build_ended(self, status: str, seconds: float, tenant: str = TENANT) -> None:
        self.builds.labels(tenant, status).inc()
        self.build_seconds.labels(tenant, status).observe(seconds)

    # -- vertices (cluster/_dispatch.py) --

    def vertex(self, vertex: Vertex, outcome: str) -> None:
        self.vertices.labels(metric_arch(vertex), outcome).inc()

    @contextmanager
    def waiting(self, vertex: Vertex) -> Iterator[None]:
        """``vertex`` waits for a worker slot inside this block."""
        gauge = self.queued.labels(metric_arch(vertex))
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()

    @contextmanager
    def executing(self, vertex: Vertex, emulated: bool) -> Iterator[None]:
        """``vertex`` executes inside this block; its time is observed if it succeeds."""
        arch = metric_arch(vertex)
        self.executions.labels(arch, "emulated" if emulated else "native").inc()
        gauge = self.running.labels(arch)
        gauge.inc()
        began = self.clock()
        try:
            yield
        finally:
            gauge.dec()
        self.vertex_seconds.labels(vertex.op.kind, arch).observe(self.clock() - began)

    # -- the scrape --

    def exposition(self, workers: Sequence[WorkerEntry], lost: int,
                   reports: Iterable[Mapping[str, Any]]) -> bytes:
        """The text exposition, with the registry's ``workers`` (and ``lost``, the
        workers found dead so far) and the workers' ``reports`` (workers/_metrics.py)."""
        self._scrape.set(workers, lost, list(reports))
        return generate_latest(self.registry)


class BuildCounts:
    """One build's vertices counted as its event sink sees them end: each vertex once
    (``cached``, ``executed`` when this build's backend ran it -- ``ran`` --, else
    ``deduplicated``, or ``failed``), by the arch of the graph's vertex."""

    def __init__(self, metrics: ClusterMetrics) -> None:
        self._metrics = metrics
        self.graph: BuildGraph | None = None  # set once the frontend made it
        self.ran: set[str] = set()  # vertex digests this build's backend executed

    def count(self, event: Event) -> None:
        if self.graph is None:
            return
        vertex = self.graph.vertices.get(getattr(event, "vertex", ""))
        if vertex is None:
            return
        if isinstance(event, VertexCached):
            self._metrics.vertex(vertex, "cached")
        elif isinstance(event, VertexCompleted):
            self._metrics.vertex(vertex, "executed" if vertex.digest in self.ran
                                 else "deduplicated")
        elif isinstance(event, VertexFailed) and not event.cancelled:
            self._metrics.vertex(vertex, "failed")


class _ScrapeCollector:
    """The families known only at a scrape: workers per arch and state, and the
    workers' own counts (summed over the workers that answered)."""

    def __init__(self) -> None:
        self._workers: Sequence[WorkerEntry] = ()
        self._lost = 0
        self._reports: list[Mapping[str, Any]] = []

    def set(self, workers: Sequence[WorkerEntry], lost: int,
            reports: list[Mapping[str, Any]]) -> None:
        self._workers, self._lost, self._reports = workers, lost, reports

    def describe(self) -> list[Metric]:
        return []  # families known only when collected: never checked for duplicates

    def collect(self) -> Iterator[Metric]:
        yield self._worker_states()
        lost = CounterMetricFamily("dockyard_workers_lost",
                                   "Workers the coordinator found dead")
        lost.add_metric([], self._lost)
        yield lost
        yield self._reported()
        yield from self._summed()

    def _worker_states(self) -> GaugeMetricFamily:
        family = GaugeMetricFamily("dockyard_workers", "Live workers by the arch they run, "
                                   "native or emulated, and their state",
                                   labels=["arch", "mode", "state"])
        counts = {(arch, mode, state): 0 for arch in ARCHES
                  for mode in ("native", "emulated") for state in WORKER_STATES}
        for worker in self._workers:
            state = ("idle" if worker.running <= 0 else
                     "full" if worker.running >= worker.slots else "busy")
            for arch in worker.arches:
                mode = "native" if arch in worker.native else "emulated"
                key = (arch if arch in ARCHES else "other", mode, state)
                counts[key] = counts.get(key, 0) + 1
        for labels, value in sorted(counts.items()):
            family.add_metric(list(labels), value)
        return family

    def _reported(self) -> GaugeMetricFamily:
        family = GaugeMetricFamily("dockyard_workers_reporting",
                                   "Workers whose own counts this scrape includes")
        family.add_metric([], len(self._reports))
        return family

    def _summed(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "dockyard_cache_requests", "Cache lookups by backend kind, object and result "
            "(hit, miss); backend 'worker' is a node's own store", labels=["backend",
                                                                           "object", "result"])
        moved = CounterMetricFamily(
            "dockyard_cache_bytes", "Blob bytes read from and written to remote caches, by "
            "backend kind", labels=["backend", "direction"])
        context = CounterMetricFamily("dockyard_context_bytes_received",
                                      "Build-context bytes workers received from clients")
        cache: dict[tuple[str, ...], int] = {}
        bytes_moved: dict[tuple[str, ...], int] = {}
        received = 0
        for report in self._reports:
            _add_rows(cache, report.get("cache"), 3)
            _add_rows(bytes_moved, report.get("cache_bytes"), 2)
            value = report.get("context_bytes", 0)
            received += value if isinstance(value, int) else 0
        for labels, value in sorted(cache.items()):
            requests.add_metric(list(labels), value)
        for labels, value in sorted(bytes_moved.items()):
            moved.add_metric(list(labels), value)
        context.add_metric([], received)
        yield requests
        yield moved
        yield context
        yield from self._gc()

    def _gc(self) -> Iterator[Metric]:
        """The workers' background collectors (workers/_gc.py), summed: runs by status,
        items and bytes removed by kind."""
        runs = CounterMetricFamily("dockyard_gc_runs", "Background GC runs of the workers, "
                                   "by status", labels=["status"])
        items = CounterMetricFamily("dockyard_gc_removed_items", "Items the workers' GC "
                                    "removed, by kind", labels=["kind"])
        size = CounterMetricFamily("dockyard_gc_removed_bytes", "Bytes the workers' GC "
                                   "removed, by kind", labels=["kind"])
        done = failed = 0
        removed: dict[tuple[str, ...], list[int]] = {}
        for report in self._reports:
            gc = report.get("gc")
            if not isinstance(gc, dict):
                continue  # a worker of an earlier version
            done += gc.get("runs", 0) if isinstance(gc.get("runs"), int) else 0
            failed += gc.get("failures", 0) if isinstance(gc.get("failures"), int) else 0
            for row in gc.get("removed", ()):
                if (isinstance(row, list) and len(row) == 3 and isinstance(row[0], str)
                        and row[0] in _GC_KINDS and all(isinstance(v, int) for v in row[1:])):
                    kept = removed.setdefault((row[0],), [0, 0])
                    kept[0] += row[1]
                    kept[1] += row[2]
        runs.add_metric(["succeeded"], done)
        runs.add_metric(["failed"], failed)
        for labels, (count, total) in sorted(removed.items()):
            items.add_metric(list(labels), count)
            size.add_metric(list(labels), total)
        yield runs
        yield items
        yield size


class MetricsPage:
    """``GET /metrics`` over a coordinator (anything with ``async call("metrics")``): its
    exposition, or a 503 saying only that it did not answer."""

    def __init__(self, coordinator: Any) -> None:
        self._coordinator = coordinator

    def routes(self, app: web.Application) -> None:
        app.router.add_get(METRICS_PATH, self.metrics)

    async def metrics(self, request: web.Request) -> web.Response:
        from aiohttp import web  # noqa: PLC0415 -- see the imports

        try:
            async with asyncio.timeout(SCRAPE_TIMEOUT):
                body = await self._coordinator.call("metrics")
        except Exception:  # noqa: BLE001 -- said without detail: the endpoint's log has it
            return web.Response(status=503, text="the coordinator did not answer\n")
        return web.Response(body=bytes(body), headers={"Content-Type": CONTENT_TYPE})


def run_metrics(args: argparse.Namespace) -> int:
    """``dockyard metrics``: the local service's exposition on stdout (the same text as an
    endpoint's ``/metrics``); an error when no service runs for the root (none is started:
    a new one would have nothing to show)."""
    from ._build_cmd import _settings  # noqa: PLC0415
    from ._service import connect  # noqa: PLC0415

    del args

    async def fetch() -> bytes:
        client = await connect(_settings(os.environ), start=False)
        try:
            return bytes(await client.call("metrics"))
        finally:
            await client.close()

    sys.stdout.buffer.write(asyncio.run(fetch()))
    sys.stdout.flush()
    return 0


def _add_rows(into: dict[tuple[str, ...], int], rows: Any, width: int) -> None:
    """Sum a report's ``[label, ..., count]`` rows into ``into`` (malformed rows skipped)."""
    for row in rows if isinstance(rows, list) else ():
        if (isinstance(row, list) and len(row) == width + 1 and isinstance(row[-1], int)
                and all(isinstance(label, str) for label in row[:-1])):
            key = tuple(row[:-1])
            into[key] = into.get(key, 0) + row[-1]
