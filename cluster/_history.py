"""Build records: what the service keeps of every build it ran, as ``buildx history``
reads BuildKit's (``dockyard history ls|inspect|logs|rm``, cluster/_history_cmd.py).

- ``BuildRecorder``: one build's record while it runs.  The coordinator (every build of
  the embedded service and of a ``dockyard serve`` cluster passes through it) hands it the
  request, each progress event of the build as it is emitted, the worker each vertex ran
  on, and the end (result, error or cancellation).  It keeps the events themselves (with
  the time each came), so ``history logs`` replays them through the same plain renderer
  as a build's own ``--progress=plain``, bounded by ``MAX_EVENT_BYTES`` per build.
- ``HistoryStore``: the records of one service, one msgpack file per build
  (``<root>/history/<id>.msgpack``, written atomically), with ``Retention`` (a count and an
  age, BuildKit's defaults: 50 records, 48 hours) applied whenever a record is written.

A record is plain, versioned data (``RECORD_VERSION``).  It holds what the build request
holds and what the build's progress showed, nothing else: build args (BuildKit keeps them
too: they are no place for secrets), secret and ssh *ids* (their values and sources stay
on the client and never reach the coordinator), the Dockerfile (at most
``MAX_DOCKERFILE_BYTES``), outputs and the result's metadata.  Logs are the progress
stream's: dockyard never echoes a secret into them (scheduler/_progress.py); a RUN that
prints its own secret is the user's output there, as in BuildKit's history.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from dockyard.scheduler._errors import UsageError
from dockyard.scheduler._progress import (
    Event,
    StatusUpdate,
    VertexCached,
    VertexCompleted,
    VertexFailed,
    VertexLog,
    VertexStarted,
    event_from_wire,
    event_to_wire,
    warning_of,
)

__all__ = ["AGE_ENV", "DEFAULT_MAX_AGE", "DEFAULT_MAX_RECORDS", "MAX_DOCKERFILE_BYTES",
           "MAX_EVENT_BYTES", "RECORDS_ENV", "RECORD_VERSION", "STATUSES", "BuildRecorder",
           "HistoryStore", "Retention", "answer", "history_settings", "resolve", "summary_of",
           "vertices_of"]

RECORD_VERSION = 1
#: BuildKit's history defaults (buildkitd.toml ``[history]``: ``maxEntries = 50``,
#: ``maxAge = 172800`` seconds).
DEFAULT_MAX_RECORDS = 50
DEFAULT_MAX_AGE = 48 * 3600.0
MAX_DOCKERFILE_BYTES = 256 * 1024  # a longer Dockerfile is kept cut, and marked so
MAX_EVENT_BYTES = 4 * 1024 * 1024  # one build's kept progress (log bytes count fully)
RECORDS_ENV = "DOCKYARD_HISTORY_MAX_RECORDS"  # the embedded service's retention
AGE_ENV = "DOCKYARD_HISTORY_MAX_AGE"
_EVENT_OVERHEAD = 64  # what an event counts besides its log bytes
STATUSES = ("running", "completed", "error", "canceled")  # buildx's, lower case
_ID = re.compile(r"^[0-9a-f]{32}$")  # a build id: a uuid4's hex (the metadata's ref suffix)
_RECORD_SUFFIX = ".msgpack"
_RUNNING_ON = "running on "  # a status naming a vertex's worker (cluster/_dispatch.py)


@dataclass(frozen=True, slots=True)
class Retention:
    """How many records a service keeps, and for how long (seconds); 0: no limit."""

    max_records: int = DEFAULT_MAX_RECORDS
    max_age: float = DEFAULT_MAX_AGE

    def to_wire(self) -> dict[str, Any]:
        return {"max_records": self.max_records, "max_age": self.max_age}

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> Retention:
        return cls(int(wire.get("max_records", DEFAULT_MAX_RECORDS)),
                   float(wire.get("max_age", DEFAULT_MAX_AGE)))

    @classmethod
    def parse(cls, max_records: str | None, max_age: str | None, *,
              where: tuple[str, str] = (RECORDS_ENV, AGE_ENV)) -> Retention:
        """From text (``--history-max-records``/``--history-max-age`` or the environment's
        ``where``); None or "" keeps the default.  An age is a duration (``48h``, ``90m``),
        0 for no limit."""
        from ._gc_cmd import parse_duration  # noqa: PLC0415 -- a CLI-side parser

        records = DEFAULT_MAX_RECORDS
        if max_records:
            if not max_records.isdigit():
                raise UsageError(f"invalid {where[0]} {max_records!r}: not a number of "
                                 "records", hint="give a count, 0 for no limit")
            records = int(max_records)
        age = DEFAULT_MAX_AGE
        if max_age:
            age = 0.0 if max_age == "0" else parse_duration(max_age, where[1])
        return cls(records, age)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Retention:
        return cls.parse(environ.get(RECORDS_ENV), environ.get(AGE_ENV))


def history_settings(root: Path, retention: Retention) -> dict[str, Any]:
    """The coordinator's ``history`` argument for a service of ``root``."""
    return {"directory": str(root / "history"), **retention.to_wire()}


