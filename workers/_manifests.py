"""Manifests, indexes and descriptors of the OCI distribution and image specs, without I/O.

Media types, parsing and validating manifests, choosing an index entry for a platform as
containerd matches them, building an index, and the registry address rules (plain HTTP for
loopback and configured insecure registries).  ``_registry`` does the talking.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from dockyard.cache_backends._records import LayerDescriptor
from dockyard.scheduler._errors import RegistryError
from dockyard.scheduler._platform import Platform, normalize_arch

__all__ = [
    "DOCKER_CONFIG",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "INDEX_TYPES",
    "MANIFEST_TYPES",
    "MAX_MANIFEST_BYTES",
    "OCI_CONFIG",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "DEFAULT_CONTENT_CACHE_BYTES",
    "Descriptor",
    "FetchedManifest",
    "ResolvedImage",
    "ACCEPT_MANIFESTS",
    "ContentCache",
    "build_index",
    "check_algorithm",
    "index_json",
    "invalid_manifest",
    "layers_of",
    "parse_descriptor",
    "sha256_digest",
    "parse_manifest",
    "platform_json",
    "platform_candidates",
    "registry_url",
    "select_manifest",
    "uses_plain_http",
]

OCI_INDEX: Final = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG: Final = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST_LIST: Final = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST: Final = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG: Final = "application/vnd.docker.container.image.v1+json"
_SCHEMA1 = frozenset({"application/vnd.docker.distribution.manifest.v1+json",
                      "application/vnd.docker.distribution.manifest.v1+prettyjws"})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
ACCEPT_MANIFESTS = ", ".join((OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST))
#: Manifests larger than this are refused (containerd's limit).
_HUB_DOMAIN = "docker.io"
_HUB_API_HOST = "registry-1.docker.io"
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
#: What ``ContentCache`` holds by default: manifests, indexes and configs of many images.
DEFAULT_CONTENT_CACHE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Descriptor:
    """An OCI content descriptor: what a manifest, index or config points at.  ``platform``
    only on an index's entries; ``annotations`` sorted by key."""

    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest,
                                "size": self.size}
        if self.platform is not None:
            data["platform"] = platform_json(self.platform)
        if self.annotations:
            data["annotations"] = dict(self.annotations)
        return data

    def with_annotations(self, annotations: Mapping[str, str]) -> Descriptor:
        return Descriptor(self.media_type, self.digest, self.size, self.platform,
                          tuple(sorted(annotations.items())))


def platform_json(platform: Platform) -> dict[str, str]:
    """A descriptor's or config's platform fields (``variant`` only when set)."""
    data = {"architecture": platform.architecture, "os": platform.os}
    if platform.variant:
        data["variant"] = platform.variant
    return data


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class FetchedManifest:
    """A manifest or index as fetched: its digest, media type, raw bytes and parsed JSON."""

    digest: str
    media_type: str
    data: bytes
    parsed: Mapping[str, Any]

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES


@dataclass(frozen=True, slots=True)
class ResolvedImage:
    """One platform's image: its manifest's digest, the manifest, the config bytes (verified)
    and the layers (``diff_id`` from the config's ``rootfs.diff_ids``).  ``index_digest``
    is the digest of the index it was chosen from, "" when the reference named a manifest."""

    digest: str
    manifest: Mapping[str, Any]
    config: bytes
    layers: tuple[LayerDescriptor, ...]
    media_type: str = OCI_MANIFEST
    manifest_bytes: bytes = b""
    index_digest: str = ""


# --- Content addressed by digest, kept in memory -------------------------------------------

_CacheKey = tuple[str, str, str, str]  # (kind, domain, repository, digest)


