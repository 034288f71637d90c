"""A whole build in this process, without Ray: Dockerfile -> graph -> solver on a
``WorkerRuntime`` -> images -> outputs, composed from the steps the service splits
between its actors: the coordinator runs ``run_frontend`` and the solver; the worker actor
``prepared``/``build_session``/``ignore_patterns`` (it has the files) and, after the solve,
``write_results``.  Tests and tools use ``build_local`` directly.

- The frontend gets an image resolver backed by the registry (run from the frontend's
  thread on the build's event loop), so ``ENV`` and friends of a base image are seen.
- The solver's records give each image its ``created`` time: a fully cached rebuild runs
  nothing and reproduces the same digests.  ``SOURCE_DATE_EPOCH`` clamps every timestamp.
- Outputs: ``oci``, ``docker``, ``tar`` (files or a binary stream) and ``local``
  (a directory), as buildx's ``--output type=...``.
- A layer of a cached result that the outputs need and that turns out lost (``BlobLost``
  from a ``--cache-from`` backend) is rebuilt: the build solves again with
  ``rebuild=`` the lost digests (fresh records for the targets that named them) and
  writes the outputs again, once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cache_backends._records import CacheRecord
from scheduler._entitlements import check_entitlements
from scheduler._errors import BlobLost, DockyardError
from scheduler._graph import BuildGraph, Healthcheck, HistoryEntry, ImageConfig, Ulimit
from scheduler._platform import Platform
from scheduler._solver import Solver, SolverStatistics
from scheduler.dockerfile._convert._model import BaseImage
from scheduler.dockerfile._frontend import build_graph
from workers._build import (
    Exported,
    LocalBuildOptions,
    Output,
    build_session,
    prepared,
    remote_records,
    write_results,
)
from workers._image import build_metadata
from workers._remote_cache import RemoteRecords
from workers._runtime import BuildSession, RuntimeBackend, WorkerRuntime

from ._context import CONTEXT_HASHED_KEY, load_ignore_patterns

__all__ = [
    "FrontendRequest", "LocalBuildOptions", "LocalBuildResult", "Output", "ResolveImage",
    "backend_resolver", "base_image", "build_local", "build_session", "frontend_request",
    "ignore_patterns", "prepared", "remote_records", "run_frontend", "write_results",
]

#: How the frontend's base-image questions are answered: (reference, platform) -> image.
ResolveImage = Callable[[str, Platform], Coroutine[Any, Any, BaseImage]]


@dataclass(frozen=True)
class FrontendRequest:
    """What the frontend needs of a build request (the coordinator runs it)."""

    filename: str = "Dockerfile"
    platforms: tuple[Platform, ...] = ()
    target: str | None = None
    build_args: Mapping[str, str] = field(default_factory=dict)
    allow: frozenset[str] = frozenset()  # entitlements granted (scheduler/_entitlements.py)
    ulimits: tuple[Ulimit, ...] = ()  # every RUN's resource limits (--ulimit)
    shm_size: int = 0  # every RUN's /dev/shm in bytes (--shm-size; 0: the default)
    network: str = "default"  # a RUN's network when it names none (--network)


def frontend_request(options: LocalBuildOptions) -> FrontendRequest:
    """What the frontend needs of ``options``."""
    return FrontendRequest(filename=options.filename, platforms=options.platforms,
                           target=options.target, build_args=options.build_args,
                           allow=frozenset(options.allow), ulimits=options.ulimits,
                           shm_size=options.shm_size, network=options.network)


@dataclass(frozen=True)
class LocalBuildResult:
    """The built image (or index), the solver's records by vertex, its statistics and
    buildx's ``--metadata-file`` keys."""

    exported: Exported
    records: Mapping[str, CacheRecord]
    statistics: SolverStatistics
    metadata: Mapping[str, Any]


