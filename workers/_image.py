"""An image's config, manifest and index, as bytes with their digests.

``build_image`` merges three things into one image for one platform:

- the base image's config JSON (``StateResult.image_config`` of the image source; None for
  ``FROM scratch``),
- the frontend's ``ImageConfig`` (the graph's result),
- the layer chain (``LayerDescriptor``s, base first).

Which wins (the rule, field by field):

- The frontend's value wins whenever it is set: ``cmd``/``entrypoint`` not None, strings not
  ``""``, ``healthcheck`` not None, ``shell`` not ``()``.  Unset fields inherit the base's.
  With an image resolver the frontend already started from the base's fields, so both paths
  give the same image.
- ``cmd`` and ``entrypoint`` are one pair: when the frontend's ``entrypoint`` is set, its
  ``cmd`` is final and None means no ``Cmd`` at all (the base's is not inherited).  An
  entrypoint is set only by the stage's ENTRYPOINT, which resets a CMD the stage did not
  set itself (BuildKit's dispatchEntrypoint), or by a resolved base, in which case the
  frontend's pair already is the base's; either way the frontend decided.  A ``cmd``
  alone keeps the base's ``Entrypoint`` (CMD never resets it).
- ``env`` is merged by key: the base's variables in their order, then the frontend's,
  replacing in place.  The frontend's exact default ``PATH`` (``DEFAULT_PATH``, what it
  assumes when it did not see the base) yields to a ``PATH`` the base sets.
- ``labels`` merge by key (frontend wins); ``exposed_ports`` and ``volumes`` are unions.
- ``on_build`` is the frontend's only: the base's triggers ran in this build.
- ``history`` is the base's history followed by the frontend's.  When the frontend's history
  already starts with the base's (a resolver was used) it is not repeated.  Base entries
  keep their ``created``; new entries get ``created``.  The entries are then matched to the
  layers as BuildKit's exporter does: surplus non-empty entries become empty from the
  bottom, missing ones are added as ``created by dockyard``.

Timestamps: ``created`` (unix seconds) is the config's ``created`` and every new history
entry's.  With ``epoch`` (``SOURCE_DATE_EPOCH``), every timestamp later than ``epoch``
(the config's and each history entry's, base entries included) becomes ``epoch``.

Deterministic: the JSON is written with sorted keys and no whitespace, so the same inputs
give the same bytes and digests.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from dockyard.cache_backends._cache_config import INLINE_CACHE_KEY
from dockyard.cache_backends._records import (
    DOCKER_LAYER_TYPES,
    OCI_LAYER_TYPES,
    LayerDescriptor,
)
from dockyard.scheduler._build_request import Annotation
from dockyard.scheduler._errors import ExportError, UsageError
from dockyard.scheduler._graph import DEFAULT_PATH, Healthcheck, HistoryEntry, ImageConfig
from dockyard.scheduler._platform import Platform

from ._manifests import (
    DOCKER_CONFIG,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    index_json,
    sha256_digest,
)

__all__ = [
    "DOCKER_CONFIG",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "OCI_CONFIG",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "AttestationArtifacts",
    "Descriptor",
    "ImageArtifacts",
    "IndexArtifacts",
    "build_image",
    "build_index",
    "annotations_of",
    "IMAGE_OUTPUTS",
    "build_metadata",
    "canonical_json",
    "export_metadata",
    "check_single",
    "format_time",
    "sha256_digest",
]

_DOCKER_LAYER: Final = DOCKER_LAYER_TYPES
_OCI_LAYER: Final = OCI_LAYER_TYPES

#: History text of a layer that no history entry describes (BuildKit: "created by buildkit").
MISSING_HISTORY: Final = "created by dockyard"
MISSING_COMMENT: Final = "dockyard.exporter.image.v0"


@dataclass(frozen=True, slots=True)
class ImageArtifacts:
    """One platform's image: config and manifest bytes, and the manifest's descriptor
    (with its platform).  ``layers`` are the manifest's layers (media types as written)."""

    platform: Platform
    config: bytes
    config_digest: str
    manifest: bytes
    manifest_digest: str
    descriptor: Descriptor
    layers: tuple[LayerDescriptor, ...] = field(default=())

    @property
    def config_descriptor(self) -> Descriptor:
        media = OCI_CONFIG if self.descriptor.media_type == OCI_MANIFEST else DOCKER_CONFIG
        return Descriptor(media, self.config_digest, len(self.config))