class ContentCache:
    """Manifests, indexes and configs by digest, an LRU bounded by their bytes.

    What a digest names never changes, so an entry never goes stale; it is keyed by registry
    domain and repository too, so that a repository is never served content its registry did
    not show it holds.  ``put_*`` check the bytes against the digest and keep nothing that
    does not match, nor anything larger than the whole capacity (0 keeps nothing)."""

    def __init__(self, capacity: int = DEFAULT_CONTENT_CACHE_BYTES) -> None:
        self._capacity = max(capacity, 0)
        self._entries: OrderedDict[_CacheKey, FetchedManifest | bytes] = OrderedDict()
        self._bytes = 0
        self._stats = {"manifest_hits": 0, "config_hits": 0, "evictions": 0}

    def __len__(self) -> int:
        return len(self._entries)

    def statistics(self) -> dict[str, int]:
        return {**self._stats, "cached_bytes": self._bytes, "cached_entries": len(self)}

    def manifest(self, domain: str, repository: str, digest: str) -> FetchedManifest | None:
        found = self._get(("manifest", domain, repository, digest))
        return found if isinstance(found, FetchedManifest) else None

    def config(self, domain: str, repository: str, digest: str, size: int) -> bytes | None:
        """The config, when kept and ``size`` (its descriptor's) is its size."""
        key = ("config", domain, repository, digest)
        known = self._entries.get(key)
        if not isinstance(known, bytes) or len(known) != size:
            return None
        return known if self._get(key) is not None else None

    def put_manifest(self, domain: str, repository: str, manifest: FetchedManifest) -> bool:
        """Keep ``manifest``; False when it was not kept (digest mismatch, too large)."""
        return self._put(("manifest", domain, repository, manifest.digest), manifest.data,
                         manifest)

    def put_config(self, domain: str, repository: str, digest: str, data: bytes) -> bool:
        """Keep config ``data`` under ``digest``; False when it was not kept."""
        return self._put(("config", domain, repository, digest), data, data)

    def _get(self, key: _CacheKey) -> FetchedManifest | bytes | None:
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
            self._stats[f"{key[0]}_hits"] += 1
        return found

    def _put(self, key: _CacheKey, data: bytes, value: FetchedManifest | bytes) -> bool:
        if len(data) > self._capacity or sha256_digest(data) != key[3]:
            return False
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= _size_of(old)
        self._entries[key] = value
        self._bytes += len(data)
        while self._bytes > self._capacity:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= _size_of(evicted)
            self._stats["evictions"] += 1
        return True


def _size_of(value: FetchedManifest | bytes) -> int:
    return len(value.data if isinstance(value, FetchedManifest) else value)


# --- Pure parts: addresses, manifests, platforms ------------------------------------------

def _host_of(domain: str) -> str:
    if domain.startswith("["):
        return domain[1:].split("]", 1)[0]
    return domain.rsplit(":", 1)[0] if domain.count(":") == 1 else domain


def uses_plain_http(domain: str, insecure: Iterable[str] = ()) -> bool:
    """Whether Docker would speak plain HTTP to ``domain``: localhost, 127.0.0.0/8, ::1, or
    listed (with or without its port) among the insecure registries."""
    host = _host_of(domain)
    listed = set(insecure)
    if domain in listed or host in listed or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def registry_url(domain: str, insecure: Iterable[str] = ()) -> str:
    """The base URL of a registry's API (``https://registry-1.docker.io`` for the Hub)."""
    scheme = "http" if uses_plain_http(domain, insecure) else "https"
    host = _HUB_API_HOST if domain == _HUB_DOMAIN else domain
    return f"{scheme}://{host}"


def invalid_manifest(where: str, reason: str) -> RegistryError:
    return RegistryError(f"registry returned an invalid manifest at {where}: {reason}",
                         hint="the registry or the image is broken; check the image with "
                              "'skopeo inspect' or push it again")


def _media_type(parsed: Mapping[str, Any], content_type: str, where: str) -> str:
    declared = parsed.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    header = content_type.split(";", 1)[0].strip()
    if header in INDEX_TYPES | MANIFEST_TYPES | _SCHEMA1:
        return header
    if isinstance(parsed.get("manifests"), list):
        return OCI_INDEX
    if isinstance(parsed.get("layers"), list):
        return OCI_MANIFEST
    raise invalid_manifest(where, "it has no mediaType and is neither a manifest nor an index")


def _check_shape(media_type: str, parsed: Mapping[str, Any], where: str) -> None:
    if media_type in INDEX_TYPES:
        if not isinstance(parsed.get("manifests"), list):
            raise invalid_manifest(where, "an index without a 'manifests' list")
    elif media_type in MANIFEST_TYPES:
        if not isinstance(parsed.get("config"), dict) or not isinstance(parsed.get("layers"),
                                                                        list):
            raise invalid_manifest(where, "a manifest without 'config' and 'layers'")
    else:
        raise invalid_manifest(where, f"unsupported media type {media_type!r}")


def parse_manifest(data: bytes, content_type: str, where: str) -> tuple[str, dict[str, Any]]:
    """``(media type, JSON)`` of a manifest or index; schema-1 and malformed documents are
    a ``RegistryError`` (``where`` names the URL)."""
    try:
        parsed = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise invalid_manifest(where, f"not JSON ({err})") from err
    if not isinstance(parsed, dict):
        raise invalid_manifest(where, "not a JSON object")
    if parsed.get("schemaVersion") == 1 or content_type.split(";")[0].strip() in _SCHEMA1:
        raise RegistryError(f"{where} is a Docker schema 1 manifest, which is not supported",
                            hint="push the image again with a current docker or buildx")
    media_type = _media_type(parsed, content_type, where)
    if media_type in _SCHEMA1:
        raise RegistryError(f"{where} is a Docker schema 1 manifest, which is not supported",
                            hint="push the image again with a current docker or buildx")
    _check_shape(media_type, parsed, where)
    return media_type, parsed