async def build_local(dockerfile: bytes, context_dir: Path, options: LocalBuildOptions, *,
                      runtime: WorkerRuntime | None = None,
                      session: BuildSession | None = None) -> LocalBuildResult:
    """Build ``dockerfile`` with ``context_dir`` as its context; see the module docstring.
    ``runtime`` is reused when given (and then not closed); ``session`` replaces the
    worker's session ``build_session`` makes (e.g. the context as a manifest, its files
    read through a ``ContextReader``)."""
    options = prepared(options)
    owned = runtime is None
    engine = runtime or WorkerRuntime(options.root, registry=options.registry)
    backend = engine.backend(session or build_session(context_dir, options))
    try:
        return await _build(engine, backend, dockerfile, context_dir, options)
    finally:
        await backend.aclose()
        if owned:
            await engine.aclose()


async def _build(engine: WorkerRuntime, backend: RuntimeBackend, dockerfile: bytes,
                 context_dir: Path, options: LocalBuildOptions) -> LocalBuildResult:
    patterns = ignore_patterns(context_dir, options)
    graph = await run_frontend(dockerfile, frontend_request(options), patterns,
                               backend_resolver(backend))
    cache = remote_records(engine, options)
    solver = Solver(backend, cache, events=options.events)
    try:
        records = await solver.solve(graph, no_cache=options.no_cache)
        try:
            exported = await _exported(engine, graph, records, cache, options)
        except BlobLost as lost:  # a cached layer the outputs need is gone: rebuild it
            records = await solver.solve(graph, no_cache=options.no_cache,
                                         rebuild=frozenset(lost.digests))
            exported = await _exported(engine, graph, records, cache, options)
    except DockyardError:
        await cache.drain(failed=True)  # what finished is kept
        raise
    else:
        await cache.drain()
    finally:
        await cache.aclose()
    hashed = backend.context_statistics().bytes_hashed
    return LocalBuildResult(exported, records, solver.statistics(),
                            {**build_metadata(exported), CONTEXT_HASHED_KEY: hashed})


async def _exported(engine: WorkerRuntime, graph: BuildGraph,
                    records: Mapping[str, CacheRecord], cache: RemoteRecords,
                    options: LocalBuildOptions) -> Exported:
    """The final records pushed (``mode=min``) and the images written to the outputs."""
    cache.export_final(records[r.root] for r in graph.results if r.root is not None)
    return await write_results(engine, graph.results, records, options)


# --- the steps (the coordinator and the worker actor each run their own share) ---------


def ignore_patterns(context_dir: Path, options: LocalBuildOptions) -> list[str]:
    """The context's ``.dockerignore`` patterns (read on the worker: it has the files)."""
    if options.ignore_patterns is not None:
        return list(options.ignore_patterns)
    patterns, _ = load_ignore_patterns(context_dir, context_dir / options.filename)
    return list(patterns)


async def run_frontend(dockerfile: bytes, request: FrontendRequest, patterns: Sequence[str],
                       resolve: ResolveImage) -> BuildGraph:
    """The Dockerfile as a graph (in a thread: the frontend is synchronous; its base-image
    questions go to ``resolve`` on this loop).

    A thread cannot be cancelled, so the frontend is interruptible instead: cancelled, this
    sets ``stop``, the frontend raises at its next step (a line, an instruction, a word; a
    base-image question is given up) and only then does the cancellation go on, so a build
    whose client went away leaves no frontend running."""
    stop = threading.Event()  # set once: the frontend is to stop at its next checkpoint

    def interrupt() -> None:
        if stop.is_set():
            raise asyncio.CancelledError("the build was cancelled")

    work = functools.partial(
        build_graph, dockerfile, filename=request.filename, target=request.target,
        platforms=request.platforms, build_args=request.build_args, ignore_patterns=patterns,
        image_resolver=_Resolver(resolve, asyncio.get_running_loop(), interrupt),
        interrupt=interrupt, ulimits=request.ulimits, shm_size=request.shm_size,
        network=request.network)
    running = asyncio.ensure_future(asyncio.to_thread(work))
    try:
        frontend = await asyncio.shield(running)
    except asyncio.CancelledError:
        stop.set()
        await asyncio.wait([running])  # the thread's end: within one step of the frontend
        raise
    check_entitlements(frontend.graph, request.allow)
    return frontend.graph