@dataclass(frozen=True, slots=True)
class AttestationArtifacts:
    """An attestation manifest (workers/_attest.py): its bytes, its index entry
    (``descriptor``: platform unknown/unknown, annotated with the image it attests), its
    config and its statements (``blobs``: digest and bytes, the manifest's layers)."""

    manifest: bytes
    digest: str
    descriptor: Descriptor
    config: bytes
    config_digest: str
    blobs: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True, slots=True)
class IndexArtifacts:
    """A multi-platform image index (OCI) or manifest list (Docker) over ``images``, with
    the ``attestations`` of its images listed after them (an OCI index then, even for
    one image)."""

    index: bytes
    digest: str
    descriptor: Descriptor
    images: tuple[ImageArtifacts, ...]
    attestations: tuple[AttestationArtifacts, ...] = ()


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no insignificant whitespace, UTF-8: one byte form per value."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode()


# --- timestamps --------------------------------------------------------------------------

_FRACTION = re.compile(r"(\.\d{1,6})\d*")


def format_time(seconds: int) -> str:
    """RFC 3339 in UTC, as Go's time.Time marshals a whole second: ``2024-01-02T03:04:05Z``."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> float | None:
    """Unix seconds of an RFC 3339 timestamp (nanoseconds allowed); None if unparseable."""
    try:
        return datetime.fromisoformat(_FRACTION.sub(r"\1", text, count=1)).timestamp()
    except ValueError:
        return None


def clamp_time(text: str | None, epoch: int | None) -> str | None:
    """``text`` unchanged, or ``epoch`` when ``text`` is later than it (or unreadable)."""
    if epoch is None or text is None:
        return text
    seconds = parse_time(text)
    return format_time(epoch) if seconds is None or seconds > epoch else text


# --- the config --------------------------------------------------------------------------


def _load_base(base_config: bytes | None) -> dict[str, Any]:
    if base_config is None:
        return {}
    try:
        data = json.loads(base_config)
    except (ValueError, UnicodeDecodeError) as err:
        raise ExportError(f"the base image's config is not JSON: {err}",
                          hint="the cached base image is corrupt; rebuild with --no-cache"
                          ) from err
    if not isinstance(data, dict):
        raise ExportError("the base image's config is not a JSON object",
                          hint="the cached base image is corrupt; rebuild with --no-cache")
    return data


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _merge_env(base: Sequence[str], mine: Sequence[str]) -> list[str]:
    merged = dict(item.partition("=")[::2] for item in base)
    base_has_path = "PATH" in merged
    for item in mine:
        if item == DEFAULT_PATH and base_has_path:
            continue
        key, _, value = item.partition("=")
        merged[key] = value
    return [f"{key}={value}" for key, value in merged.items()]


def _healthcheck_json(check: Healthcheck) -> dict[str, Any]:
    data: dict[str, Any] = {"Test": list(check.test)}
    for key, value in (("Interval", check.interval), ("Timeout", check.timeout),
                       ("StartPeriod", check.start_period),
                       ("StartInterval", check.start_interval), ("Retries", check.retries)):
        if value:
            data[key] = value
    return data


def _set_if(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``key`` when the frontend set a value (None, "" and () mean: inherit)."""
    if value is not None and value != "" and value != ():
        data[key] = list(value) if isinstance(value, tuple) else value


