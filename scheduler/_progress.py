"""Progress events: what the solver (and the worker, through it) tells a build's watchers.

Plain frozen data, one type per kind of news, each naming its ``vertex`` by digest.  The
wire form (``to_wire``/``from_wire``) is a msgpack-able map ``{"version", "type", ...fields}``;
renderers (plain, tty, rawjson) live elsewhere and read only these types.

Secrets never appear in an event: vertex names show a secret's id only (the frontend's
``RUN --mount=type=secret,id=x``), error texts are built from the op and exit codes, and
a backend that emits ``VertexLog`` must not echo secret values it mounted (a RUN that
prints its own secret is the user's output, as in BuildKit; the worker masks nothing it
did not mount).  Nothing here reads the secret store.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, Union

from ._errors import ServiceError

__all__ = [
    "PROGRESS_VERSION", "Event", "EventSink", "ProgressError", "StatusUpdate", "VertexCached",
    "VertexCompleted", "VertexFailed", "VertexLog", "VertexStarted", "VertexWarning",
    "event_from_wire",
    "event_to_wire", "warning", "warning_of",
]

PROGRESS_VERSION = 1


class ProgressError(ServiceError):
    """A progress event on the wire that cannot be decoded (unknown version or type, wrong
    fields): the peer speaks another dockyard version."""


@dataclass(frozen=True, slots=True)
class VertexStarted:
    """A vertex began executing (``started``: unix time, seconds)."""

    vertex: str
    name: str
    started: float


@dataclass(frozen=True, slots=True)
class VertexCached:
    """A vertex's result came from the cache: it will not execute."""

    vertex: str
    name: str


@dataclass(frozen=True, slots=True)
class VertexCompleted:
    """A vertex finished executing after ``duration`` seconds."""

    vertex: str
    name: str
    duration: float


@dataclass(frozen=True, slots=True)
class VertexFailed:
    """A vertex failed (``error``: the user-facing text) or was cancelled because the build
    stopped (``cancelled``)."""

    vertex: str
    name: str
    error: str
    cancelled: bool = False


@dataclass(frozen=True, slots=True)
class VertexLog:
    """Output of a running vertex: ``stream`` 1 is stdout, 2 stderr; ``data`` raw bytes."""

    vertex: str
    stream: int
    data: bytes


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """Sub-progress of a vertex (``id`` like ``transferring context`` or a layer digest):
    ``current`` of ``total`` units (``total`` 0 when unknown), ``done`` when finished."""

    vertex: str
    id: str
    current: int = 0
    total: int = 0
    done: bool = False


@dataclass(frozen=True, slots=True)
class VertexWarning:
    """A finding about a vertex's input, as BuildKit's ``VertexWarning``: a build check
    (lint rule) on the build definition.  ``short`` is the one-line form (``Rule: message
    (line N)``), ``detail`` the rule's description, ``url`` its documentation, ``filename``
    and ``line`` where (``line`` 0: nowhere in particular); ``level`` BuildKit's (1)."""

    vertex: str
    short: str
    detail: str = ""
    url: str = ""
    filename: str = ""
    line: int = 0
    level: int = 1


Event = Union[VertexStarted, VertexCached, VertexCompleted, VertexFailed,  # noqa: UP007
              VertexLog, StatusUpdate, VertexWarning]

_TYPES: dict[str, type[Any]] = {
    "started": VertexStarted, "cached": VertexCached, "completed": VertexCompleted,
    "failed": VertexFailed, "log": VertexLog, "status": StatusUpdate,
    "vertex-warning": VertexWarning,
}
_NAMES: dict[type[Any], str] = {cls: name for name, cls in _TYPES.items()}


WARNING_PREFIX = "warning: "


def warning(source: str, text: str) -> StatusUpdate:
    """A warning about the build that belongs to no vertex (``source``: what it is about,
    e.g. ``cache``): a done ``StatusUpdate`` whose id is ``warning: <text>``."""
    return StatusUpdate(source, WARNING_PREFIX + text, done=True)


def warning_of(event: Event) -> str | None:
    """The text of a ``warning`` event, else None."""
    if isinstance(event, StatusUpdate) and event.id.startswith(WARNING_PREFIX):
        return event.id[len(WARNING_PREFIX):]
    return None


class EventSink(Protocol):
    """Where events go.  ``emit`` must not block (queue the event, do not render inline)."""

    def emit(self, event: Event) -> None: ...


def event_to_wire(event: Event) -> dict[str, Any]:
    """``event`` as a msgpack-able map."""
    fields = {f.name: getattr(event, f.name) for f in dataclasses.fields(event)}
    return {"version": PROGRESS_VERSION, "type": _NAMES[type(event)]} | fields


def event_from_wire(data: Mapping[str, Any]) -> Event:
    """Decode ``event_to_wire`` output; anything else raises ``ProgressError``."""
    if not isinstance(data, Mapping) or data.get("version") != PROGRESS_VERSION:
        raise ProgressError(f"progress event of an unknown version "
                            f"(this dockyard reads version {PROGRESS_VERSION})",
                            hint="use the same dockyard version on the client and the cluster")
    cls = _TYPES.get(data.get("type"))  # type: ignore[arg-type]
    if cls is None:
        raise ProgressError(f"unknown progress event type {data.get('type')!r}")
    fields = {k: v for k, v in data.items() if k not in ("version", "type")}
    event: Event = _build(cls, fields)
    return event


def _build(cls: type[Any], fields: dict[str, Any]) -> Any:
    hints = {f.name: f.type for f in dataclasses.fields(cls)}
    unknown = set(fields) - set(hints)
    if unknown:
        raise ProgressError(f"progress event {_NAMES[cls]!r} has unknown field "
                            f"{sorted(map(str, unknown))[0]!r}")
    required = {f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING}
    missing = sorted(required - set(fields))
    if missing:
        raise ProgressError(f"progress event {_NAMES[cls]!r} lacks field {missing[0]!r}")
    event = cls(**fields)
    _check_types(event)
    return event


_SCALARS: dict[str, tuple[type, ...]] = {
    "str": (str,), "float": (float, int), "int": (int,), "bool": (bool,), "bytes": (bytes,),
}


def _check_types(event: Any) -> None:
    for item in dataclasses.fields(event):
        value = getattr(event, item.name)
        allowed = _SCALARS[str(item.type)]
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise ProgressError(f"malformed progress event {_NAMES[type(event)]!r}: "
                                f"{item.name} must be {item.type}, got {type(value).__name__}")