def backend_resolver(backend: RuntimeBackend) -> ResolveImage:
    """A ``ResolveImage`` over this process's runtime backend (shared with its solve)."""
    async def resolve(ref: str, platform: Platform) -> BaseImage:
        image = await backend.resolve_image(ref, platform)
        return base_image(image.index_digest or image.digest, image.config)
    return resolve


def base_image(digest: str, config: bytes) -> BaseImage:
    """What the frontend needs of a resolved base image."""
    return BaseImage(digest=digest, config=image_config_of(config))


# --- the frontend's view of base images --------------------------------------------------


class _Resolver:
    """The frontend's ``ImageResolver``, called from its thread: resolves on the build's
    loop (so the build's resolution is shared with the solver's).  While it waits, it
    calls ``interrupt`` every ``_POLL`` seconds: a cancelled build gives the question up."""

    _POLL = 0.2

    def __init__(self, resolve: ResolveImage, loop: asyncio.AbstractEventLoop,
                 interrupt: Callable[[], None]) -> None:
        self._resolve = resolve
        self._loop = loop
        self._interrupt = interrupt

    def __call__(self, ref: str, platform: Platform) -> BaseImage | None:
        coroutine = self._resolve(ref, platform)
        answer = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        while True:
            try:
                image: BaseImage = answer.result(timeout=self._POLL)
                return image
            except concurrent.futures.TimeoutError:
                self._interrupt_or_cancel(answer)

    def _interrupt_or_cancel(self, answer: concurrent.futures.Future[BaseImage]) -> None:
        try:
            self._interrupt()
        except BaseException:
            answer.cancel()
            raise


def image_config_of(data: bytes) -> ImageConfig:
    """An image config JSON as the frontend's ``ImageConfig`` (what a stage inherits)."""
    try:
        document = json.loads(data)
    except ValueError:
        document = {}
    raw = document.get("config") if isinstance(document, dict) else None
    config: dict[str, Any] = raw if isinstance(raw, dict) else {}
    return ImageConfig(
        env=tuple(config.get("Env") or ()),
        cmd=_strings_or_none(config.get("Cmd")),
        entrypoint=_strings_or_none(config.get("Entrypoint")),
        user=str(config.get("User") or ""), working_dir=str(config.get("WorkingDir") or ""),
        labels=tuple(sorted((config.get("Labels") or {}).items())),
        exposed_ports=tuple(sorted(config.get("ExposedPorts") or {})),
        volumes=tuple(sorted(config.get("Volumes") or {})),
        stop_signal=str(config.get("StopSignal") or ""),
        healthcheck=_healthcheck(config.get("Healthcheck")),
        on_build=tuple(config.get("OnBuild") or ()), shell=tuple(config.get("Shell") or ()),
        author=str(document.get("author") or "") if isinstance(document, dict) else "",
        history=_history(document.get("history") if isinstance(document, dict) else None))


def _strings_or_none(value: Any) -> tuple[str, ...] | None:
    return None if value is None else tuple(str(item) for item in value)


def _healthcheck(value: Any) -> Healthcheck | None:
    if not isinstance(value, dict) or not value.get("Test"):
        return None
    return Healthcheck(test=tuple(value["Test"]), interval=int(value.get("Interval") or 0),
                       timeout=int(value.get("Timeout") or 0),
                       start_period=int(value.get("StartPeriod") or 0),
                       start_interval=int(value.get("StartInterval") or 0),
                       retries=int(value.get("Retries") or 0))


def _history(value: Any) -> tuple[HistoryEntry, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(HistoryEntry(created_by=str(item.get("created_by") or ""),
                              empty_layer=bool(item.get("empty_layer")),
                              comment=str(item.get("comment") or ""))
                 for item in value if isinstance(item, dict))