def _runtime_config(base: Mapping[str, Any], config: ImageConfig) -> dict[str, Any]:
    """The config's ``config`` object: the base's, overridden as the module docstring says."""
    out: dict[str, Any] = {key: value for key, value in base.items() if value not in (None, "")}
    out.pop("OnBuild", None)
    out["Env"] = _merge_env(base.get("Env") or [], config.env)
    _merge_command(out, config)
    _set_if(out, "User", config.user)
    _set_if(out, "WorkingDir", config.working_dir)
    _set_if(out, "StopSignal", config.stop_signal)
    _set_if(out, "Shell", config.shell)
    _set_if(out, "OnBuild", config.on_build)
    if config.healthcheck is not None:
        out["Healthcheck"] = _healthcheck_json(config.healthcheck)
    _merge_map(out, "Labels", dict(config.labels))
    _merge_map(out, "ExposedPorts", dict.fromkeys(config.exposed_ports, {}))
    _merge_map(out, "Volumes", dict.fromkeys(config.volumes, {}))
    return out


def _merge_command(out: dict[str, Any], config: ImageConfig) -> None:
    """``Cmd`` and ``Entrypoint`` (see the module docstring: a set entrypoint makes the
    frontend's cmd final, None meaning no ``Cmd``)."""
    if config.entrypoint is not None:
        out.pop("Cmd", None)
        out["Entrypoint"] = list(config.entrypoint)
    if config.cmd is not None:  # () is an explicit empty command
        out["Cmd"] = list(config.cmd)


def _merge_map(out: dict[str, Any], key: str, mine: Mapping[str, Any]) -> None:
    merged = {**(out.get(key) or {}), **mine}
    if merged:
        out[key] = merged
    else:
        out.pop(key, None)


# --- history -----------------------------------------------------------------------------


def _entry_json(entry: HistoryEntry, created: str) -> dict[str, Any]:
    data: dict[str, Any] = {"created": created, "created_by": entry.created_by}
    if entry.comment:
        data["comment"] = entry.comment
    if entry.empty_layer:
        data["empty_layer"] = True
    return data


def _same_entry(base: Mapping[str, Any], entry: HistoryEntry) -> bool:
    return (str(base.get("created_by") or "") == entry.created_by
            and str(base.get("comment") or "") == entry.comment
            and bool(base.get("empty_layer")) == entry.empty_layer)


def _build_part(base: Sequence[Mapping[str, Any]],
                mine: Sequence[HistoryEntry]) -> Sequence[HistoryEntry]:
    """The frontend's entries that are new (without the base's, when it repeats them)."""
    if len(mine) >= len(base) and all(map(_same_entry, base, mine)):
        return mine[len(base):]
    return mine


def _history(base: Sequence[Mapping[str, Any]], mine: Sequence[HistoryEntry],
             created: str) -> list[dict[str, Any]]:
    old = [{key: value for key, value in item.items()
            if key in ("created", "created_by", "comment", "author", "empty_layer")}
           for item in base]
    return old + [_entry_json(entry, created) for entry in _build_part(base, mine)]


def _fit_history(history: list[dict[str, Any]], layers: int,
                 created: str) -> list[dict[str, Any]]:
    """One non-empty entry per layer: surplus ones become empty from the bottom; missing
    ones are appended."""
    fitted: list[dict[str, Any]] = []
    counted = 0
    for item in history:
        entry = dict(item)
        if not entry.get("empty_layer"):
            if counted >= layers:
                entry["empty_layer"] = True
            else:
                counted += 1
        fitted.append(entry)
    fitted += [{"created": created, "created_by": MISSING_HISTORY, "comment": MISSING_COMMENT}
               for _ in range(layers - counted)]
    return fitted


def _clamp_history(history: list[dict[str, Any]], epoch: int | None) -> list[dict[str, Any]]:
    for entry in history:
        when = clamp_time(entry.get("created"), epoch)
        if when is not None:
            entry["created"] = when
    return history


