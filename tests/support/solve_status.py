"""A reader of BuildKit's progress stream (``--progress=rawjson``): one JSON object per
line in the shape of Go's ``client.SolveStatus`` (moby/buildkit client/graph.go).

Written from the schema, not from dockyard's renderer, so tests can check that what a
tool reading BuildKit's stream expects is what dockyard writes: every key must be one the
schema has, with the schema's JSON type (digests as ``sha256:<64 hex>``, times as RFC 3339,
``[]byte`` as base64); ``read_stream`` raises ``SchemaError`` on anything else.  It folds
the stream into one record per vertex as a consumer would (last news wins).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)")


class SchemaError(ValueError):
    """A line that is not a ``SolveStatus`` as BuildKit writes it."""


def _digest(value: Any) -> str:
    if not isinstance(value, str) or not _DIGEST.fullmatch(value):
        raise SchemaError(f"not a digest: {value!r}")
    return value


def _time(value: Any) -> datetime:
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise SchemaError(f"not an RFC 3339 time: {value!r}")
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _bytes(value: Any) -> bytes:
    if not isinstance(value, str):
        raise SchemaError(f"not base64 bytes: {value!r}")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        raise SchemaError(f"not base64 bytes: {value!r}") from None


def _typed(kind: type) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise SchemaError(f"not {kind.__name__}: {value!r}")
        return value
    return check


_STR, _INT, _BOOL = _typed(str), _typed(int), _typed(bool)

# Each object's keys and how to read them (Go's json tags of client/graph.go).
_VERTEX = {"digest": _digest, "inputs": lambda v: [_digest(d) for d in v], "name": _STR,
           "started": _time, "completed": _time, "cached": _BOOL, "error": _STR,
           "progressGroup": _typed(dict)}
_STATUS = {"id": _STR, "vertex": _digest, "name": _STR, "total": _INT, "current": _INT,
           "timestamp": _time, "started": _time, "completed": _time}
_LOG = {"vertex": _digest, "stream": _INT, "data": _bytes, "timestamp": _time}
_WARNING = {"vertex": _digest, "level": _INT, "short": _bytes,
            "detail": lambda v: [_bytes(d) for d in v], "url": _STR,
            "sourceInfo": _typed(dict), "range": _typed(list)}
_REQUIRED = {"vertexes": {"digest"}, "statuses": {"id", "current", "timestamp"},
             "logs": {"data", "timestamp"}}


def _object(value: Any, schema: Mapping[str, Callable[[Any], Any]], what: str
            ) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SchemaError(f"{what}: not an object: {value!r}")
    unknown = set(value) - set(schema)
    if unknown:
        raise SchemaError(f"{what}: keys BuildKit's schema lacks: {sorted(unknown)}")
    missing = _REQUIRED.get(what, set()) - set(value)
    if missing:
        raise SchemaError(f"{what}: lacks {sorted(missing)}")
    return {key: schema[key](item) for key, item in value.items()}


@dataclass
class Stream:
    """A whole stream, folded: vertices by digest (their fields merged in order), the
    statuses, logs and warnings in order."""

    vertexes: dict[str, dict[str, Any]] = field(default_factory=dict)
    statuses: list[dict[str, Any]] = field(default_factory=list)
    logs: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)

    def named(self, name: str) -> dict[str, Any]:
        """The vertex called ``name`` (KeyError when none is)."""
        return next(v for v in self.vertexes.values() if v.get("name") == name)


_PARTS = {"vertexes": _VERTEX, "statuses": _STATUS, "logs": _LOG, "warnings": _WARNING}


def read_stream(text: str) -> Stream:
    """Every line of ``text`` read as one ``SolveStatus``."""
    stream = Stream()
    for number, line in enumerate(text.splitlines(), 1):
        try:
            status = json.loads(line)
        except ValueError:
            raise SchemaError(f"line {number} is not JSON: {line[:80]!r}") from None
        if not isinstance(status, dict) or not status or set(status) - set(_PARTS):
            raise SchemaError(f"line {number} is not a SolveStatus: {line[:80]!r}")
        for part, items in status.items():
            if not isinstance(items, list) or not items:  # omitempty: never an empty list
                raise SchemaError(f"line {number}: {part} must be a non-empty list")
            for item in items:
                read = _object(item, _PARTS[part], part)
                if part == "vertexes":
                    stream.vertexes.setdefault(read["digest"], {}).update(read)
                else:
                    getattr(stream, part).append(read)
    return stream
