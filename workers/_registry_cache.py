"""A build cache in a registry (``--cache-to type=registry,ref=REF``, ``--cache-from
type=registry,ref=REF`` or ``--cache-from IMAGE``): a ``CacheBackend`` over the registry
client, in BuildKit's cache manifest format (cache_backends/_cache_config.py).

- **Reading**: the artifact at ``ref`` is read once, on the first record asked for: a cache
  index (BuildKit's default form), a cache image manifest (``image-manifest=true``), or an
  image, single or multi-platform, whose config holds an inline cache
  (``moby.buildkit.cache.v0``; each platform's image is read).  Nothing at ``ref`` is an
  empty cache.  Blobs are fetched from ``ref``'s repository when a build needs them,
  verified by digest.
- **Writing**: ``put_blob`` pushes a blob to ``ref``'s repository (skipped when there);
  ``put_record`` only collects; ``commit`` (called once by the build's ``drain``) pushes
  the cache config and then the manifest under ``ref``'s tag, replacing what was there, as
  BuildKit's export does.  A build that failed before ``commit`` leaves ``ref`` as it was.
- ``prune`` and ``usage`` do not apply: the registry owns the storage (delete the tag).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from collections.abc import AsyncIterable, Iterable
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

from dockyard.cache_backends._cache_config import (
    CACHE_CONFIG_MEDIA,
    CacheConfig,
    cache_artifact,
    decode_cache_config,
    encode_cache_config,
    layer_descriptors,
    read_inline,
)
from dockyard.cache_backends._protocol import (
    BackendStatistics,
    BlobCorrupt,
    BlobInput,
    BlobMissing,
    BlobSink,
    Counters,
    PruneReport,
    StreamReader,
    Usage,
    digest_hex,
    verified_stream,
)
from dockyard.cache_backends._records import CacheRecord, LayerDescriptor
from dockyard.scheduler._errors import CacheError, RegistryError
from dockyard.scheduler._reference import Reference

from ._manifests import FetchedManifest, layers_of, parse_descriptor
from ._registry import RegistryBlobCorrupt, RegistryClient, RegistryNotFound

__all__ = ["RegistryCache"]


class RegistryCache:
    """The cache at ``ref`` through ``client``; ``tmp`` holds blobs while they move.
    ``image_manifest``/``oci``: the form ``commit`` writes (see ``cache_artifact``)."""

    name = "registry"

    def __init__(self, ref: Reference, client: RegistryClient, tmp: Path | None = None, *,
                 image_manifest: bool = False, oci: bool = True) -> None:
        self.ref = ref
        self._client = client
        self._tmp = tmp
        self._image_manifest = image_manifest
        self._oci = oci
        # the artifact at ref as read (once, under _loading); None until then
        self._loaded: CacheConfig | None = None
        self._loading = asyncio.Lock()
        # blobs known to be in ref's repository: described by the artifact, or pushed
        self._present: dict[str, LayerDescriptor | None] = {}
        # records put in this build, written by commit (by key)
        self._pending: dict[str, CacheRecord] = {}
        self._counters = Counters()

    @property
    def where(self) -> str:
        return f"the registry cache {self.ref}"

    def __repr__(self) -> str:
        return f"<RegistryCache {self.ref} pending={len(self._pending)}>"

    # -- reading the artifact --

    async def loaded(self) -> CacheConfig:
        """What ``ref`` holds (read on the first call; nothing there is an empty cache)."""
        async with self._loading:
            if self._loaded is None:
                try:
                    self._loaded = await self._read()
                except RegistryNotFound:
                    self._loaded = CacheConfig()
                except RegistryError as err:
                    raise CacheError(f"cannot read {self.where}: {err.message}",
                                     hint=err.hint) from err
            return self._loaded

    async def _read(self) -> CacheConfig:
        top = await self._client.fetch_manifest(self.ref)
        if not top.is_index:
            return await self._from_manifest(top)
        entries = [entry for entry in top.parsed.get("manifests") or []
                   if isinstance(entry, dict)]
        config = next((entry for entry in entries
                       if entry.get("mediaType") == CACHE_CONFIG_MEDIA), None)
        if config is not None:
            return await self._from_config(config, layer_descriptors(entries))
        records, foreign = {}, 0
        for entry in entries:  # an image index: each platform's inline cache
            image = await self._client.fetch_manifest(self.ref, str(entry.get("digest")))
            if not image.is_index:
                found = await self._from_manifest(image)
                records.update(found.records)
                foreign += found.foreign
        return CacheConfig(records, foreign)

    async def _from_manifest(self, manifest: FetchedManifest) -> CacheConfig:
        parsed = manifest.parsed
        if isinstance(parsed.get("config"), dict) \
                and parsed["config"].get("mediaType") == CACHE_CONFIG_MEDIA:
            return await self._from_config(parsed["config"],
                                           layer_descriptors(parsed.get("layers") or []))
        where = f"{self.ref.name}@{manifest.digest}"
        config_desc = parse_descriptor(parsed.get("config"), where)
        config = await self._client.fetch_blob_bytes(self.ref, config_desc.digest,
                                                     config_desc.size)
        layers = layers_of(parsed, config, where)
        self._present.update((layer.digest, layer) for layer in layers)
        return read_inline(config, layers, where) or CacheConfig()

    async def _from_config(self, raw: dict[str, Any], known: dict[str, LayerDescriptor]
                           ) -> CacheConfig:
        desc = parse_descriptor(raw, str(self.ref))
        data = await self._client.fetch_blob_bytes(self.ref, desc.digest, desc.size)
        self._present.update(known)
        return decode_cache_config(data, known, self.where)

    # -- blobs --

    async def has(self, digest: str) -> bool:
        digest_hex(digest)
        if digest in self._present:
            return True
        try:
            found = await self._client.blob_exists(self.ref, digest)
        except RegistryError as err:
            raise self._error(f"checking blob {digest}", err) from err
        if found:
            self._present.setdefault(digest, None)
        return found

    async def has_many(self, digests: Iterable[str]) -> set[str]:
        return {digest for digest in set(digests) if await self.has(digest)}

    def _size(self, digest: str) -> int:
        layer = self._present.get(digest)
        if layer is None:
            self._counters.blob_misses += 1
            raise BlobMissing(f"blob {digest} is not described by {self.where}")
        return layer.size

    async def _download(self, digest: str) -> Path:
        """The blob in a new file under ``tmp`` (verified by the client)."""
        size = self._size(digest)
        handle, name = tempfile.mkstemp(prefix="registry-cache-", dir=self._tmp)
        os.close(handle)
        out = Path(name)
        try:
            layer = LayerDescriptor(digest, size, digest)
            await self._client.fetch_blob(self.ref, layer, out)
        except RegistryNotFound as err:
            out.unlink(missing_ok=True)
            self._counters.blob_misses += 1
            raise BlobMissing(f"blob {digest} is missing from {self.where}") from err
        except RegistryError as err:
            out.unlink(missing_ok=True)
            if isinstance(err, RegistryBlobCorrupt):
                self._counters.blobs_corrupt += 1
                raise BlobCorrupt(f"blob {digest} in {self.where} is corrupt: "
                                  f"{err.message}") from err
            raise self._error(f"fetching blob {digest}", err) from err
        self._counters.blob_hits += 1
        return out

    async def open_blob(self, digest: str) -> StreamReader:
        path = await self._download(digest)
        try:
            stream = cast(BinaryIO, path.open("rb"))
        finally:
            path.unlink(missing_ok=True)  # the open file keeps its bytes
        return StreamReader(digest, verified_stream(stream, digest, self.where, lambda: None,
                                                    size=self._size(digest)), offload=True)

    async def fetch_into(self, digest: str, sink: BlobSink) -> int:
        path = await self._download(digest)
        try:
            return await sink.put_blob(digest, path, move=True)
        finally:
            path.unlink(missing_ok=True)

    async def put_blob(self, digest: str, source: BlobInput, *, move: bool = False) -> int:
        digest_hex(digest)
        data: Path | bytes
        if isinstance(source, (bytes, Path)):
            data = source
        else:
            data = await _read_source(source)
        size = len(data) if isinstance(data, bytes) else data.stat().st_size
        if isinstance(data, bytes) and "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise CacheError(f"blob for {digest} does not match its digest; not pushed to "
                             f"{self.where}")
        try:
            await self._client.push_blob(self.ref, digest, size, data)
        except RegistryError as err:
            raise self._error(f"pushing blob {digest}", err) from err
        finally:
            if move and isinstance(source, Path):
                source.unlink(missing_ok=True)
        self._present.setdefault(digest, None)
        self._counters.blobs_written += 1
        return size

    # -- records --

    async def get_record(self, key: str) -> CacheRecord | None:
        record = (await self.loaded()).records.get(key)
        if record is None:
            self._counters.record_misses += 1
            return None
        self._counters.record_hits += 1
        return record

    async def put_record(self, record: CacheRecord) -> None:
        for layer in record.result.layers:
            if not await self.has(layer.digest):
                raise CacheError(f"record {record.key} names blob {layer.digest}, which "
                                 f"{self.where} does not hold", hint="push its blobs first")
        self._pending[record.key] = record
        self._counters.records_written += 1

    async def commit(self) -> str | None:
        """Write the records put so far as the artifact at ``ref`` (its digest); None when
        there were none (``ref`` is left as it was)."""
        if not self._pending:
            return None
        config, layers = encode_cache_config(list(self._pending.values()))
        digest = "sha256:" + hashlib.sha256(config).hexdigest()
        body, media_type = cache_artifact(config, digest, layers,
                                          image_manifest=self._image_manifest, oci=self._oci)
        try:
            await self._client.push_blob(self.ref, digest, len(config), config)
            return await self._client.push_manifest(self.ref, body, media_type)
        except RegistryError as err:
            raise self._error("writing the cache manifest", err) from err

    # -- what does not apply --

    async def prune(self, *, keep_bytes: int | None = None,
                    older_than: float | None = None) -> PruneReport:
        raise CacheError(f"{self.where} is not pruned by dockyard",
                         hint="delete its tag in the registry, or export over it")

    async def usage(self) -> Usage:
        return Usage()

    def statistics(self) -> BackendStatistics:
        return self._counters.snapshot()

    def _error(self, what: str, err: RegistryError) -> CacheError:
        return CacheError(f"{what} at {self.where}: {err.message}", hint=err.hint)


async def _read_source(source: IO[bytes] | AsyncIterable[bytes]) -> bytes:
    """A stream or async chunks as bytes (caches push files; this is for the rest)."""
    if isinstance(source, AsyncIterable):
        return b"".join([chunk async for chunk in source])
    return await asyncio.to_thread(source.read)
