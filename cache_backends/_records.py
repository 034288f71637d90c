"""What a cache holds besides blobs: the result of a vertex and the record that names it.

Plain frozen data with a msgpack form (``to_wire``/``from_wire``) so it can cross process
boundaries and be stored.  ``RECORD_VERSION`` guards the stored form: an unknown version is
a cache miss, never a misread.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

from dockyard.scheduler._errors import CacheError

__all__ = ["RECORD_VERSION", "CacheRecord", "LayerDescriptor", "RecordError", "StateResult"]

RECORD_VERSION = 1

GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
ZSTD_LAYER = "application/vnd.oci.image.layer.v1.tar+zstd"
#: Layer media types in Docker's naming (zstd has no Docker name and keeps the OCI one),
#: and back.
DOCKER_LAYER_TYPES = {
    GZIP_LAYER: "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.oci.image.layer.v1.tar": "application/vnd.docker.image.rootfs.diff.tar",
}
OCI_LAYER_TYPES = {docker: oci for oci, docker in DOCKER_LAYER_TYPES.items()}


class RecordError(CacheError):
    """A stored record or result that cannot be decoded (wrong version, wrong shape)."""


@dataclass(frozen=True, slots=True)
class LayerDescriptor:
    """One layer: the compressed blob (``digest``, ``size``, ``media_type``) and ``diff_id``,
    the sha256 of its uncompressed tar (what an image config's rootfs lists)."""

    digest: str
    size: int
    diff_id: str
    media_type: str = GZIP_LAYER

    def to_wire(self) -> dict[str, Any]:
        return {"digest": self.digest, "size": self.size, "diff_id": self.diff_id,
                "media_type": self.media_type}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> LayerDescriptor:
        try:
            return cls(digest=str(data["digest"]), size=int(data["size"]),
                       diff_id=str(data["diff_id"]), media_type=str(data["media_type"]))
        except (KeyError, TypeError, ValueError) as err:
            raise RecordError(f"malformed layer descriptor: {err}") from err


@dataclass(frozen=True, slots=True)
class StateResult:
    """The result of a vertex: a filesystem state as an ordered layer chain (base first).

    ``image_config`` is the base image's config JSON for an image source (the exporter
    merges the build's config onto it), else None.
    """

    layers: tuple[LayerDescriptor, ...] = ()
    image_config: bytes | None = None

    def to_wire(self) -> dict[str, Any]:
        return {"layers": [layer.to_wire() for layer in self.layers],
                "image_config": self.image_config}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> StateResult:
        try:
            layers = tuple(LayerDescriptor.from_wire(item) for item in data["layers"])
            config = data.get("image_config")
        except (KeyError, TypeError) as err:
            raise RecordError(f"malformed result: {err}") from err
        if config is not None and not isinstance(config, bytes):
            raise RecordError("malformed result: image_config is not bytes")
        return cls(layers=layers, image_config=config)


@dataclass(frozen=True, slots=True)
class CacheRecord:
    """A cache key's result.  ``created`` is a unix time in seconds (the moment the result was
    first built: a cached rebuild reproduces its timestamps); ``meta`` holds small plain data
    (e.g. the vertex name, for ``dockyard du``)."""

    key: str
    result: StateResult
    created: int
    meta: Mapping[str, str] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        packed: bytes = msgpack.packb({"version": RECORD_VERSION, "key": self.key,
                                       "result": self.result.to_wire(),
                                       "created": self.created,
                                       "meta": dict(self.meta)}, use_bin_type=True)
        return packed

    @classmethod
    def from_bytes(cls, data: bytes) -> CacheRecord:
        try:
            raw = msgpack.unpackb(data, raw=False)
        except Exception as err:  # msgpack raises several unrelated types
            raise RecordError(f"undecodable cache record: {err}") from err
        if not isinstance(raw, dict) or raw.get("version") != RECORD_VERSION:
            raise RecordError("cache record of an unknown version")
        try:
            return cls(key=str(raw["key"]), result=StateResult.from_wire(raw["result"]),
                       created=int(raw["created"]), meta=dict(raw.get("meta") or {}))
        except (KeyError, TypeError, ValueError) as err:
            raise RecordError(f"malformed cache record: {err}") from err
