"""The build graph: what the frontend produces and the solver consumes (docs/graph.md).

A Merkle DAG of ops as plain, immutable data.  A vertex's ``digest`` is the sha256 of the
canonical msgpack encoding of ``[GRAPH_VERSION, kind, fields, inputs, platform]``:
maps with sorted keys, tuples as arrays, no floats.  Fields marked
``metadata={"digest": False}`` are carried and serialised but left out of the digest;
fields marked ``metadata={"digest": "unless-default"}`` are left out (of the digest and
the wire) while they hold their default, so a field added later keeps the digests (and
cache keys) of every graph that does not use it.

``BuildGraph.add`` dedups by digest and accepts a vertex only once its inputs are in the
graph, so ``vertices`` is always in topological order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Union

import msgpack

from ._errors import GraphError
from ._platform import Platform

__all__ = [
    "GRAPH_VERSION", "BuildGraph", "Copy", "ExecMount", "ExecOp", "FileAction", "FileOp",
    "Healthcheck", "HistoryEntry", "ImageConfig", "ImageResult", "MergeOp", "Mkdir",
    "Mkfile", "Op", "Rm", "SourceOp", "Symlink", "ULIMIT_NAMES", "Ulimit", "Vertex",
    "vertex_from_wire",
    "vertex_to_wire",
]

GRAPH_VERSION = 1

_NO_DIGEST: Mapping[str, bool] = {"digest": False}
_DIGEST_UNLESS_DEFAULT: Mapping[str, str] = {"digest": "unless-default"}

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# --- ops -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SourceOp:
    """An image, the build context, an http(s) file or a git repository.

    ``attrs`` is a sorted tuple of ``(key, value)`` strings (see docs/graph.md)."""

    kind: ClassVar[str] = "source"
    identifier: str
    attrs: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class ExecMount:
    """One mount of an ``ExecOp``.  ``input`` indexes the vertex's inputs (None: an empty
    state, or no state for tmpfs/secret/ssh).  The root mount is ``dest="/"``,
    ``output=True``.  Secrets appear only by id."""

    dest: str
    input: int | None = None
    selector: str = ""
    output: bool = False
    readonly: bool = False
    type: str = "bind"
    cache_id: str = ""
    sharing: str = ""
    secret_id: str = ""
    ssh_id: str = ""
    env_name: str = ""
    required: bool = False
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None


#: The resource limits a RUN may set (docker's go-units ``ParseUlimit`` names).
ULIMIT_NAMES = ("core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice",
                "nofile", "nproc", "rss", "rtprio", "rttime", "sigpending", "stack")


@dataclass(frozen=True, slots=True)
class Ulimit:
    """One resource limit of a RUN (``--ulimit nofile=1024:2048``): ``name`` as ``nofile``."""

    name: str
    soft: int
    hard: int


@dataclass(frozen=True, slots=True)
class ExecOp:
    """Run ``args`` (the argv; the shell already prepended for shell form).

    ``env`` is sorted ``KEY=value`` strings.  ``proxy_env`` holds the proxy build args
    (``HTTP_PROXY=...``, in both spellings) passed to the process beyond ``env``: excluded
    from the digest, so a proxy change does not invalidate the cache.  ``ulimits`` and
    ``shm_size`` (bytes of /dev/shm; 0: 64 MiB) are the build's ``--ulimit`` and
    ``--shm-size``, ``extra_hosts`` its ``--add-host`` entries (name, IP: lines of the
    RUN's /etc/hosts) and ``cgroup_parent`` its ``--cgroup-parent``: in the digest only
    when set (the cache key leaves the hosts' IPs out, as BuildKit's does)."""

    kind: ClassVar[str] = "exec"
    args: tuple[str, ...]
    env: tuple[str, ...] = ()
    cwd: str = "/"
    user: str = ""
    mounts: tuple[ExecMount, ...] = ()
    network: str = "default"
    security: str = "sandbox"
    hostname: str = ""
    proxy_env: tuple[str, ...] = field(default=(), metadata=_NO_DIGEST)
    ulimits: tuple[Ulimit, ...] = field(default=(), metadata=_DIGEST_UNLESS_DEFAULT)
    shm_size: int = field(default=0, metadata=_DIGEST_UNLESS_DEFAULT)
    extra_hosts: tuple[tuple[str, str], ...] = field(default=(),
                                                     metadata=_DIGEST_UNLESS_DEFAULT)
    cgroup_parent: str = field(default="", metadata=_DIGEST_UNLESS_DEFAULT)


@dataclass(frozen=True, slots=True)
class Copy:
    """Copy ``src_path`` of input ``src`` to ``dest_path`` (defaults: COPY's)."""

    kind: ClassVar[str] = "copy"
    src: int
    src_path: str
    dest_path: str
    chown: str = ""
    chmod: str = ""
    follow_symlinks: bool = True
    copy_dir_contents: bool = True
    attempt_unpack: bool = False
    create_dest_path: bool = True
    allow_wildcard: bool = True
    allow_empty_wildcard: bool = True
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    parents: bool = False
    always_replace_existing: bool = False


@dataclass(frozen=True, slots=True)
class Mkdir:
    kind: ClassVar[str] = "mkdir"
    path: str
    mode: int = 0o755
    make_parents: bool = False
    chown: str = ""


@dataclass(frozen=True, slots=True)
class Mkfile:
    """Create a file holding ``data`` (a heredoc source of COPY/ADD)."""

    kind: ClassVar[str] = "mkfile"
    path: str
    data: str
    mode: int = 0o644
    chown: str = ""


@dataclass(frozen=True, slots=True)
class Rm:
    kind: ClassVar[str] = "rm"
    path: str
    allow_not_found: bool = False
    allow_wildcard: bool = False


@dataclass(frozen=True, slots=True)
class Symlink:
    kind: ClassVar[str] = "symlink"
    old: str
    new: str


FileAction = Union[Copy, Mkdir, Mkfile, Rm, Symlink]  # noqa: UP007 (runtime alias)


@dataclass(frozen=True, slots=True)
class FileOp:
    """Ordered file actions applied to input ``base`` (None: to an empty state, as for
    ``COPY --link``, whose result a ``MergeOp`` then layers on the stage)."""

    kind: ClassVar[str] = "file"
    actions: tuple[FileAction, ...]
    base: int | None = 0


@dataclass(frozen=True, slots=True)
class MergeOp:
    """Layer the results of the vertex's inputs, in order."""

    kind: ClassVar[str] = "merge"


Op = Union[SourceOp, ExecOp, FileOp, MergeOp]  # noqa: UP007 (runtime alias)

_OPS: dict[str, type[Any]] = {c.kind: c for c in (SourceOp, ExecOp, FileOp, MergeOp)}
_ACTIONS: dict[str, type[Any]] = {c.kind: c for c in (Copy, Mkdir, Mkfile, Rm, Symlink)}


# --- canonical encoding ----------------------------------------------------------------


def _plain(value: Any, *, for_digest: bool = False) -> Any:
    """``value`` as msgpack-ready plain data: dataclasses -> dicts with sorted keys (plus
    ``kind`` for tagged ones), tuples -> lists.  Floats are refused."""
    if isinstance(value, Platform):
        return {"architecture": value.architecture, "os": value.os, "variant": value.variant}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain_fields(value, for_digest=for_digest)
    if isinstance(value, tuple | list):
        return [_plain(item, for_digest=for_digest) for item in value]
    if value is None or isinstance(value, str | int | bytes):
        return value
    raise GraphError(f"cannot encode a {type(value).__name__} in a build graph")


def _plain_fields(value: Any, *, for_digest: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    kind = getattr(type(value), "kind", None)
    if isinstance(kind, str):
        out["kind"] = kind
    for item in dataclasses.fields(value):
        field_value = getattr(value, item.name)
        if _left_out(item, field_value, for_digest=for_digest):
            continue
        out[item.name] = _plain(field_value, for_digest=for_digest)
    return dict(sorted(out.items()))


def _left_out(item: dataclasses.Field[Any], value: Any, *, for_digest: bool) -> bool:
    """Whether a field stays out of the digest (see the module docstring); an
    ``unless-default`` one at its default stays off the wire too, so a worker that predates
    the field still reads a graph that does not use it."""
    rule = item.metadata.get("digest", True)
    if rule == "unless-default" and value == item.default:
        return True
    return for_digest and rule is False


def _pack(value: Any) -> bytes:
    try:
        packed: bytes = msgpack.packb(value, use_bin_type=True)
    except UnicodeEncodeError as exc:  # a lone surrogate (e.g. from os.environ)
        raise GraphError(f"cannot encode text in a build graph: {exc.reason} "
                         f"({exc.object[exc.start:exc.end]!r})") from None
    except OverflowError:
        raise GraphError("cannot encode an integer outside the 64-bit range in a build "
                         "graph") from None
    return packed


# --- vertices --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Vertex:
    """One op with the digests of its inputs.

    ``name`` is a human label and ``location`` the Dockerfile position of the instruction
    that made the vertex (``Dockerfile:7:1``: file, line, column; "" for internal vertices
    such as the build context); ``ignore_cache`` (a step of a ``--no-cache-filter`` stage,
    BuildKit's op metadata IgnoreCache) makes the solver run it without a cache lookup.
    All three are metadata: not digested, not compared."""

    op: Op
    inputs: tuple[str, ...] = ()
    name: str = field(default="", compare=False)
    platform: Platform | None = None
    location: str = field(default="", compare=False)
    ignore_cache: bool = field(default=False, compare=False)
    digest: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "digest", _vertex_digest(self))


def _vertex_digest(vertex: Vertex) -> str:
    fields = _plain(vertex.op, for_digest=True)
    fields.pop("kind", None)
    platform = _plain(vertex.platform) if vertex.platform is not None else None
    material = [GRAPH_VERSION, vertex.op.kind, fields, list(vertex.inputs), platform]
    return "sha256:" + hashlib.sha256(_pack(material)).hexdigest()


# --- image config and results ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Healthcheck:
    """``test`` as in the image config: ``("NONE",)``, ``("CMD", ...)``, ``("CMD-SHELL",
    line)``; durations in nanoseconds (0 = inherit)."""

    test: tuple[str, ...]
    interval: int = 0
    timeout: int = 0
    start_period: int = 0
    start_interval: int = 0
    retries: int = 0


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    created_by: str
    empty_layer: bool = False
    comment: str = ""


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """What the exported image's config holds.  ``labels`` are sorted ``(key, value)``
    pairs; ``exposed_ports`` like ``"80/tcp"``; ``cmd``/``entrypoint`` None when unset
    (inherit), ``()`` when explicitly empty.  ``author`` is the image's ``author`` field
    (set by MAINTAINER; "" when unset)."""

    env: tuple[str, ...] = (DEFAULT_PATH,)
    cmd: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    user: str = ""
    working_dir: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    exposed_ports: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    stop_signal: str = ""
    healthcheck: Healthcheck | None = None
    on_build: tuple[str, ...] = ()
    shell: tuple[str, ...] = ()
    author: str = ""
    history: tuple[HistoryEntry, ...] = ()


@dataclass(frozen=True, slots=True)
class ImageResult:
    """One image the build produces: ``root`` is the digest of its final filesystem state
    (None for an unchanged ``FROM scratch``)."""

    platform: Platform
    root: str | None
    config: ImageConfig = ImageConfig()
    target: str = ""


# --- decoding (msgpack -> dataclasses), strict -----------------------------------------


def _fail(where: str, message: str) -> GraphError:
    return GraphError(f"malformed build graph at {where}: {message}")


def _decode(hint: Any, raw: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return _decode_union(typing.get_args(hint), raw, where)
    if origin is tuple:
        return _decode_tuple(typing.get_args(hint), raw, where)
    if hint is Platform:
        return _decode_dataclass(Platform, raw, where)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _decode_dataclass(hint, raw, where)
    return _decode_scalar(hint, raw, where)


def _decode_scalar(hint: Any, raw: Any, where: str) -> Any:
    if hint is type(None) and raw is None:
        return None
    if hint in (str, bool, bytes) and type(raw) is hint:
        return raw
    if hint is int and type(raw) is int:
        return raw
    name = getattr(hint, "__name__", str(hint))
    raise _fail(where, f"expected {name}, got {type(raw).__name__}")


def _decode_union(options: tuple[Any, ...], raw: Any, where: str) -> Any:
    if raw is None and type(None) in options:
        return None
    tagged = [o for o in options if isinstance(getattr(o, "kind", None), str)]
    if tagged and isinstance(raw, dict):
        table = {o.kind: o for o in tagged}
        kind = raw.get("kind")
        if kind not in table:
            raise _fail(where, f"unknown kind {kind!r}")
        return _decode_dataclass(table[kind], raw, where)
    rest = [o for o in options if o is not type(None)]
    if len(rest) == 1:
        return _decode(rest[0], raw, where)
    raise _fail(where, f"unexpected {type(raw).__name__}")


def _decode_tuple(args: tuple[Any, ...], raw: Any, where: str) -> tuple[Any, ...]:
    if not isinstance(raw, list):
        raise _fail(where, f"expected an array, got {type(raw).__name__}")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_decode(args[0], item, f"{where}[{i}]") for i, item in enumerate(raw))
    if len(raw) != len(args):
        raise _fail(where, f"expected {len(args)} items, got {len(raw)}")
    return tuple(_decode(a, item, f"{where}[{i}]") for i, (a, item) in
                 enumerate(zip(args, raw, strict=True)))


#: dataclass -> its resolved field types and ``__init__`` field names (``_fields_of``)
_FIELDS: dict[type[Any], tuple[dict[str, Any], frozenset[str]]] = {}


def _fields_of(cls: type[Any]) -> tuple[dict[str, Any], frozenset[str]]:
    """A dataclass's resolved field types and its ``__init__`` field names, once per class
    (``get_type_hints`` evaluates every string annotation again on each call: it was most
    of the time of decoding a graph)."""
    found = _FIELDS.get(cls)
    if found is None:
        found = _FIELDS[cls] = (typing.get_type_hints(cls), frozenset(
            f.name for f in dataclasses.fields(cls) if f.init))
    return found


def _decode_dataclass(cls: type[Any], raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise _fail(where, f"expected a map, got {type(raw).__name__}")
    hints, known = _fields_of(cls)
    extra = set(raw) - known - {"kind"}
    if extra:
        raise _fail(where, f"unknown field {sorted(map(str, extra))[0]!r}")
    values = {}
    for name in known:
        if name in raw:
            values[name] = _decode(hints[name], raw[name], f"{where}.{name}")
    try:
        return cls(**values)
    except TypeError as exc:  # a required field is missing
        raise _fail(where, str(exc)) from None


# --- the graph -------------------------------------------------------------------------


class BuildGraph:
    """Vertices by digest, in topological order, and the images the build produces.

    Build it with ``add`` (returns the vertex's digest; adding an equal vertex again is a
    no-op) and ``add_result``.  Both refuse references to vertices not yet in the graph.
    """

    def __init__(self, vertices: Iterable[Vertex] | Mapping[str, Vertex] = (),
                 results: Iterable[ImageResult] = ()) -> None:
        # Digest -> vertex; insertion order is a topological order (inputs first).
        self._vertices: dict[str, Vertex] = {}
        # The images, in the order the frontend produced them (one per platform).
        self._results: list[ImageResult] = []
        items = vertices.values() if isinstance(vertices, Mapping) else vertices
        for vertex in items:
            self.add(vertex)
        for result in results:
            self.add_result(result)

    @property
    def vertices(self) -> Mapping[str, Vertex]:
        return types.MappingProxyType(self._vertices)

    @property
    def results(self) -> tuple[ImageResult, ...]:
        return tuple(self._results)

    def add(self, vertex: Vertex) -> str:
        """Add ``vertex`` (its inputs must be in the graph); return its digest.  A vertex
        already there stays as it is: the first one added keeps its name and location
        (it takes ``ignore_cache`` from a later one, as BuildKit merges op metadata)."""
        for index, digest in enumerate(vertex.inputs):
            if digest not in self._vertices:
                raise GraphError(f"vertex {vertex.name or vertex.op.kind!r}: input {index} "
                                 f"({digest}) is not in the graph")
        known = self._vertices.setdefault(vertex.digest, vertex)
        if vertex.ignore_cache and not known.ignore_cache:
            self._vertices[vertex.digest] = dataclasses.replace(known, ignore_cache=True)
        return vertex.digest

    def add_result(self, result: ImageResult) -> None:
        if result.root is not None and result.root not in self._vertices:
            raise GraphError(f"result for {result.platform}: root {result.root} "
                             "is not in the graph")
        self._results.append(result)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BuildGraph):
            return NotImplemented
        return (list(self._vertices.items()) == list(other._vertices.items())
                and self._results == other._results)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<BuildGraph vertices={len(self._vertices)} results={len(self._results)}>"

    # -- serialisation --

    def to_msgpack(self) -> bytes:
        """``{"version", "vertices": [...], "results": [...]}``; each vertex carries its
        digest, checked on decode."""
        return _pack({
            "version": GRAPH_VERSION,
            "vertices": [vertex_to_wire(v) for v in self._vertices.values()],
            "results": [_plain(r) for r in self._results],
        })

    @classmethod
    def from_msgpack(cls, data: bytes) -> BuildGraph:
        """Decode ``to_msgpack`` output; anything else raises ``GraphError``."""
        document = _unpack(data)
        graph = cls()
        for index, raw in enumerate(_list_field(document, "vertices")):
            graph.add(vertex_from_wire(raw, f"vertices[{index}]"))
        for index, raw in enumerate(_list_field(document, "results")):
            graph.add_result(_decode(ImageResult, raw, f"results[{index}]"))
        return graph

    def to_json_lines(self) -> str:
        """One JSON object per vertex (``digest``, ``op``, ``inputs``, ``platform``,
        ``name``, ``location``, then the op's fields), then one per result (``result``: the target,
        ``platform``, ``root``, ``config``).  Every line ends in a newline."""
        lines = [_vertex_json(v) for v in self._vertices.values()]
        lines += [_result_json(r) for r in self._results]
        return "".join(json.dumps(line, sort_keys=False) + "\n" for line in lines)


def vertex_to_wire(vertex: Vertex) -> dict[str, Any]:
    wire = {"digest": vertex.digest, "op": _plain(vertex.op), "inputs": list(vertex.inputs),
            "name": vertex.name,
            "platform": None if vertex.platform is None else _plain(vertex.platform),
            "location": vertex.location}
    return wire | {"ignore_cache": True} if vertex.ignore_cache else wire


_VERTEX_KEYS = frozenset({"digest", "op", "inputs", "name", "platform"})
_OPTIONAL_VERTEX_KEYS = frozenset({"location", "ignore_cache"})


def vertex_from_wire(raw: Any, where: str = "vertex") -> Vertex:
    # "location" may be absent: a graph written before it existed still reads;
    # "ignore_cache" is there only when true.
    if not isinstance(raw, dict) or set(raw) - _OPTIONAL_VERTEX_KEYS != _VERTEX_KEYS:
        raise _fail(where, "expected a map with digest, op, inputs, name, platform and "
                           "optionally location and ignore_cache")
    vertex = Vertex(op=_decode(Op, raw["op"], f"{where}.op"),
                    inputs=_decode(tuple[str, ...], raw["inputs"], f"{where}.inputs"),
                    name=_decode(str, raw["name"], f"{where}.name"),
                    platform=_decode(Platform | None, raw["platform"], f"{where}.platform"),
                    location=_decode(str, raw.get("location", ""), f"{where}.location"),
                    ignore_cache=_decode(bool, raw.get("ignore_cache", False),
                                         f"{where}.ignore_cache"))
    if vertex.digest != raw["digest"]:
        raise _fail(where, f"digest {raw['digest']!r} does not match its content "
                           f"({vertex.digest})")
    return vertex


def _unpack(data: bytes) -> dict[str, Any]:
    try:
        document = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types; translate them all
        raise GraphError(f"malformed build graph: {exc}") from None
    if not isinstance(document, dict):
        raise GraphError("malformed build graph: expected a map at the top level")
    checked: dict[str, Any] = document
    version = checked.get("version")
    if version != GRAPH_VERSION:
        raise GraphError(f"unsupported build graph version {version!r} "
                         f"(this dockyard reads version {GRAPH_VERSION})",
                         hint="use the same dockyard version on the client and the cluster")
    return checked


def _list_field(document: dict[str, Any], name: str) -> list[Any]:
    value = document.get(name)
    if not isinstance(value, list):
        raise GraphError(f"malformed build graph: {name!r} must be an array")
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, Platform):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return value


def _vertex_json(vertex: Vertex) -> dict[str, Any]:
    fields = _plain(vertex.op)
    fields.pop("kind", None)
    head: dict[str, Any] = {
        "digest": vertex.digest, "op": vertex.op.kind, "inputs": list(vertex.inputs),
        "platform": None if vertex.platform is None else str(vertex.platform),
        "name": vertex.name, "location": vertex.location,
    }
    return head | {name: _jsonable(value) for name, value in fields.items()}


def _result_json(result: ImageResult) -> dict[str, Any]:
    return {"result": result.target, "platform": str(result.platform), "root": result.root,
            "config": _jsonable(_plain(result.config))}
