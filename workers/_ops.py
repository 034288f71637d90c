"""One vertex, executed for real: one function per op kind.

- image source: the layers the cache lacks are fetched from the registry (verified); the
  result names them with the image's config (unpacked only when an op needs the files);
- context source: the session's context directory (or its manifest, with the contents
  the worker lacks read from the client first), included files only, owned by 0:0, as
  one layer;
- http/git source: fetched into a scratch directory, then one layer like a context; a
  git source's identity is the commit its ref names (``remote_identity``), resolved once
  per build, and the fetch checks it still names that commit;
- exec: see ``_ops_exec``;
- file: the base state mounted writable, the copy sources read-only, BuildKit's file
  actions applied (``_fileops``), the diff as a new layer;
- merge: the input chains, concatenated.

An op whose diff is empty still adds an (empty) layer, as BuildKit's does.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import weakref
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path

from dockyard.cache_backends._records import StateResult
from dockyard.scheduler._errors import SolveError
from dockyard.scheduler._graph import ExecOp, FileOp, MergeOp, SourceOp, Vertex
from dockyard.scheduler._progress import EventSink, StatusUpdate
from dockyard.scheduler._reference import parse_reference

from ._context_source import ContextTree, LocalContext, Materialised
from ._fetch import fetch_git, fetch_http, resolve_git
from ._fileops import apply_file_actions
from ._layers import is_empty_diff
from ._layout_source import LAYOUT_SCHEME, run_layout_source
from ._ops_exec import run_exec
from ._runtime import IMAGE_SCHEME, LOCAL_SCHEME, RuntimeBackend, WorkerRuntime

__all__ = ["execute_vertex", "remote_identity", "remote_source"]

GIT_SCHEME = "git://"


async def execute_vertex(backend: RuntimeBackend, vertex: Vertex,
                         inputs: Sequence[StateResult], events: EventSink) -> StateResult:
    op = vertex.op
    if isinstance(op, SourceOp):
        return await run_source(backend, vertex, op, events)
    if isinstance(op, ExecOp):
        return await run_exec(backend, vertex, op, inputs, events)
    if isinstance(op, FileOp):
        return await run_file(backend, op, inputs)
    if isinstance(op, MergeOp):
        return run_merge(inputs)
    raise SolveError(f"unknown op kind {type(op).__name__}")


async def run_source(backend: RuntimeBackend, vertex: Vertex, op: SourceOp,
                     events: EventSink | None = None) -> StateResult:
    if op.identifier.startswith(IMAGE_SCHEME):
        return await run_image_source(backend, vertex, op)
    if op.identifier.startswith(LAYOUT_SCHEME):
        return await run_layout_source(backend, op)
    if op.identifier.startswith(LOCAL_SCHEME):
        # An image's root filesystem (``FROM`` a named context) is one whole layer: the
        # incremental chain would put files since removed from the directory in the image.
        chain = None if dict(op.attrs).get("rootfs") == "true" else op.identifier
        tree, fetched = await backend.context_files(op)
        if events is not None:  # as BuildKit's "transferring context: N done"
            events.emit(StatusUpdate(vertex.digest, "transferring context:", current=fetched,
                                     done=True))
        return await tree_layer(backend, tree, chain)
    return await tree_layer(backend, await remote_source(backend, op))


async def run_image_source(backend: RuntimeBackend, vertex: Vertex,
                           op: SourceOp) -> StateResult:
    text = op.identifier[len(IMAGE_SCHEME):]
    image = await backend.resolve_image(text, vertex.platform)
    await backend.fetch_image_blobs(parse_reference(text), image)
    return StateResult(layers=image.layers, image_config=image.config)


#: How many layers a context source's result may stack (a whole tree, then the changes of
#: later builds on it) before the next change writes a whole tree again.
CONTEXT_CHAIN = 8


async def tree_layer(backend: RuntimeBackend, tree: ContextTree,
                     name: str | None = None) -> StateResult:
    """The included files of ``tree`` as layers, owned by 0:0.  A context source ``name``
    (``local://NAME``) starts from what this runtime last made of that name
    (``WorkerRuntime.context_tree``): its layers with one of what changed on top
    (``materialise_delta``), else one whole tree with the unchanged files linked.  Either
    way the layers show the same tree, so what a COPY makes of it, and every digest after,
    is the same (only COPY and RUN mounts read a chained result: a context that is an
    image's base, ``rootfs=true``, comes with ``name`` None, as one whole layer)."""
    runtime = backend.runtime
    previous = await runtime.context_tree(name) if name is not None else None
    if previous is not None and not await asyncio.to_thread(_usable, runtime, previous):
        previous = None  # pruned meanwhile: a layer made on it could not be mounted
    staging = Path(tempfile.mkdtemp(prefix="context-", dir=runtime.tmp))
    try:
        delta = None
        if previous is not None and len(previous.layers) < CONTEXT_CHAIN:
            delta = await asyncio.to_thread(tree.materialise_delta, staging, previous)
        if delta is not None and previous is not None:
            keys, written = delta
            base = previous.layers
            if await asyncio.to_thread(is_empty_diff, staging):
                return StateResult(layers=base)  # nothing changed (--no-cache)
        else:
            keys = await asyncio.to_thread(tree.materialise, staging, previous)
            written, base = set(keys), ()
        layer = await runtime.store_tree(staging, backend.session.epoch)
    finally:
        await asyncio.to_thread(shutil.rmtree, staging, True)
    layers = (*base, layer)
    if name is not None:
        where = runtime.snapshots.layer_dir(layer.diff_id)
        old = previous.entries if previous is not None else {}
        await runtime.remember_tree(name, Materialised(
            layers, {path: (key, where if path in written else old[path][1])
                     for path, key in keys.items()}))
    return StateResult(layers=layers)


def _usable(runtime: WorkerRuntime, tree: Materialised) -> bool:
    """Whether every layer of ``tree`` is still here, as a snapshot or as a blob."""
    return all(runtime.snapshots.has_layer(layer.diff_id) or runtime.cache.holds(layer.digest)
               for layer in tree.layers)


async def remote_source(backend: RuntimeBackend, op: SourceOp) -> LocalContext:
    """An http file or a git checkout, fetched once per build into a scratch directory."""
    known = backend.fetched.get(op)
    if known is None:
        known = asyncio.ensure_future(_fetch(backend, op))
        backend.fetched[op] = known
    return await asyncio.shield(known)


async def remote_identity(backend: RuntimeBackend, op: SourceOp) -> str:
    """What a remote source's cache key rests on: ``git:<commit>`` for git (nothing is
    fetched for it), the fetched content's checksum for http."""
    if op.identifier.startswith(GIT_SCHEME):
        return "git:" + await _git_commit(backend, op)
    return await asyncio.to_thread((await remote_source(backend, op)).checksum)


def _git_remote(op: SourceOp) -> tuple[str, str]:
    """(the URL to fetch, the ref) of a git source: the converter's ``fullurl``, else
    https:// and the identifier's host/path."""
    remote, _, ref = op.identifier[len(GIT_SCHEME):].partition("#")
    return dict(op.attrs).get("fullurl", "https://" + remote), ref


async def _git_commit(backend: RuntimeBackend, op: SourceOp) -> str:
    key = (op.identifier, dict(op.attrs).get("fullurl", ""))
    known = _resolved(backend).get(key)
    if known is None:
        url, ref = _git_remote(op)
        known = asyncio.ensure_future(asyncio.to_thread(resolve_git, url, ref))
        _resolved(backend)[key] = known
    return await asyncio.shield(known)


# backend -> (identifier, url) -> the commit resolved for that build (a ref moves between
# builds, never within one).
_RESOLVED: weakref.WeakKeyDictionary[RuntimeBackend, dict[tuple[str, str],
                                                          asyncio.Future[str]]] = (
    weakref.WeakKeyDictionary())


def _resolved(backend: RuntimeBackend) -> dict[tuple[str, str], asyncio.Future[str]]:
    return _RESOLVED.setdefault(backend, {})


async def _fetch(backend: RuntimeBackend, op: SourceOp) -> LocalContext:
    attrs = dict(op.attrs)
    if op.identifier.startswith(GIT_SCHEME):
        commit = await _git_commit(backend, op)
    scratch = Path(tempfile.mkdtemp(prefix="fetch-", dir=backend.runtime.tmp))
    backend.scratch.append(scratch)
    if op.identifier.startswith(GIT_SCHEME):
        url, ref = _git_remote(op)
        await asyncio.to_thread(fetch_git, url, scratch / "tree", ref=ref, commit=commit,
                                subdir=attrs.get("subdir", ""),
                                keep_git_dir=attrs.get("keepgitdir") == "true")
        return LocalContext(scratch / "tree")
    if op.identifier.startswith(("http://", "https://")):
        (scratch / "tree").mkdir()
        await fetch_http(op.identifier, scratch / "tree", filename=attrs.get("filename", ""),
                         checksum=attrs.get("checksum", ""))
        return LocalContext(scratch / "tree")
    raise SolveError(f"unsupported source {op.identifier!r}",
                     hint="sources are docker-image://, local://, oci-layout://, http(s):// "
                     "and git://")


async def run_file(backend: RuntimeBackend, op: FileOp,
                   inputs: Sequence[StateResult]) -> StateResult:
    runtime = backend.runtime
    base = inputs[op.base].layers if op.base is not None else ()
    config = inputs[op.base].image_config if op.base is not None else None
    async with AsyncExitStack() as stack:
        target = await stack.enter_async_context(
            runtime.snapshots.mount(await runtime.lower_dirs(base), writable=True))
        sources = await _mount_sources(backend, op, inputs, stack)
        await asyncio.to_thread(apply_file_actions, op.actions, target.path, sources)
        layer = await runtime.store_upper(target, backend.session.epoch)
    return StateResult(layers=base if layer is None else (*base, layer),
                       image_config=config)


async def _mount_sources(backend: RuntimeBackend, op: FileOp, inputs: Sequence[StateResult],
                         stack: AsyncExitStack) -> list[Path | None]:
    used = {action.src for action in op.actions if hasattr(action, "src")}
    sources: list[Path | None] = []
    for index, result in enumerate(inputs):
        if index not in used:
            sources.append(None)
            continue
        lowers = await backend.runtime.lower_dirs(result.layers)
        mounted = await stack.enter_async_context(backend.runtime.snapshots.mount(lowers))
        sources.append(mounted.path)
    return sources


def run_merge(inputs: Sequence[StateResult]) -> StateResult:
    layers = tuple(layer for result in inputs for layer in result.layers)
    return StateResult(layers=layers, image_config=inputs[0].image_config if inputs else None)
