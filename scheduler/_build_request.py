"""A build request's options as plain data: what ``dockyard build`` was asked (buildx's
flags, parsed by cluster/_build_options.py), with a versioned msgpack-able wire form.

The client sends ``BuildOptions`` to the service; the coordinator reads what the frontend
needs, each worker what it executes and exports.  A ``SecretSpec`` names where a secret
comes from, never its value: ``BuildOptions`` holds no secret.  A malformed wire map is a
``UsageError``, never a traceback.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._errors import UsageError

__all__ = [
    "ANNOTATION_TYPES", "ATTEST_TYPES", "COMPRESSIONS", "COMPRESSION_LEVELS",
    "DEFAULT_COMPRESSION", "FILE_OUTPUTS", "MAX_SECRET_BYTES", "OPTIONS_VERSION",
    "OUTPUT_TYPES", "PROGRESS_MODES", "Annotation", "AttestSpec", "BuildOptions", "CacheSpec",
    "Compression", "NamedContext", "OutputSpec", "SecretSpec", "SshSpec",
]

OPTIONS_VERSION = 1
PROGRESS_MODES = ("auto", "plain", "tty", "rawjson", "quiet")
FILE_OUTPUTS = ("tar", "oci", "docker")  # exporters writing one file (or stdout with dest=-)
OUTPUT_TYPES = ("local", *FILE_OUTPUTS, "image", "registry")
MAX_SECRET_BYTES = 500 * 1024  # BuildKit's secret size limit
#: Where an annotation goes (BuildKit's annotation types): the image manifest(s), the
#: index, the descriptor of each manifest (in the index, or the layout's index.json), the
#: descriptor of the index (the layout's index.json).
ANNOTATION_TYPES = ("manifest", "index", "manifest-descriptor", "index-descriptor")

#: One annotation: (type, platform or "" for every platform, key, value).
Annotation = tuple[str, str, str, str]

ATTEST_TYPES = ("provenance", "sbom")  # the attestations a build can attach
COMPRESSIONS = ("gzip", "zstd", "uncompressed")  # buildx's compression= values
#: The levels each compressor takes (BuildKit's bounds: gzip 0-9, zstd 0-22, where zstd's
#: 0 is its default level)
COMPRESSION_LEVELS = {"gzip": (0, 9), "zstd": (0, 22)}


@dataclass(frozen=True, slots=True)
class SecretSpec:
    """``--secret``: the secret ``id`` read from the file ``src`` or the variable ``env``."""

    id: str
    src: str | None = None
    env: str | None = None


@dataclass(frozen=True, slots=True)
class SshSpec:
    """``--ssh``: the agent socket served as ``id`` (``default`` for ``RUN --mount=type=ssh``)."""

    id: str
    paths: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Compression:
    """How an image's (or a cache export's) layers are compressed: ``type`` one of
    ``COMPRESSIONS``, ``level`` (None: the type's default: gzip 6, zstd 3) and ``force``
    (layers already compressed another way, a base image's, are recompressed too; else
    they stay as they are), as BuildKit's ``compression``, ``compression-level`` and
    ``force-compression`` attributes."""

    type: str = "gzip"
    level: int | None = None
    force: bool = False

    def to_wire(self) -> list[Any]:
        return [self.type, self.level, self.force]

    @classmethod
    def from_wire(cls, item: Sequence[Any]) -> Compression:
        kind, level, force = item[:3]
        return cls(str(kind), None if level is None else int(level), bool(force))


DEFAULT_COMPRESSION = Compression()


@dataclass(frozen=True, slots=True)
class OutputSpec:
    """``--output``: ``type`` (local, tar, oci, docker, image), ``dest`` (a path; ``-`` is
    stdout; none for ``docker``: loaded into the client's Docker engine, ``--load``),
    ``names``, ``push`` and ``insecure`` (image: ``registry.insecure=true``, its
    registries spoken to over plain HTTP).

    The exporter attributes (buildx's names): ``compression`` (image, oci, docker),
    ``oci_mediatypes`` (OCI media types for manifests, index and layers; False: Docker's
    schema 2, as BuildKit's ``oci-mediatypes=false``), ``tar`` (oci, docker: False writes
    the layout as a directory at ``dest``), ``platform_split`` (local, tar: None splits
    only a multi-platform result into one directory per platform), ``push_by_digest``
    (image: pushed without a tag) and ``rewrite_timestamp`` (every layer not the base
    image's rewritten with mtimes clamped to SOURCE_DATE_EPOCH)."""

    type: str
    dest: str | None = None
    names: tuple[str, ...] = ()
    push: bool = False
    insecure: bool = False
    compression: Compression = DEFAULT_COMPRESSION
    oci_mediatypes: bool = True
    tar: bool = True
    platform_split: bool | None = None
    push_by_digest: bool = False
    rewrite_timestamp: bool = False
    #: ``annotation.*`` attributes (oci, docker, image); the client merges them into
    #: ``BuildOptions.annotations``, so they do not travel with the output
    annotations: tuple[Annotation, ...] = field(default=(), compare=False)

    @property
    def to_stdout(self) -> bool:
        return self.dest == "-"

    @property
    def loads(self) -> bool:
        """A ``docker`` output without ``dest``: the client loads it into its engine."""
        return self.type == "docker" and self.dest is None
    def attrs_wire(self) -> dict[str, Any]:
        """The exporter attributes as the wire's optional map (only those set)."""
        wire: dict[str, Any] = {}
        if self.compression != DEFAULT_COMPRESSION:
            wire["compression"] = self.compression.to_wire()
        for key, value, default in (("oci_mediatypes", self.oci_mediatypes, True),
                                    ("tar", self.tar, True),
                                    ("platform_split", self.platform_split, None),
                                    ("push_by_digest", self.push_by_digest, False),
                                    ("rewrite_timestamp", self.rewrite_timestamp, False)):
            if value != default:
                wire[key] = value
        return wire


@dataclass(frozen=True, slots=True)
class CacheSpec:
    """``--cache-to``/``--cache-from``: ``type`` registry, inline, s3 or local, ``attrs``
    the backend's settings (registry: ref, and for exports image_manifest, oci_mediatypes
    and compression gzip|zstd|none; inline: none; s3: bucket, region, prefix,
    endpoint_url, use_path_style; local: path, an absolute directory), ``mode`` min or
    max and ``ignore_error`` (exports only)."""

    type: str
    attrs: tuple[tuple[str, str], ...] = ()
    mode: str = "min"
    ignore_error: bool = False

    def to_wire(self) -> list[Any]:
        return [self.type, [list(pair) for pair in self.attrs], self.mode, self.ignore_error]

    @classmethod
    def from_wire(cls, item: Sequence[Any]) -> CacheSpec:
        kind, attrs, mode, ignore = item[:4]
        return cls(str(kind), tuple((str(k), str(v)) for k, v in attrs), str(mode),
                   bool(ignore))


@dataclass(frozen=True, slots=True)
class AttestSpec:
    """One attestation asked (``--attest``, ``--provenance``, ``--sbom``): ``type``
    provenance or sbom, ``attrs`` its checked settings (provenance: ``mode`` min or max,
    ``builder-id``, ``reproducible``).  A disabled one is never made into a spec."""

    type: str
    attrs: tuple[tuple[str, str], ...] = ()

    def attr(self, key: str, default: str = "") -> str:
        return dict(self.attrs).get(key, default)

    def to_wire(self) -> list[Any]:
        return [self.type, [list(pair) for pair in self.attrs]]

    @classmethod
    def from_wire(cls, item: Sequence[Any]) -> AttestSpec:
        kind, attrs = item[:2]
        if kind not in ATTEST_TYPES:
            raise ValueError(f"unknown attestation type {kind!r}")
        return cls(str(kind), tuple((str(k), str(v)) for k, v in attrs))


@dataclass(frozen=True, slots=True)
class NamedContext:
    """``--build-context NAME=...`` as the frontend reads it: ``name`` in its familiar form
    (``alpine``, not ``docker.io/library/alpine:latest``, as buildx normalises it) and
    ``source``: ``docker-image://REF``; ``local://KEY`` for a directory the client sends
    as ``session.contexts[KEY]`` (a URL is fetched by the client and sent so), with
    ``exclude`` its ``.dockerignore`` patterns; or ``oci-layout://KEY@DIGEST``, the image
    DIGEST of an OCI layout whose blobs the client sends as ``session.contexts[KEY]``
    (``exclude`` keeping only those), ``config`` the image's config JSON."""

    name: str
    source: str
    exclude: tuple[str, ...] = ()
    config: bytes = b""

    def to_wire(self) -> list[Any]:
        return [self.name, self.source, list(self.exclude), self.config]

    @classmethod
    def from_wire(cls, item: Sequence[Any]) -> NamedContext:
        name, source, exclude = item[:3]
        config = bytes(item[3]) if len(item) > 3 else b""
        return cls(str(name), str(source), tuple(str(p) for p in exclude), config)


@dataclass(frozen=True, slots=True)
class BuildOptions:
    """Everything ``dockyard build`` was asked, except the Dockerfile's bytes and secret
    values: paths absolute, values checked."""

    context: str
    filename: str = "Dockerfile"
    platforms: tuple[str, ...] = ()
    target: str | None = None
    build_args: tuple[tuple[str, str], ...] = ()
    secrets: tuple[SecretSpec, ...] = ()
    ssh: tuple[SshSpec, ...] = ()
    outputs: tuple[OutputSpec, ...] = ()
    tags: tuple[str, ...] = ()
    no_cache: bool = False
    progress: str = "auto"
    metadata_file: str | None = None
    epoch: int | None = None
    insecure_registries: tuple[str, ...] = ()  # host[:port] spoken to over plain HTTP
    cache_to: tuple[CacheSpec, ...] = ()
    cache_from: tuple[CacheSpec, ...] = ()
    allow: tuple[str, ...] = ()  # entitlements granted (--allow), scheduler/_entitlements.py
    ulimits: tuple[tuple[str, int, int], ...] = ()  # --ulimit: (name, soft, hard)
    shm_size: int = 0  # --shm-size in bytes (0: the default, 64 MiB)
    network: str = "default"  # --network: a RUN's network when it names none
    extra_hosts: tuple[tuple[str, str], ...] = ()  # --add-host: (name, ip), in order
    cgroup_parent: str = ""  # --cgroup-parent: every RUN's cgroup parent ("" : runc's)
    no_cache_filter: tuple[str, ...] = ()  # --no-cache-filter: stages that skip the cache
    pull: bool = False  # --pull: base images resolved again, no reuse of known metadata
    attests: tuple[AttestSpec, ...] = ()  # --attest/--provenance/--sbom, enabled ones only
    named_contexts: tuple[NamedContext, ...] = ()  # --build-context, resolved by the client
    labels: tuple[tuple[str, str], ...] = ()  # --label: the image config's, over LABEL's
    annotations: tuple[Annotation, ...] = ()  # --annotation and -o annotation.*: checked
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # reserved

    def to_wire(self) -> dict[str, Any]:
        return {
            "version": OPTIONS_VERSION, "context": self.context, "filename": self.filename,
            "platforms": list(self.platforms), "target": self.target,
            "build_args": [list(pair) for pair in self.build_args],
            "secrets": [[s.id, s.src, s.env] for s in self.secrets],
            "ssh": [[s.id, list(s.paths)] for s in self.ssh],
            "outputs": [[o.type, o.dest, list(o.names), o.push, o.insecure, o.attrs_wire()]
                        for o in self.outputs],
            "tags": list(self.tags), "no_cache": self.no_cache, "progress": self.progress,
            "metadata_file": self.metadata_file, "epoch": self.epoch,
            "insecure_registries": list(self.insecure_registries),
            "cache_to": [spec.to_wire() for spec in self.cache_to],
            "cache_from": [spec.to_wire() for spec in self.cache_from],
            "allow": list(self.allow),
            "ulimits": [list(limit) for limit in self.ulimits], "shm_size": self.shm_size,
            "network": self.network,
            "extra_hosts": [list(entry) for entry in self.extra_hosts],
            "cgroup_parent": self.cgroup_parent, "no_cache_filter": list(self.no_cache_filter),
            "pull": self.pull,
            "attests": [spec.to_wire() for spec in self.attests],
            "named_contexts": [c.to_wire() for c in self.named_contexts],
            "labels": [list(pair) for pair in self.labels],
            "annotations": [list(item) for item in self.annotations],
        }

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> BuildOptions:
        if not isinstance(wire, Mapping) or wire.get("version") != OPTIONS_VERSION:
            version = wire.get("version") if isinstance(wire, Mapping) else None
            raise UsageError(f"build options of version {version!r} (this "
                             f"dockyard reads version {OPTIONS_VERSION})",
                             hint="use the same dockyard version on the client and the service")
        try:
            return cls._from_wire(wire)
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"malformed build options: {type(exc).__name__}: {exc}",
                             hint="use the same dockyard version on the client and the "
                                  "service") from None

    @classmethod
    def _from_wire(cls, wire: Mapping[str, Any]) -> BuildOptions:
        return cls(
            context=wire["context"], filename=wire["filename"],
            platforms=tuple(wire["platforms"]), target=wire["target"],
            build_args=tuple((k, v) for k, v in wire["build_args"]),
            secrets=tuple(SecretSpec(i, s, e) for i, s, e in wire["secrets"]),
            ssh=tuple(SshSpec(i, tuple(p)) for i, p in wire["ssh"]),
            outputs=tuple(_output_from_wire(o) for o in wire["outputs"]),
            tags=tuple(wire["tags"]), no_cache=wire["no_cache"], progress=wire["progress"],
            metadata_file=wire["metadata_file"], epoch=wire["epoch"],
            insecure_registries=tuple(wire.get("insecure_registries", ())),
            cache_to=tuple(CacheSpec.from_wire(c) for c in wire.get("cache_to", ())),
            cache_from=tuple(CacheSpec.from_wire(c) for c in wire.get("cache_from", ())),
            allow=tuple(str(a) for a in wire.get("allow", ())),
            ulimits=tuple((str(n), int(s), int(h)) for n, s, h in wire.get("ulimits", ())),
            shm_size=int(wire.get("shm_size", 0)), network=str(wire.get("network", "default")),
            extra_hosts=tuple((str(n), str(i)) for n, i in wire.get("extra_hosts", ())),
            cgroup_parent=str(wire.get("cgroup_parent", "")),
            no_cache_filter=tuple(str(s) for s in wire.get("no_cache_filter", ())),
            pull=bool(wire.get("pull", False)),
            attests=tuple(AttestSpec.from_wire(a) for a in wire.get("attests", ())),
            named_contexts=tuple(NamedContext.from_wire(c)
                                 for c in wire.get("named_contexts", ())),
            labels=tuple((str(k), str(v)) for k, v in wire.get("labels", ())),
            annotations=tuple((str(t), str(p), str(k), str(v))
                              for t, p, k, v in wire.get("annotations", ())))


def _output_from_wire(item: Sequence[Any]) -> OutputSpec:
    """One output of the wire map (``insecure`` and the attribute map absent in maps of
    earlier clients)."""
    kind, dest, names, push = item[:4]
    attrs = item[5] if len(item) > 5 else {}
    if not isinstance(attrs, Mapping):
        raise TypeError("an output's attributes are not a map")
    split = attrs.get("platform_split")
    return OutputSpec(
        kind, dest, tuple(names), push, bool(item[4]) if len(item) > 4 else False,
        compression=Compression.from_wire(attrs["compression"]) if "compression" in attrs
        else DEFAULT_COMPRESSION,
        oci_mediatypes=bool(attrs.get("oci_mediatypes", True)), tar=bool(attrs.get("tar", True)),
        platform_split=None if split is None else bool(split),
        push_by_digest=bool(attrs.get("push_by_digest", False)),
        rewrite_timestamp=bool(attrs.get("rewrite_timestamp", False)))
