"""``dockyard build``'s flags, with buildx's names and meanings, parsed into plain data.

``parse_*`` turn one flag value into a frozen spec (``UsageError`` naming the flag and the
value otherwise, with buildx's wording where it has one); ``BuildOptions`` gathers them and
travels to the service as a versioned msgpack-able map (``to_wire``/``from_wire``).

Secrets: a ``SecretSpec`` names where a secret comes from (a file, an environment
variable), never its value.  ``read_session`` checks each at request time and puts only
the ids in the request's *session* part; a worker asks for a value over the build's
session channel when a RUN mounts it, and ``SecretReader`` (the client's ``secret.get``
handler) reads it then.  No value ever crosses Ray, or is logged, recorded or put in an
event (DESIGN.md).  ``BuildOptions`` holds no value.
"""

from __future__ import annotations

import csv
import dataclasses
import ipaddress
import math
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from dockyard.cache_backends._credentials import CREDENTIAL_VARIABLES
from dockyard.scheduler._build_request import (
    ANNOTATION_TYPES,
    ATTEST_TYPES,
    COMPRESSION_LEVELS,
    COMPRESSIONS,
    MAX_SECRET_BYTES,
    OPTIONS_VERSION,
    OUTPUT_TYPES,
    PROGRESS_MODES,
    Annotation,
    AttestSpec,
    BuildOptions,
    CacheSpec,
    Compression,
    OutputSpec,
    SecretSpec,
    SshSpec,
)
from dockyard.scheduler._entitlements import NETWORK_HOST, parse_entitlements
from dockyard.scheduler._errors import ImageReferenceError, UsageError
from dockyard.scheduler._platform import Platform, default_platform, parse_platform, parse_platforms
from dockyard.scheduler._reference import parse_reference

__all__ = [
    "OPTIONS_VERSION", "PROGRESS_MODES", "AttestSpec", "BuildOptions", "CacheSpec",
    "OutputSpec", "SecretSpec", "SshSpec", "check_annotations", "insecure_registries",
    "parse_annotation", "parse_attests", "parse_cache", "parse_compression", "parse_epoch",
    "parse_insecure_registries", "parse_labels",
    "parse_network", "parse_output", "parse_secret", "parse_shm_size", "parse_ssh",
    "parse_tag", "parse_ulimit", "read_session", "read_token_file", "CacheCredentials",
    "SecretReader", "Call", "builder_endpoint", "client_platforms", "parse_add_host",
    "parse_add_hosts", "parse_call", "parse_cgroup_parent", "parse_no_cache_filter",
]

# --- one flag value each ----------------------------------------------------------------


def _csv_fields(flag: str, value: str) -> list[str]:
    """``value`` split as one CSV record, as buildx reads ``--secret``/``--output``."""
    try:
        rows = list(csv.reader([value], strict=True))
    except csv.Error as exc:
        raise UsageError(f"invalid {flag} {value!r}: failed to parse csv: {exc}") from None
    return rows[0] if rows else []


def _pairs(flag: str, value: str) -> list[tuple[str, str]]:
    pairs = []
    for item in _csv_fields(flag, value):
        key, equals, text = item.partition("=")
        if not equals:
            raise UsageError(f"invalid {flag} {value!r}: invalid field '{item}' must be a "
                             f"key=value pair")
        pairs.append((key.strip().lower(), text))
    return pairs


def parse_secret(value: str, environ: Mapping[str, str] = os.environ) -> SecretSpec:
    """``id=ID,src=FILE``, ``id=ID,env=VAR``, ``type=file|env``; a bare ``src``/``env``
    names the secret after the file (its base name) or the variable; an ``id`` alone is
    read from the variable of that name if set, else from the file of that name."""
    kind, ident, src, env = "", "", "", ""
    for key, text in _pairs("--secret", value):
        if key == "type":
            if text not in ("file", "env"):
                raise UsageError(f"invalid --secret {value!r}: unsupported secret type {text!r}")
            kind = text
        elif key == "id":
            ident = text
        elif key in ("src", "source"):
            src = text
        elif key == "env":
            env = text
        else:
            raise UsageError(f"invalid --secret {value!r}: unexpected key '{key}' in "
                             f"'{key}={text}'")
    if kind == "env" and not env:
        env, src = src, ""
    return _secret_defaults(value, kind, ident, src, env, environ)


def _secret_defaults(value: str, kind: str, ident: str, src: str, env: str,
                     environ: Mapping[str, str]) -> SecretSpec:
    if not ident:
        ident = env or os.path.basename(src.rstrip("/"))
    if not ident:
        raise UsageError(f"invalid --secret {value!r}: secret missing ID",
                         hint="use --secret id=ID,src=FILE or --secret id=ID,env=VAR")
    if not src and not env:
        if kind == "env" or (kind != "file" and ident in environ):
            env = ident
        else:
            src = ident
    return SecretSpec(ident, src or None, env or None)


def parse_ssh(value: str, environ: Mapping[str, str] = os.environ) -> SshSpec:
    """``default`` (``$SSH_AUTH_SOCK``), ``ID=PATH[,PATH...]`` or ``default=PATH``: each
    PATH an agent socket or a private key file (cluster/_ssh_agent.py tells them apart
    and loads key files into an ephemeral agent)."""
    ident, equals, rest = value.partition("=")
    if not ident:
        raise UsageError(f"invalid --ssh {value!r}: the id is empty",
                         hint="use --ssh default or --ssh ID=SOCKET")
    paths = tuple(p for p in rest.split(",") if p) if equals else ()
    if not paths:
        if ident != "default" and equals:
            raise UsageError(f"invalid --ssh {value!r}: no socket or key given for {ident!r}")
        sock = environ.get("SSH_AUTH_SOCK", "")
        if not sock:
            raise UsageError(f"invalid --ssh {value!r}: invalid empty ssh agent socket: "
                             f"make sure SSH_AUTH_SOCK is set")
        paths = (sock,)
    return SshSpec(ident, tuple(os.path.abspath(p) for p in paths))


def parse_output(value: str) -> OutputSpec:
    """buildx's ``--output``: ``-o DIR`` is ``type=local,dest=DIR`` and ``-o -`` is
    ``type=tar,dest=-``; else ``type=...`` with its exporter's attributes (``_ATTRIBUTES``
    says which type takes which)."""
    if "=" not in value and "," not in value:
        if not value:
            raise UsageError("invalid --output '': the value is empty")
        return OutputSpec("tar", "-") if value == "-" else OutputSpec("local",
                                                                     os.path.abspath(value))
    attrs = dict(_pairs("--output", value))
    kind = attrs.pop("type", "")
    if not kind:
        raise UsageError(f"invalid --output {value!r}: type is required for output")
    if kind not in OUTPUT_TYPES:
        raise UsageError(f"invalid --output {value!r}: unsupported output type {kind!r}",
                         hint=f"use one of {', '.join(OUTPUT_TYPES)}")
    annotations = _output_annotations(value, attrs) if kind in IMAGE_EXPORTERS else ()
    _refuse_attributes(value, kind, attrs)
    if kind in ("image", "registry"):
        spec = _image_output(value, kind, attrs)
    elif kind in ("local", "tar"):
        spec = _files_output(value, kind, attrs)
    else:
        spec = _layout_output(value, kind, attrs)
    return dataclasses.replace(spec, annotations=annotations) if annotations else spec


