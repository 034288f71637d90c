"""Cache keys: what makes two vertices "the same work", whatever build asks for them.

A vertex's key is ``"sha256:" + sha256(canonical msgpack of the material)``::

    [KEY_VERSION, op kind, op fields, platform, inputs]       (any op but a source)
    [KEY_VERSION, "source", op fields, platform, identity]   (a source)
    [KEY_VERSION, "source", "docker-image", attrs, platform, identity]   (an image)

- *op fields* are the graph's canonical encoding of the op (scheduler/_graph.py) without
  the fields it leaves out of a vertex digest (``proxy_env``), and without the addresses
  of an exec's ``extra_hosts`` (``--add-host``: the names stay, as in BuildKit's key).
  The vertex ``name`` and its input *digests* are never part of a key.
- *inputs*, in input order: ``["key", <input's key>]``, or, for an input the op reads only
  through selectors from the build context (a COPY's source path, a bind mount's
  ``source=``), ``["content", [[selector, checksum], ...]]``: the content checksum of the
  paths it reads instead of the context's key.  A one-line change in a file only one COPY
  reads thus invalidates that COPY and what follows, not every COPY of the context.
- *identity* is the pinned identity the worker reports for a source: an image's manifest
  digest, the context's content checksum, an http checksum or etag, a git commit.  An image
  is keyed by its manifest digest alone, not by the reference it was reached through (as
  BuildKit's puller does): the same image from a mirror or another port is a cache hit.

Keys never hold mtimes, absolute host paths, session ids or secret values: the op names a
secret by id only, and everything else comes from content.  ``KEY_VERSION`` changes when
the material's shape changes, so old records simply stop matching.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._errors import GraphError
from ._graph import Copy, ExecOp, FileOp, SourceOp, Vertex, _pack, _plain

__all__ = ["KEY_VERSION", "ContentRead", "Selector", "cache_key", "content_reads",
           "selector_from_wire", "selector_to_wire", "source_key"]

KEY_VERSION = 2

#: Image sources: keyed by the manifest digest the worker resolved, never by the reference.
IMAGE_SCHEME = "docker-image://"

#: Identifier schemes whose inputs are keyed by the content their users read.
CONTENT_SCHEMES = ("local://",)


@dataclass(frozen=True, slots=True)
class Selector:
    """What part of an input a vertex reads: ``path`` (absolute in the input's state) and
    how a copy resolves it.  The worker checksums exactly what such a copy would read."""

    path: str
    wildcard: bool = False
    follow_symlinks: bool = True
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ContentRead:
    """One content checksum a key needs: input ``index`` of a vertex read at ``selector``."""

    index: int
    selector: Selector


def content_reads(vertex: Vertex, inputs: Sequence[Vertex]) -> tuple[ContentRead, ...]:
    """The selector reads of ``vertex`` that its key takes by content: inputs that are
    build-context sources (``inputs[i]`` is the vertex behind ``vertex.inputs[i]``) and
    that the op reads only through selectors.  An input also used whole (a bind mount of
    the whole context, a merge) is keyed by its own key, which is content-based anyway."""
    uses = _selector_uses(vertex)
    reads: list[ContentRead] = []
    for index, source in enumerate(inputs):
        if not _content_keyed(source) or index not in uses:
            continue
        selectors = uses[index]
        if None in selectors:
            continue
        reads += [ContentRead(index, s) for s in dict.fromkeys(selectors) if s is not None]
    return tuple(reads)


def _content_keyed(vertex: Vertex) -> bool:
    return isinstance(vertex.op, SourceOp) and vertex.op.identifier.startswith(CONTENT_SCHEMES)


def _selector_uses(vertex: Vertex) -> dict[int, list[Selector | None]]:
    """Input index -> how the op reads it: a selector, or None for a whole-state use."""
    uses: dict[int, list[Selector | None]] = {}
    op = vertex.op
    if isinstance(op, FileOp):
        if op.base is not None:
            uses.setdefault(op.base, []).append(None)
        for action in op.actions:
            if isinstance(action, Copy):
                uses.setdefault(action.src, []).append(_copy_selector(action))
    elif isinstance(op, ExecOp):
        for mount in op.mounts:
            if mount.input is not None:
                selector = Selector(_absolute(mount.selector)) if mount.selector else None
                uses.setdefault(mount.input, []).append(selector)
    else:
        for index in range(len(vertex.inputs)):
            uses.setdefault(index, []).append(None)
    return uses


def _copy_selector(action: Copy) -> Selector:
    return Selector(path=_absolute(action.src_path), wildcard=action.allow_wildcard,
                    follow_symlinks=action.follow_symlinks, include=action.include,
                    exclude=action.exclude)


def _absolute(path: str) -> str:
    return path if path.startswith("/") else "/" + path


def source_key(vertex: Vertex, identity: str) -> str:
    """The key of a source vertex whose worker-reported pinned identity is ``identity``."""
    op = vertex.op
    if isinstance(op, SourceOp) and op.identifier.startswith(IMAGE_SCHEME):
        return _digest([KEY_VERSION, "source", IMAGE_SCHEME, _plain(op)["attrs"],
                        _platform(vertex), identity])
    return _digest([KEY_VERSION, "source", _op_fields(vertex), _platform(vertex), identity])


def cache_key(vertex: Vertex, input_keys: Sequence[str],
              checksums: Mapping[ContentRead, str] | None = None) -> str:
    """The key of a non-source vertex from its inputs' keys (in order) and the content
    checksums of its ``content_reads`` (an input with checksums is keyed by them)."""
    by_input: dict[int, list[list[Any]]] = {}
    for read, checksum in (checksums or {}).items():
        by_input.setdefault(read.index, []).append([_plain(read.selector), checksum])
    material: list[Any] = []
    for index, key in enumerate(input_keys):
        if index in by_input:
            material.append(["content", sorted(by_input[index], key=_pack)])
        else:
            material.append(["key", key])
    return _digest([KEY_VERSION, vertex.op.kind, _op_fields(vertex), _platform(vertex),
                    material])


def _op_fields(vertex: Vertex) -> Any:
    fields = _plain(vertex.op, for_digest=True)
    fields.pop("kind", None)
    if "extra_hosts" in fields:  # the names, not the addresses, as BuildKit's exec key
        fields["extra_hosts"] = [[name, ""] for name, _ in fields["extra_hosts"]]
    return fields


def _platform(vertex: Vertex) -> Any:
    return None if vertex.platform is None else _plain(vertex.platform)


def _digest(material: list[Any]) -> str:
    return "sha256:" + hashlib.sha256(_pack(material)).hexdigest()


# --- wire forms (a selector crosses to the worker that checksums it) ---------------------

def selector_to_wire(selector: Selector) -> dict[str, Any]:
    return {f.name: getattr(selector, f.name) for f in dataclasses.fields(selector)}


def selector_from_wire(data: Mapping[str, Any]) -> Selector:
    try:
        return Selector(path=str(data["path"]), wildcard=bool(data["wildcard"]),
                        follow_symlinks=bool(data["follow_symlinks"]),
                        include=tuple(map(str, data["include"])),
                        exclude=tuple(map(str, data["exclude"])))
    except (KeyError, TypeError) as err:
        raise GraphError(f"malformed selector on the wire: {err}",
                         hint="use the same dockyard version on every node") from None
