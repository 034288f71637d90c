"""The coordinator actor: one async actor per cluster that owns builds and their event
streams, and decides (DESIGN.md): it runs the frontend (Dockerfile -> BuildGraph) and the
solver, and sends each vertex to a worker actor of the vertex's architecture.  It does no
registry or file I/O of its own: base images are resolved, identities and checksums
computed, vertices executed, records kept and images exported by workers.  The one file
it writes is each build's record when the build ends (cluster/_history.py: its request,
events, the worker of each vertex and its outcome; ``history`` answers
``dockyard history``), when it was given a ``history`` directory.

``solve(request)`` is an async generator of plain maps, one of::

    {"event": <progress event wire map>}      news of the build, in order
    {"result": <msgpack-able value>}          the last item of a build that succeeded
    {"failure": <wire Failure fields>}        the last item of a build that failed

so errors cross Ray as data (keyword-only error attributes do not survive pickling).

A build request (``{"dockerfile", "options", "session"}``, see cluster/_build_cmd.py):

1. ``open_session`` on every worker: the session part (secret values, ssh sockets) goes
   there and nowhere else (not logged, not kept here); the worker answers the context's
   ``.dockerignore`` patterns;
2. the frontend, in a thread, its base images resolved by the worker of their platform;
3. the shared ``Solver`` (one for every build this coordinator runs: vertices with equal
   cache keys run once for all of them) over a ``DispatchBackend`` and the build's own
   ``WorkerRecords`` (its ``--cache-from``/``--cache-to`` live on the worker, cluster/
   _dispatch.py); workers' events stream back through it to this build's stream;
4. ``export`` on the worker holding most of the images' layers (it fetches the others
   from their holders), then ``close_session`` everywhere.
   An export that finds a cached layer lost (``BlobLost``: missing or corrupt in the
   cache it was imported from) re-solves with ``rebuild=`` those layers and exports once
   more: a lost blob is a cache miss, never a failed build.  An export whose worker died
   (``WorkerLost``) runs again once a worker is back (Ray restarts a killed one), with a
   warning; ``ATTEMPTS`` exports in all.

A request without ``options`` is the echo the service's own tests use
(``request["lines"]``, ``request["delay"]``).

Cancellation: cancelling a ``solve`` (Ray cancels the actor's asyncio task) cancels the
build's task -- the solver cancels its flights, each cancelling its worker call -- and
waits for ``close_session``, which cancels and awaits what still runs on the workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from dockyard.cache_backends._records import CacheRecord, LayerDescriptor, StateResult
from dockyard.scheduler._errors import BlobLost, DockyardError, SolveError, UsageError, WorkerLost
from dockyard.scheduler._graph import BuildGraph, Ulimit, Vertex
from dockyard.scheduler._platform import Platform, parse_platform
from dockyard.scheduler._progress import (
    Event,
    EventSink,
    VertexCached,
    VertexCompleted,
    VertexStarted,
    event_to_wire,
    warning,
)
from dockyard.scheduler._solver import Solver
from dockyard.scheduler.dockerfile._convert._model import BaseImage
from dockyard.workers._logs import configure_logging, set_log_ids

from ._build_options import BuildOptions
from ._build_steps import BuildSteps
from ._dispatch import (
    ATTEMPTS,
    REJOIN_TIMEOUT,
    BuildSessions,
    ClusterRecords,
    DispatchBackend,
    WorkerHandle,
    failure_map,
    forward_events,
    roots_of,
    unwrap,
)
from ._frontend import FrontendRequest, base_image, run_frontend
from ._history import BuildRecorder, HistoryStore, Retention, answer
from ._metrics import BuildCounts, ClusterMetrics
from ._ray import ARCHES, ActorRef, discover_workers
from ._registry import Placement, Registry, WorkerEntry

__all__ = ["Coordinator"]

_log = logging.getLogger(__name__)

ECHO_VERTEX = "sha256:" + "0" * 64  # the echo's stand-in vertex digest
ECHO_NAME = "[internal] echo"
_DONE = object()  # ends a build's queue
#: buildx's ``--metadata-file`` key naming the build: ``BUILDER/NODE/REF`` (dockyard, the
#: exporting worker, the build's id).
BUILD_REF_KEY = "buildx.build.ref"
REFRESH_SECONDS = 1.0  # how often the registry looks for workers that joined or left
#: How long a scrape waits for the workers' own counts (one that is later is left out).
METRICS_TIMEOUT = 2.0


async def _ray_discover() -> Mapping[str, Any]:
    """The cluster's worker actors, by name (Ray's named actors; blocking calls)."""
    return await asyncio.to_thread(discover_workers)


class _BuildSink:
    """One build's ``EventSink``: queues each event's wire map (never blocks), counts the
    build's cached and executed vertices (also in the cluster's metrics) and hands each
    event to the build's record."""

    def __init__(self, queue: asyncio.Queue[object], counts: BuildCounts,
                 recorder: BuildRecorder | None = None) -> None:
        self._queue = queue
        self.counts = counts  # the metrics' view of this build's vertices
        self._recorder = recorder  # the build's record (None: an unrecorded build)
        self.cached = 0  # VertexCached events of this build
        self.executed = 0  # VertexCompleted events of this build

    def emit(self, event: Event) -> None:
        self.cached += isinstance(event, VertexCached)
        self.executed += isinstance(event, VertexCompleted)
        self.counts.count(event)
        self._queue.put_nowait({"event": event_to_wire(event)})
        if self._recorder is not None:
            self._recorder.observe(event)

    @property
    def uncounted(self) -> EventSink:
        """This sink without the counting: the build's own steps (cluster/_build_steps.py)
        are no vertices of its graph."""
        return _Uncounted(self._queue, self._recorder)


