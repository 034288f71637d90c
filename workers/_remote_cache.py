"""Remote caches of a build (``--cache-from``/``--cache-to``): the solver's ``RecordCache``
over the local store, consulting remote backends on a miss and pushing records out.

- **Import**: a key the local store lacks is looked up in each ``--cache-from`` backend in
  turn (records by key, global): one request, the record's GET.  The record is trusted
  (backends publish a record only after its blobs, and prune deletes records before
  blobs): it is returned as is and its layer blobs are *not* fetched; the runtime learns
  where they are (``WorkerRuntime.remote_blobs``) and fetches one when something needs
  it (an exec or file op on top unpacks it, an exporter writes it).  An imported record
  is kept in the local store at ``drain`` if by then every blob it names is local (a
  later build without ``--cache-from`` hits it, as BuildKit keeps what it imported);
  one whose blobs were never fetched stays remote-only.  A blob found
  missing or corrupt then (the backend drops a corrupt one) raises ``BlobLost``: the
  solver rebuilds the step that owns the layer and retries (scheduler/_solver.py), and
  the rebuilt record is pushed like any other, which repairs the remote cache.  A
  backend that fails (unreachable, no such bucket) is a miss, warned about once, and
  not asked again in this build.
- **Export**: a record is pushed to each ``--cache-to`` backend in the background as soon
  as the solver has it (``mode=max``: every vertex the solver executes or finds), and
  once the solve is done ``export_final`` pushes to every backend each final image's
  layer chain (``chain_of``: the records whose results are the image's layers, found
  even when the build's last step hit and it asked for none below; ``mode=min`` is
  these alone, as BuildKit's: only what the image holds).
  Its blobs go first (those the backend lacks, from the local store or the backend they
  were imported from), then the record.  Each blob is sent to a backend by one task per
  build, shared by every record naming it (a chain's records share their lower layers):
  one existence check and at most one upload per blob, however many records name it; a
  failed one is forgotten, so a later record tries again.  A record whose blob was lost
  is not pushed (its rebuilt replacement is).  ``drain`` waits for every push: a build
  that fails still keeps what it finished.  An export failure fails the build at ``drain``,
  or with ``ignore-error=true`` is one warning event.
- **A registry cache** (workers/_registry_cache.py) takes blobs as they come but its
  records only at ``drain``, which writes its manifest once every push is done (none of
  them failed, and the build did not: else the ref is left as it was).  ``seen`` keeps
  every record the build got or put, from which ``chain_of`` picks an image's chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dockyard.cache_backends._credentials import S3Credentials
from dockyard.cache_backends._local import LocalBackend
from dockyard.cache_backends._protocol import CacheBackend
from dockyard.cache_backends._records import CacheRecord, LayerDescriptor, StateResult
from dockyard.scheduler._build_request import Compression
from dockyard.scheduler._errors import BlobLost, CacheError, DockyardError, UsageError
from dockyard.scheduler._progress import EventSink, warning
from dockyard.scheduler._reference import parse_reference

from ._metrics import WORKER_METRICS
from ._registry import RegistryClient
from ._registry_cache import RegistryCache

if TYPE_CHECKING:
    from ._runtime import WorkerRuntime

__all__ = ["CACHE_EVENT_VERTEX", "RemoteCache", "RemoteRecords", "open_backend"]

#: The ``vertex`` of the warning events the remote caches emit (no vertex of the graph).
CACHE_EVENT_VERTEX = "cache"
S3_SETTINGS = ("bucket", "region", "prefix", "endpoint_url", "use_path_style")


@dataclass(frozen=True)
class RemoteCache:
    """One ``--cache-to`` or ``--cache-from`` backend: ``mode`` min or max (exports),
    ``ignore_error`` (exports: failures are a warning, not a failed build),
    ``compression`` of the layers it is sent (exports; None: the runtime's)."""

    backend: CacheBackend
    mode: str = "min"
    ignore_error: bool = False
    compression: Compression | None = None

    @property
    def where(self) -> str:
        return str(getattr(self.backend, "where", None) or self.backend)


def open_backend(kind: str, attrs: Mapping[str, str], tmp: Path | None = None,
                 credentials: S3Credentials | None = None,
                 registry: RegistryClient | None = None) -> CacheBackend:
    """The backend of a parsed cache flag: ``s3`` (bucket, region, prefix, endpoint_url,
    use_path_style; ``credentials``: the build client's, else the process's chain),
    ``local`` (``path``, a LocalBackend rooted there) or ``registry`` (``ref``,
    ``image_manifest``, ``oci_mediatypes``; spoken to through ``registry``)."""
    if kind == "local":
        return LocalBackend(Path(attrs["path"]))
    if kind == "registry":
        if registry is None:
            raise UsageError("a registry cache needs a registry client")
        return RegistryCache(parse_reference(attrs["ref"]), registry, tmp,
                             image_manifest=attrs.get("image_manifest", "true") == "true",
                             oci=attrs.get("oci_mediatypes", "true") == "true")
    if kind == "s3":
        from dockyard.cache_backends._s3 import S3Backend  # noqa: PLC0415 -- boto3 only when used
        return S3Backend(attrs["bucket"], attrs.get("prefix", ""),
                         region=attrs.get("region") or None,
                         endpoint_url=attrs.get("endpoint_url") or None,
                         use_path_style=attrs.get("use_path_style") == "true", tmp_dir=tmp,
                         credentials=credentials)
    raise UsageError(f"unsupported cache type {kind!r}",
                     hint="use type=registry, type=inline, type=s3 or type=local")


class RemoteRecords:
    """The ``RecordCache`` of one build (see the module docstring); ``drain`` at its end."""

    def __init__(self, runtime: WorkerRuntime, *, imports: Sequence[RemoteCache] = (),
                 exports: Sequence[RemoteCache] = (), events: EventSink | None = None
                 ) -> None:
        self._runtime = runtime
        self._imports = list(imports)
        self._exports = list(exports)
        self._events = events
        # backends that failed in this build (not asked again), by identity
        self._broken: set[int] = set()
        # (export index, key, built here) pushed or being pushed: a key is pushed once as
        # found and once as built in this build (``put``), which a record rebuilt after a
        # lost blob is (its found, stale record's push gives up on the lost blob)
        self._pushed: set[tuple[int, str, bool]] = set()
        # keys of the records ``put`` in this build (executed here)
        self._built: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        # (export index, digest) -> the task sending that blob there (see _sender)
        self._sending: dict[tuple[int, str], asyncio.Task[bool]] = {}
        # records found in a --cache-from backend, by key (kept locally at drain)
        self._found: dict[str, CacheRecord] = {}
        # (export, error, the record's key if it was found rather than built here)
        self._failures: list[tuple[RemoteCache, DockyardError, str | None]] = []
        #: the warnings emitted (once per subject: a backend's import, its export)
        self.warnings: dict[str, str] = {}
        #: records found in a --cache-from backend (keys), for statistics and tests
        self.imported: list[str] = []
        #: every record this build got or put, by key (an inline cache picks from them)
        self.seen: dict[str, CacheRecord] = {}

    @property
    def local(self) -> LocalBackend:
        return self._runtime.cache

    # -- RecordCache --

    async def get(self, key: str) -> CacheRecord | None:
        record = await self.local.get_record(key)
        if record is None:
            record = await self._import(key)
        if record is not None:
            self.seen[key] = record
            self._export_max(record)
        return record

    async def put(self, record: CacheRecord) -> None:
        await self._runtime.ensure_blobs(record.result.layers)
        await self.local.put_record(record)
        self._built.add(record.key)
        self.seen[record.key] = record
        self._export_max(record)

    # -- import --

    async def _import(self, key: str) -> CacheRecord | None:
        for remote in self._imports:
            if id(remote) in self._broken:
                continue
            try:
                record = await remote.backend.get_record(key)
            except DockyardError as err:
                self._broken.add(id(remote))
                self._warn(f"import {remote.where}",
                           f"cache import from {remote.where} failed, reading it as "
                           f"misses for this build: {err.message}")
                continue
            if record is not None:
                self._runtime.add_remote_blobs(record.result.layers, remote.backend)
                self.imported.append(key)
                self._found[key] = record
                return record
        return None

    # -- export --

    def _export_max(self, record: CacheRecord) -> None:
        for index, remote in enumerate(self._exports):
            if remote.mode == "max":
                self._schedule(index, remote, record)

    def export_final(self, records: Iterable[CacheRecord]) -> None:
        """Push each final image's layer chain (``chain_of``: its record and those of the
        steps whose results are its lower layers, as BuildKit's ``mode=min`` exports) to
        every backend (``max`` ones have most of them already, or are pushing them)."""
        if not self._exports:
            return
        for record in records:
            for index, remote in enumerate(self._exports):
                self._schedule(index, remote, record)
            self._track(asyncio.ensure_future(self._export_chain(record)))

    async def _export_chain(self, root: CacheRecord) -> None:
        try:
            chain = await self.chain_of(root)
        except DockyardError as err:  # the local store failed: the image's record went
            self._warn("chain", f"the layer chain of {root.key} was not exported, only "
                       f"its image's record: {err.message}")
            return
        for record in chain:
            for index, remote in enumerate(self._exports):
                self._schedule(index, remote, record)

    def _schedule(self, index: int, remote: RemoteCache, record: CacheRecord) -> None:
        pushed = (index, record.key, record.key in self._built)
        if pushed in self._pushed:
            return
        self._pushed.add(pushed)
        self._track(asyncio.ensure_future(self._push(index, remote, record, pushed[2])))

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _push(self, index: int, remote: RemoteCache, record: CacheRecord,
                    built: bool) -> None:
        try:
            # a remote cache holds layers as images do (compressed), for any reader
            layers = await self._runtime.compressed(record.result.layers, remote.compression)
            if layers != record.result.layers:
                record = dataclasses.replace(
                    record, result=dataclasses.replace(record.result, layers=layers))
            await self._push_blobs(index, remote.backend, record.result.layers)
            await remote.backend.put_record(record)
        except BlobLost:
            return  # a stale record: the solver rebuilds it, and its put pushes that
        except DockyardError as err:
            if not built and any(layer.digest in self._runtime.lost
                                 for layer in record.result.layers):
                return  # found stale meanwhile (its blob lost after the check): likewise
            self._failures.append((remote, err, None if built else record.key))

    async def _push_blobs(self, index: int, backend: CacheBackend,
                          layers: Sequence[LayerDescriptor]) -> None:
        """Every blob of ``layers`` at ``backend``: each through its one shared task."""
        sends = [self._sender(index, backend, layer) for layer in layers]
        for send in sends:  # all of them started; the first failure is the record's
            await asyncio.wait((send,))
        for send in sends:
            send.result()

    def _sender(self, index: int, backend: CacheBackend, layer: LayerDescriptor
                ) -> asyncio.Task[bool]:
        """The task sending ``layer``'s blob to export ``index``; a failed one is
        forgotten when it ends (the next record naming the blob tries again), and so is
        one that only found the blob at the backend without a local copy (that copy may
        turn out corrupt and be dropped meanwhile: the next record asks again)."""
        slot = (index, layer.digest)
        task = self._sending.get(slot)
        if task is not None and _trusted_remote(task):
            task = None
        if task is None:
            task = asyncio.ensure_future(self._send_blob(backend, layer))
            self._sending[slot] = task
            self._track(task)
            task.add_done_callback(lambda done: self._forget_failed(slot, done))
        return task

    def _forget_failed(self, slot: tuple[int, str], task: asyncio.Task[bool]) -> None:
        if (task.cancelled() or task.exception() is not None) \
                and self._sending.get(slot) is task:
            del self._sending[slot]

    async def _send_blob(self, backend: CacheBackend, layer: LayerDescriptor) -> bool:
        """One blob to ``backend`` unless it has it (its ``put_blob`` checks, once): from
        the local store, else fetched first from the backend it was imported from --
        which a backend that already holds it (the same bucket) does not need.  Whether
        it went through ``put_blob`` (False: the backend had it, and it is not local)."""
        path = self.local.blob_source().blob_path(layer.digest)
        if path is None:
            if await backend.has(layer.digest):
                return False
            await self._runtime.ensure_blobs((layer,))
            path = self.local.blob_source().blob_path(layer.digest)
        if path is None and layer.digest in self._runtime.lost:
            raise BlobLost(f"layer {layer.digest} was lost", digests=(layer.digest,))
        if path is None:
            raise CacheError(f"layer {layer.digest} is in no cache of this machine",
                             hint="build again without --cache-from")
        WORKER_METRICS.moved(backend, "written", await backend.put_blob(layer.digest, path))
        return True

    async def drain(self, *, failed: bool = False) -> None:
        """Wait for every push.  Export failures: one warning for the ``ignore-error``
        backends; for the others a ``CacheError`` (unless the build ``failed`` already,
        then warnings: the build's own error is the one to report)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        # a found record's push that failed is moot once the record was rebuilt here
        # (its blob was lost: the rebuilt record's own push stands for it)
        self._failures = [failure for failure in self._failures
                          if failure[2] is None or failure[2] not in self._built]
        if not failed:  # a failed build leaves a registry cache as it was, as BuildKit's
            await self._commit()
        await self._keep_imported()
        fatal = [(remote, err) for remote, err, _ in self._failures
                 if not remote.ignore_error and not failed]
        for remote, err, _ in self._failures:
            if remote.ignore_error or failed:
                self._warn(f"export {remote.where}",
                           f"cache export to {remote.where} failed: {err.message}")
        if fatal:
            remote, err = fatal[0]
            raise CacheError(f"cache export to {remote.where} failed: {err.message}",
                             hint="check the cache's address and credentials, or add "
                             "ignore-error=true to --cache-to to build without it")

    async def _commit(self) -> None:
        """Write the manifest of each export that has one (a registry cache), unless one
        of its records failed: a cache is written whole or left as it was."""
        failed = {id(remote) for remote, _, _ in self._failures}
        for remote in self._exports:
            if isinstance(remote.backend, RegistryCache) and id(remote) not in failed:
                try:
                    await remote.backend.commit()
                except DockyardError as err:
                    self._failures.append((remote, err, None))

    async def _keep_imported(self) -> None:
        """Store locally each imported record whose blobs are all local now (fetched by
        the build); never one naming a blob the local store lacks.  Records rebuilt here
        are stored already (``put``)."""
        found, self._found = self._found, {}
        for key, record in found.items():
            if key in self._built:
                continue
            digests = [layer.digest for layer in record.result.layers]
            try:
                if len(await self.local.has_many(digests)) == len(set(digests)):
                    await self.local.put_record(record)
            except CacheError as err:  # lost meanwhile (a prune): stays remote-only
                self._warn("keep imported", f"an imported cache record ({key}) was not "
                           f"kept in the local cache: {err.message}")

    # -- the records an inline cache picks from --

    async def chain_of(self, root: CacheRecord) -> list[CacheRecord]:
        """The records of ``root``'s layer chain, ``root`` included: those whose layers
        are a prefix of its layers (by diff_id), from every record this build got or put,
        those its registry imports hold, and those the local store lists for ``root``
        from an earlier build (a build whose last step hit asks for no record below it;
        BuildKit exports a hit's chain all the same).  Kept in the local store for the
        next build."""
        diff_ids = [layer.diff_id for layer in root.result.layers]
        chain = [record for record in await self._candidates(root)
                 if record.result.layers and [layer.diff_id for layer in record.result.layers]
                 == diff_ids[:len(record.result.layers)]]
        await self.local.put_record(CacheRecord(
            _chain_key(root.key), StateResult(), created=root.created,
            meta={"name": f"the layer chain of {root.key}",
                  "chain": " ".join(sorted(record.key for record in chain))}))
        return chain

    async def _candidates(self, root: CacheRecord) -> list[CacheRecord]:
        found: dict[str, CacheRecord] = {**self.seen, root.key: root}
        for remote in self._imports:
            if isinstance(remote.backend, RegistryCache) and id(remote) not in self._broken:
                with contextlib.suppress(DockyardError):  # warned about by the import
                    for key, record in (await remote.backend.loaded()).records.items():
                        found.setdefault(key, record)
        kept = await self.local.get_record(_chain_key(root.key))
        for key in (kept.meta.get("chain", "").split() if kept is not None else ()):
            if key not in found and (known := await self.local.get_record(key)) is not None:
                found[key] = known
        return list(found.values())

    def import_backends(self) -> list[CacheBackend]:
        """The build's ``--cache-from`` backends that still answer (a peer's blob is
        looked for there first: workers/_peers.py ``FirstOf``)."""
        return [remote.backend for remote in self._imports if id(remote) not in self._broken]

    async def aclose(self) -> None:
        """Cancel pushes still running (a cancelled build); the runtime forgets the blobs
        this build's ``--cache-from`` backends were to serve (never used by another
        build: they may hold this build's client credentials)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._runtime.forget_remote(remote.backend for remote in self._imports)
        WORKER_METRICS.absorb(remote.backend for remote in [*self._imports, *self._exports])

    def _warn(self, subject: str, text: str) -> None:
        if subject in self.warnings:
            return
        self.warnings[subject] = text
        if self._events is not None:
            self._events.emit(warning(CACHE_EVENT_VERTEX, text))


def _chain_key(key: str) -> str:
    """The local record listing the records of ``key``'s layer chain (``chain_of``)."""
    return "sha256:" + hashlib.sha256(f"dockyard-inline-chain\0{key}".encode()).hexdigest()


def _trusted_remote(task: asyncio.Task[bool]) -> bool:
    """Whether a finished send only found its blob at the backend (no local copy)."""
    return task.done() and not task.cancelled() and task.exception() is None \
        and not task.result()