#: The exporters writing an image (its manifests and index), so taking annotations.
IMAGE_EXPORTERS = ("oci", "docker", "image", "registry")
_ANNOTATION_ATTR = re.compile(r"annotation(?:-([a-z-]+))?(?:\[([A-Za-z0-9_/-]+)\])?\.(\S+)")
_ANNOTATION_TYPE = re.compile(r"([a-z-]+)(?:\[([A-Za-z0-9_/-]+)\])?")


def _output_annotations(value: str, attrs: dict[str, str]) -> tuple[Annotation, ...]:
    """The ``annotation[-TYPE][[PLATFORM]].KEY=V`` attributes of an image output, taken
    out of ``attrs`` (BuildKit's exporter keys; without a type: ``manifest``)."""
    found = []
    for name in [n for n in attrs if re.match(r"annotation[-.\[]", n)]:
        match = _ANNOTATION_ATTR.fullmatch(name)
        if match is None:
            raise UsageError(f"invalid --output {value!r}: could not fully parse annotation "
                             f"{name!r}", hint="use annotation[-TYPE][[PLATFORM]].KEY=VALUE")
        kind, platform, key = match[1] or "manifest", match[2] or "", match[3]
        found.append(_annotation(f"--output {value!r}", kind, platform, key, attrs.pop(name)))
    return tuple(found)


def _annotation(where: str, kind: str, platform: str, key: str, text: str) -> Annotation:
    if kind not in ANNOTATION_TYPES:
        raise UsageError(f"invalid {where}: unknown annotation type {kind!r}",
                         hint=f"use one of {', '.join(ANNOTATION_TYPES)}")
    if platform and kind in ("index", "index-descriptor"):
        platform = ""  # an index is not per platform: BuildKit drops the qualifier
    return kind, str(parse_platform(platform)) if platform else "", key, text


def parse_annotation(value: str) -> tuple[Annotation, ...]:
    """buildx's ``--annotation [TYPE[[PLATFORM]],...:]KEY=VALUE`` (no type: ``manifest``);
    one annotation per type named.  An empty value is no annotation."""
    if not value:
        return ()
    name, equals, text = value.partition("=")
    if not equals:
        raise UsageError(f"invalid annotation {value!r}, expected key=value",
                         hint="use --annotation [TYPE[[PLATFORM]]:]KEY=VALUE")
    types, colon, key = name.partition(":")
    if not colon:
        return (_annotation(f"--annotation {value!r}", "manifest", "", name, text),)
    found = []
    for item in types.split(","):
        match = _ANNOTATION_TYPE.fullmatch(item)
        if match is None:
            raise UsageError(f"invalid annotation type {item!r}, expected type and optional "
                             f"platform in square brackets",
                             hint="e.g. --annotation 'manifest[linux/amd64]:KEY=VALUE'")
        found.append(_annotation(f"--annotation {value!r}", match[1], match[2] or "", key,
                                 text))
    return tuple(found)


def check_annotations(annotations: Sequence[Annotation], platforms: Sequence[str]) -> None:
    """Each annotation's platform is one the build makes (BuildKit's check)."""
    for _, platform, _, _ in annotations:
        if platform and platform not in platforms:
            raise UsageError(f"invalid annotation: no platform {platform} found in source",
                             hint=f"this build makes {', '.join(platforms)}")


