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
import math
import os
import re
import stat
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cache_backends._credentials import CREDENTIAL_VARIABLES
from scheduler._build_request import (
    MAX_SECRET_BYTES,
    OPTIONS_VERSION,
    OUTPUT_TYPES,
    PROGRESS_MODES,
    BuildOptions,
    CacheSpec,
    OutputSpec,
    SecretSpec,
    SshSpec,
)
from scheduler._entitlements import parse_entitlements
from scheduler._errors import ImageReferenceError, UsageError
from scheduler._graph import ULIMIT_NAMES
from scheduler._platform import default_platform, parse_platforms
from scheduler._reference import parse_reference

__all__ = [
    "OPTIONS_VERSION", "PROGRESS_MODES", "BuildOptions", "CacheSpec", "OutputSpec", "SecretSpec",
    "SshSpec", "insecure_registries", "parse_cache", "parse_epoch", "parse_insecure_registries",
    "parse_network", "parse_output", "parse_secret", "parse_shm_size", "parse_ssh",
    "parse_tag", "parse_ulimit", "read_session", "read_token_file", "CacheCredentials",
    "SecretReader",
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
    ``type=tar,dest=-``; else ``type=...`` with ``dest``, ``name``, ``push``."""
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
    if kind in ("image", "registry"):
        return _image_output(value, kind, attrs)
    return _file_output(value, kind, attrs)


def _file_output(value: str, kind: str, attrs: dict[str, str]) -> OutputSpec:
    dest = attrs.pop("dest", "")
    _no_more(value, attrs)
    if not dest:
        what = "directory" if kind == "local" else "file"
        raise UsageError(f"invalid --output {value!r}: dest {what} is required for the "
                         f"{kind} exporter")
    if kind == "local" and dest == "-":
        raise UsageError(f"invalid --output {value!r}: the local exporter writes a "
                         f"directory, not stdout", hint="use type=tar,dest=- for a stream")
    return OutputSpec(kind, dest if dest == "-" else os.path.abspath(dest))


def _image_output(value: str, kind: str, attrs: dict[str, str]) -> OutputSpec:
    names = tuple(n.strip() for n in attrs.pop("name", "").split(",") if n.strip())
    push = _boolean(value, "push", attrs.pop("push", "true" if kind == "registry" else "false"))
    insecure = _boolean(value, "registry.insecure", attrs.pop("registry.insecure", "false"))
    _no_more(value, attrs)
    for name in names:
        parse_tag(name, flag="--output")
    return OutputSpec("image", None, names, push, insecure)


def _boolean(value: str, key: str, text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0"):
        raise UsageError(f"invalid --output {value!r}: {key} must be true or false, not "
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
        ignore = _cache_boolean(flag, value, "ignore-error", attrs.pop("ignore-error", "false"))
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
        oci = _cache_boolean(flag, value, "oci-mediatypes", attrs.pop("oci-mediatypes", "true"))
        manifest = _cache_boolean(flag, value, "image-manifest",
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
        path_style = _cache_boolean(flag, value, "use_path_style", settings["use_path_style"])
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


def _cache_boolean(flag: str, value: str, key: str, text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0"):
        raise UsageError(f"invalid {flag} {value!r}: {key} must be true or false, not "
                         f"{text.lower()!r}")
    return text.lower() in ("true", "1")


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


_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_SIZE = re.compile(r"(\d+)\s?([kmgtp]?)(?:i?b)?", re.IGNORECASE)


def parse_ulimit(value: str) -> tuple[str, int, int]:
    """``--ulimit NAME=SOFT[:HARD]`` (HARD defaults to SOFT; -1 is unlimited)."""
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
    """``--shm-size`` in bytes: a number with an optional binary unit (``128m``, ``1g``)."""
    if value is None:
        return 0
    match = _SIZE.fullmatch(value.strip())
    size = int(match[1]) * _UNITS[match[2].lower()] if match else 0
    if not 0 < size < 1 << 62:
        raise UsageError(f"invalid --shm-size {value!r}: expected a size such as 128m or 1g")
    return size


NETWORK_MODES = ("default", "none", "host")


def parse_network(value: str | None) -> str:
    """``--network``: the network of every RUN that names none (buildx's flag)."""
    if value is None:
        return "default"
    if value not in NETWORK_MODES:
        raise UsageError(f"invalid --network {value!r}",
                         hint=f"use one of {', '.join(NETWORK_MODES)}")
    return value


def parse_progress(value: str) -> str:
    if value not in PROGRESS_MODES:
        raise UsageError(f"invalid --progress {value!r}: unknown progress mode",
                         hint=f"use one of {', '.join(PROGRESS_MODES)}")
    return value


def parse_platform_list(values: Sequence[str]) -> tuple[str, ...]:
    """``--platform`` values (each ``P[,P...]``) as normalised texts, in order, once each."""
    found: list[str] = []
    for value in values or [str(default_platform())]:
        found += [text for text in map(str, parse_platforms(value)) if text not in found]
    return tuple(found)


def resolve_outputs(outputs: Sequence[OutputSpec], tags: Sequence[str], push: bool
                    ) -> tuple[OutputSpec, ...]:
    """The outputs with ``--push`` and the ``-t`` names applied, as buildx does: ``--push``
    adds (or turns on) an image output; an image output without names takes the tags."""
    specs = list(outputs)
    if push and not any(o.type == "image" for o in specs):
        specs.append(OutputSpec("image", None, (), True))
    resolved = []
    for spec in specs:
        if spec.type == "image":
            names = spec.names or tuple(tags)
            if not names:
                raise UsageError("tag is needed when pushing to registry" if spec.push or push
                                 else "an image output needs a name",
                                 hint="add -t NAME or name=NAME")
            spec = OutputSpec("image", None, names, spec.push or push, spec.insecure)
        resolved.append(spec)
    if sum(1 for o in resolved if o.to_stdout) > 1:
        raise UsageError("only one --output can write to stdout (dest=-)")
    return tuple(resolved)


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


def gather_options(args: Any, environ: Mapping[str, str] = os.environ) -> BuildOptions:
    """The ``BuildOptions`` of a parsed ``dockyard build`` command line (argparse's
    namespace: context, file, platform, target, build_arg, secret, ssh, output, tag, push,
    no_cache, progress, metadata_file)."""
    build_args = parse_build_args(args.build_arg, environ)
    tags = tuple(parse_tag(tag) for tag in args.tag)
    outputs = resolve_outputs([parse_output(o) for o in args.output], tags, args.push)
    return BuildOptions(
        context=os.path.abspath(args.context), filename=_filename(args.file, args.context),
        platforms=parse_platform_list(args.platform), target=args.target,
        build_args=build_args, secrets=tuple(parse_secret(s, environ) for s in args.secret),
        ssh=tuple(parse_ssh(s, environ) for s in args.ssh), outputs=outputs, tags=tags,
        no_cache=args.no_cache, progress=parse_progress(args.progress),
        metadata_file=os.path.abspath(args.metadata_file) if args.metadata_file else None,
        epoch=parse_epoch(dict(build_args), environ),
        insecure_registries=insecure_registries(outputs, environ),
        cache_to=tuple(parse_cache("--cache-to", v)
                       for v in getattr(args, "cache_to", None) or ()),
        cache_from=tuple(parse_cache("--cache-from", v)
                         for v in getattr(args, "cache_from", None) or ()),
        allow=parse_entitlements(getattr(args, "allow", None) or ()),
        ulimits=tuple(parse_ulimit(u) for u in getattr(args, "ulimit", None) or ()),
        shm_size=parse_shm_size(getattr(args, "shm_size", None)),
        network=parse_network(getattr(args, "network", None)))


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