def config_json(base_config: bytes | None, config: ImageConfig,
                layers: Sequence[LayerDescriptor], platform: Platform, *,
                created: int, epoch: int | None) -> dict[str, Any]:
    """The merged image config as a JSON-able dict (see the module docstring)."""
    base = _load_base(base_config)
    moment = min(created, epoch) if epoch is not None else created
    stamp = format_time(moment)
    base_history = [item for item in base.get("history") or [] if isinstance(item, dict)]
    history = _fit_history(_history(base_history, config.history, stamp), len(layers), stamp)
    data: dict[str, Any] = {
        "architecture": platform.architecture,
        "os": platform.os,
        "created": stamp,
        "config": _runtime_config(_object(base.get("config")), config),
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": _clamp_history(history, epoch),
    }
    if platform.variant:
        data["variant"] = platform.variant
    author = config.author or str(base.get("author") or "")
    if author:
        data["author"] = author
    return data


# --- manifest and index ------------------------------------------------------------------


def _layer_media(layer: LayerDescriptor, oci: bool) -> str:
    table = _OCI_LAYER if oci else _DOCKER_LAYER
    return table.get(layer.media_type, layer.media_type)


def _manifest(config: Descriptor, layers: Sequence[LayerDescriptor], oci: bool,
              annotations: Mapping[str, str]) -> bytes:
    data: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST if oci else DOCKER_MANIFEST,
        "config": config.to_json(),
        "layers": [{"mediaType": _layer_media(layer, oci), "digest": layer.digest,
                    "size": layer.size} for layer in layers],
    }
    if annotations:
        data["annotations"] = dict(annotations)
    return canonical_json(data)


def annotations_of(annotations: Sequence[Annotation], kind: str,
                   platform: Platform | None = None) -> dict[str, str]:
    """The annotations of ``kind`` (``dockyard.scheduler._build_request.ANNOTATION_TYPES``) that
    apply to ``platform``'s manifest: those for every platform, then its own (which win);
    for the index kinds, all of them."""
    found = {key: value for typ, where, key, value in annotations if typ == kind and not where}
    if platform is not None:
        found |= {key: value for typ, where, key, value in annotations
                  if typ == kind and where == str(platform)}
    return found


def build_image(base_config: bytes | None, config: ImageConfig,
                layers: tuple[LayerDescriptor, ...], platform: Platform, *, created: int,
                epoch: int | None, oci: bool = True,
                annotations: Sequence[Annotation] = (),
                inline_cache: str | None = None) -> ImageArtifacts:
    """The image for ``platform``: config and manifest bytes (OCI media types, or Docker's
    schema 2 when ``oci`` is False, as BuildKit's ``oci-mediatypes=false``).  The
    ``manifest`` annotations for ``platform`` go into the manifest, the
    ``manifest-descriptor`` ones onto its descriptor (as BuildKit's image writer);
    ``inline_cache``: the config's ``moby.buildkit.cache.v0`` (``--cache-to type=inline``,
    cache_backends/_cache_config.py)."""
    data = config_json(base_config, config, layers, platform, created=created, epoch=epoch)
    if inline_cache is not None:
        data[INLINE_CACHE_KEY] = inline_cache
    config_bytes = canonical_json(data)
    config_desc = Descriptor(OCI_CONFIG if oci else DOCKER_CONFIG,
                             sha256_digest(config_bytes), len(config_bytes))
    manifest = _manifest(config_desc, layers, oci,
                         annotations_of(annotations, "manifest", platform))
    digest = sha256_digest(manifest)
    written = tuple(LayerDescriptor(layer.digest, layer.size, layer.diff_id,
                                    _layer_media(layer, oci)) for layer in layers)
    descriptor = Descriptor(OCI_MANIFEST if oci else DOCKER_MANIFEST, digest, len(manifest),
                            platform)
    return ImageArtifacts(
        platform=platform, config=config_bytes, config_digest=config_desc.digest,
        manifest=manifest, manifest_digest=digest,
        descriptor=descriptor.with_annotations(
            annotations_of(annotations, "manifest-descriptor", platform)),
        layers=written)


def check_single(annotations: Sequence[Annotation]) -> None:
    """One image without an index: no ``index``/``index-descriptor`` annotation can go
    anywhere (BuildKit refuses them for a single-platform export)."""
    if any(kind in ("index", "index-descriptor") for kind, _, _, _ in annotations):
        raise UsageError("index annotations not supported for single platform export",
                         hint="build several --platform, or use manifest annotations")


