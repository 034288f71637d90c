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

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dockyard.cache_backends._records import CacheRecord
from dockyard.scheduler._errors import BlobLost, DockyardError
from dockyard.scheduler._graph import BuildGraph
from dockyard.scheduler._platform import Platform
from dockyard.scheduler._solver import Solver, SolverStatistics
from dockyard.scheduler.dockerfile._convert._model import BaseImage
from dockyard.workers._attest import metadata_provenance
from dockyard.workers._build import (
    Exported,
    LocalBuildOptions,
    Output,
    build_session,
    prepared,
    remote_records,
    write_results,
)
from dockyard.workers._image import export_metadata
from dockyard.workers._remote_cache import RemoteRecords
from dockyard.workers._runtime import BuildSession, RuntimeBackend, WorkerRuntime

from ._context import CONTEXT_HASHED_KEY, load_ignore_patterns
from ._frontend import FrontendRequest, ResolveImage, base_image, run_frontend

__all__ = [
    "FrontendRequest", "LocalBuildOptions", "LocalBuildResult", "Output", "ResolveImage",
    "backend_resolver", "base_image", "build_local", "build_session", "frontend_request",
    "ignore_patterns", "prepared", "remote_records", "run_frontend", "write_results",
]


def frontend_request(options: LocalBuildOptions) -> FrontendRequest:
    """What the frontend needs of ``options``."""
    return FrontendRequest(filename=options.filename, platforms=options.platforms,
                           target=options.target, build_args=options.build_args,
                           allow=frozenset(options.allow), ulimits=options.ulimits,
                           shm_size=options.shm_size, network=options.network,
                           extra_hosts=options.extra_hosts,
                           cgroup_parent=options.cgroup_parent,
                           no_cache_filter=options.no_cache_filter, labels=options.labels)


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
    if not options.started:
        options = dataclasses.replace(options, started=time.time())
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
    graph = (await run_frontend(dockerfile, frontend_request(options), patterns,
                                backend_resolver(backend))).graph
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
                            {**export_metadata(exported, [o.type for o in options.outputs],
                                               options.names),
                             **metadata_provenance(exported), CONTEXT_HASHED_KEY: hashed})


async def _exported(engine: WorkerRuntime, graph: BuildGraph,
                    records: Mapping[str, CacheRecord], cache: RemoteRecords,
                    options: LocalBuildOptions) -> Exported:
    """The final records pushed (``mode=min``) and the images written to the outputs."""
    cache.export_final(records[r.root] for r in graph.results if r.root is not None)
    return await write_results(engine, graph.results, records, options, graph=graph,
                               cache=cache)


# --- the steps (the coordinator and the worker actor each run their own share; the
# coordinator's frontend is cluster/_frontend.py) ----------------------------------------


def ignore_patterns(context_dir: Path, options: LocalBuildOptions) -> list[str]:
    """The context's ``.dockerignore`` patterns (read on the worker: it has the files)."""
    if options.ignore_patterns is not None:
        return list(options.ignore_patterns)
    patterns, _ = load_ignore_patterns(context_dir, context_dir / options.filename)
    return list(patterns)


def backend_resolver(backend: RuntimeBackend) -> ResolveImage:
    """A ``ResolveImage`` over this process's runtime backend (shared with its solve)."""
    async def resolve(ref: str, platform: Platform) -> BaseImage:
        image = await backend.resolve_image(ref, platform)
        return base_image(image.index_digest or image.digest, image.config)
    return resolve


