"""The worker actor: one per node, a thin shell between the coordinator and the engine on
this machine.  It executes; it never parses a Dockerfile (the coordinator runs the
frontend and the solver).  Its roles live in plain classes tested without Ray: the builds
open here (workers/_worker_sessions.py), the export (workers/_worker_export.py), the
blobs handed to peers (workers/_peers.py); the actor forwards.

Every method takes and returns plain data (msgpack-able maps).  A plain call answers
``{"result": value}`` or ``{"failure": <error map>}``; a streaming call is an async
generator of ``{"event": <progress event wire map>}`` then one such answer (errors cross
Ray as data, scheduler/_errors.py ``error_to_wire``).

- ``open_session``/``close_session``: a build (by the coordinator's build id);
- ``resolve_image``: a base image for the frontend's resolver (digest and config);
- ``source_identity``, ``content_checksum``: what the solver's cache keys need;
- ``execute(vertex wire, input results wire, peers)``: one vertex, streaming its events;
- ``export(graph, records, peers)``: the images written, pushed and handed to the client;
- ``get_record``/``put_record``: the solver's record cache (the worker's disk; with a
  build id, also the build's ``--cache-from``/``--cache-to``); their warnings ride on
  the build's next record or export answer as ``"events"``;
- ``read_blob``: a blob for a peer worker; ``info``/``ping``/``statistics``; ``metrics``
  (this process's counts for the cluster's ``/metrics``); ``echo``
  (the service's own tests).

The actor runs the node's garbage collector (workers/_gc.py ``GcLoop``, with the
``gc`` settings it was made with: workers/_gc_policy.py ``GcSettings`` as a map) from its
first call on, and starts a run after each build; it leases to each open build what the
build looked up, read and made, so the collector never removes it while the build runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from dockyard.scheduler._errors import DockyardError, SolveError
from dockyard.scheduler._progress import Event, EventSink, VertexLog, event_to_wire

from ._gc import GcLoop, Leases
from ._gc_policy import GcSettings, with_cache_max
from ._gc_stats import gc_statistics
from ._janitor import RootLock, claim_root, log_report
from ._logs import configure_logging, set_log_ids

_log = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = ["WorkerActor"]

_DONE = object()  # ends a call's queue


def _claim(root: Path) -> RootLock:
    """The root's worker lock, after cleaning the root (one log line says what it found)."""
    lock, report = claim_root(root)
    log_report(root, report)
    return lock


class _QueueSink:
    """An ``EventSink`` that queues each event's wire map (never blocks)."""

    def __init__(self, queue: asyncio.Queue[object]) -> None:
        self._queue = queue

    def emit(self, event: Event) -> None:
        self._queue.put_nowait({"event": event_to_wire(event)})


