"""BuildKit's cache manifest format (``application/vnd.buildkit.cacheconfig.v0``), written
and read without I/O: what a registry cache (``--cache-to type=registry``) and an inline
cache (``--cache-to type=inline``, the config key ``moby.buildkit.cache.v0``) hold.

The cache config is JSON with two tables:

- ``layers``: one entry per layer of a chain, ``{"blob": digest, "parent": index or -1,
  "annotations": {"mediaType", "diffID", "size", "createdAt"}}``; a chain is an entry and
  its parents, base first.
- ``records``: ``{"digest": key, "layers": [{"layer": index, "createdAt": time}],
  "inputs": [...]}``; BuildKit's keys are digests of its LLB ops linked to their inputs'
  records, dockyard's are whole cache keys (scheduler/_cachekey.py) with no inputs.

An inline cache is the records table alone (base64 of its JSON), each record's layer an
index into the image's own layers, each layer the parent of the next (BuildKit's
``ExportForLayers``).

A dockyard record also carries what BuildKit's format has no field for under the key
``dockyard`` (BuildKit's reader ignores unknown keys): its ``created`` time, its ``meta``
and, for an image source, the base image's config (base64).  Only such records are read
back as ``CacheRecord``s: a BuildKit record's key is computed from BuildKit's op
encoding, which dockyard's keys never equal (``CacheConfig.foreign`` counts them).

The artifact around it (``cache_artifact``): an OCI image manifest whose config is the
cache config and whose layers are the blobs (``image_manifest``, BuildKit's default since
v0.21: an OCI artifact that registries and ``skopeo copy`` take as any image), or an
index listing the layer blobs and the config (BuildKit's form before; ``skopeo copy``
refuses it, reading each layer as a manifest); each layer descriptor carries
``containerd.io/uncompressed`` (its diff_id) as BuildKit's do.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from dockyard.cache_backends._records import (
    DOCKER_LAYER_TYPES,
    OCI_LAYER_TYPES,
    CacheRecord,
    LayerDescriptor,
    StateResult,
)
from dockyard.scheduler._errors import CacheError

__all__ = [
    "CACHE_CONFIG_MEDIA", "INLINE_CACHE_KEY", "CacheConfig", "cache_artifact",
    "decode_cache_config", "encode_cache_config", "inline_value", "layer_descriptors",
    "read_inline",
]

CACHE_CONFIG_MEDIA: Final = "application/vnd.buildkit.cacheconfig.v0"
#: The image config key of an inline cache (its value: the cache config, base64).
INLINE_CACHE_KEY: Final = "moby.buildkit.cache.v0"
UNCOMPRESSED: Final = "containerd.io/uncompressed"
# (the manifest media types: workers/_manifests.py has them too, but cache_backends sits
# below workers)
_OCI_INDEX: Final = "application/vnd.oci.image.index.v1+json"
_OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
_DOCKER_LIST: Final = "application/vnd.docker.distribution.manifest.list.v2+json"
_DOCKER_LAYERS: Final = DOCKER_LAYER_TYPES
_OCI_LAYERS: Final = OCI_LAYER_TYPES


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """A cache config read back: dockyard's ``records`` by key, and the count of records
    it holds that dockyard cannot use (``foreign``: BuildKit's, keyed by its own ops)."""

    records: dict[str, CacheRecord] = field(default_factory=dict)
    foreign: int = 0


def _time(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def encode_cache_config(records: Sequence[CacheRecord]) -> tuple[bytes, list[LayerDescriptor]]:
    """The cache config of ``records`` (canonical JSON bytes) and the distinct layer blobs it
    names, in the order of its layer table."""
    table: list[dict[str, Any]] = []
    index: dict[tuple[str, int], int] = {}
    blobs: dict[str, LayerDescriptor] = {}
    tops: dict[str, int] = {}
    for record in records:
        top = -1
        for layer in record.result.layers:
            slot = (layer.digest, top)
            if slot not in index:
                index[slot] = len(table)
                table.append({"blob": layer.digest, "parent": top, "annotations": {
                    "mediaType": layer.media_type, "diffID": layer.diff_id,
                    "size": layer.size, "createdAt": _time(record.created)}})
                blobs.setdefault(layer.digest, layer)
            top = index[slot]
        tops[record.key] = top
    data = _json({"layers": table, "records": _entries(records, tops)})
    return data, list(blobs.values())


def _json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _entries(records: Sequence[CacheRecord], tops: Mapping[str, int]) -> list[dict[str, Any]]:
    """The ``records`` table: each record's top layer is ``tops[key]`` (-1: none)."""
    encoded = []
    for record in sorted(records, key=lambda item: item.key):
        extra: dict[str, Any] = {"created": record.created, "meta": dict(record.meta),
                                 "layers": len(record.result.layers)}
        if record.result.image_config is not None:
            extra["config"] = base64.b64encode(record.result.image_config).decode()
        entry: dict[str, Any] = {"digest": record.key, "dockyard": extra}
        if tops[record.key] >= 0:
            entry["layers"] = [{"layer": tops[record.key],
                                "createdAt": _time(record.created)}]
        encoded.append(entry)
    return encoded


def decode_cache_config(data: bytes, known: Mapping[str, LayerDescriptor], where: str
                        ) -> CacheConfig:
    """The records of a cache config; ``known``: the artifact's layer descriptors by digest
    (sizes, media types, diff_ids where the config's annotations lack them).  A malformed
    config is a ``CacheError`` naming ``where``; a record naming a blob nobody describes
    is left out."""
    try:
        raw = json.loads(data)
        table = raw.get("layers") or []
        if not isinstance(table, list):
            raise ValueError("layers must be a list")
        layers = [_table_layer(item, known) for item in table]
        parents = [int(item.get("parent", 0)) for item in table]  # omitted: 0 (omitempty)
        return _records(raw.get("records") or [], layers, parents)
    except (ValueError, TypeError, AttributeError, KeyError, IndexError,
            binascii.Error) as err:
        raise CacheError(f"the cache config in {where} is malformed: {err}",
                         hint="export the cache again with --cache-to") from err


def _records(entries: Any, layers: Sequence[LayerDescriptor | None],
             parents: Sequence[int]) -> CacheConfig:
    if not isinstance(entries, list):
        raise ValueError("records must be a list")
    records: dict[str, CacheRecord] = {}
    foreign = 0
    for entry in entries:
        record = _record(entry, layers, parents)
        if record is None:
            foreign += 1
        elif all(layer is not None for layer in record.result.layers):
            records[record.key] = record
    return CacheConfig(records, foreign)


def _table_layer(item: Mapping[str, Any], known: Mapping[str, LayerDescriptor]
                 ) -> LayerDescriptor | None:
    blob = str(item["blob"])
    notes = item.get("annotations") or {}
    seen = known.get(blob)
    diff_id = str(notes.get("diffID") or (seen.diff_id if seen else ""))
    size = int(notes.get("size") or (seen.size if seen else -1))
    media = str(notes.get("mediaType") or (seen.media_type if seen else ""))
    if not diff_id or size < 0 or not media:
        return None
    return LayerDescriptor(blob, size, diff_id, _OCI_LAYERS.get(media, media))


def _record(entry: Mapping[str, Any], layers: Sequence[LayerDescriptor | None],
            parents: Sequence[int]) -> CacheRecord | None:
    extra = entry.get("dockyard")
    if not isinstance(extra, dict):
        return None
    results = entry.get("layers") or []
    chain: list[LayerDescriptor | None] = []
    top = int(results[0]["layer"]) if results else -1
    while top >= 0:
        chain.append(layers[top])
        if len(chain) > len(layers):
            raise ValueError("a layer chain loops")
        top = parents[top]
    chain.reverse()
    if len(chain) != int(extra["layers"]):
        raise ValueError(f"record {entry.get('digest')} names {len(chain)} layers, "
                         f"not {extra['layers']}")
    config = extra.get("config")
    image_config = base64.b64decode(config, validate=True) if config is not None else None
    return CacheRecord(
        key=str(entry["digest"]),
        result=StateResult(layers=tuple(chain), image_config=image_config),  # type: ignore[arg-type]
        created=int(extra["created"]),
        meta={str(k): str(v) for k, v in (extra.get("meta") or {}).items()})


def layer_descriptors(raw: Sequence[Mapping[str, Any]]) -> dict[str, LayerDescriptor]:
    """The layer descriptors of an artifact (an index's entries or a manifest's layers) that
    say their diff_id, by digest."""
    found = {}
    for item in raw:
        notes = item.get("annotations") or {}
        diff_id = notes.get(UNCOMPRESSED) if isinstance(notes, dict) else None
        digest, size, media = item.get("digest"), item.get("size"), item.get("mediaType")
        if isinstance(diff_id, str) and isinstance(digest, str) and isinstance(size, int) \
                and isinstance(media, str):
            found[digest] = LayerDescriptor(digest, size, diff_id, _OCI_LAYERS.get(media, media))
    return found


def cache_artifact(config: bytes, config_digest: str, layers: Sequence[LayerDescriptor], *,
                   image_manifest: bool, oci: bool) -> tuple[bytes, str]:
    """The manifest (``image_manifest``) or index over a cache config and its ``layers``,
    and its media type: OCI types, or with ``oci`` False a Docker manifest list (BuildKit's
    ``oci-mediatypes=false``; an image manifest is always OCI, as BuildKit requires)."""
    def described(layer: LayerDescriptor) -> dict[str, Any]:
        media = layer.media_type if oci else _DOCKER_LAYERS.get(layer.media_type,
                                                                  layer.media_type)
        return {"mediaType": media, "digest": layer.digest, "size": layer.size,
                "annotations": {UNCOMPRESSED: layer.diff_id}}
    config_desc = {"mediaType": CACHE_CONFIG_MEDIA, "digest": config_digest,
                   "size": len(config)}
    if image_manifest:
        body: dict[str, Any] = {"schemaVersion": 2, "mediaType": _OCI_MANIFEST,
                                "config": config_desc,
                                "layers": [described(layer) for layer in layers]}
        media_type = _OCI_MANIFEST
    else:
        media_type = _OCI_INDEX if oci else _DOCKER_LIST
        body = {"schemaVersion": 2, "mediaType": media_type,
                "manifests": [*(described(layer) for layer in layers), config_desc]}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode(), media_type


def inline_value(records: Sequence[CacheRecord], image_layers: Sequence[LayerDescriptor]
                 ) -> str:
    """The ``moby.buildkit.cache.v0`` value of an image config, as BuildKit writes it: the
    records table alone (JSON, then base64), each record's layer an index into the
    image's layers (``records``' chains are prefixes of ``image_layers``)."""
    digests = [layer.digest for layer in image_layers]
    tops = {}
    for record in records:
        chain = [layer.digest for layer in record.result.layers]
        if chain != digests[:len(chain)]:
            raise ValueError(f"record {record.key} is not in the image's layer chain")
        tops[record.key] = len(chain) - 1
    return base64.b64encode(_json(_entries(records, tops))).decode()


def read_inline(image_config: bytes, image_layers: Sequence[LayerDescriptor], where: str
                ) -> CacheConfig | None:
    """The inline cache of an image (its config bytes and its manifest's layers, diff_ids
    from the config), or None when it has none: its records' layer indexes count the
    image's layers, each the parent of the next."""
    try:
        value = json.loads(image_config).get(INLINE_CACHE_KEY)
    except (ValueError, AttributeError):
        return None
    if value is None:
        return None
    try:
        entries = json.loads(base64.b64decode(value, validate=True))
        parents = list(range(-1, len(image_layers) - 1))
        layers = [LayerDescriptor(layer.digest, layer.size, layer.diff_id,
                                  _OCI_LAYERS.get(layer.media_type, layer.media_type))
                  for layer in image_layers]
        return _records(entries, layers, parents)
    except (ValueError, TypeError, AttributeError, KeyError, IndexError,
            binascii.Error) as err:
        raise CacheError(f"the inline cache of {where} is malformed: {err}",
                         hint="build the image again with --cache-to type=inline") from err
