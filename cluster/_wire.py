"""The frames a client and the dockyard service exchange over the websocket: msgpack maps,
versioned, one frame per websocket binary message.

Every frame is ``{"v": WIRE_VERSION, "kind": <kind>, "id": <request id>, ...}``::

    client -> service   request   {method, params}     start a call (id chosen by the client)
                        cancel    {}                   stop call ``id`` (Ctrl-C)
    service -> client   event     {event}              progress of call ``id`` (a progress event
                                                       map, scheduler/_progress.py)
                        response  {result}             call ``id`` finished
                        failure   {error, message, hint, details}
                                                       call ``id`` failed with a DockyardError

A call ends with exactly one ``response`` or ``failure``; ``event`` frames come before it.
A frame of another version, or one that is not such a map, raises ``WireError``: the peer
speaks another dockyard version.  Secrets never travel in frames (the session channel
serves them on demand; see DESIGN.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

import msgpack

from scheduler import _errors
from scheduler._errors import DockyardError, ServiceError

__all__ = [
    "WIRE_VERSION", "Cancel", "EventFrame", "Failure", "Frame", "Request", "Response",
    "WireError", "decode_frame", "encode_frame", "error_from_failure", "failure_from_error",
]

WIRE_VERSION = 1
MAX_FRAME_BYTES = 64 * 1024 * 1024  # larger payloads (contexts, blobs) never travel as one frame


class WireError(ServiceError):
    """A frame that cannot be decoded: another dockyard version, or not a dockyard peer."""


@dataclass(frozen=True, slots=True)
class Request:
    """Start call ``id``: ``method`` with ``params`` (a msgpack-able map)."""

    id: int
    method: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Cancel:
    """Stop call ``id``; the service answers with a ``failure`` (or nothing if it ended)."""

    id: int


@dataclass(frozen=True, slots=True)
class EventFrame:
    """One progress event of call ``id``, in its wire form (``event_to_wire``)."""

    id: int
    event: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Response:
    """Call ``id`` finished with ``result`` (msgpack-able)."""

    id: int
    result: Any = None


@dataclass(frozen=True, slots=True)
class Failure:
    """Call ``id`` failed: ``error`` names a class of the error tree, ``details`` holds the
    attributes that class takes besides message and hint (vertex, exit_code, ...)."""

    id: int
    error: str
    message: str
    hint: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


Frame = Union[Request, Cancel, EventFrame, Response, Failure]  # noqa: UP007

_KINDS: dict[str, type[Any]] = {
    "request": Request, "cancel": Cancel, "event": EventFrame, "response": Response,
    "failure": Failure,
}
_NAMES: dict[type[Any], str] = {cls: name for name, cls in _KINDS.items()}

# The fields of each frame and the types they must have on the wire.
_FIELDS: dict[type[Any], dict[str, tuple[type, ...]]] = {
    Request: {"id": (int,), "method": (str,), "params": (dict,)},
    Cancel: {"id": (int,)},
    EventFrame: {"id": (int,), "event": (dict,)},
    Response: {"id": (int,), "result": (object,)},
    Failure: {"id": (int,), "error": (str,), "message": (str,), "hint": (str, type(None)),
              "details": (dict,)},
}


def encode_frame(frame: Frame) -> bytes:
    """``frame`` as one msgpack message."""
    body = {name: getattr(frame, name) for name in _FIELDS[type(frame)]}
    message = {"v": WIRE_VERSION, "kind": _NAMES[type(frame)]} | body
    packed: bytes = msgpack.packb(message, use_bin_type=True)
    return packed


def decode_frame(data: bytes) -> Frame:
    """The frame in ``data``; anything that is not a frame of this version is a ``WireError``."""
    message = _unpack(data)
    if message.get("v") != WIRE_VERSION:
        raise WireError(f"a frame of wire version {message.get('v')!r} (this dockyard speaks "
                        f"version {WIRE_VERSION})",
                        hint="use the same dockyard version on the client and the service")
    cls = _KINDS.get(message.get("kind"))  # type: ignore[arg-type]
    if cls is None:
        raise WireError(f"a frame of unknown kind {message.get('kind')!r}")
    return _build(cls, {k: v for k, v in message.items() if k not in ("v", "kind")})


def _unpack(data: bytes) -> dict[str, Any]:
    if len(data) > MAX_FRAME_BYTES:
        raise WireError(f"a frame of {len(data)} bytes (at most {MAX_FRAME_BYTES})")
    try:
        message = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise WireError(f"a frame that is not msgpack: {exc}") from None
    if not isinstance(message, dict):
        raise WireError(f"a frame that is not a map but {type(message).__name__}")
    return message


def _build(cls: type[Any], fields: dict[str, Any]) -> Frame:
    expected = _FIELDS[cls]
    unknown = sorted(str(name) for name in set(fields) - set(expected))
    if unknown:
        raise WireError(f"a {_NAMES[cls]!r} frame with unknown field {unknown[0]!r}")
    for name, value in fields.items():
        if not isinstance(value, expected[name]) or (isinstance(value, bool) and
                                                     bool not in expected[name]):
            raise WireError(f"a {_NAMES[cls]!r} frame whose {name!r} is "
                            f"{type(value).__name__}")
    try:
        frame: Frame = cls(**fields)
    except TypeError:
        missing = sorted(set(expected) - set(fields))
        raise WireError(f"a {_NAMES[cls]!r} frame without {missing[0]!r}") from None
    return frame


# --- errors across the wire ------------------------------------------------------------

# The keyword attributes each error class takes besides message and hint.
_DETAILS: dict[str, tuple[str, ...]] = {
    "DockerfileError": ("filename", "line", "column", "source_line"),
    "SolveError": ("vertex", "location"),
    "WorkerLost": ("vertex", "location"),
    "ExecError": ("exit_code", "output_tail", "vertex", "location"),
}


def failure_from_error(call_id: int, error: DockyardError) -> Failure:
    """The ``failure`` frame that carries ``error`` to the client."""
    name = type(error).__name__
    if getattr(_errors, name, None) is not type(error):
        name = _nearest_tree_class(type(error)).__name__
    details = {key: getattr(error, key) for key in _DETAILS.get(name, ())}
    return Failure(call_id, name, error.message, error.hint, details)


def _nearest_tree_class(cls: type[DockyardError]) -> type[DockyardError]:
    """The closest ancestor of ``cls`` that is part of the public error tree."""
    for base in cls.__mro__:
        if getattr(_errors, base.__name__, None) is base and issubclass(base, DockyardError):
            found: type[DockyardError] = base
            return found
    return DockyardError


def error_from_failure(failure: Failure) -> DockyardError:
    """The ``DockyardError`` a ``failure`` frame describes (a ``ServiceError`` for a class
    this dockyard does not know)."""
    cls = getattr(_errors, failure.error, None)
    if not (isinstance(cls, type) and issubclass(cls, DockyardError)):
        return ServiceError(f"{failure.error}: {failure.message}", hint=failure.hint)
    allowed = _DETAILS.get(failure.error, ())
    details = {key: value for key, value in failure.details.items() if key in allowed}
    try:
        error: DockyardError = cls(failure.message, hint=failure.hint, **details)
    except TypeError:
        error = cls(failure.message, hint=failure.hint)
    return error