class WorkerActor:
    """The worker side of one node."""

    def __init__(self, root: str, arches: list[str], native: list[str] | None = None,
                 slots: int | None = None, gc: dict[str, Any] | None = None) -> None:
        self.root = root  # the DOCKYARD_ROOT whose store this worker uses
        self.arches = tuple(arches)  # the architectures this node runs (native first)
        # The architectures this node runs without emulation (a subset of ``arches``).
        self.native = tuple(native) if native is not None else self.arches[:1]
        self.slots = slots or os.cpu_count() or 1  # vertices it executes at once (>= 1)
        self._running = 0  # streaming calls in progress (>= 0)
        self._completed = 0  # streaming calls that finished
        self._cancelled = 0  # streaming calls stopped by a cancellation
        self._runtime: Any = None  # the WorkerRuntime, made by the first session
        # Imported here, not with the module: Ray imports this module in every process
        # that receives a handle to the actor (the coordinator, the endpoint), which need
        # its methods, not the execution stack the sessions bring in (issue 10).
        from ._worker_sessions import SessionTable  # noqa: PLC0415

        self.sessions = SessionTable(Path(root), self._engine)  # the builds open here
        self.name = _actor_name()  # its Ray actor name ("" outside Ray)
        # (peer actor name, build id) -> its PeerBlobs, once made; dropped with the build.
        self._peers: dict[tuple[str, str | None], Any] = {}
        # <root>/run/worker.lock for the actor's life, taken once what a dead worker of the
        # root left (containers, mounts, bundles) is removed: a restarted actor cleans first.
        # INFO lines to the actor's stderr (Ray keeps it as the process's ``.err`` log;
        # nothing else sets logging up in an actor process), as JSON (workers/_logs.py).
        configure_logging(sys.stderr)
        self._root_lock = _claim(Path(root))
        # build id -> what it holds of the store; the collector leaves those alone
        self.leases = Leases()
        # the store's collector (started by the first call: it needs the event loop)
        self.gc = GcLoop(Path(root), with_cache_max(GcSettings.from_wire(gc)), self.leases)

    async def ping(self) -> dict[str, Any]:
        self.gc.start()
        return {"pid": os.getpid(), "root": self.root, "arches": list(self.arches),
                "time": time.time()}

    async def info(self) -> dict[str, Any]:
        """What the coordinator's registry and ``dockyard node ls`` show of this worker."""
        self.gc.start()
        return {"pid": os.getpid(), "name": self.name, "root": self.root,
                "arches": list(self.arches), "native": list(self.native),
                "slots": self.slots, "running": self._running,
                "node_ip": _node_ip(), "store_bytes": await asyncio.to_thread(
                    _store_bytes, Path(self.root))}

    # -- sessions --

    async def open_session(self, build_id: str, request: dict[str, Any]) -> dict[str, Any]:
        """Open build ``build_id`` (``request``: ``options`` and ``session`` of a build
        request); answers the build's epoch."""
        self.gc.start()
        self.leases.open(build_id)
        answer = await _answered(lambda: self.sessions.open(build_id, request))
        # builds closed on the way (a dead coordinator's) and a failed open hold nothing
        self.leases.retain(self.sessions.ids())
        return answer

    async def close_session(self, build_id: str) -> dict[str, Any]:
        """End build ``build_id`` (workers/_worker_sessions.py ``SessionTable.close``)."""
        await self.sessions.close(build_id)
        for key in [key for key in self._peers if key[1] == build_id]:
            del self._peers[key]
        self.leases.retain(self.sessions.ids())
        self.gc.kick()
        return {"result": None}

    def _session(self, build_id: str) -> Any:
        return self.sessions.get(build_id)

    # -- what the solver and the frontend ask --

    async def resolve_image(self, build_id: str, ref: str, platform: str) -> dict[str, Any]:
        """The base image ``ref`` for ``platform``: ``{"digest", "config"}``."""
        return await _answered(lambda: self._resolve_image(build_id, ref, platform))

    async def _resolve_image(self, build_id: str, ref: str, platform: str) -> dict[str, Any]:
        from dockyard.scheduler._platform import parse_platform  # noqa: PLC0415

        backend = self._session(build_id).backend
        image = await backend.resolve_image(ref, parse_platform(platform))
        return {"digest": image.index_digest or image.digest, "config": image.config}

    async def source_identity(self, build_id: str, vertex: dict[str, Any]) -> dict[str, Any]:
        from dockyard.scheduler._graph import vertex_from_wire  # noqa: PLC0415

        return await _answered(lambda: self._session(build_id).backend.source_identity(
            vertex_from_wire(vertex)))

    async def content_checksum(self, build_id: str, source: dict[str, Any],
                               selector: dict[str, Any]) -> dict[str, Any]:
        """The checksum of what ``selector`` reads of the context source ``source``."""
        from dockyard.scheduler._cachekey import selector_from_wire  # noqa: PLC0415
        from dockyard.scheduler._graph import vertex_from_wire  # noqa: PLC0415

        async def checksum() -> str:
            read = vertex_from_wire(source)
            backend = self._session(build_id).backend
            return str(await backend.content_checksum(read, 0, read,
                                                      selector_from_wire(selector)))
        return await _answered(checksum)

    async def content_checksums(self, build_id: str, sources: dict[str, dict[str, Any]],
                                items: list[list[Any]]) -> dict[str, Any]:
        """``content_checksum`` of many reads in one call (a build's keys ask for all of
        theirs at once): ``sources`` by digest, ``items`` ``[source digest, selector]``;
        the answer of each item in order (a failure belongs to its item alone)."""
        from dockyard.scheduler._cachekey import selector_from_wire  # noqa: PLC0415
        from dockyard.scheduler._graph import vertex_from_wire  # noqa: PLC0415

        async def all_of() -> list[dict[str, Any]]:
            backend = self._session(build_id).backend
            decoded = {digest: vertex_from_wire(wire) for digest, wire in sources.items()}

            async def one(digest: str, selector: dict[str, Any]) -> str:
                read = decoded[digest]
                return str(await backend.content_checksum(read, 0, read,
                                                          selector_from_wire(selector)))
            return list(await asyncio.gather(*(_answered(functools.partial(one, d, sel))
                                               for d, sel in items)))
        return await _answered(all_of)

    async def execute(self, build_id: str, vertex: dict[str, Any],
                      inputs: list[dict[str, Any]], peers: dict[str, str] | None = None
                      ) -> AsyncIterator[dict[str, Any]]:
        """Run one vertex of build ``build_id`` on its inputs' results: its events, then
        its result (a ``StateResult`` wire map) or failure.  ``peers``: layer digest ->
        the worker (actor name) holding a blob this worker lacks, fetched when needed."""
        async def run(sink: EventSink) -> dict[str, Any]:
            from dockyard.cache_backends._records import StateResult  # noqa: PLC0415
            from dockyard.scheduler._graph import vertex_from_wire  # noqa: PLC0415

            decoded = vertex_from_wire(vertex)
            set_log_ids(vertex=decoded.digest)  # this call's task: its lines name it
            results = [StateResult.from_wire(item) for item in inputs]
            self._lease(build_id, results)
            self._add_peers(peers, (layer for r in results for layer in r.layers), build_id)
            backend = self._session(build_id).backend
            result = await backend.execute(decoded, results, sink)
            self._lease(build_id, [result])
            return dict(result.to_wire())
        async for item in self._streamed(build_id, run):
            yield item

    # -- after the solve --

    async def export(self, build_id: str, graph: bytes, records: dict[str, bytes],
                     peers: dict[str, str] | None = None) -> dict[str, Any]:
        """The images of ``graph``'s results (``records``: their roots' records, stored
        form) written to the build's outputs and pushed; the build's result map.
        ``peers`` as for ``execute``."""
        return self._with_pending(build_id, await self._as_build(build_id, _answered(
            lambda: self._export(build_id, graph, records, peers))))

    async def _export(self, build_id: str, graph: bytes, records: dict[str, bytes],
                      peers: dict[str, str] | None) -> dict[str, Any]:
        from dockyard.cache_backends._records import CacheRecord  # noqa: PLC0415
        from dockyard.workers._worker_export import export_build  # noqa: PLC0415

        session = self._session(build_id)
        held = [CacheRecord.from_bytes(data) for data in records.values()]
        self._lease_keys(build_id, [record.key for record in held])
        self._lease(build_id, [record.result for record in held])
        if peers:
            layers = [layer for record in held for layer in record.result.layers]
            self._add_peers(peers, layers, build_id)
            await self._engine().ensure_blobs(layer for layer in layers
                                              if layer.digest in peers)
        return await export_build(self._engine(), session, graph, records)

    async def get_record(self, key: str, build_id: str | None = None) -> dict[str, Any]:
        """The record of ``key``: the local store's, or (``build_id`` given) also from the
        build's ``--cache-from`` (and pushed to its ``--cache-to`` in mode=max)."""
        async def get() -> bytes | None:
            self._lease_keys(build_id, [key])
            record = await self._records(build_id).get(key)
            return None if record is None else bytes(record.to_bytes())
        return self._with_pending(build_id, await self._as_build(build_id, _answered(get)))

    async def put_record(self, data: bytes, build_id: str | None = None) -> dict[str, Any]:
        from dockyard.cache_backends._records import CacheRecord  # noqa: PLC0415

        async def put() -> None:
            record = CacheRecord.from_bytes(data)
            self._lease_keys(build_id, [record.key])
            await self._records(build_id).put(record)
        return self._with_pending(build_id, await self._as_build(build_id, _answered(put)))

    def _lease(self, build_id: str, results: Any) -> None:
        """Build ``build_id`` holds the layers of ``results`` (blobs and unpacked)."""
        self._lease_keys(build_id, (name for result in results for layer in result.layers
                                    for name in (layer.digest, layer.diff_id)))

    def _lease_keys(self, build_id: str | None, names: Any) -> None:
        if build_id is not None and self.sessions.find(build_id) is not None:
            self.leases.add(build_id, names)

    def _with_pending(self, build_id: str | None, item: dict[str, Any]) -> dict[str, Any]:
        """``item`` with the build's unsent remote-cache events (``events``) when any."""
        session = self.sessions.find(build_id)
        events = session.pending.take() if session is not None else []
        if events:
            item["events"] = events
        return item

    def _records(self, build_id: str | None) -> Any:
        """The build's RecordCache (its remote caches), else the local store's."""
        session = self.sessions.find(build_id)
        if session is not None and session.records is not None:
            return session.records
        return self._engine().records()

    # -- blobs between workers --

    async def read_blob(self, digest: str, build_id: str | None = None
                        ) -> AsyncIterator[bytes | None]:
        """The local cache's blob ``digest`` in chunks, for a peer worker
        (workers/_peers.py) working for build ``build_id`` (a blob this worker imported a
        record of for that build is fetched through that build's caches first); a single
        None when this worker does not hold it (or it turns out corrupt: dropped here, as
        any verified read does)."""
        from dockyard.cache_backends._protocol import BlobCorrupt, BlobMissing  # noqa: PLC0415
        from dockyard.scheduler._errors import BlobLost  # noqa: PLC0415
        from dockyard.workers._peers import CHUNK_BYTES  # noqa: PLC0415

        try:
            await self._as_build(build_id, self._engine().ensure_digest(digest))
            stream = self._engine().blob_source().open_blob(digest)
        except (BlobMissing, BlobCorrupt, BlobLost):
            yield None
            return
        try:
            while chunk := await asyncio.to_thread(stream.read, CHUNK_BYTES):
                yield chunk
        except (BlobMissing, BlobCorrupt):
            yield None
        finally:
            stream.close()

    def _add_peers(self, peers: dict[str, str] | None, layers: Any,
                   build_id: str | None = None) -> None:
        """Fetch the blobs of ``layers`` named in ``peers`` when needed: from the build's
        shared caches first (``--cache-from``, a served cluster's ``--cache``), else from
        the peer worker named; a blob a cache already serves here is left to it."""
        if not peers:
            return
        from dockyard.workers._peers import FirstOf, PeerBlobs  # noqa: PLC0415

        session = self.sessions.find(build_id)
        caches = session.records.import_backends() if session and session.records else []
        engine = self._engine()
        for layer in layers:
            name = peers.get(layer.digest)
            if name is None or name == self.name:
                continue
            peer = self._peers.setdefault((name, build_id), PeerBlobs(name, build_id=build_id))
            known = engine.remote_blobs.get(layer.digest)
            if known is None or isinstance(known, PeerBlobs | FirstOf):
                engine.remote_blobs[layer.digest] = FirstOf([*caches, peer]) if caches else peer
                engine.lost.discard(layer.digest)

    # -- plumbing --

    def _build_context(self, build_id: str | None) -> contextvars.Context:
        """A context whose remote blobs are build ``build_id``'s (the runtime's own when it
        has no open session here): what one build imports, and the credentials its
        caches hold, serve that build's calls only."""
        from dockyard.workers._runtime import build_remotes  # noqa: PLC0415

        session = self.sessions.find(build_id)
        context = contextvars.copy_context()
        context.run(build_remotes, session.remotes if session is not None else None)
        context.run(set_log_ids, build_id)
        return context

    async def _as_build(self, build_id: str | None, work: Coroutine[Any, Any, T]) -> T:
        """``work`` run as a task in build ``build_id``'s context."""
        return await asyncio.create_task(work, context=self._build_context(build_id))

    async def _streamed(self, build_id: str, work: Callable[[EventSink], Awaitable[Any]]
                        ) -> AsyncIterator[dict[str, Any]]:
        """``work``'s events, then its answer; the work runs as a task of the session."""
        queue: asyncio.Queue[object] = asyncio.Queue()
        self._running += 1
        task = asyncio.create_task(_queued(work, _QueueSink(queue), queue),
                                   context=self._build_context(build_id))
        session = self.sessions.find(build_id)
        if session is not None:
            session.tasks.add(task)
            task.add_done_callback(session.tasks.discard)
        try:
            while (item := await queue.get()) is not _DONE:
                yield item  # type: ignore[misc]
            self._completed += 1
        except (asyncio.CancelledError, GeneratorExit):
            self._cancelled += 1
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            raise
        finally:
            self._running -= 1

    def _engine(self) -> Any:
        if self._runtime is None:
            from dockyard.workers._runtime import WorkerRuntime  # noqa: PLC0415 -- heavy

            self._runtime = WorkerRuntime(Path(self.root))
        return self._runtime

    async def echo(self, vertex: str, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Stream ``request["lines"]`` back as stdout of ``vertex``, waiting
        ``request["delay"]`` seconds before each."""
        lines = [str(line) for line in request.get("lines", [])]
        delay = float(request.get("delay", 0.0))
        self._running += 1
        try:
            for line in lines:
                if delay:
                    await asyncio.sleep(delay)
                yield event_to_wire(VertexLog(vertex, 1, line.encode() + b"\n"))
            self._completed += 1
        except (asyncio.CancelledError, GeneratorExit):
            self._cancelled += 1
            raise
        finally:
            self._running -= 1

    async def statistics(self) -> dict[str, int]:
        return {"running": self._running, "completed": self._completed,
                "cancelled": self._cancelled, "sessions": len(self.sessions)}

    async def metrics(self) -> dict[str, Any]:
        """This process's counts for the cluster's metrics (workers/_metrics.py)."""
        from ._metrics import WORKER_METRICS  # noqa: PLC0415 -- see __init__

        store = self._runtime.cache if self._runtime is not None else None
        return WORKER_METRICS.report(store)

    async def gc_statistics(self) -> dict[str, Any]:
        """The collector's counters (workers/_gc_stats.py ``gc_statistics``), its settings
        and what builds hold now."""
        self.gc.start()
        return {**gc_statistics(), "settings": self.gc.settings.to_wire(),
                "leases": self.leases.statistics()}

    def __repr__(self) -> str:
        return (f"<WorkerActor arches={','.join(self.arches)} sessions={len(self.sessions)} "
                f"running={self._running} completed={self._completed} "
                f"cancelled={self._cancelled}>")


async def _answered(work: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
    """``{"result": ...}`` of ``work``, or ``{"failure": ...}`` for a ``DockyardError``."""
    try:
        return {"result": await work()}
    except DockyardError as error:
        return {"failure": _failure(error)}
    except Exception as exc:  # the actor's boundary: a bug still answers as data
        return {"failure": _failure(_internal(exc))}


async def _queued(work: Callable[[EventSink], Awaitable[Any]], sink: _QueueSink,
                  queue: asyncio.Queue[object]) -> None:
    try:
        queue.put_nowait({"result": await work(sink)})
    except DockyardError as error:
        queue.put_nowait({"failure": _failure(error)})
    except Exception as exc:  # the actor's boundary: a bug still answers as data
        queue.put_nowait({"failure": _failure(_internal(exc))})
    finally:
        queue.put_nowait(_DONE)


def _actor_name() -> str:
    """This actor's name in Ray ("" when it has none, or outside Ray)."""
    try:
        import ray  # noqa: PLC0415

        return str(ray.get_runtime_context().get_actor_name() or "")
    except Exception:  # not in a Ray actor process
        return ""


def _node_ip() -> str:
    """The address of the Ray node this actor runs on ("" outside Ray)."""
    try:
        import ray  # noqa: PLC0415

        return str(ray.util.get_node_ip_address())  # type: ignore[no-untyped-call]
    except Exception:  # not in a Ray worker process
        return ""


def _store_bytes(root: Path) -> int:
    """Bytes of the local cache store under ``root`` (blobs and records)."""
    total = 0
    for directory, _, files in os.walk(root / "cache"):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(directory, name)).st_size
    return total


def _internal(exc: Exception) -> SolveError:
    return SolveError(f"internal error on the worker: {type(exc).__name__}: {exc}",
                      hint="this is a bug in dockyard; see the daemon log")


def _failure(error: DockyardError) -> dict[str, Any]:
    from dockyard.scheduler._errors import error_to_wire  # noqa: PLC0415

    return error_to_wire(error)