class BuildRecorder:
    """One build's record as it runs; ``record()`` is its wire map at any time."""

    def __init__(self, build_id: str, request: Mapping[str, Any], started: float, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.build_id = build_id
        self._clock = clock  # unix time now: when an event came, when the build ended
        self._record: dict[str, Any] = {
            "version": RECORD_VERSION, "id": build_id, "status": "running",
            "created": started, "completed": None, "error": None,
            **_request_fields(request)}
        self.events: list[list[Any]] = []  # [unix time, event wire map], in order
        self._event_bytes = 0  # what ``events`` counts towards MAX_EVENT_BYTES
        self.truncated = False  # whether events were left out past MAX_EVENT_BYTES
        self.nodes: dict[str, str] = {}  # vertex digest -> the worker that ran it

    @property
    def status(self) -> str:
        return str(self._record["status"])

    def observe(self, event: Event) -> None:
        """Keep ``event`` (never raises: a record must not break a build)."""
        size = _EVENT_OVERHEAD + (len(event.data) if isinstance(event, VertexLog) else 0)
        if self._event_bytes + size > MAX_EVENT_BYTES and not _ends_a_vertex(event):
            self.truncated = True
            return
        self._event_bytes += size
        self.events.append([self._clock(), event_to_wire(event)])

    def finish(self, status: str, *, result: Any = None, error: str | None = None) -> None:
        self._record.update(status=status, completed=self._clock(), error=error)
        metadata = result.get("metadata") if isinstance(result, Mapping) else None
        if isinstance(metadata, Mapping):
            self._record["metadata"] = {str(k): v for k, v in metadata.items()
                                        if isinstance(v, str | int | float | bool)}
        statistics = result.get("statistics") if isinstance(result, Mapping) else None
        if isinstance(statistics, Mapping):
            self._record["statistics"] = dict(statistics)

    def record(self) -> dict[str, Any]:
        return {**self._record, "events": list(self.events), "truncated": self.truncated,
                "vertices": vertices_of(self.events, self.nodes)}


def _ends_a_vertex(event: Event) -> bool:
    return isinstance(event, VertexStarted | VertexCached | VertexCompleted | VertexFailed)


def _request_fields(request: Mapping[str, Any]) -> dict[str, Any]:
    """What a record keeps of a build request: never a secret's source or value."""
    wire = request.get("options")
    options: Mapping[str, Any] = wire if isinstance(wire, Mapping) else {}
    dockerfile = request.get("dockerfile") or b""
    dockerfile = bytes(dockerfile) if isinstance(dockerfile, bytes | bytearray) else b""
    context = str(options.get("context") or "")
    target = options.get("target") or None
    name = os.path.basename(context.rstrip("/")) or context or "build"
    return {
        "name": f"{name} ({target})" if target else name,
        "context": context, "filename": str(options.get("filename") or "Dockerfile"),
        "dockerfile": dockerfile[:MAX_DOCKERFILE_BYTES],
        "dockerfile_size": len(dockerfile), "target": target,
        "platforms": [str(p) for p in options.get("platforms") or ()],
        "build_args": [[str(k), str(v)] for k, v in options.get("build_args") or ()],
        "secrets": [str(item[0]) for item in options.get("secrets") or ()],
        "ssh": [str(item[0]) for item in options.get("ssh") or ()],
        "outputs": [_output(item) for item in options.get("outputs") or ()],
        "tags": [str(t) for t in options.get("tags") or ()],
        "no_cache": bool(options.get("no_cache")),
    }


def _output(item: Any) -> dict[str, Any]:
    kind, _dest, names, push = (list(item) + [None] * 4)[:4]
    return {"type": str(kind), "names": [str(n) for n in names or ()], "push": bool(push)}


def vertices_of(events: Iterable[list[Any]], nodes: Mapping[str, str]) -> list[dict[str, Any]]:
    """Each vertex of a build's events, in order of first news (the plain progress's
    ``#N``): name, node, cached, started/completed (unix times), error."""
    found: dict[str, dict[str, Any]] = {}
    for when, wire in events:
        event = event_from_wire(wire)
        if warning_of(event) is not None:
            continue  # a warning of the build, no vertex (the plain printer numbers none)
        vertex = found.setdefault(event.vertex, {
            "index": len(found) + 1, "digest": event.vertex, "name": "",
            "node": nodes.get(event.vertex), "cached": False, "started": None,
            "completed": None, "error": None, "canceled": False})
        _note(vertex, event, float(when))
    return list(found.values())


def _note(vertex: dict[str, Any], event: Event, when: float) -> None:
    name = getattr(event, "name", "")
    if name and not vertex["name"]:
        vertex["name"] = name
    if isinstance(event, VertexStarted):
        vertex["started"] = event.started
    elif isinstance(event, VertexCached):
        vertex.update(cached=True, completed=when)
    elif isinstance(event, VertexCompleted):
        vertex["completed"] = when
        if vertex["started"] is None:
            vertex["started"] = when - event.duration
    elif isinstance(event, VertexFailed):
        vertex.update(completed=when, error=event.error, canceled=event.cancelled)
    elif isinstance(event, StatusUpdate) and event.id.startswith(_RUNNING_ON):
        vertex["node"] = vertex["node"] or event.id[len(_RUNNING_ON):]


def summary_of(record: Mapping[str, Any]) -> dict[str, Any]:
    """The fields ``history ls`` shows of a record."""
    vertices = record.get("vertices") or []
    return {"id": record["id"], "name": record.get("name", ""), "status": record["status"],
            "created": record["created"], "completed": record.get("completed"),
            "error": record.get("error"), "steps": len(vertices),
            "cached": sum(1 for v in vertices if v.get("cached"))}


class HistoryStore:
    """The build records under ``directory`` (created on first write)."""

    def __init__(self, directory: Path, retention: Retention = Retention()) -> None:
        self.directory = directory
        self.retention = retention

    def write(self, record: Mapping[str, Any]) -> list[str]:
        """Keep ``record`` (atomically), then prune: the ids removed by retention."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self._path(str(record["id"]))
        partial = path.with_name(f".{path.name}.{os.getpid()}.part")
        partial.write_bytes(msgpack.packb(dict(record), use_bin_type=True))
        os.replace(partial, path)
        return self.prune(keep=str(record["id"]))

    def records(self) -> list[dict[str, Any]]:
        """Every readable record, newest first (an unreadable file is passed over)."""
        found = []
        for path in self._files():
            record = self._read(path)
            if record is not None:
                found.append(record)
        return sorted(found, key=_newest, reverse=True)

    def prune(self, keep: str = "", now: float | None = None) -> list[str]:
        """Remove the records past the retention (never ``keep``, the one just written)."""
        now = time.time() if now is None else now
        limit, age = self.retention.max_records, self.retention.max_age
        removed = []
        for position, record in enumerate(self.records()):
            old = age > 0 and now - record["created"] > age
            if record["id"] != keep and (old or 0 < limit <= position):
                self._path(record["id"]).unlink(missing_ok=True)
                removed.append(record["id"])
        return removed

    def remove(self, ids: Iterable[str]) -> list[str]:
        removed = []
        for build_id in ids:
            path = self._path(build_id)
            if path.exists():
                path.unlink()
                removed.append(build_id)
        return removed

    def _files(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return [p for p in self.directory.iterdir()
                if p.suffix == _RECORD_SUFFIX and _ID.match(p.stem)]

    def _path(self, build_id: str) -> Path:
        if not _ID.match(build_id):
            raise UsageError(f"invalid build id {build_id!r}")
        return self.directory / f"{build_id}{_RECORD_SUFFIX}"

    @staticmethod
    def _read(path: Path) -> dict[str, Any] | None:
        with contextlib.suppress(OSError, ValueError, msgpack.ExtraData,
                                 msgpack.FormatError, msgpack.StackError):
            record = msgpack.unpackb(path.read_bytes(), raw=False)
            if isinstance(record, dict) and record.get("version") == RECORD_VERSION:
                return record
        return None


def _newest(record: Mapping[str, Any]) -> tuple[float, str]:
    """The sort key of records, newest first (reversed); equal times in a fixed order."""
    return (float(record["created"]), str(record["id"]))


def resolve(refs: Iterable[str], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records ``refs`` name (``records`` newest first): ``^N`` is the Nth before the
    most recent (``^0`` the most recent), anything else a unique id prefix."""
    chosen = []
    for ref in refs:
        chosen.append(_resolve_one(ref, records))
    return chosen


def _resolve_one(ref: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    if ref.startswith("^"):
        if not ref[1:].isdigit():
            raise UsageError(f"invalid build reference {ref!r}: ^N takes a number",
                             hint="^0 is the most recent build, ^1 the one before")
        offset = int(ref[1:])
        if offset >= len(records):
            raise UsageError(f"no build record {ref}: the service keeps {len(records)}",
                             hint="see 'dockyard history ls'")
        return records[offset]
    matches = [r for r in records if r["id"].startswith(ref.lower())] if ref else []
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UsageError(f"no build record {ref!r}", hint="see 'dockyard history ls'")
    raise UsageError(f"build reference {ref!r} names {len(matches)} records",
                     hint="give more characters of the build id")



def answer(store: HistoryStore, params: Mapping[str, Any],
           running: Iterable[Mapping[str, Any]] = ()) -> Any:
    """A ``history`` request over ``store`` and the records of the builds ``running``:
    ``{"op": "ls"}`` the summaries, newest first; ``{"op": "get", "ref"}`` one record
    (``^0``, the most recent, by default); ``{"op": "rm", "refs"}`` or ``{"op": "rm",
    "all": true}`` the ids removed (a running build's record is kept until it ends)."""
    busy = {str(r["id"]) for r in running}  # (one being written may be on disk too)
    stored = [r for r in store.records() if r["id"] not in busy]
    records = sorted([dict(r) for r in running] + stored,
                     key=_newest, reverse=True)
    op = params.get("op")
    if op == "ls":
        return [summary_of(record) for record in records]
    if op == "get":
        return resolve([str(params.get("ref") or "^0")], records)[0]
    if op == "rm":
        if params.get("all"):
            return store.remove([r["id"] for r in records if r["id"] not in busy])
        chosen = resolve([str(ref) for ref in params.get("refs") or ()], records)
        for record in chosen:
            if record["id"] in busy:
                raise UsageError(f"build {record['id']} is running: its record is kept "
                                 "until it ends", hint="remove it once the build has ended")
        return store.remove([r["id"] for r in chosen])
    raise UsageError(f"unknown history request {op!r}",
                     hint="use the same dockyard version on the client and the service")