class _Uncounted:
    def __init__(self, queue: asyncio.Queue[object], recorder: BuildRecorder | None) -> None:
        self._queue = queue
        self._recorder = recorder

    def emit(self, event: Event) -> None:
        self._queue.put_nowait({"event": event_to_wire(event)})
        if self._recorder is not None:
            self._recorder.observe(event)


class _NoBackend:
    """The shared solver's default backend: every build passes its own."""

    async def source_identity(self, vertex: Vertex) -> str:
        raise SolveError("a build reached the solver without its backend")

    async def content_checksum(self, vertex: Vertex, input_index: int, source: Vertex,
                               selector: Any) -> str:
        raise SolveError("a build reached the solver without its backend")

    async def execute(self, vertex: Vertex, inputs: Sequence[StateResult],
                      events: Any) -> StateResult:
        raise SolveError("a build reached the solver without its backend")


class _NoRecords:
    """The shared solver's default record cache: every build passes its own."""

    async def get(self, key: str) -> CacheRecord | None:
        raise SolveError("a build reached the solver without its record cache")

    async def put(self, record: CacheRecord) -> None:
        raise SolveError("a build reached the solver without its record cache")


class Coordinator:
    """Builds and their event streams, over the workers of a ``Registry``.

    Constructed by Ray with ``discover=True`` (the workers are the cluster's named worker
    actors, cluster/_ray.py ``discover_workers``), or with one worker's handle (an
    ``ActorRef``, a raw Ray handle, or a fake with ``call``/``stream``) serving ``arches``,
    or with a ``Registry`` of fakes (tests)."""

    def __init__(self, worker: Any = None, arches: Sequence[str] = ARCHES, *,
                 discover: bool = False, registry: Registry | None = None,
                 history: Mapping[str, Any] | None = None) -> None:
        if registry is None:
            registry = Registry(_ray_discover if discover else None)
        if worker is not None:
            handle: WorkerHandle = worker if hasattr(worker, "stream") else ActorRef(
                worker, "worker")
            registry.add("worker", handle, {"arches": list(arches), "native": list(arches)})
        self._registry = registry  # the live workers and where the blobs are
        self._placement = Placement(registry)
        self._solver = Solver(_NoBackend(), _NoRecords())  # shared by all builds
        self._active: dict[int, str] = {}  # solve number -> what it does; running solves
        self._next = 0  # number of the next solve
        self._completed = 0  # solves that ended with a result or a failure
        self._cancelled = 0  # solves stopped by cancellation
        self._frontends = 0  # frontends running (in their threads); 0 once their build ends
        self._watch: asyncio.Task[None] | None = None  # the registry's periodic refresh
        # The build records (``history``: {"directory", "max_records", "max_age"}; None:
        # builds are not recorded) and the records of the builds running now, by id.
        self._history = (HistoryStore(Path(history["directory"]), Retention.from_wire(history))
                         if history else None)
        self._recording: dict[str, BuildRecorder] = {}
        self._metrics = ClusterMetrics()  # what /metrics shows (cluster/_metrics.py)
        configure_logging(sys.stderr)  # the actor's log (workers/_logs.py): JSON lines
        # This coordinator process, named in each build it opens on a worker: a worker
        # closes the builds of a dead predecessor when it sees another one.
        self.incarnation = uuid.uuid4().hex

    async def ping(self) -> dict[str, Any]:
        """This coordinator, and one worker's ping (None while the cluster has none)."""
        await self._refreshed()
        worker = (await self._placement.any_worker().handle.call("ping")
                  if self._registry.entries else None)
        return {"pid": os.getpid(), "worker": worker, "workers": len(self._registry.entries)}

    async def workers(self) -> list[dict[str, Any]]:
        """The live workers as the registry knows them (``dockyard node ls`` through the
        endpoint)."""
        await self._refreshed()
        return [{"name": w.name, "node_ip": w.node_ip, "arches": list(w.arches),
                 "native": list(w.native), "slots": w.slots, "running": w.running,
                 "executed": w.executed, "root": w.root} for w in self._registry.live()]

    async def statistics(self) -> dict[str, Any]:
        await self._refreshed()
        worker = await self._placement.any_worker().handle.call("statistics")
        solver = self._solver.statistics()
        return {"active": len(self._active), "completed": self._completed,
                "cancelled": self._cancelled, "frontends": self._frontends, "worker": worker,
                "workers": {w.name: {"running": w.running, "executed": w.executed}
                            for w in self._registry.live()},
                "lost_workers": list(self._registry.lost_names),
                "solver": {"executed": solver.executed, "cached": solver.cached,
                           "in_flight": solver.in_flight}}

    async def history(self, params: Mapping[str, Any]) -> Any:
        """``dockyard history``'s requests (cluster/_history.py ``answer``) over this
        coordinator's records and those of the builds it runs now."""
        if self._history is None:
            raise UsageError("this dockyard service keeps no build records")
        running = [recorder.record() for recorder in self._recording.values()]
        return await asyncio.to_thread(answer, self._history, dict(params), running)

    async def metrics(self) -> bytes:
        """The cluster's metrics in Prometheus' text format: this coordinator's counts,
        its registry's workers, and each live worker's own counts (those that answer
        within ``METRICS_TIMEOUT``, asked all at once)."""
        await self._refreshed()
        live = self._registry.live()
        reports = await asyncio.gather(*(_report(w.handle) for w in live))
        return self._metrics.exposition(live, len(self._registry.lost_names),
                                         [r for r in reports if r is not None])

    async def _refreshed(self) -> None:
        """The registry up to date, and kept so while this actor lives."""
        if self._watch is None:
            self._watch = asyncio.ensure_future(self._keep_watching())
        await self._registry.refresh()

    async def _keep_watching(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            with contextlib.suppress(Exception):  # a failed look is tried again
                await self._registry.refresh()

    async def solve(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        number, self._next = self._next, self._next + 1
        self._active[number] = "build" if "options" in request else "echo"
        try:
            async for item in self._guarded(request):
                yield item
            self._completed += 1
        except (asyncio.CancelledError, GeneratorExit):
            self._cancelled += 1
            raise
        finally:
            del self._active[number]

    async def _guarded(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The request's items; a ``DockyardError`` becomes the final ``failure`` item."""
        try:
            items = self._build(request) if "options" in request else self._echo(request)
            async for item in items:
                yield item
        except DockyardError as error:
            yield {"failure": failure_map(error)}

    # -- builds --

    async def _build(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The build's events as they come, then its result (or its error, raised)."""
        queue: asyncio.Queue[object] = asyncio.Queue()
        build_id = uuid.uuid4().hex
        recorder = BuildRecorder(build_id, request, time.time()) if self._history else None
        sink = _BuildSink(queue, BuildCounts(self._metrics), recorder)
        task = asyncio.ensure_future(self._queued_build(build_id, request, sink, queue,
                                                        recorder))
        try:
            while (item := await queue.get()) is not _DONE:
                yield item  # type: ignore[misc]
        except (asyncio.CancelledError, GeneratorExit):
            task.cancel()
            await asyncio.wait([task])  # its sessions closed: nothing left running
            raise

    async def _queued_build(self, build_id: str, request: dict[str, Any], sink: _BuildSink,
                            queue: asyncio.Queue[object],
                            recorder: BuildRecorder | None) -> None:
        """The build, its last item (result or failure) queued once its record is kept:
        a client that saw its build end finds the record.  ``_recording`` holds the record
        until then (completed, failed or cancelled)."""
        if recorder is not None:
            self._recording[build_id] = recorder
        last: dict[str, Any] | None = None  # the result or failure item
        began, status = self._metrics.clock(), "failed"
        try:
            result = await self._run_build(build_id, request, sink, recorder)
            result["statistics"] = {"executed": sink.executed, "cached": sink.cached}
            last = {"result": result}
            status = "succeeded"
            _finish(recorder, "completed", result=result)
        except DockyardError as error:
            last = {"failure": failure_map(error)}
            _finish(recorder, "error", error=str(error))
        except asyncio.CancelledError:
            status = "cancelled"
            _finish(recorder, "canceled", error="the build was cancelled")
            raise
        finally:
            seconds = self._metrics.clock() - began
            self._metrics.build_ended(status, seconds)
            _log.info("build %s in %.1fs: %d vertices executed, %d cached", status, seconds,
                      sink.executed, sink.cached)
            if recorder is not None:
                _finish(recorder, "error", error="the build ended without a result")
                await _shielded(self._write_record(recorder))
                del self._recording[build_id]
            if last is not None:
                queue.put_nowait(last)
            queue.put_nowait(_DONE)

    async def _write_record(self, recorder: BuildRecorder) -> None:
        """Keep the record: a record that cannot be kept (a full disk) is logged, never
        the build's error."""
        assert self._history is not None
        try:
            await asyncio.to_thread(self._history.write, recorder.record())
        except Exception as exc:  # noqa: BLE001 -- bookkeeping must not fail a build
            _log.warning("cannot keep the record of build %s in %s: %s", recorder.build_id,
                         self._history.directory, exc)

    async def _run_build(self, build_id: str, request: dict[str, Any], sink: _BuildSink,
                         recorder: BuildRecorder | None) -> dict[str, Any]:
        set_log_ids(build=build_id)  # this build's task: its lines name the build
        await self._refreshed()
        part = {"options": request["options"], "session": request.get("session", {}),
                "coordinator": self.incarnation, "started": time.time()}
        sessions = BuildSessions(build_id, part, self._placement)
        steps = BuildSteps(sink.uncounted, build_id)
        try:
            options = BuildOptions.from_wire(request["options"])
            graph = await self._frontend(request["dockerfile"], options, part["session"],
                                         sessions, steps)
            self._placement.check(graph)
            sink.counts.graph = graph
            backend = DispatchBackend(sessions, self._metrics, sink.counts.ran)
            if recorder is not None:
                backend.ran_on = recorder.nodes  # the record names each vertex's worker
            solve = functools.partial(
                self._solver.solve, graph, no_cache=options.no_cache, events=sink,
                backend=backend, cache=ClusterRecords(sessions, sink))
            records = await solve()
            return await self._exports(sessions, graph, records, sink, solve, steps,
                                       options)
        finally:
            await _shielded(sessions.close())

    async def _exports(self, sessions: BuildSessions, graph: BuildGraph,
                       records: Mapping[str, CacheRecord], sink: _BuildSink, solve: Any,
                       steps: BuildSteps, options: BuildOptions) -> dict[str, Any]:
        """``_export``, again after a lost layer (rebuilt) or a lost worker; the exporter
        vertices shown once it is done (or failed)."""
        steps.exporting(options.outputs)
        try:
            for _ in range(ATTEMPTS - 1):
                try:
                    result = await self._export(sessions, graph, records, sink)
                    break
                except BlobLost as lost:  # an output needs a cached layer that is gone
                    records = await solve(rebuild=frozenset(lost.digests))
                except WorkerLost as lost:  # the exporting worker died: export again
                    sink.emit(warning("export", f"{lost.message}: exporting again"))
                    await self._worker_back()
            else:
                result = await self._export(sessions, graph, records, sink)
        except DockyardError as error:
            steps.export_failed(options.outputs, error.message)
            raise
        sent = result.get("sent")
        steps.exported(options.outputs, result.get("metadata") or {},
                       sent if isinstance(sent, Mapping) else None)
        return result

    async def _frontend(self, dockerfile: bytes, options: BuildOptions,
                        session: Mapping[str, Any], sessions: BuildSessions,
                        steps: BuildSteps) -> BuildGraph:
        """The build's graph; counted in ``frontends`` until its thread has ended (a
        cancelled build's frontend stops at its next step, see ``run_frontend``).  The
        steps of loading the definition are shown once it ran (its warnings known)."""
        self._frontends += 1
        ignore_size = session.get("ignore_size", 0) if isinstance(session, Mapping) else 0
        loaded = functools.partial(steps.loaded, options.filename, len(dockerfile),
                                   ignore_size if isinstance(ignore_size, int) else 0)
        try:
            frontend = await run_frontend(dockerfile, _frontend_request(options),
                                          _ignore_patterns(session),
                                          self._resolver(sessions, steps,
                                                         len(options.platforms) > 1))
        except DockyardError:
            loaded()
            raise
        finally:
            self._frontends -= 1
        loaded(frontend.warnings, frontend.notices)
        return frontend.graph

    async def _worker_back(self) -> None:
        """Refresh the registry until it has a live worker again (Ray restarts a killed
        one in seconds), at most ``REJOIN_TIMEOUT``; the export then refuses or goes on."""
        await self._registry.rejoined(REJOIN_TIMEOUT)

    async def _export(self, sessions: BuildSessions, graph: BuildGraph,
                      records: Mapping[str, CacheRecord], sink: _BuildSink
                      ) -> dict[str, Any]:
        """The images written by the worker holding most of their layers (it fetches the
        others from their holders): the build's result."""
        roots = roots_of(graph, records)
        layers = [layer for root in graph.results if root.root is not None
                  for layer in records[root.root].result.layers]
        worker = self._exporter(layers)
        await sessions.open(worker)
        peers = self._registry.index.peers_for(worker.name, layers)
        try:
            item = await worker.handle.call("export", sessions.build_id, graph.to_msgpack(),
                                            roots, peers)
        except WorkerLost:
            sessions.lost(worker)
            raise
        result: dict[str, Any] = unwrap(forward_events(item, sink))
        metadata = result.setdefault("metadata", {})
        metadata[BUILD_REF_KEY] = f"dockyard/{worker.name}/{sessions.build_id}"
        return result

    def _exporter(self, layers: Sequence[LayerDescriptor]) -> WorkerEntry:
        live = self._registry.live()
        if not live:
            return self._placement.any_worker()
        index = self._registry.index
        return max(live, key=lambda w: (index.held_bytes(w.name, layers), w.free))

    def _resolver(self, sessions: BuildSessions, steps: BuildSteps, platformed: bool
                  ) -> Any:
        """The frontend's base-image questions, answered by the build's home worker, each
        once per build (40 stages of one base asked it 40 times: a Ray call each, 0.2 s
        of a cached rebuild; a tag moves between builds, never within one), each a
        ``load metadata`` step (``platformed``: named with its platform)."""
        answers: dict[tuple[str, str], asyncio.Future[BaseImage]] = {}

        async def ask(ref: str, platform: str) -> BaseImage:
            done = steps.resolving(ref, platform if platformed else None)
            try:
                image = await sessions.on_home("resolve_image", ref, platform)
            except DockyardError as error:
                done(error.message)
                raise
            done("")
            return base_image(str(image["digest"]), bytes(image["config"]))

        async def resolve(ref: str, platform: Platform) -> BaseImage:
            key = (ref, str(platform))
            known = answers.get(key)
            if known is None or (known.done() and (known.cancelled() or known.exception())):
                known = answers[key] = asyncio.ensure_future(ask(*key))
            return await asyncio.shield(known)
        return resolve

    # -- the echo --

    async def _echo(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        began = time.time()
        yield {"event": event_to_wire(VertexStarted(ECHO_VERTEX, ECHO_NAME, began))}
        await self._refreshed()
        stream = self._placement.any_worker().handle.stream("echo", ECHO_VERTEX, request)
        try:
            async for event in stream:
                yield {"event": event}
        except (asyncio.CancelledError, GeneratorExit):
            stream.cancel()
            raise
        done = VertexCompleted(ECHO_VERTEX, ECHO_NAME, time.time() - began)
        yield {"event": event_to_wire(done)}
        yield {"result": {"echo": request.get("message"), "coordinator": os.getpid()}}

    def __repr__(self) -> str:
        return (f"<Coordinator active={len(self._active)} completed={self._completed} "
                f"cancelled={self._cancelled} {self._placement!r}>")


def _finish(recorder: BuildRecorder | None, status: str, **outcome: Any) -> None:
    """End ``recorder``'s record with ``status``, unless it has ended already."""
    if recorder is not None and recorder.status == "running":
        recorder.finish(status, **outcome)


def _ignore_patterns(session: Mapping[str, Any]) -> list[str]:
    """The ``.dockerignore`` patterns the client read (it has the files; the cluster
    never opens a client path)."""
    patterns = session.get("ignore_patterns") if isinstance(session, Mapping) else None
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        raise UsageError("the build request lists no .dockerignore patterns of its context",
                         hint="use the same dockyard version on the client and the cluster")
    return patterns


def _frontend_request(options: BuildOptions) -> FrontendRequest:
    return FrontendRequest(filename=options.filename,
                           platforms=tuple(parse_platform(p) for p in options.platforms),
                           target=options.target, build_args=dict(options.build_args),
                           allow=frozenset(options.allow),
                           ulimits=tuple(Ulimit(*limit) for limit in options.ulimits),
                           shm_size=options.shm_size, network=options.network,
                           extra_hosts=options.extra_hosts,
                           cgroup_parent=options.cgroup_parent,
                           no_cache_filter=options.no_cache_filter,
                           named_contexts=options.named_contexts,
                           labels=options.labels)


async def _report(worker: WorkerHandle) -> Any:
    """A worker's ``metrics`` report; None when it fails or is late (never waited for
    past ``METRICS_TIMEOUT``)."""
    try:
        async with asyncio.timeout(METRICS_TIMEOUT):
            report = await worker.call("metrics")
    except Exception:  # noqa: BLE001 -- a worker that cannot answer is left out of this scrape
        return None
    return report if isinstance(report, dict) else None


async def _shielded(cleanup: Any) -> None:
    """Run ``cleanup`` to its end even when the caller is being cancelled (then re-raise)."""
    task = asyncio.ensure_future(cleanup)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        raise