def parse_labels(items: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """``--label K=V`` pairs (the last of a key wins; ``K`` alone is an empty value)."""
    labels: dict[str, str] = {}
    for item in items:
        key, _, value = item.partition("=")
        if not key:
            raise UsageError(f"invalid key-value pair {item!r}: empty key",
                             hint="use --label KEY=VALUE")
        labels[key] = value
    return tuple(labels.items())


#: The attributes of each exporter that dockyard takes (buildx's names); others are refused
#: as unsupported, those of ``_REFUSED`` with the reason.
_IMAGE_ATTRIBUTES = ("compression", "compression-level", "force-compression",
                     "oci-mediatypes", "rewrite-timestamp")
_ATTRIBUTES = {
    "image": ("name", "push", "registry.insecure", "push-by-digest", "unpack",
              *_IMAGE_ATTRIBUTES),
    "oci": ("dest", "name", "tar", *_IMAGE_ATTRIBUTES),
    "local": ("dest", "platform-split"),
    "tar": ("dest", "platform-split"),
}
_ATTRIBUTES["registry"] = _ATTRIBUTES["image"]
_ATTRIBUTES["docker"] = _ATTRIBUTES["oci"]


def _refuse_attributes(value: str, kind: str, attrs: Mapping[str, str]) -> None:
    """Refuse an attribute the ``kind`` exporter does not take."""
    for key in sorted(attrs):
        if key not in _ATTRIBUTES[kind]:
            raise UsageError(f"invalid --output {value!r}: unsupported attribute {key!r} "
                             f"for the {kind} exporter",
                             hint=f"it takes {', '.join(_ATTRIBUTES[kind])}")


def _files_output(value: str, kind: str, attrs: dict[str, str]) -> OutputSpec:
    """``type=local`` or ``type=tar``: ``dest`` and ``platform-split``."""
    split_text = attrs.pop("platform-split", None)
    split = None if split_text is None else _boolean(value, "platform-split", split_text)
    dest = _dest(value, kind, attrs.pop("dest", ""), directory=kind == "local")
    return OutputSpec(kind, dest, platform_split=split)


def _layout_output(value: str, kind: str, attrs: dict[str, str]) -> OutputSpec:
    """``type=oci`` or ``type=docker``: ``dest``, ``name``, ``tar`` and the image's."""
    tar = _boolean(value, "tar", attrs.pop("tar", "true"))
    dest_text = attrs.pop("dest", "")
    names = _names(value, attrs)
    image = _image_attributes(value, attrs)
    if not dest_text and kind == "docker" and tar:
        # loaded into the client's Docker engine (--load)
        return OutputSpec(kind, None, names, tar=tar, **image)
    dest = _dest(value, kind, dest_text, directory=not tar)
    return OutputSpec(kind, dest, names, tar=tar, **image)


def _dest(value: str, kind: str, dest: str, *, directory: bool) -> str:
    if not dest:
        what = "directory" if kind == "local" else "file"
        raise UsageError(f"invalid --output {value!r}: dest {what} is required for the "
                         f"{kind} exporter")
    if directory and dest == "-":
        what = "the local exporter" if kind == "local" else f"the {kind} exporter with tar=false"
        raise UsageError(f"invalid --output {value!r}: {what} writes a directory, not "
                         f"stdout", hint="use type=tar,dest=- for a stream" if kind == "local"
                         else "drop tar=false to write the layout as a tar")
    return dest if dest == "-" else os.path.abspath(dest)


def _names(value: str, attrs: dict[str, str]) -> tuple[str, ...]:
    """``name=`` as a comma-separated list (quote the whole field in the CSV value:
    ``"name=a:1,b:2"``), each checked as an image reference."""
    names = tuple(n.strip() for n in attrs.pop("name", "").split(",") if n.strip())
    for name in names:
        parse_tag(name, flag="--output")
    return names


def _image_output(value: str, kind: str, attrs: dict[str, str]) -> OutputSpec:
    names = _names(value, attrs)
    push = _boolean(value, "push", attrs.pop("push", "true" if kind == "registry" else "false"))
    insecure = _boolean(value, "registry.insecure", attrs.pop("registry.insecure", "false"))
    by_digest = _boolean(value, "push-by-digest", attrs.pop("push-by-digest", "false"))
    # unpack: BuildKit unpacks the image into its worker's snapshots; a dockyard result
    # already is its snapshots (DESIGN.md), so either value leaves nothing to do
    _boolean(value, "unpack", attrs.pop("unpack", "false"))
    image = _image_attributes(value, attrs)
    return OutputSpec("image", None, names, push, insecure, push_by_digest=by_digest, **image)


def _image_attributes(value: str, attrs: dict[str, str]) -> dict[str, Any]:
    """The attributes every image-writing exporter takes: compression, media types,
    rewrite-timestamp (as keyword arguments of ``OutputSpec``)."""
    compression = parse_compression("--output", value, attrs)
    oci = _boolean(value, "oci-mediatypes", attrs.pop("oci-mediatypes", "true"))
    rewrite = _boolean(value, "rewrite-timestamp", attrs.pop("rewrite-timestamp", "false"))
    _no_more(value, attrs)
    # zstd layers have no Docker media type: BuildKit turns OCI media types on for them
    return {"compression": compression, "oci_mediatypes": oci or compression.type == "zstd",
            "rewrite_timestamp": rewrite}


def parse_compression(flag: str, value: str, attrs: dict[str, str]) -> Compression:
    """``compression=gzip|zstd|uncompressed``, ``compression-level=N`` and
    ``force-compression=true|false`` taken out of ``attrs`` (an ``--output``'s or a
    ``--cache-to``'s attributes; ``value`` the whole flag value, for messages)."""
    kind = attrs.pop("compression", "gzip")
    if kind not in COMPRESSIONS:
        raise UsageError(f"invalid {flag} {value!r}: unsupported compression type {kind!r}",
                         hint=f"use one of {', '.join(COMPRESSIONS)}")
    force = _flag_boolean(flag, value, "force-compression",
                          attrs.pop("force-compression", "false"))
    level_text = attrs.pop("compression-level", None)
    if level_text is None:
        return Compression(kind, None, force)
    low, high = COMPRESSION_LEVELS.get(kind, (0, 0))
    level = int(level_text) if level_text.strip().isdigit() else -1
    if kind != "uncompressed" and not low <= level <= high:
        raise UsageError(f"invalid {flag} {value!r}: compression-level {level_text!r} is "
                         f"not a {kind} level", hint=f"use a level from {low} to {high}")
    return Compression(kind, None if kind == "uncompressed" else level, force)


def _boolean(value: str, key: str, text: str) -> bool:
    return _flag_boolean("--output", value, key, text)


def _flag_boolean(flag: str, value: str, key: str, text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0"):
        raise UsageError(f"invalid {flag} {value!r}: {key} must be true or false, not "
                         f"{text.lower()!r}")
    return text.lower() in ("true", "1")


def _no_more(value: str, attrs: Mapping[str, str]) -> None:
    if attrs:
        key = sorted(attrs)[0]
        raise UsageError(f"invalid --output {value!r}: unsupported attribute {key!r}")


CACHE_TYPES = ("registry", "inline", "s3", "local")
_S3_KEYS = ("bucket", "region", "prefix", "endpoint_url", "use_path_style")
_CREDENTIAL_KEYS = ("access_key_id", "secret_access_key", "session_token")
#: registry cache attributes buildx takes that dockyard refuses, and why
_CACHE_REFUSED = {
    "compression-level": "layers are compressed at one level (gzip 6, zstd 3, BuildKit's "
                         "defaults) so that a layer's digest depends on its files alone",
    "force-compression": "a layer already compressed (a base image's) is exported as it is",
}
#: --cache-to compression= -> the runtime's name of it
_CACHE_COMPRESSION = {"gzip": "gzip", "zstd": "zstd", "uncompressed": "none"}


def parse_cache(flag: str, value: str) -> CacheSpec:
    """buildx's ``--cache-to`` (``flag``) or ``--cache-from``: ``type=registry,ref=REF``
    (``--cache-to`` also ``image-manifest=``, ``oci-mediatypes=``, ``compression=``), a
    bare ``REF`` meaning that, ``type=inline`` (``--cache-to`` only: the cache in the
    image's config, read back by ``--cache-from REF``), ``type=s3,bucket=B,region=R,
    prefix=P,endpoint_url=URL,use_path_style=true`` or ``type=local,dest=DIR``
    (``src=DIR`` for ``--cache-from``); ``--cache-to`` takes ``mode=min|max`` and
    ``ignore-error=true|false`` too.  Credentials come from boto3's chain (S3) or the
    docker config (registries), never a flag."""
    if "=" not in value:
        value = f"type=registry,ref={value}"
    attrs = dict(_pairs(flag, value))
    kind = attrs.pop("type", "")
    if kind not in CACHE_TYPES:
        what = f"unsupported cache type {kind!r}" if kind else "type is required"
        raise UsageError(f"invalid {flag} {value!r}: {what}",
                         hint="use type=registry, type=inline, type=s3 or type=local")
    mode, ignore = "min", False
    if flag == "--cache-to":
        mode = attrs.pop("mode", "min")
        if mode not in ("min", "max"):
            raise UsageError(f"invalid {flag} {value!r}: mode must be min or max, not {mode!r}")
        ignore = _flag_boolean(flag, value, "ignore-error", attrs.pop("ignore-error", "false"))
    settings = _CACHE_SETTINGS[kind](flag, value, attrs)
    if kind == "inline" and mode == "max":
        raise UsageError(f"invalid {flag} {value!r}: an inline cache holds the image's own "
                         "layers only (mode=min)",
                         hint="use --cache-to type=registry,ref=REF,mode=max for every step")
    return CacheSpec(kind, settings, mode, ignore)


def _registry_settings(flag: str, value: str, attrs: dict[str, str]
                       ) -> tuple[tuple[str, str], ...]:
    ref = attrs.pop("ref", "")
    if not ref:
        raise UsageError(f"invalid {flag} {value!r}: ref is required for the registry cache",
                         hint=f"use {flag} type=registry,ref=REGISTRY/REPOSITORY:TAG")
    try:
        parsed = parse_reference(ref)
    except ImageReferenceError as exc:
        raise UsageError(f"invalid {flag} {value!r}: {exc.message}") from None
    if flag == "--cache-to" and parsed.digest:
        raise UsageError(f"invalid {flag} {value!r}: a cache is written under a tag, not a "
                         "digest", hint="name the cache REPOSITORY:TAG")
    settings = {"ref": ref}
    if flag == "--cache-to":
        # BuildKit >= 0.21 writes an image manifest unless told otherwise (an index of
        # layers is what older ones wrote: registries and skopeo copy it less well)
        oci = _flag_boolean(flag, value, "oci-mediatypes", attrs.pop("oci-mediatypes", "true"))
        manifest = _flag_boolean(flag, value, "image-manifest",
                                  attrs.pop("image-manifest", str(oci)))
        if manifest and not oci:
            raise UsageError(f"invalid {flag} {value!r}: image-manifest=true needs OCI media "
                             "types", hint="drop oci-mediatypes=false, or add "
                                           "image-manifest=false")
        settings["oci_mediatypes"] = "true" if oci else "false"
        settings["image_manifest"] = "true" if manifest else "false"
        if "compression" in attrs:
            settings["compression"] = _cache_compression(flag, value, attrs.pop("compression"))
        for key, why in _CACHE_REFUSED.items():
            if key in attrs:
                raise UsageError(f"invalid {flag} {value!r}: {key} is not supported: {why}")
    _no_more_cache(flag, value, attrs)
    return tuple(sorted(settings.items()))


def _cache_compression(flag: str, value: str, text: str) -> str:
    chosen = _CACHE_COMPRESSION.get(text)
    if chosen is None:
        why = " (estargz is not produced by dockyard)" if text == "estargz" else ""
        raise UsageError(f"invalid {flag} {value!r}: compression must be gzip, zstd or "
                         f"uncompressed, not {text!r}{why}")
    return chosen


def _inline_settings(flag: str, value: str, attrs: dict[str, str]
                     ) -> tuple[tuple[str, str], ...]:
    if flag != "--cache-to":
        raise UsageError(f"invalid {flag} {value!r}: an inline cache is read from its image",
                         hint=f"use {flag} IMAGE (type=registry,ref=IMAGE)")
    _no_more_cache(flag, value, attrs)
    return ()


def _s3_settings(flag: str, value: str, attrs: dict[str, str]) -> tuple[tuple[str, str], ...]:
    for key in _CREDENTIAL_KEYS:
        if key in attrs:
            raise UsageError(f"invalid {flag} {value!r}: {key} is not taken from the "
                             f"command line", hint="set AWS_ACCESS_KEY_ID and "
                             "AWS_SECRET_ACCESS_KEY, a profile or an instance role")
    settings = {key: attrs.pop(key) for key in _S3_KEYS if key in attrs}
    _no_more_cache(flag, value, attrs)
    if not settings.get("bucket"):
        raise UsageError(f"invalid {flag} {value!r}: bucket is required for the s3 cache")
    if "use_path_style" in settings:
        path_style = _flag_boolean(flag, value, "use_path_style", settings["use_path_style"])
        settings["use_path_style"] = "true" if path_style else "false"
    return tuple(sorted(settings.items()))


def _local_settings(flag: str, value: str, attrs: dict[str, str]
                    ) -> tuple[tuple[str, str], ...]:
    key = "dest" if flag == "--cache-to" else "src"
    path = attrs.pop(key, "")
    _no_more_cache(flag, value, attrs)
    if not path:
        raise UsageError(f"invalid {flag} {value!r}: {key} directory is required for the "
                         f"local cache")
    return (("path", os.path.abspath(path)),)


#: each cache type's attributes -> its ``CacheSpec`` settings
_CACHE_SETTINGS: dict[str, Callable[[str, str, dict[str, str]], tuple[tuple[str, str], ...]]] = {
    "registry": _registry_settings, "inline": _inline_settings, "s3": _s3_settings,
    "local": _local_settings,
}


def _no_more_cache(flag: str, value: str, attrs: Mapping[str, str]) -> None:
    if attrs:
        key = sorted(attrs)[0]
        raise UsageError(f"invalid {flag} {value!r}: unsupported attribute {key!r}")


def parse_tag(value: str, *, flag: str = "--tag") -> str:
    """A ``-t`` name, checked as an image reference."""
    try:
        parse_reference(value)
    except ImageReferenceError as exc:
        raise UsageError(f"invalid {flag}: {exc.message}") from None
    return value


def parse_epoch(build_args: Mapping[str, str], environ: Mapping[str, str]) -> int | None:
    """``SOURCE_DATE_EPOCH``: the build arg, else the environment; unset or empty is None."""
    text = build_args.get("SOURCE_DATE_EPOCH") or environ.get("SOURCE_DATE_EPOCH") or ""
    if not text:
        return None
    if not text.isdigit():
        raise UsageError(f"invalid SOURCE_DATE_EPOCH {text!r}: not a unix time in seconds")
    return int(text)


def parse_insecure_registries(text: str) -> tuple[str, ...]:
    """``DOCKYARD_INSECURE_REGISTRIES``: ``host[:port]`` entries separated by commas, in
    order, once each (empty entries ignored)."""
    found: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        host, colon, port = item.rpartition(":") if ":" in item else (item, "", "")
        if (not host or any(c in item for c in "/@ ") or
                (colon and not (port.isdigit() and 0 < int(port) < 65536))):
            raise UsageError(f"invalid DOCKYARD_INSECURE_REGISTRIES entry {item!r}: not a "
                             f"host or host:port",
                             hint="list registries like registry.local:5000,10.0.0.7")
        if item not in found:
            found.append(item)
    return tuple(found)


def insecure_registries(outputs: Sequence[OutputSpec], environ: Mapping[str, str]
                        ) -> tuple[str, ...]:
    """The registries of this build spoken to over plain HTTP: those listed in
    ``DOCKYARD_INSECURE_REGISTRIES`` (pulls and pushes), then the registries of the image
    outputs marked ``registry.insecure=true``."""
    found = list(parse_insecure_registries(environ.get("DOCKYARD_INSECURE_REGISTRIES", "")))
    for output in outputs:
        if output.type == "image" and output.insecure:
            domains = (parse_reference(name).domain for name in output.names)
            found += [domain for domain in domains if domain not in found]
    return tuple(found)


def parse_ulimit(value: str) -> tuple[str, int, int]:
    """``--ulimit NAME=SOFT[:HARD]`` (HARD defaults to SOFT; -1 is unlimited)."""
    from dockyard.scheduler._graph import ULIMIT_NAMES  # noqa: PLC0415 -- 20 ms at start

    name, equals, limits = value.partition("=")
    if not equals or name not in ULIMIT_NAMES:
        raise UsageError(f"invalid --ulimit {value!r}: expected NAME=SOFT[:HARD]",
                         hint=f"NAME is one of {', '.join(ULIMIT_NAMES)}")
    soft_text, _, hard_text = limits.partition(":")
    try:
        soft, hard = int(soft_text), int(hard_text or soft_text)
    except ValueError:
        raise UsageError(f"invalid --ulimit {value!r}: limits are integers") from None
    if min(soft, hard) < -1 or max(soft, hard) >= 1 << 63 or _bound(soft) > _bound(hard):
        raise UsageError(f"invalid --ulimit {value!r}: the soft limit must not exceed the "
                         "hard one (-1: unlimited)")
    return name, soft, hard


def _bound(limit: int) -> float:
    return math.inf if limit == -1 else limit


def parse_shm_size(value: str | None) -> int:
    """``--shm-size`` in bytes, read as docker and buildx read it (go-units RAMInBytes:
    ``128m``, ``1.5g``, ``64MiB``; binary units); 0 (or no flag) keeps the default."""
    if value is None:
        return 0
    from dockyard.scheduler.dockerfile._flags import ram_in_bytes  # noqa: PLC0415

    size = ram_in_bytes(value.strip())
    if size is None or size >= 1 << 62:
        raise UsageError(f"invalid --shm-size {value!r}: expected a size such as 128m or "
                         f"1.5g")
    return size


#: The settings each attestation takes (what else BuildKit knows is refused by name).
_ATTEST_KEYS = {"provenance": ("mode", "builder-id", "reproducible", "version"),
                "sbom": ()}
_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}


def _attrs(flag: str, value: str, kind: str | None) -> dict[str, str]:
    """One value's settings; for ``--provenance``/``--sbom`` (``kind``) a boolean turns
    the attestation on or off, as buildx reads them."""
    if kind is None:
        return dict(_pairs(flag, value))
    known = _BOOLEANS.get(value.strip().lower())
    if known is not None:
        return {"type": kind, "disabled": str(not known).lower()}
    return {"type": kind, **dict(_pairs(flag, value))}


def parse_attests(attest: Sequence[str], provenance: str | None = None,
                  sbom: str | None = None) -> tuple[AttestSpec, ...]:
    """``--attest type=provenance|sbom,...`` with ``--provenance`` and ``--sbom`` (their
    short forms): the attestations asked, the disabled ones left out; one of each type."""
    values: list[tuple[str, str, str | None]] = [("--attest", value, None) for value in attest]
    values += [(f"--{kind}", text, kind) for kind, text in
               (("provenance", provenance), ("sbom", sbom)) if text is not None]
    found: dict[str, AttestSpec | None] = {}
    for flag, value, short in values:
        where = f"{flag} {value!r}"
        kind, spec = _attest(where, _attrs(flag, value, short))
        if kind in found:
            raise UsageError(f"invalid {where}: the {kind} attestation is asked twice",
                             hint="give each attestation type once")
        found[kind] = spec
    return tuple(spec for spec in found.values() if spec is not None)


def _attest(where: str, attrs: dict[str, str]) -> tuple[str, AttestSpec | None]:
    """One attestation value (``where``: its flag and text, for errors): its type and
    spec (None: ``disabled=true``)."""
    kind = attrs.pop("type", "")
    if kind not in ATTEST_TYPES:
        raise UsageError(f"invalid {where}: " + (
            f"unsupported attestation type {kind!r}" if kind else "attestation type not "
            "specified"), hint="use type=provenance or type=sbom")
    if _attest_boolean(where, "disabled", attrs.pop("disabled", "false")):
        return kind, None
    if kind == "sbom" and "generator" in attrs:
        raise UsageError(f"invalid {where}: generator images are not run by dockyard; its "
                         "own scanner writes the SBOM", hint="use --sbom=true")
    for key in attrs:
        if key not in _ATTEST_KEYS[kind]:
            raise UsageError(f"invalid {where}: unsupported {kind} attribute {key!r}",
                             hint=(f"use {', '.join(_ATTEST_KEYS[kind])}"
                                   if _ATTEST_KEYS[kind] else "use --sbom=true"))
    return kind, AttestSpec(kind, _checked_provenance(where, attrs)
                            if kind == "provenance" else ())


def _attest_boolean(where: str, key: str, text: str) -> bool:
    if text.lower() not in _BOOLEANS:
        raise UsageError(f"invalid {where}: {key} must be true or false, not {text!r}")
    return _BOOLEANS[text.lower()]


def _checked_provenance(where: str, attrs: dict[str, str]) -> tuple[tuple[str, str], ...]:
    mode = attrs.get("mode", "min")
    if mode not in ("min", "max"):
        raise UsageError(f"invalid {where}: mode must be min or max, not {mode!r}")
    if attrs.pop("version", "v0.2") != "v0.2":
        raise UsageError(f"invalid {where}: dockyard writes SLSA provenance v0.2 only "
                         "(BuildKit's default)", hint="leave version out")
    if "reproducible" in attrs:
        attrs["reproducible"] = str(_attest_boolean(where, "reproducible",
                                                    attrs["reproducible"])).lower()
    return tuple(sorted({**attrs, "mode": mode}.items()))


NETWORK_MODES = ("default", "none", "host")


def parse_network(value: str | None) -> str:
    """``--network``: the network of every RUN that names none (buildx's flag)."""
    if value is None or value == "":
        return "default"
    if value not in NETWORK_MODES:
        raise UsageError(f"network mode {value!r} not supported by dockyard",
                         hint=f"use one of {', '.join(NETWORK_MODES)}")
    return value


#: ``--add-host NAME:host-gateway``: the worker's host, seen from a RUN (a RUN shares the
#: worker's network namespace unless ``--network=none``), hence its loopback address.
HOST_GATEWAY = "host-gateway"
HOST_GATEWAY_IP = "127.0.0.1"


def parse_add_host(value: str) -> tuple[tuple[str, str], ...]:
    """``--add-host NAME=IP`` or ``NAME:IP`` as buildx reads it: ``=`` first, else the
    first ``:`` (so ``name:::1`` is IPv6); an IP in brackets is unwrapped; ``IP,IP`` gives
    one entry each; ``host-gateway`` is the worker's host.  Each IP in its canonical form,
    as BuildKit writes it to /etc/hosts."""
    name, equals, ips = value.partition("=")
    if not equals:
        name, _, ips = value.partition(":")
    if not name or not ips or any(c.isspace() for c in name):
        raise UsageError(f"invalid --add-host {value!r}: invalid host",
                         hint="use --add-host NAME=IP or NAME:IP")
    return tuple((name, _host_ip(value, ip)) for ip in ips.split(","))


def _host_ip(value: str, text: str) -> str:
    if text == HOST_GATEWAY:
        return HOST_GATEWAY_IP
    if len(text) > 2 and text[0] == "[" and text[-1] == "]":
        text = text[1:-1]
    try:
        if "%" in text:
            raise ValueError(text)
        address = ipaddress.ip_address(text)
    except ValueError:
        raise UsageError(f"invalid --add-host {value!r}: invalid IP address {text!r}",
                         hint="use --add-host NAME=IP (IPv4, or IPv6 as NAME=[::1])") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)  # Go prints an IPv4-mapped address as IPv4
    return str(address)