def build_index(manifests: Sequence[ImageArtifacts],
                attestations: Sequence[AttestationArtifacts] = (),
                annotations: Sequence[Annotation] = ()) -> IndexArtifacts:
    """An index over one image per platform (OCI index, or a Docker manifest list when the
    images use Docker media types and there are no ``attestations``); platforms must be
    distinct.  The ``index`` annotations go into it, the ``index-descriptor`` ones onto
    its descriptor."""
    if not manifests:
        raise ExportError("an image index needs at least one image")
    platforms = [image.platform for image in manifests]
    if len(set(platforms)) != len(platforms):
        raise ExportError("an image index lists each platform once; got "
                          + ", ".join(str(item) for item in platforms))
    oci = manifests[0].descriptor.media_type == OCI_MANIFEST or bool(attestations)
    media_type = OCI_INDEX if oci else DOCKER_MANIFEST_LIST
    entries = [image.descriptor for image in manifests]
    index = canonical_json(index_json(entries + [a.descriptor for a in attestations],
                                      media_type, annotations_of(annotations, "index")))
    digest = sha256_digest(index)
    descriptor = Descriptor(media_type, digest, len(index)).with_annotations(
        annotations_of(annotations, "index-descriptor"))
    return IndexArtifacts(index=index, digest=digest, descriptor=descriptor,
                          images=tuple(manifests), attestations=tuple(attestations))


#: The output types that write an image (its manifests): they give the image's keys.
IMAGE_OUTPUTS: Final = ("oci", "docker", "image")


def export_metadata(result: ImageArtifacts | IndexArtifacts, kinds: Collection[str],
                    names: Sequence[str] = ()) -> dict[str, Any]:
    """buildx's image keys for a build whose outputs are of ``kinds``: with no output at
    all, the image's id (``build_metadata`` not ``written``); with outputs of which none
    writes an image (``local``, ``tar``), none, as BuildKit's exporters give none; else
    ``build_metadata``'s, and ``image.name`` when the image is named."""
    if not kinds:
        return build_metadata(result, written=False)
    if not set(kinds) & set(IMAGE_OUTPUTS):
        return {}
    metadata = build_metadata(result)
    if names:
        metadata["image.name"] = ",".join(names)
    return metadata


def build_metadata(result: ImageArtifacts | IndexArtifacts, written: bool = True
                   ) -> dict[str, Any]:
    """buildx's ``--metadata-file`` keys for an exported image or index.  Not
    ``written`` (a build without outputs): only an image's config digest, its id, which
    needs no layer compressed (the manifest would name compressed layers, and nothing
    compressed them)."""
    if not written:
        if isinstance(result, IndexArtifacts):
            return {}
        return {"containerimage.config.digest": result.config_digest}
    if isinstance(result, IndexArtifacts):
        keys = {"containerimage.digest": result.digest,
                "containerimage.descriptor": _dated(result.descriptor, result.images)}
        if len(result.images) == 1:  # one image and its attestations: its config too
            keys["containerimage.config.digest"] = result.images[0].config_digest
        return keys
    return {"containerimage.digest": result.manifest_digest,
            "containerimage.config.digest": result.config_digest,
            "containerimage.descriptor": _dated(result.descriptor, [result])}


#: The descriptor annotation BuildKit's exporters date their result with.
CREATED_ANNOTATION: Final = "org.opencontainers.image.created"


def _dated(descriptor: Descriptor, images: Sequence[ImageArtifacts]) -> dict[str, Any]:
    """The descriptor as the exporter's response carries it: dated with
    ``CREATED_ANNOTATION`` (unless an annotation set it), here the latest ``created`` of
    its images' configs (BuildKit's is the export's time, or SOURCE_DATE_EPOCH; the
    configs' is the same with an epoch, and stays the same for a cached rebuild)."""
    data = descriptor.to_json()
    stamps = [str(json.loads(image.config).get("created") or "") for image in images]
    if max(stamps, default=""):
        data["annotations"] = {CREATED_ANNOTATION: max(stamps), **data.get("annotations", {})}
    return data
