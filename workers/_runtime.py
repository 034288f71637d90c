"""The worker runtime: everything a worker node holds, and the solver's backend for a build.

``WorkerRuntime(root)`` owns, under ``root`` (``DOCKYARD_ROOT``, docs/engine.md): the
snapshot store (unpacked layers, overlay mounts), the local cache (blobs and records), the
registry client, the cache-mount directories and the runc state.  Layers are unpacked
lazily, once, when an exec or file op first needs them.

``runtime.backend(session)`` is the ``SolveBackend`` of one build: the session carries what
stays on the client (context directories, secrets, ssh sockets) and the per-build answers
(resolved images, context listings), so a tag resolves once per build and two builds never
see each other's secrets.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from dockyard.cache_backends._local import LocalBackend, LocalBlobSource
from dockyard.cache_backends._protocol import BlobCorrupt, BlobMissing, CacheBackend
from dockyard.cache_backends._records import CacheRecord, LayerDescriptor, StateResult
from dockyard.scheduler._build_request import Compression
from dockyard.scheduler._cachekey import Selector
from dockyard.scheduler._errors import BlobLost, CacheError, SolveError
from dockyard.scheduler._graph import SourceOp, Vertex
from dockyard.scheduler._platform import Platform
from dockyard.scheduler._progress import EventSink
from dockyard.scheduler._reference import Reference, parse_reference

from ._context_digest import ContextDigests, DigestStatistics
from ._context_fetch import ContextReader
from ._context_index import ContextIndexes
from ._context_manifest import ContextManifest
from ._context_source import ContextTree, LocalContext, ManifestContext, Materialised
from ._context_store import ContextStore
from ._executor import Executor
from ._layer_stream import (
    GZIP_LEVEL,
    READ_SIZE,
    TAR_LAYER,
    ZSTD_LEVEL,
    LayerSink,
    Readable,
    layer_compression,
    open_layer_reader,
)
from ._layers import unpack_layer, write_layer
from ._metrics import WORKER_METRICS
from ._registry import RegistryClient, RegistryConfig, ResolvedImage
from ._secrets import DictSecrets, SecretSource
from ._snapshots import Mounted, SnapshotStore
from ._ssh_relay import ChannelSshAgents
from ._tar_clamp import clamp_tar_times

if TYPE_CHECKING:
    from ._janitor import RootLock

_log = logging.getLogger(__name__)

__all__ = ["BuildSession", "RecordStore", "RuntimeBackend", "WorkerRuntime", "build_remotes"]

IMAGE_SCHEME = "docker-image://"
LOCAL_SCHEME = "local://"
#: How many blobs one runtime fetches from remote caches at once (each may itself be
#: several ranged GETs): an image pull's layer parallelism.
REMOTE_FETCHES = 4


@dataclass(frozen=True)
class BuildSession:
    """What a build brings from its client: context directories by name (``context`` for
    ``local://context``), its secrets (a ``SecretSource``: values by id, in memory or
    asked of the client when a RUN mounts one; never written to a layer, a record, a
    log or an event), ssh agent sockets by id (``ssh``: host paths, for an in-process
    build; ``ssh_agents``: the client's agents, relayed over the session channel),
    ``epoch`` (SOURCE_DATE_EPOCH), ``pull`` (``--pull``) and
    ``insecure_registries`` (``host[:port]`` this build speaks plain HTTP to, on top of
    the runtime's own; other builds are not affected).

    A context the worker cannot open comes as a manifest instead (``manifests``, by name;
    it wins over a directory of the same name), its file contents read on demand through
    ``context_reader`` (the build's session channel) into the worker's ``ContextStore``."""

    contexts: Mapping[str, Path] = field(default_factory=dict)
    manifests: Mapping[str, ContextManifest] = field(default_factory=dict)
    context_reader: ContextReader | None = field(default=None, compare=False)
    secrets: SecretSource = field(default_factory=DictSecrets, repr=False)
    ssh: Mapping[str, Path] = field(default_factory=dict)
    ssh_agents: ChannelSshAgents | None = field(default=None, compare=False)
    epoch: int | None = None
    insecure_registries: frozenset[str] = frozenset()
    pull: bool = False  # --pull: every base image resolved from its registry again


class RecordStore:
    """The solver's ``RecordCache`` over a cache backend's records."""

    def __init__(self, cache: CacheBackend) -> None:
        self._cache = cache

    async def get(self, key: str) -> CacheRecord | None:
        return await self._cache.get_record(key)

    async def put(self, record: CacheRecord) -> None:
        await self._cache.put_record(record)


class WorkerRuntime:
    """The engine of one machine (see the module docstring); ``aclose`` when done."""

    #: ``<root>/run/worker.lock`` when made by ``open_runtime`` (workers/_janitor.py):
    #: held until ``aclose``, so no second runtime cleans the root under this one.
    root_lock: RootLock | None = None

    def __init__(self, root: Path, *, cache: LocalBackend | None = None,
                 registry: RegistryConfig | None = None, compression: str = "gzip") -> None:
        self.root = root
        self.snapshots = SnapshotStore(root)
        self.executor = Executor(root)
        self.cache = cache or LocalBackend(root)
        self.registry_config = registry or RegistryConfig()
        self.registry = RegistryClient(self.registry_config)
        # extra insecure registries -> the client of the builds that asked for them
        self._registries: dict[frozenset[str], RegistryClient] = {}
        self.compression = compression
        self.cachemounts = root / "cachemounts"
        self.tmp = root / "tmp"
        # the stat indexes of the context directories this runtime reads itself
        self.context_indexes = ContextIndexes(root / "context-index")
        # context source (``local://NAME``) -> the tree last made of it, which the next
        # one starts from (workers/_ops.py ``tree_layer``); kept in the context indexes'
        # directory too, so a restarted worker starts from it as well
        self.context_trees: dict[str, Materialised] = {}
        self._trees_read: set[str] = set()  # names looked up on disk already
        for path in (self.cachemounts, self.tmp):
            path.mkdir(parents=True, exist_ok=True)
        # diff_id -> the lock of the one task unpacking that layer (others wait for it).
        self._unpacking: dict[str, asyncio.Lock] = {}
        # cache-mount directory -> its lock (sharing=locked, and private's busy test).
        self.mount_locks: dict[str, asyncio.Lock] = {}
        # layer digest -> the remote cache (--cache-from) holding it, for the blobs of
        # imported records: fetched into the local cache when first needed.  Outside a
        # build's call (``build_remotes``); a build's own map serves its calls.
        self._remote_blobs: dict[str, CacheBackend] = {}
        # digests a remote cache was found to lack or hold corrupt (no longer in
        # ``remote_blobs``): asking for one the local cache lacks raises BlobLost again.
        self.lost: set[str] = set()
        # digest -> the lock of the one task fetching it from a remote cache
        self._fetching: dict[str, asyncio.Lock] = {}
        # variant key -> the lock of the one task compressing that layer
        self._compressing: dict[str, asyncio.Lock] = {}
        # taken by each remote fetch (after its digest's lock): how many run at once
        self._fetch_slots = asyncio.Semaphore(REMOTE_FETCHES)

    def __repr__(self) -> str:
        return f"<WorkerRuntime {self.root} {self.snapshots!r}>"

    async def aclose(self) -> None:
        await self.registry.aclose()
        clients, self._registries = list(self._registries.values()), {}
        for client in clients:
            await client.aclose()
        if self.root_lock is not None:
            self.root_lock.release()

    def registry_for(self, insecure: Iterable[str] = ()) -> RegistryClient:
        """The registry client of a build that speaks plain HTTP to ``insecure`` too: the
        shared one when that adds nothing, else one kept for that set of registries."""
        extra = frozenset(insecure) - self.registry_config.insecure_registries
        if not extra:
            return self.registry
        client = self._registries.get(extra)
        if client is None:
            config = dataclasses.replace(
                self.registry_config,
                insecure_registries=self.registry_config.insecure_registries | extra)
            client = self._registries[extra] = RegistryClient(config)
        return client

    def backend(self, session: BuildSession) -> RuntimeBackend:
        return RuntimeBackend(self, session)

    def records(self) -> RecordStore:
        return RecordStore(self.cache)

    def blob_source(self) -> LocalBlobSource:
        return self.cache.blob_source()

    # -- layers --

    async def lower_dirs(self, layers: Sequence[LayerDescriptor]) -> list[Path]:
        """The unpacked directories of ``layers`` (base first), unpacking what is missing."""
        return [await self._unpacked(layer) for layer in layers]

    @property
    def remote_blobs(self) -> dict[str, CacheBackend]:
        """Layer digest -> the remote cache (or peer) that serves it, as the build of the
        running call sees it (``build_remotes``): a build's ``--cache-from`` backends,
        which may carry its client's credentials, serve that build alone."""
        own = _BUILD_REMOTES.get()
        return self._remote_blobs if own is None else own

    def add_remote_blobs(self, layers: Iterable[LayerDescriptor],
                         backend: CacheBackend) -> None:
        """``backend`` (a remote cache) holds ``layers``: fetch them from it when needed."""
        for layer in layers:
            self.remote_blobs.setdefault(layer.digest, backend)
            self.lost.discard(layer.digest)  # named by a record again: worth one more try

    def forget_remote(self, backends: Iterable[CacheBackend]) -> int:
        """Drop the blobs ``backends`` were to serve (their build ended: a build's remote
        caches, and the client credentials they may hold, serve that build only); how
        many were dropped."""
        gone = {id(backend) for backend in backends}
        digests = [digest for digest, backend in self.remote_blobs.items()
                   if id(backend) in gone
                   or any(id(part) in gone for part in getattr(backend, "parts", ()))]
        for digest in digests:
            del self.remote_blobs[digest]
        return len(digests)

    async def ensure_blobs(self, layers: Iterable[LayerDescriptor]) -> None:
        """Fetch into the local cache the blobs of ``layers`` it lacks that a remote
        cache holds (``add_remote_blobs``); others are left alone.  Up to
        ``REMOTE_FETCHES`` blobs come down at once (per runtime), each written straight
        into the local cache and checked there (``CacheBackend.fetch_into``).  A blob the
        remote cache turns out not to have, or to have corrupt (the backend drops it), raises
        ``BlobLost`` naming every such blob once all the others have arrived, and is not
        asked of that cache again until an imported record names it again: the solver
        rebuilds the step that made it (scheduler/_solver.py).  Any other error is raised
        once every fetch has ended."""
        wanted = self._wanted(layers)
        if not wanted:
            return
        present = await self.cache.has_many(wanted)
        await self.settle(self._start(layer for digest, layer in wanted.items()
                                      if digest not in present))

    async def ensure_digest(self, digest: str) -> None:
        """``ensure_blobs`` for one blob named by digest (a peer worker asks for a blob
        this worker imported a record of: it is fetched here first, then served)."""
        if digest in self.remote_blobs or digest in self.lost:
            await self.settle(self._start([digest]))  # no layer: no diff_id to try

    def start_fetches(self, layers: Iterable[LayerDescriptor]) -> dict[str, asyncio.Task[None]]:
        """``ensure_blobs`` in the background: one task per blob to fetch, by digest (each
        ends once its blob is in the local cache, or with its ``BlobLost``), so a consumer
        can use the first blobs while later ones still arrive; ``settle`` them after."""
        return self._start(self._wanted(layers).values())

    def _start(self, wanted: Iterable[LayerDescriptor | str]) -> dict[str, asyncio.Task[None]]:
        tasks = {}
        for item in wanted:
            digest = item if isinstance(item, str) else item.digest
            layer = None if isinstance(item, str) else item
            tasks[digest] = asyncio.ensure_future(self._fetch_remote(digest, layer))
        return tasks

    async def settle(self, fetches: Mapping[str, Awaitable[None]]) -> None:
        """Wait for every fetch of ``start_fetches``; then raise one ``BlobLost`` naming
        every lost blob, or the first other error."""
        outcomes = await asyncio.gather(*fetches.values(), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, BlobLost):
                raise outcome
        losses = [outcome for outcome in outcomes if isinstance(outcome, BlobLost)]
        if losses:
            raise _all_lost(losses)

    def _wanted(self, layers: Iterable[LayerDescriptor]) -> dict[str, LayerDescriptor]:
        """The layers (by digest, once each) that a remote cache holds or lost."""
        return {layer.digest: layer for layer in layers
                if layer.digest in self.remote_blobs or layer.digest in self.lost}

    async def _fetch_remote(self, digest: str, layer: LayerDescriptor | None = None) -> None:
        lock = self._fetching.setdefault(digest, asyncio.Lock())
        async with lock:
            # a stat, on the loop: no thread hop here keeps the fetches (and their turns
            # at the remote, cache_backends/_s3_ranges.py) in the order they were started
            if self.cache.holds(digest):
                return
            if layer is not None and await self._compressed_here(layer):
                return
            remote = self.remote_blobs.get(digest)
            if remote is None:  # lost by a fetch that held the lock before this one
                raise _lost(digest, "the remote cache")
            try:
                async with self._fetch_slots:
                    began = time.perf_counter()
                    size = await remote.fetch_into(digest, self.cache)
                    WORKER_METRICS.moved(remote, "read", size)
                    _log.info("fetched blob %s (%d bytes) from %s in %.3f s", digest, size,
                              getattr(remote, "where", None) or remote,
                              time.perf_counter() - began)
            except (BlobMissing, BlobCorrupt) as err:
                self.remote_blobs.pop(digest, None)
                self.lost.add(digest)
                raise _lost(digest, str(getattr(remote, "where", None) or remote),
                            err.message) from err

    async def _unpacked(self, layer: LayerDescriptor) -> Path:
        lock = self._unpacking.setdefault(layer.diff_id, asyncio.Lock())
        async with lock:
            if not self.snapshots.has_layer(layer.diff_id):
                await self.ensure_blobs((layer,))
                await asyncio.to_thread(self._unpack, layer)
        return self.snapshots.layer_dir(layer.diff_id)

    def _unpack(self, layer: LayerDescriptor) -> None:
        staging = self.snapshots.staging_dir()
        try:
            with self._open_blob(layer.digest) as blob:
                diff_id = unpack_layer(blob, staging, media_type=layer.media_type,
                                       expected_digest=layer.digest)
        except (BlobMissing, BlobCorrupt) as err:  # gone from the local cache: rebuilt
            raise _lost(layer.digest, f"the local cache ({self.cache.root})",
                        err.message) from err
        if diff_id != layer.diff_id:
            raise CacheError(f"layer {layer.digest} unpacks to diff_id {diff_id}, not "
                             f"{layer.diff_id}", hint="prune the cache and build again")
        self.snapshots.publish(layer.diff_id, staging)

    def _open_blob(self, digest: str) -> BinaryIO:
        """The blob, read through the cache's verifying reader: a corrupt blob is removed
        from the cache as it is detected (a miss for the next build, never a wrong one)."""
        return self.cache.blob_source().open_blob(digest)

    async def store_upper(self, mounted: Mounted, epoch: int | None) -> LayerDescriptor:
        """The diff of the writable mount ``mounted`` as an uncompressed layer blob in the
        cache (compressed when an image or a remote cache needs it: ``compressed``); its
        upper dir becomes the layer's snapshot when the mount is torn down (moved, never
        unpacked from the blob again; ``SnapshotStore.keep_upper``).  An empty diff still
        gives a (empty) layer, as BuildKit's does: the image's history and layer count then
        match BuildKit's (e.g. ``WORKDIR`` of a directory the base already has)."""
        if mounted.upper is None:
            raise SolveError(f"{mounted.path} is mounted read-only: it has no diff to store")
        layer = await self._write_layer(mounted.upper, epoch, "none")
        self.snapshots.keep_upper(mounted, layer.diff_id)
        return layer

    async def store_tree(self, tree: Path, epoch: int | None) -> LayerDescriptor:
        """The tree ``tree`` (staged under this runtime's ``tmp``, in overlay form: a
        source's files) as an uncompressed layer blob in the cache; the tree itself is
        moved into place as its snapshot.  Uncompressed because a source's layer is never
        an image's: only a COPY or a RUN mount reads it, here or on a peer, and gzip of a
        1 GiB context file took 28 s against 2 s for its tar."""
        layer = await self._write_layer(tree, epoch, "none")
        await asyncio.to_thread(self.snapshots.publish, layer.diff_id, tree)
        return layer

    async def compressed(self, layers: Sequence[LayerDescriptor],
                         compression: Compression | None = None
                         ) -> tuple[LayerDescriptor, ...]:
        """``layers`` as an image or a remote cache holds them, in ``compression`` (None:
        this runtime's, gzip unless configured): each uncompressed one compressed from its
        blob the first time and kept (``variant_key``), the others as they are, unless
        ``compression.force`` (then every layer not already in that compression is
        decompressed and compressed again; ``uncompressed`` keeps or makes the plain tar).
        The compressed bytes depend on the tar and the level alone
        (workers/_layer_stream.py), so an image's digest is the one a layer compressed when
        its step ran had."""
        if compression is None:
            if self.compression == "none":
                return tuple(layers)
            compression = Compression(self.compression)
        kind = _LAYER_KIND.get(compression.type, compression.type)
        return tuple([await self._in_form(layer, kind, compression) for layer in layers])

    async def _in_form(self, layer: LayerDescriptor, kind: str,
                       compression: Compression) -> LayerDescriptor:
        has = layer_compression(layer.media_type)
        if has == kind or (layer.media_type != TAR_LAYER and not compression.force):
            return layer  # as it is (a base image's layer, unless forced)
        if kind == "none":
            return await self._variant(layer, "none", None)
        return await self._variant(layer, kind, _own_level(kind, compression.level))

    async def rewritten(self, layer: LayerDescriptor, epoch: int) -> LayerDescriptor:
        """``layer`` with every time of its entries later than ``epoch`` set to ``epoch``
        (``rewrite-timestamp``), as an uncompressed layer; ``layer`` itself when no entry
        is later.  Made once per layer and epoch and kept (``variant_key``)."""
        key = variant_key(layer.diff_id, f"rewrite-timestamp@{epoch}")
        return await self._kept(key, layer, f"timestamps of layer {layer.diff_id} clamped "
                                f"to {epoch}", lambda: self._clamped(layer, epoch), same=True)

    async def _clamped(self, layer: LayerDescriptor, epoch: int) -> LayerDescriptor:
        made = await self._stored_if(lambda out: self._clamp(layer, out, epoch))
        return made or layer

    async def _variant(self, layer: LayerDescriptor, kind: str | None = None,
                       level: int | None = None) -> LayerDescriptor:
        kind = kind or self.compression
        name = kind if level is None else f"{kind}-{level}"
        return await self._kept(variant_key(layer.diff_id, name), layer,
                                f"{name} of layer {layer.diff_id}",
                                lambda: self._recompressed(layer, kind, level))

    async def _kept(self, key: str, layer: LayerDescriptor, what: str,
                    make: Callable[[], Awaitable[LayerDescriptor]], *,
                    same: bool = False) -> LayerDescriptor:
        """The layer the record ``key`` names (``make`` makes it, and the record, the first
        time); ``same``: the made layer may have ``layer``'s diff_id or another."""
        async with self._compressing.setdefault(key, asyncio.Lock()):
            record = await self.cache.get_record(key)
            if record is not None and len(record.result.layers) == 1:
                known = record.result.layers[0]
                if ((same or known.diff_id == layer.diff_id)
                        and self.cache.holds(known.digest)):
                    return known
            await self.ensure_blobs((layer,))
            made = await make()
            await self.cache.put_record(CacheRecord(
                key, StateResult(layers=(made,)), created=int(time.time()),
                meta={"name": what}))
            return made

    async def _compressed_here(self, layer: LayerDescriptor) -> bool:
        """Whether the compressed ``layer`` could be made again from its uncompressed blob
        here (a step rebuilt since its blob was lost, or made here before it was imported):
        then it is in the local cache, and no remote cache is asked for it."""
        kind = layer_compression(layer.media_type)
        if kind == "none" or layer.diff_id == layer.digest:
            return False
        path = self.cache.blob_source().blob_path(layer.diff_id)
        if path is None:
            return False
        plain = LayerDescriptor(layer.diff_id, path.stat().st_size, layer.diff_id, TAR_LAYER)
        try:
            made = await self._variant(plain, kind)
        except (BlobLost, CacheError):
            return False
        if made.digest != layer.digest:  # another compressor made it (another tool)
            return False
        self.remote_blobs.pop(layer.digest, None)
        self.lost.discard(layer.digest)
        return True

    async def _recompressed(self, layer: LayerDescriptor, kind: str,
                            level: int | None) -> LayerDescriptor:
        return await self._stored(lambda out: self._compress(layer, out, kind, level))

    def _compress(self, layer: LayerDescriptor, out: BinaryIO, kind: str,
                  level: int | None) -> LayerDescriptor:
        return self._retar(layer, out, kind, level, lambda plain, sink: _copy_all(plain, sink))

    def _clamp(self, layer: LayerDescriptor, out: BinaryIO, epoch: int
               ) -> LayerDescriptor | None:
        """``layer`` clamped to ``epoch`` on ``out``; None when no time needed it."""
        changed = False

        def copy(plain: Readable, sink: LayerSink) -> None:
            nonlocal changed
            changed = clamp_tar_times(plain, sink, epoch)
        made = self._retar(layer, out, "none", None, copy, check=False)
        return made if changed else None

    def _retar(self, layer: LayerDescriptor, out: BinaryIO, kind: str, level: int | None,
               copy: Callable[[Readable, LayerSink], None], *, check: bool = True
               ) -> LayerDescriptor:
        """``layer``'s tar (decompressed when it is not plain) through ``copy`` into a
        ``kind`` blob on ``out``; its diff_id checked to stay the same when ``check``."""
        sink = LayerSink(out, kind, level)
        try:
            with self._open_blob(layer.digest) as blob:
                plain: Readable = blob if layer_compression(layer.media_type) == "none" \
                    else open_layer_reader(blob)[1]
                copy(plain, sink)
            made = sink.finish()
        except (BlobMissing, BlobCorrupt) as err:  # gone from the local cache: rebuilt
            raise _lost(layer.digest, f"the local cache ({self.cache.root})",
                        err.message) from err
        finally:
            sink.close()
        if check and made.diff_id != layer.diff_id:
            raise CacheError(f"layer {layer.digest} compresses to diff_id {made.diff_id}",
                             hint="prune the cache and build again")
        return made

    async def _write_layer(self, tree: Path, epoch: int | None,
                           compression: str | None = None) -> LayerDescriptor:
        return await self._stored(lambda out: write_layer(
            tree, out, compression=compression or self.compression, epoch=epoch))

    async def _stored(self, write: Callable[[BinaryIO], LayerDescriptor]) -> LayerDescriptor:
        """The blob ``write`` makes (in a thread, into a scratch file) moved into the cache
        under the digest it returns."""
        layer = await self._stored_if(write)
        assert layer is not None  # write returns a layer
        return layer

    async def _stored_if(self, write: Callable[[BinaryIO], LayerDescriptor | None]
                         ) -> LayerDescriptor | None:
        """``_stored``, where ``write`` may answer None: then nothing is kept."""
        fd, name = tempfile.mkstemp(prefix="layer-", suffix=".tar", dir=self.tmp)
        try:
            with os.fdopen(fd, "wb") as out:
                layer = await asyncio.to_thread(write, out)
            if layer is not None:
                await self.cache.put_blob(layer.digest, Path(name), move=True)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
        return layer

    async def context_tree(self, name: str) -> Materialised | None:
        """What this runtime, or the last one over its root, made of the context source
        ``name`` (``remember_tree``), or None."""
        known = self.context_trees.get(name)
        if known is None and name not in self._trees_read:
            self._trees_read.add(name)
            data = await asyncio.to_thread(self.context_indexes.load_tree, name)
            known = None if data is None else \
                Materialised.from_wire(data, self.snapshots.layer_dir)
            if known is not None:
                self.context_trees[name] = known
        return known

    async def remember_tree(self, name: str, tree: Materialised) -> None:
        """``tree`` is now what was last made of the context source ``name``."""
        self.context_trees[name] = tree
        await asyncio.to_thread(self.context_indexes.save_tree, name, tree.to_wire())

    async def fetch_image_blobs(self, ref: Reference, image: ResolvedImage,
                                registry: RegistryClient | None = None) -> None:
        """Copy the layers of ``image`` the cache lacks from the registry (through
        ``registry``, the build's client, when given)."""
        client = registry or self.registry
        present = await self.cache.has_many(layer.digest for layer in image.layers)
        for layer in image.layers:
            if layer.digest in present:
                continue
            target = Path(tempfile.mkdtemp(prefix="pull-", dir=self.tmp)) / "blob"
            try:
                await client.fetch_blob(ref, layer, target)
                await self.cache.put_blob(layer.digest, target, move=True)
            finally:
                with contextlib.suppress(OSError):
                    target.unlink(missing_ok=True)
                    target.parent.rmdir()


#: The remote blobs of the build whose call runs in this task (None: the runtime's own).
_BUILD_REMOTES: contextvars.ContextVar[dict[str, CacheBackend] | None] = \
    contextvars.ContextVar("dockyard_build_remotes", default=None)


def build_remotes(remotes: dict[str, CacheBackend] | None) -> None:
    """Make ``remotes`` the remote blobs of the calling task and of the tasks it starts:
    what a build registers and fetches stays that build's (a worker runs each call of a
    build in a task of its own)."""
    _BUILD_REMOTES.set(remotes)


class RuntimeBackend:
    """The ``SolveBackend`` of one build on a ``WorkerRuntime``."""

    def __init__(self, runtime: WorkerRuntime, session: BuildSession) -> None:
        self.runtime = runtime
        self.session = session
        self.registry = runtime.registry_for(session.insecure_registries)
        # (reference text, platform) -> the image resolved for this build (a tag moves
        # between builds, never within one).
        self._images: dict[tuple[str, Platform | None], asyncio.Task[ResolvedImage]] = {}
        # (context name, exclude patterns) -> its listing and hashes, for this build.
        self._contexts: dict[tuple[str, str], ContextTree] = {}
        # the worker's store of context contents (made when a manifest context needs it)
        self._context_store: ContextStore | None = None
        # context directory -> its digests (stat index) for this build, shared by its
        # contexts of every exclude list; loaded on first use, saved by ``aclose``.
        self._digests: dict[Path, ContextDigests] = {}
        # Remote sources (http, git) fetched for this build, and the scratch directories
        # holding them (removed by ``aclose``).
        self.fetched: dict[SourceOp, asyncio.Future[LocalContext]] = {}
        self.scratch: list[Path] = []

    async def aclose(self) -> None:
        """Save the stat indexes of the context directories read; remove what this
        build fetched."""
        for known in self._digests.values():
            await asyncio.to_thread(self.runtime.context_indexes.save, known)
        for path in self.scratch:
            await asyncio.to_thread(shutil.rmtree, path, True)
        self.scratch.clear()

    # -- identities and checksums --

    async def source_identity(self, vertex: Vertex) -> str:
        op = _source(vertex)
        if op.identifier.startswith(IMAGE_SCHEME):
            image = await self.resolve_image(op.identifier[len(IMAGE_SCHEME):],
                                             vertex.platform)
            return image.digest
        if op.identifier.startswith(LOCAL_SCHEME):
            return await asyncio.to_thread(self.context(op).checksum)
        if op.identifier.startswith("oci-layout://"):
            from ._layout_source import layout_identity  # noqa: PLC0415 -- imports this module
            return layout_identity(op)
        from ._ops import remote_identity  # noqa: PLC0415 -- _ops imports this module
        return await remote_identity(self, op)

    async def content_checksum(self, vertex: Vertex, input_index: int, source: Vertex,
                               selector: Selector) -> str:
        context = self.context(_source(source))
        return await asyncio.to_thread(context.selector_checksum, selector)

    async def execute(self, vertex: Vertex, inputs: Sequence[StateResult],
                      events: EventSink) -> StateResult:
        from ._ops import execute_vertex  # noqa: PLC0415 -- _ops imports this module
        return await execute_vertex(self, vertex, inputs, events)

    # -- per-build answers --

    async def resolve_image(self, text: str, platform: Platform | None) -> ResolvedImage:
        """The image ``text`` names for ``platform`` (the machine's when None)."""
        key = (text, platform)
        task = self._images.get(key)
        if task is None:
            task = asyncio.ensure_future(self._resolve(text, platform))
            self._images[key] = task
        return await asyncio.shield(task)

    async def _resolve(self, text: str, platform: Platform | None) -> ResolvedImage:
        from dockyard.scheduler._platform import default_platform  # noqa: PLC0415
        return await self.registry.resolve(parse_reference(text),
                                           platform or default_platform(),
                                           fresh=self.session.pull)

    async def fetch_image_blobs(self, ref: Reference, image: ResolvedImage) -> None:
        """The runtime's ``fetch_image_blobs`` through this build's registry client."""
        await self.runtime.fetch_image_blobs(ref, image, self.registry)

    def context(self, op: SourceOp) -> ContextTree:
        """The ``local://<name>`` context of the session, with the op's exclude patterns:
        from its manifest when the session has one, else from its directory."""
        name = op.identifier[len(LOCAL_SCHEME):]
        exclude = dict(op.attrs).get("exclude", "[]")
        known = self._contexts.get((name, exclude))
        if known is None:
            known = self._new_context(name, _patterns(exclude))
            self._contexts[(name, exclude)] = known
        return known

    def _new_context(self, name: str, exclude: Sequence[str]) -> ContextTree:
        manifest = self.session.manifests.get(name)
        if manifest is not None:
            if self._context_store is None:
                self._context_store = ContextStore(self.runtime.root)
            return ManifestContext(name, manifest, self._context_store, exclude)
        root = self.session.contexts.get(name)
        if root is None:
            raise SolveError(f"the build session has no context named {name!r}",
                             hint="pass it with --build-context or as the context dir")
        digests = self._digests.get(root)
        if digests is None:  # before any walk of it: the racy rule counts from here
            digests = self._digests[root] = self.runtime.context_indexes.load(root)
        return LocalContext(root, exclude, digests)

    def context_statistics(self) -> DigestStatistics:
        """What hashing the context directories of this build cost so far (all of them;
        a manifest context is hashed on its client, not here)."""
        stats = [known.statistics() for known in self._digests.values()]
        return DigestStatistics(sum(s.hits for s in stats), sum(s.files_hashed for s in stats),
                                sum(s.bytes_hashed for s in stats),
                                sum(s.entries for s in stats))

    async def context_files(self, op: SourceOp) -> tuple[ContextTree, int]:
        """``context(op)`` with every file's content on this worker, ready to
        materialise: a manifest context's missing contents are read from the client
        (the bytes read, second)."""
        context = self.context(op)
        if not isinstance(context, ManifestContext):
            return context, 0
        if self.session.context_reader is None:
            raise SolveError(f"the build context {context.name!r} came as a manifest "
                             "but the build has no session to read its files from",
                             hint="this is a bug in dockyard: please report it")
        return context, await context.ensure_local(self.session.context_reader)


#: buildx's compression names -> the layer writer's
_LAYER_KIND = {"uncompressed": "none"}


def _own_level(kind: str, level: int | None) -> int | None:
    """``level``, or None when it gives the default's bytes (one variant, one record)."""
    default = {"gzip": GZIP_LEVEL, "zstd": ZSTD_LEVEL}.get(kind)
    return None if level == default or (kind == "zstd" and level == 0) else level


def _copy_all(plain: Readable, sink: LayerSink) -> None:
    while chunk := plain.read(READ_SIZE):
        sink.write(chunk)


def variant_key(diff_id: str, compression: str) -> str:
    """The record key naming the ``compression`` variant of the uncompressed layer
    ``diff_id`` (a record, so the cache keeps that blob as long as it keeps records)."""
    material = f"dockyard-layer-variant\0{compression}\0{diff_id}".encode()
    return "sha256:" + hashlib.sha256(material).hexdigest()


def _lost(digest: str, where: str, why: str = "") -> BlobLost:
    """The error for a remote cache's blob that a build needed and cannot have."""
    because = f" ({why})" if why else ""
    return BlobLost(f"layer {digest} of a cached result is no longer usable in {where}"
                    f"{because}", digests=(digest,),
                    hint="the build rebuilds the step that made it; if you see this, "
                    "the rebuild could not run")


def _all_lost(losses: Sequence[BlobLost]) -> BlobLost:
    """One error for the blobs of several ``BlobLost``s (the first if there is one)."""
    if len(losses) == 1:
        return losses[0]
    digests = tuple(digest for lost in losses for digest in lost.digests)
    return BlobLost(f"{len(digests)} layers of cached results are no longer usable: "
                    + "; ".join(lost.message for lost in losses),
                    digests=digests, hint=losses[0].hint)


def _source(vertex: Vertex) -> SourceOp:
    if not isinstance(vertex.op, SourceOp):
        raise SolveError(f"{vertex.name or vertex.digest} is not a source")
    return vertex.op


def _patterns(text: str) -> list[str]:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SolveError(f"malformed exclude patterns in a context source: {text!r}")
    return value