def parse_add_hosts(values: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """Every ``--add-host``, in order."""
    return tuple(entry for value in values for entry in parse_add_host(value))


def parse_cgroup_parent(value: str | None) -> str:
    """``--cgroup-parent``: a cgroup path (relative to the cgroup root, as BuildKit reads
    it: every RUN's cgroup is ``/PARENT/buildkit/<id>``).  systemd's ``SLICE:`` form needs
    the systemd cgroup driver, which dockyard's runc does not use."""
    if not value:
        return ""
    parts = value.strip("/").split("/")
    if value.endswith(":") and ".slice" in value:
        raise UsageError(f"invalid --cgroup-parent {value!r}: systemd slices need runc's "
                         f"systemd cgroup driver, which dockyard does not use",
                         hint="give a cgroupfs path such as /ci/builds")
    if (not value.strip("/") or any(p in ("", ".", "..") for p in parts)
            or any(c.isspace() or c in ":," for c in value)):
        raise UsageError(f"invalid --cgroup-parent {value!r}: not a cgroup path",
                         hint="give a path such as /ci/builds (no '..', spaces or ':')")
    return "/" + "/".join(parts)


def parse_no_cache_filter(values: Sequence[str]) -> tuple[str, ...]:
    """``--no-cache-filter STAGE`` (repeatable, each also ``A,B``): the stages whose steps
    ignore the cache, lowercased as stage names are; in order, once each."""
    found: list[str] = []
    for value in values:
        for name in (part.strip().lower() for part in value.split(",")):
            if not name:
                raise UsageError(f"invalid --no-cache-filter {value!r}: empty stage name")
            if name not in found:
                found.append(name)
    return tuple(found)


CALLS = ("build", "check", "outline", "targets")


@dataclass(frozen=True, slots=True)
class Call:
    """``--call NAME[,format=json][,ignorestatus=BOOL]`` (buildx's flag)."""

    name: str = "build"
    format: str = ""
    ignore_status: bool = False


def parse_call(value: str | None, *, check: bool = False) -> Call:
    """``--call`` as buildx reads it (CSV: the name, then ``format=``/``ignorestatus=``);
    ``--check`` is ``--call=check``."""
    if value is None or value == "":
        return Call("check" if check else "build")
    name, form, ignore = "", "", False
    for item in _csv_fields("--call", value):
        key, equals, text = item.partition("=")
        if not equals:
            name = item.strip()
        elif key == "format":
            form = text
        elif key == "ignorestatus":
            ignore = _flag_boolean("--call", value, key, text)
        else:
            raise UsageError(f"invalid --call {value!r}: invalid value {item}")
    if name not in CALLS:
        raise UsageError(f"invalid --call {value!r}: unknown call {name!r}",
                         hint=f"use one of {', '.join(CALLS)}")
    if form not in ("", "json"):
        raise UsageError(f"invalid --call {value!r}: format must be json (or absent for "
                         f"text), not {form!r}")
    if check and name != "check":
        raise UsageError(f"--check conflicts with --call={name}",
                         hint="--check is --call=check: give one of them")
    if name == "build" and form:
        raise UsageError(f"invalid --call {value!r}: a build has no {form} answer")
    return Call(name, form, ignore)


#: ``--builder`` names for the root's local service (buildx's default builder).
LOCAL_BUILDERS = ("default", "dockyard", "local")
_URL_SCHEMES = ("tcp://", "http://", "https://", "unix://")


def builder_endpoint(args: Any, environ: Mapping[str, str]) -> str | None:
    """What ``--builder``/``BUILDX_BUILDER`` names: an endpoint URL, "" for the local
    service, None when neither is given.  dockyard has no named builders: any other name
    is refused."""
    name = getattr(args, "builder", None) or environ.get("BUILDX_BUILDER", "")
    if not name:
        return None
    if name in LOCAL_BUILDERS:
        return ""
    if name.startswith(_URL_SCHEMES):
        return name
    flag = "--builder" if getattr(args, "builder", None) else "BUILDX_BUILDER"
    raise UsageError(f"{flag} {name!r}: no such builder: dockyard's builders are the "
                     f"local service ('default') or an endpoint URL",
                     hint="use --builder default, or --builder tcp://HOST:PORT "
                          "(as --endpoint)")


def parse_progress(value: str | None, environ: Mapping[str, str] | None = None) -> str:
    """``--progress``; when not given, ``BUILDKIT_PROGRESS`` (as buildx reads it), else
    ``auto``."""
    where = "--progress"
    if value is None:
        value = (environ or {}).get("BUILDKIT_PROGRESS") or "auto"
        where = "BUILDKIT_PROGRESS"
    if value not in PROGRESS_MODES:
        raise UsageError(f"invalid {where} {value!r}: unknown progress mode",
                         hint=f"use one of {', '.join(PROGRESS_MODES)}")
    return value


def parse_platform_list(values: Sequence[str]) -> tuple[str, ...]:
    """``--platform`` values (each ``P[,P...]``; ``local`` is this client's platform, as
    buildx reads it) as normalised texts, in order, once each."""
    return tuple(map(str, client_platforms(values)))


def client_platforms(values: Sequence[str]) -> list[Platform]:
    """The platforms ``--platform`` names (default: this machine's), in order, once each."""
    found: list[Platform] = []
    for value in values or ["local"]:
        items = [str(default_platform()) if item.strip() == "local" else item
                 for item in value.split(",")]
        found += [p for p in parse_platforms(",".join(items)) if p not in found]
    return found


def resolve_outputs(outputs: Sequence[OutputSpec], tags: Sequence[str], push: bool,
                    load: bool = False) -> tuple[OutputSpec, ...]:
    """The outputs with ``--push``, ``--load`` and the ``-t`` names applied, as buildx
    (0.13 and later, several outputs) does: ``--push`` adds (or turns on) an image output,
    ``--load`` adds a ``docker`` output without ``dest`` unless there is one; an image
    output without names takes the tags (a loaded image is named by the tags too)."""
    specs = list(outputs)
    if push and not any(o.type == "image" for o in specs):
        specs.append(OutputSpec("image", None, (), True))
    if load and not any(o.loads for o in specs):
        specs.append(OutputSpec("docker"))
    resolved = []
    for spec in specs:
        if spec.type == "image":
            names = spec.names or tuple(tags)
            if not names:
                raise UsageError("tag is needed when pushing to registry" if spec.push or push
                                 else "an image output needs a name",
                                 hint="add -t NAME or name=NAME")
            spec = dataclasses.replace(spec, names=names, push=spec.push or push)
        elif spec.type in ("oci", "docker") and not spec.names:
            spec = dataclasses.replace(spec, names=tuple(tags))
        resolved.append(spec)
    if sum(1 for o in resolved if o.to_stdout) > 1:
        raise UsageError("only one --output can write to stdout (dest=-)")
    return tuple(resolved)


def check_docker_platforms(outputs: Sequence[OutputSpec], platforms: Sequence[str]) -> None:
    """A ``docker`` output holds one platform's image: several platforms are refused
    before the build, with buildx's words (an engine with the classic image store, such
    as Docker 20.10, cannot take an index either)."""
    docker = [o for o in outputs if o.type == "docker"]
    if len(platforms) < 2 or not docker:
        return
    if any(o.loads for o in docker):
        raise UsageError("docker exporter does not currently support exporting manifest "
                         "lists", hint="build one --platform to --load it, or push the "
                         "platforms with --push, or write them with -o type=oci,dest=FILE")
    raise UsageError("docker exporter does not support exporting manifest lists, use the "
                     "oci exporter instead", hint="build one --platform, or use "
                     "-o type=oci,dest=FILE")


# --- the session: secret ids in the request, values read when a worker asks -------------


def read_session(options: BuildOptions,
                 environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """The request's session part: the secret ids (each checked now: its variable set or
    its file a regular file, within the size limit; the values are read only when a
    worker asks, ``SecretReader``) and the ssh agent ids (the agents stay on the client,
    relayed when a worker asks, cluster/_ssh_agent.py ``SshRelay``)."""
    for spec in options.secrets:
        _check_secret(spec, environ)
    return {"secret_ids": [spec.id for spec in options.secrets],
            "ssh_ids": [spec.id for spec in options.ssh]}


def _env_secret(spec: SecretSpec, environ: Mapping[str, str]) -> bytes:
    if str(spec.env) not in environ:
        raise UsageError(f"secret {spec.id!r}: environment variable {spec.env!r} is not "
                         f"set", hint="export it, or use --secret id=ID,src=FILE")
    data = environ[str(spec.env)].encode()
    if len(data) > MAX_SECRET_BYTES:
        raise UsageError(f"secret {spec.id!r} too big. max size 500KB (${spec.env})")
    return data


def _check_secret(spec: SecretSpec, environ: Mapping[str, str]) -> None:
    if spec.env is not None:
        _env_secret(spec, environ)
        return
    path = spec.src or spec.id
    try:
        info = os.stat(path)
    except OSError as exc:
        raise UsageError(f"secret {spec.id!r}: cannot read {path!r}: "
                         f"{exc.strerror or exc}") from None
    _check_file(spec, path, info)


def _check_file(spec: SecretSpec, path: str, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise UsageError(f"secret {spec.id!r}: {path!r} is not a regular file",
                         hint="a secret is read from a file or an environment variable")
    if info.st_size > MAX_SECRET_BYTES:
        raise UsageError(f"secret {spec.id!r} too big. max size 500KB ({path!r})")


def _file_secret(spec: SecretSpec) -> bytes:
    """The file's content: opened without blocking (a fifo is refused, never waited on),
    checked to be a regular file, read up to the limit plus one byte."""
    path = spec.src or spec.id
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise UsageError(f"secret {spec.id!r}: cannot read {path!r}: "
                         f"{exc.strerror or exc}") from None
    try:
        _check_file(spec, path, os.fstat(fd))
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as file:
        try:
            data = file.read(MAX_SECRET_BYTES + 1)
        except OSError as exc:
            raise UsageError(f"secret {spec.id!r}: cannot read {path!r}: "
                             f"{exc.strerror or exc}") from None
    if len(data) > MAX_SECRET_BYTES:
        raise UsageError(f"secret {spec.id!r} too big. max size 500KB ({path!r})")
    return data


class SecretReader:
    """The client's ``secret.get`` handler: the value of a secret this build was given,
    read now (``None`` for an id it was not given)."""

    def __init__(self, specs: Sequence[SecretSpec],
                 environ: Mapping[str, str] = os.environ) -> None:
        self._specs = {spec.id: spec for spec in specs}  # id -> where its value is
        self._environ = environ

    def __repr__(self) -> str:
        return f"<SecretReader ids={sorted(self._specs)}>"

    def __call__(self, params: dict[str, Any]) -> bytes | None:
        ident = params.get("id")
        if not isinstance(ident, str):
            raise UsageError("a secret.get ask without a secret id")
        spec = self._specs.get(ident)
        if spec is None:
            return None
        return _env_secret(spec, self._environ) if spec.env is not None else _file_secret(spec)


class CacheCredentials:
    """The client's ``cache.credentials`` handler: its ``AWS_*`` variables (those set of
    ``CREDENTIAL_VARIABLES``), forwarded as buildx does, only to a build that uses a
    ``type=s3`` cache; read when a worker opens the build's S3 backend, never kept."""

    def __init__(self, options: BuildOptions, environ: Mapping[str, str] = os.environ
                 ) -> None:
        self._s3 = any(spec.type == "s3" for spec in (*options.cache_to, *options.cache_from))
        self._environ = environ

    def __repr__(self) -> str:
        return f"<CacheCredentials s3={self._s3}>"

    def __call__(self, params: dict[str, Any]) -> dict[str, str]:
        del params
        if not self._s3:
            raise UsageError("this build uses no S3 cache: no credentials are forwarded",
                             hint="use the same dockyard version on the client and the "
                                  "cluster")
        return {name: self._environ[name] for name in CREDENTIAL_VARIABLES
                if self._environ.get(name)}


MAX_TOKEN_BYTES = 4096


def read_token_file(path: str, flag: str = "--token-file") -> str:
    """The token in ``path`` (its first line, stripped); a ``UsageError`` if unreadable,
    empty or over ``MAX_TOKEN_BYTES``."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_TOKEN_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"cannot read {flag} {path!r}: {exc.strerror or exc}") from None
    lines = data.decode("utf-8", "replace").strip().splitlines()
    if len(data) > MAX_TOKEN_BYTES or not lines or not lines[0].strip():
        raise UsageError(f"invalid {flag} {path!r}: not one line of at most "
                         f"{MAX_TOKEN_BYTES} bytes")
    return lines[0].strip()


# --- all flags together ------------------------------------------------------------------


def parse_build_args(items: Sequence[str], environ: Mapping[str, str]
                     ) -> tuple[tuple[str, str], ...]:
    """``K=V`` pairs (the last wins); a bare ``K`` takes its value from the environment and
    is dropped when the environment has none, as buildx does."""
    args: dict[str, str] = {}
    for item in items:
        key, equals, value = item.partition("=")
        if not key:
            raise UsageError(f"invalid --build-arg {item!r}: the name is empty")
        if equals:
            args[key] = value
        elif key in environ:
            args[key] = environ[key]
    return tuple(args.items())


#: buildx's experimental controller-server flags (its BUILDX_EXPERIMENTAL ones): argparse
#: name -> (flag, why dockyard refuses it).
SERVER_FLAGS: Final = {
    "detach": ("--detach", "it detaches buildx's experimental controller server; a dockyard "
                           "build already runs in its service, which outlives the client"),
    "root": ("--root", "it names the root directory of buildx's experimental controller "
                       "server; dockyard's is DOCKYARD_ROOT"),
    "server_config": ("--server-config", "it names the config file of buildx's experimental "
                                         "controller server; dockyard's service takes "
                                         "'dockyard serve' flags"),
}


def refuse_server_flags(args: Any) -> None:
    """Refuse a buildx controller-server flag given on the command line, with its reason."""
    for name, (flag, why) in SERVER_FLAGS.items():
        if getattr(args, name, None):
            raise UsageError(f"{flag} is not supported: {why}",
                             hint=f"drop {flag}; the build runs the same without it")


def gather_options(args: Any, environ: Mapping[str, str] = os.environ) -> BuildOptions:
    """The ``BuildOptions`` of a parsed ``dockyard build`` command line (argparse's
    namespace: context, file, platform, target, build_arg, secret, ssh, output, tag, push,
    no_cache, progress, metadata_file)."""
    refuse_server_flags(args)
    build_args = parse_build_args(args.build_arg, environ)
    network = parse_network(getattr(args, "network", None))
    tags = tuple(parse_tag(tag) for tag in args.tag)
    outputs = resolve_outputs([parse_output(o) for o in args.output], tags, args.push,
                              bool(getattr(args, "load", False)))
    _check_iidfile(args, outputs)
    platforms = parse_platform_list(args.platform)
    check_docker_platforms(outputs, platforms)
    return BuildOptions(
        context=os.path.abspath(args.context), filename=_filename(args.file, args.context),
        platforms=platforms, target=args.target,
        build_args=build_args, secrets=tuple(parse_secret(s, environ) for s in args.secret),
        ssh=tuple(parse_ssh(s, environ) for s in args.ssh), outputs=outputs, tags=tags,
        no_cache=args.no_cache, progress=_progress(args, environ),
        metadata_file=os.path.abspath(args.metadata_file) if args.metadata_file else None,
        epoch=parse_epoch(dict(build_args), environ),
        insecure_registries=insecure_registries(outputs, environ),
        cache_to=tuple(parse_cache("--cache-to", v)
                       for v in getattr(args, "cache_to", None) or ()),
        cache_from=tuple(parse_cache("--cache-from", v)
                         for v in getattr(args, "cache_from", None) or ()),
        allow=_granted(getattr(args, "allow", None) or (), network),
        ulimits=_last_per_name(parse_ulimit(u) for u in getattr(args, "ulimit", None) or ()),
        shm_size=parse_shm_size(getattr(args, "shm_size", None)),
        network=network, extra_hosts=parse_add_hosts(getattr(args, "add_host", None) or ()),
        cgroup_parent=parse_cgroup_parent(getattr(args, "cgroup_parent", None)),
        no_cache_filter=parse_no_cache_filter(getattr(args, "no_cache_filter", None) or ()),
        pull=bool(getattr(args, "pull", False)),
        attests=parse_attests(getattr(args, "attest", None) or (),
                              getattr(args, "provenance", None), getattr(args, "sbom", None)),
        labels=parse_labels(getattr(args, "label", None) or ()),
        annotations=_annotations(args, outputs, platforms))


def _annotations(args: Any, outputs: Sequence[OutputSpec], platforms: Sequence[str]
                 ) -> tuple[Annotation, ...]:
    """``--annotation`` then the outputs' ``annotation.*`` (one set for every image
    output: dockyard writes one image), checked against the build's platforms."""
    found = [item for value in getattr(args, "annotation", None) or ()
             for item in parse_annotation(value)]
    found += [item for output in outputs for item in output.annotations]
    check_annotations(found, platforms)
    return tuple(dict.fromkeys(found))


def _progress(args: Any, environ: Mapping[str, str]) -> str:
    """``--progress`` (else ``BUILDKIT_PROGRESS``), or ``quiet`` with ``-q`` (only with
    auto or quiet, as buildx)."""
    progress = parse_progress(args.progress, environ)
    if getattr(args, "quiet", False):
        if progress not in ("auto", "quiet"):
            raise UsageError(f"progress={progress} and quiet cannot be used together",
                             hint="drop -q, or --progress")
        return "quiet"
    return progress


def _check_iidfile(args: Any, outputs: Sequence[OutputSpec]) -> None:
    if getattr(args, "iidfile", None) and any(o.type in ("local", "tar") for o in outputs):
        raise UsageError("local and tar exporters are incompatible with image ID file",
                         hint="drop --iidfile, or write an image (type=oci, docker, image)")


def _last_per_name(limits: Iterable[tuple[str, int, int]]) -> tuple[tuple[str, int, int], ...]:
    """``--ulimit``s with one per name, the last given winning (docker's UlimitOpt)."""
    return tuple({limit[0]: limit for limit in limits}.values())


def _granted(values: Sequence[str], network: str) -> tuple[str, ...]:
    """The ``--allow`` entitlements, plus ``network.host`` when ``--network=host`` asks
    for it (buildx grants it itself then)."""
    allowed = parse_entitlements(values)
    if network == "host" and NETWORK_HOST not in allowed:
        allowed += (NETWORK_HOST,)
    return allowed


def _filename(option: str | None, context: str) -> str:
    """The Dockerfile's display name: relative to the context when inside it."""
    if option == "-":
        return "Dockerfile"
    if option is None:
        from ._context import default_dockerfile  # noqa: PLC0415 -- reads the disk

        return default_dockerfile(Path(context)).name
    path = os.path.abspath(option)
    inside = os.path.relpath(path, os.path.abspath(context))
    return path if inside.startswith("..") else inside