def parse_descriptor(raw: Any, where: str) -> Descriptor:
    if not isinstance(raw, dict):
        raise invalid_manifest(where, "a descriptor that is not an object")
    digest, size, media = raw.get("digest"), raw.get("size"), raw.get("mediaType", "")
    if not isinstance(digest, str) or ":" not in digest or not isinstance(size, int) \
            or size < 0 or not isinstance(media, str):
        raise invalid_manifest(where, f"a descriptor without a valid digest and size: {raw!r:.200}")
    plat = raw.get("platform")
    platform = None
    if isinstance(plat, dict) and isinstance(plat.get("os"), str) \
            and isinstance(plat.get("architecture"), str):
        platform = Platform(plat["os"], plat["architecture"], str(plat.get("variant", "")))
    return Descriptor(media, digest, size, platform)


_ARM_ORDER = ("v8", "v7", "v6", "v5")
_AMD64_ORDER = ("v4", "v3", "v2", "")


def _normalized(platform: Platform) -> Platform:
    arch, variant = normalize_arch(platform.architecture, platform.variant)
    return Platform(platform.os.lower(), arch, variant)


def platform_candidates(wanted: Platform) -> list[Platform]:
    """The platforms an image may have to run on ``wanted``, best first (containerd's
    matching): the same arch with the same or an older variant, then for arm64 the 32-bit
    arm variants and for amd64 386."""
    target = _normalized(wanted)
    os_name, arch, variant = target.os, target.architecture, target.variant
    if arch == "arm" and variant in _ARM_ORDER:
        return [Platform(os_name, "arm", v) for v in _ARM_ORDER[_ARM_ORDER.index(variant):]]
    if arch == "amd64" and variant in _AMD64_ORDER:
        older = _AMD64_ORDER[_AMD64_ORDER.index(variant):]
        return [Platform(os_name, "amd64", v) for v in older] + [Platform(os_name, "386")]
    if arch == "arm64" and variant == "":
        return [target] + [Platform(os_name, "arm", v) for v in _ARM_ORDER]
    return [target]


def select_manifest(index: Mapping[str, Any], wanted: Platform, where: str) -> Descriptor:
    """The entry of an image index that best matches ``wanted`` (``RegistryError`` naming
    the platforms on offer when none does)."""
    entries = [parse_descriptor(raw, where) for raw in index.get("manifests", [])]
    usable = [d for d in entries if d.platform is not None and d.media_type not in INDEX_TYPES]
    for candidate in platform_candidates(wanted):
        for entry in usable:
            assert entry.platform is not None
            if _normalized(entry.platform) == candidate:
                return entry
    offered = ", ".join(sorted({str(d.platform) for d in usable})) or "none"
    raise RegistryError(f"{where} has no image for platform {wanted} (it has: {offered})",
                        hint="choose one of the listed platforms with --platform")


def diff_ids_of(config: bytes, where: str) -> list[str]:
    try:
        parsed = json.loads(config)
        diff_ids = parsed["rootfs"]["diff_ids"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise RegistryError(f"registry returned an invalid image config at {where}: "
                            "no rootfs.diff_ids", hint="push the image again") from err
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
        raise RegistryError(f"registry returned an invalid image config at {where}: "
                            "rootfs.diff_ids is not a list of digests",
                            hint="push the image again")
    return diff_ids


def layers_of(manifest: Mapping[str, Any], config: bytes, where: str) -> tuple[LayerDescriptor,
                                                                              ...]:
    blobs = [parse_descriptor(raw, where) for raw in manifest["layers"]]
    diff_ids = diff_ids_of(config, where)
    if len(blobs) != len(diff_ids):
        raise invalid_manifest(where, f"{len(blobs)} layers but the config lists {len(diff_ids)} "
                              "diff_ids")
    return tuple(LayerDescriptor(digest=b.digest, size=b.size, diff_id=d, media_type=b.media_type)
                 for b, d in zip(blobs, diff_ids, strict=True))


def index_json(manifests: Sequence[Descriptor], media_type: str = OCI_INDEX,
               annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The JSON object of an image index (or Docker manifest list) over ``manifests``; the
    callers choose the byte form."""
    index: dict[str, Any] = {"schemaVersion": 2, "mediaType": media_type,
                             "manifests": [item.to_json() for item in manifests]}
    if annotations:
        index["annotations"] = dict(annotations)
    return index


def build_index(manifests: Sequence[Descriptor],
                annotations: Mapping[str, str] | None = None) -> bytes:
    """An OCI image index over ``manifests`` (each with its platform), as compact JSON in
    insertion order (the form ``RegistryClient.push_index`` has always pushed)."""
    return json.dumps(index_json(manifests, OCI_INDEX, annotations),
                      separators=(",", ":")).encode()


def check_algorithm(digest: str, where: str) -> None:
    if not digest.startswith("sha256:") or len(digest) != 71:
        raise RegistryError(f"{where}: unsupported or malformed digest {digest!r}",
                            hint="only sha256 digests are supported")
