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
    "FILE_OUTPUTS", "MAX_SECRET_BYTES", "OPTIONS_VERSION", "OUTPUT_TYPES", "PROGRESS_MODES",
    "BuildOptions", "CacheSpec", "OutputSpec", "SecretSpec", "SshSpec",
]

OPTIONS_VERSION = 1
PROGRESS_MODES = ("auto", "plain", "tty", "rawjson", "quiet")
FILE_OUTPUTS = ("tar", "oci", "docker")  # exporters writing one file (or stdout with dest=-)
OUTPUT_TYPES = ("local", *FILE_OUTPUTS, "image", "registry")
MAX_SECRET_BYTES = 500 * 1024  # BuildKit's secret size limit


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
class OutputSpec:
    """``--output``: ``type`` (local, tar, oci, docker, image), ``dest`` (a path; ``-`` is
    stdout), ``names``, ``push`` and ``insecure`` (image: ``registry.insecure=true``, its
    registries spoken to over plain HTTP)."""

    type: str
    dest: str | None = None
    names: tuple[str, ...] = ()
    push: bool = False
    insecure: bool = False

    @property
    def to_stdout(self) -> bool:
        return self.dest == "-"


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
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # reserved

    def to_wire(self) -> dict[str, Any]:
        return {
            "version": OPTIONS_VERSION, "context": self.context, "filename": self.filename,
            "platforms": list(self.platforms), "target": self.target,
            "build_args": [list(pair) for pair in self.build_args],
            "secrets": [[s.id, s.src, s.env] for s in self.secrets],
            "ssh": [[s.id, list(s.paths)] for s in self.ssh],
            "outputs": [[o.type, o.dest, list(o.names), o.push, o.insecure]
                        for o in self.outputs],
            "tags": list(self.tags), "no_cache": self.no_cache, "progress": self.progress,
            "metadata_file": self.metadata_file, "epoch": self.epoch,
            "insecure_registries": list(self.insecure_registries),
            "cache_to": [spec.to_wire() for spec in self.cache_to],
            "cache_from": [spec.to_wire() for spec in self.cache_from],
            "allow": list(self.allow),
            "ulimits": [list(limit) for limit in self.ulimits], "shm_size": self.shm_size,
            "network": self.network,
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
            shm_size=int(wire.get("shm_size", 0)), network=str(wire.get("network", "default")))


def _output_from_wire(item: Sequence[Any]) -> OutputSpec:
    """One output of the wire map (``insecure`` absent in maps of earlier clients)."""
    kind, dest, names, push = item[:4]
    return OutputSpec(kind, dest, tuple(names), push, bool(item[4]) if len(item) > 4 else False)
