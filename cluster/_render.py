"""Progress rendering: the client turns progress events (scheduler/_progress.py) into what
the user sees, as ``--progress`` asks.

- ``plain``: BuildKit's plain printer, line for line: each vertex numbered ``#N`` in order
  of first news, a header ``#N <name>`` when the output switches to it (a blank line
  between blocks, ``#N ...`` when a vertex is left unfinished), output lines as
  ``#N <seconds since start> <line>`` (3 decimals under 10 s, 2 under 100 s, else 1),
  sub-progress as ``#N <id> <current> / <total> done``, and ``#N CACHED``,
  ``#N DONE 1.2s``, ``#N ERROR: <error>`` or ``#N CANCELED`` at the end.
- ``tty``: a rich live view (one line per vertex, the last output lines of running ones).
- ``rawjson``: one JSON object per event and line, in the shape of BuildKit's
  ``client.SolveStatus`` (``vertexes``, ``statuses``, ``logs``, ``warnings``; RFC 3339
  times, ``[]byte`` fields as base64, empty fields left out as Go's ``omitempty`` does),
  so what reads BuildKit's stream reads ours.
- ``quiet``: nothing.  ``auto``: ``tty`` when the stream is a terminal, else ``plain``;
  ``tty`` on a stream that is no terminal is ``plain`` too.

Build-check warnings (``VertexWarning``) show in their vertex's block as ``#N WARN:
<short>`` (plain) and are summarised after the progress as buildx does (``N warnings
found (use docker --debug to expand):`` and `` - <short>`` each), except in quiet and
rawjson.  Warnings of no vertex (``dockyard.scheduler._progress.warning``, e.g. an unreachable
cache) print once each as ``WARNING: <text>`` lines after the progress (plain, tty and
quiet); rawjson gives them as ``warnings`` entries without a vertex.

Renderers only read events; events never carry secret values (see scheduler/_progress.py),
so nothing here can print one.
"""

from __future__ import annotations

import base64
import json
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TextIO

from dockyard.scheduler._errors import UsageError
from dockyard.scheduler._progress import (
    Event,
    StatusUpdate,
    VertexCached,
    VertexCompleted,
    VertexFailed,
    VertexLog,
    VertexStarted,
    VertexWarning,
    warning_of,
)

__all__ = [
    "FAILED_TO_SOLVE", "MODES", "PlainRenderer", "QuietRenderer", "RawJsonRenderer", "Renderer",
    "TtyRenderer", "error_prefix", "make_renderer", "rfc3339", "source_excerpt",
]

MODES = ("auto", "plain", "tty", "rawjson", "quiet")

#: The note (``BaseException.add_note``) that marks an error as the build's own failure:
#: the CLI reports it as buildx does, ``ERROR: failed to solve: <error>``.
FAILED_TO_SOLVE = "dockyard: the build failed to solve"


def error_prefix(error: BaseException) -> str:
    """How the CLI begins the report of ``error``."""
    failed = FAILED_TO_SOLVE in getattr(error, "__notes__", ())
    return "ERROR: failed to solve: " if failed else "error: "

Clock = Callable[[], float]


class Renderer(Protocol):
    """Shows events as they come (``emit``) and finishes the display (``close``: the
    ``trailer`` text, e.g. a failed step's output, goes before the warnings' summary)."""

    def emit(self, event: Event) -> None: ...

    def close(self, trailer: str = "") -> None: ...


def make_renderer(mode: str, stream: TextIO, *, clock: Clock = time.time,
                  debug: bool = False, source: bytes = b"") -> Renderer:
    """The renderer for ``--progress=mode`` writing to ``stream`` (the user's stderr);
    ``debug`` (``-D``) expands the build checks' summary, quoting ``source`` (the
    Dockerfile)."""
    if mode in ("auto", "tty"):  # a live view needs a terminal to draw on
        mode = "tty" if _is_terminal(stream) else "plain"
    if mode == "plain":
        return PlainRenderer(stream, clock=clock, warnings=_Warnings(debug=debug, source=source))
    if mode == "rawjson":
        return RawJsonRenderer(stream, clock=clock)
    if mode == "quiet":
        return QuietRenderer(stream)
    if mode == "tty":
        return TtyRenderer(stream, clock=clock, warnings=_Warnings(debug=debug, source=source))
    raise UsageError(f"invalid progress mode {mode!r}",
                     hint=f"use one of: {', '.join(MODES)}")


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or fake stream
        return False


def source_excerpt(lines: Sequence[str], start: int, end: int) -> list[str]:
    """BuildKit's source excerpt (solver/errdefs Source.Print): the lines of the range
    marked ``>>>``, with context, between two rules."""
    end = min(max(end, start), len(lines))
    first, last, pad = start, end, (4 if start == end else 2)
    count = 0
    while count < pad:
        if first > 1:
            first, count = first - 1, count + 1
        if last != len(lines):
            last, count = last + 1, count + 1
        count += 1
    rows = [f" {i:3d} | {'>>>' if start <= i <= end else '   '} {lines[i - 1]}"
            for i in range(first, last + 1)]
    return ["--------------------", *rows, "--------------------"]


class _Warnings:
    """The build's warnings, printed once each by ``close``: those of no vertex as
    ``WARNING:`` lines, the build checks' (``VertexWarning``) in buildx's summary; with
    ``debug`` (``-D``) each check expanded as buildx expands it: its description, its
    documentation and its place in ``source`` (the Dockerfile)."""

    def __init__(self, *, checks: bool = True, debug: bool = False, source: bytes = b""
                 ) -> None:
        self._texts: dict[str, None] = {}  # in order of arrival, once each
        # build checks by short text, in order of arrival, once each
        self._checks: dict[str, VertexWarning] = {}
        self._show_checks = checks  # whether the summary of the build checks is printed
        self._debug = debug
        self._source = source.decode("utf-8", "replace").replace("\r\n", "\n").split("\n")

    def add(self, event: Event) -> bool:
        """Keep ``event`` if it is a warning of no vertex; whether it was."""
        if isinstance(event, VertexWarning):
            self._checks.setdefault(event.short, event)
            return False
        text = warning_of(event)
        if text is None:
            return False
        self._texts.setdefault(text)
        return True

    def write(self, stream: TextIO | None, *, blank: bool) -> None:
        if stream is None:
            return
        if self._texts:
            stream.write(("\n" if blank else "") + "".join(f"WARNING: {text}\n"
                                                          for text in self._texts))
        if self._checks and self._show_checks:
            count = len(self._checks)
            found = "1 warning found" if count == 1 else f"{count} warnings found"
            expand = "" if self._debug else " (use docker --debug to expand)"
            stream.write(f"\n {found}{expand}:\n"
                         + "".join(map(self._check, self._checks.values())))
        stream.flush()

    def _check(self, check: VertexWarning) -> str:
        if not self._debug:
            return f" - {check.short}\n"
        lines = [f" - {check.short}", *([check.detail] if check.detail else []),
                 *([f"More info: {check.url}"] if check.url else [])]
        if check.filename and 1 <= check.line <= len(self._source):
            lines += [f"{check.filename}:{check.line}",
                      *source_excerpt(self._source, check.line, check.line)]
        return "\n".join(lines) + "\n\n"


class QuietRenderer:
    """``--progress=quiet``: shows nothing but the warnings of no vertex (on ``stream``);
    buildx prints no build-check summary in quiet mode."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._warnings = _Warnings(checks=False)

    def emit(self, event: Event) -> None:
        self._warnings.add(event)

    def close(self, trailer: str = "") -> None:
        if trailer and self._stream is not None:
            self._stream.write(trailer)
        self._warnings.write(self._stream, blank=False)


# --- rawjson ---------------------------------------------------------------------------


def rfc3339(when: float) -> str:
    """Unix seconds as Go's JSON of a ``time.Time`` (RFC 3339, UTC, microseconds)."""
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class RawJsonRenderer:
    """``--progress=rawjson``: each event as one BuildKit ``SolveStatus`` JSON line."""

    def __init__(self, stream: TextIO, *, clock: Clock = time.time) -> None:
        self._stream = stream
        self._clock = clock
        self._names: dict[str, str] = {}  # vertex digest -> its name, once known
        self._started: dict[str, float] = {}  # vertex digest -> when it started
        self._status_started: dict[tuple[str, str], float] = {}  # (vertex, id) -> first news

    def emit(self, event: Event) -> None:
        status = self._solve_status(event, self._clock())
        self._stream.write(json.dumps(status, separators=(",", ":")) + "\n")
        self._stream.flush()

    def close(self, trailer: str = "") -> None:
        if trailer:
            self._stream.write(trailer)
        self._stream.flush()

    def _solve_status(self, event: Event, now: float) -> dict[str, Any]:
        text = warning_of(event)
        if text is not None:  # a warning of no vertex: BuildKit's vertex is omitempty
            return {"warnings": [{"level": 1, "short": _b64(text.encode())}]}
        if isinstance(event, VertexLog):
            return {"logs": [{"vertex": event.vertex, "stream": event.stream,
                              "data": _b64(event.data), "timestamp": rfc3339(now)}]}
        if isinstance(event, StatusUpdate):
            return {"statuses": [self._status(event, now)]}
        if isinstance(event, VertexWarning):
            return {"warnings": [_vertex_warning(event)]}
        return {"vertexes": [self._vertex(event, now)]}

    def _status(self, event: StatusUpdate, now: float) -> dict[str, Any]:
        started = self._status_started.setdefault((event.vertex, event.id), now)
        found: dict[str, Any] = {"id": event.id, "vertex": event.vertex}
        if event.total:
            found["total"] = event.total
        found |= {"current": event.current, "timestamp": rfc3339(now),
                  "started": rfc3339(started)}
        if event.done:
            found["completed"] = rfc3339(now)
        return found

    def _vertex(self, event: VertexStarted | VertexCached | VertexCompleted | VertexFailed,
                now: float) -> dict[str, Any]:
        if event.name:
            self._names.setdefault(event.vertex, event.name)
        found: dict[str, Any] = {"digest": event.vertex}
        name = self._names.get(event.vertex, "")
        if name:
            found["name"] = name
        if isinstance(event, VertexStarted):
            self._started[event.vertex] = event.started
            found["started"] = rfc3339(event.started)
            return found
        default = now - event.duration if isinstance(event, VertexCompleted) else now
        started = self._started.get(event.vertex, default)
        found |= {"started": rfc3339(started), "completed": rfc3339(now)}
        if isinstance(event, VertexCached):
            found["cached"] = True
        elif isinstance(event, VertexFailed):  # BuildKit's text for a cancelled step
            found["error"] = "context canceled" if event.cancelled else event.error
        return found


def _vertex_warning(event: VertexWarning) -> dict[str, Any]:
    found: dict[str, Any] = {"vertex": event.vertex, "level": event.level,
                             "short": _b64(event.short.encode())}
    if event.detail:
        found["detail"] = [_b64(event.detail.encode())]
    if event.url:
        found["url"] = event.url
    if event.filename:
        found["sourceInfo"] = {"filename": event.filename}
        if event.line:
            found["range"] = [{"start": {"line": event.line}, "end": {"line": event.line}}]
    return found


# --- plain -----------------------------------------------------------------------------


def format_bytes(count: int) -> str:
    """A byte count as BuildKit prints it (decimal units, 2 decimals from 1 kB)."""
    value = float(count)
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(value) < 1000 or unit == "PB":
            return f"{count}B" if unit == "B" else f"{value:.2f}{unit}"
        value /= 1000
    raise AssertionError("unreachable")


def _amount(update: StatusUpdate) -> str:
    """`` current / total`` of a sub-step in bytes, `` current`` without a total, or ""."""
    if update.total:
        return f" {format_bytes(update.current)} / {format_bytes(update.total)}"
    if update.current:
        return f" {format_bytes(update.current)}"
    return ""


def format_offset(seconds: float) -> str:
    """Seconds since a vertex started, as BuildKit prefixes output lines."""
    seconds = max(seconds, 0.0)
    precision = 3 if seconds < 10 else 2 if seconds < 100 else 1
    return f"{seconds:.{precision}f}"


@dataclass
class _Vertex:
    """What the plain printer knows of one vertex."""

    index: int
    name: str = ""
    started: float | None = None  # unix time of VertexStarted, None before it
    partial: bytes = b""  # output after the last newline, not printed yet
    status: dict[str, tuple[int, float]] = field(default_factory=dict)  # id -> last shown


_MIN_PROGRESS = 0.05  # a status line is shown again after 5 % more progress...
_MIN_INTERVAL = 5.0  # ...or 5 s later, as BuildKit's printer does


class PlainRenderer:
    """``--progress=plain``: BuildKit's plain text, written as events arrive."""

    def __init__(self, stream: TextIO, *, clock: Clock = time.time,
                 warnings: _Warnings | None = None) -> None:
        self._stream = stream
        self._clock = clock
        self._vertices: dict[str, _Vertex] = {}  # digest -> state, in order of first news
        self._current: str | None = None  # the vertex whose block is open, None between
        self._blocks = 0  # blocks printed so far (a blank line goes before all but the first)
        self._warnings = warnings or _Warnings()

    def emit(self, event: Event) -> None:
        if self._warnings.add(event):
            return
        vertex = self._vertex(event.vertex, getattr(event, "name", ""))
        if isinstance(event, VertexStarted):
            vertex.started = event.started
        self._switch(event.vertex, vertex)
        if isinstance(event, VertexLog):
            self._log(vertex, event.data)
        elif isinstance(event, VertexWarning):
            self._flush_partial(vertex)
            self._write(vertex, f"WARN: {event.short}")
        elif isinstance(event, StatusUpdate):
            self._status(vertex, event)
        elif isinstance(event, VertexCached | VertexCompleted | VertexFailed):
            self._finish(vertex, event)
        self._stream.flush()

    def close(self, trailer: str = "") -> None:
        for vertex in self._vertices.values():
            self._flush_partial(vertex)
        self._stream.write(trailer)
        self._warnings.write(self._stream, blank=self._blocks > 0 and not trailer)
        self._stream.flush()

    def _vertex(self, digest: str, name: str) -> _Vertex:
        vertex = self._vertices.get(digest)
        if vertex is None:
            vertex = self._vertices[digest] = _Vertex(len(self._vertices) + 1)
        if name and not vertex.name:
            vertex.name = name
        return vertex

    def _write(self, vertex: _Vertex, text: str) -> None:
        self._stream.write(f"#{vertex.index} {text}\n")

    def _switch(self, digest: str, vertex: _Vertex) -> None:
        """Open ``vertex``'s block unless it is the open one."""
        if digest == self._current:
            return
        if self._current is not None:
            left = self._vertices[self._current]
            self._flush_partial(left)
            self._stream.write(f"#{left.index} ...\n")
        if self._blocks:
            self._stream.write("\n")
        self._blocks += 1
        self._write(vertex, vertex.name or digest)
        self._current = digest

    def _log(self, vertex: _Vertex, data: bytes) -> None:
        *lines, rest = (vertex.partial + data).split(b"\n")
        vertex.partial = rest
        for line in lines:
            self._log_line(vertex, line)

    def _log_line(self, vertex: _Vertex, line: bytes) -> None:
        offset = self._clock() - vertex.started if vertex.started is not None else 0.0
        self._write(vertex, f"{format_offset(offset)} {line.decode('utf-8', 'replace')}")

    def _flush_partial(self, vertex: _Vertex) -> None:
        if vertex.partial:
            line, vertex.partial = vertex.partial, b""
            self._log_line(vertex, line)

    def _status(self, vertex: _Vertex, update: StatusUpdate) -> None:
        now = self._clock()
        last = vertex.status.get(update.id)
        if last is not None and not update.done:
            progress = (update.current - last[0]) / update.total if update.total else 0.0
            if progress < _MIN_PROGRESS and now - last[1] < _MIN_INTERVAL:
                return
        vertex.status[update.id] = (update.current, now)
        self._write(vertex, f"{update.id}{_amount(update)}{' done' if update.done else ''}")

    def _finish(self, vertex: _Vertex, event: VertexCached | VertexCompleted | VertexFailed
                ) -> None:
        self._flush_partial(vertex)
        if isinstance(event, VertexCached):
            self._write(vertex, "CACHED")
        elif isinstance(event, VertexCompleted):
            self._write(vertex, f"DONE {event.duration:.1f}s")
        elif event.cancelled:
            self._write(vertex, "CANCELED")
        else:
            self._write(vertex, f"ERROR: {event.error}")
        self._current = None


# --- tty -------------------------------------------------------------------------------


@dataclass
class _Row:
    """One vertex in the live view."""

    name: str
    started: float | None = None  # unix time it started executing
    ended: float | None = None  # unix time of its last news (cached/done/failed)
    state: str = ""  # "", "CACHED", "DONE", "ERROR" or "CANCELED"
    error: str = ""
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=_TAIL_LINES))
    warnings: list[str] = field(default_factory=list)  # its build checks' short texts
    statuses: dict[str, str] = field(default_factory=dict)  # sub-step id -> its amount


_TAIL_LINES = 6  # output lines shown under a running vertex


class TtyRenderer:
    """``--progress=tty``: a rich live view redrawn a few times a second, left on screen
    (final state, errors included) by ``close``."""

    def __init__(self, stream: TextIO, *, clock: Clock = time.time,
                 width: int | None = None, warnings: _Warnings | None = None) -> None:
        from rich.console import Console
        from rich.live import Live

        self._clock = clock
        self._began = clock()  # when the view opened: the "Building N.Ns" counter
        self._rows: dict[str, _Row] = {}  # digest -> row, in order of first news
        self._stream = stream
        self._warnings = warnings or _Warnings()
        console = Console(file=stream, force_terminal=True, highlight=False, width=width)
        self._live = Live(get_renderable=self._view, console=console, refresh_per_second=8,
                          transient=False, redirect_stdout=False, redirect_stderr=False)
        self._live.start()

    def emit(self, event: Event) -> None:
        if self._warnings.add(event):
            return
        row = self._rows.get(event.vertex)
        if row is None:
            row = self._rows[event.vertex] = _Row(getattr(event, "name", "") or event.vertex)
        if isinstance(event, VertexStarted):
            row.started = event.started
        elif isinstance(event, VertexLog):
            lines = event.data.decode("utf-8", "replace").splitlines()
            row.tail.extend(line for line in lines if line)
        elif isinstance(event, VertexWarning):
            row.warnings.append(event.short)
        elif isinstance(event, StatusUpdate):  # its sub-steps, as BuildKit's " => => " rows
            row.statuses[event.id] = _amount(event)
        elif isinstance(event, VertexCached):
            row.state, row.ended = "CACHED", self._clock()
        elif isinstance(event, VertexCompleted):
            row.state, row.ended = "DONE", self._clock()
            row.started = row.ended - event.duration
        elif isinstance(event, VertexFailed):
            row.state, row.ended = ("CANCELED" if event.cancelled else "ERROR"), self._clock()
            row.error = event.error

    def close(self, trailer: str = "") -> None:
        self._live.stop()
        self._stream.write(trailer)
        self._warnings.write(self._stream, blank=False)

    def _view(self) -> Any:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        now = self._clock()
        done = sum(1 for row in self._rows.values() if row.state)
        grid = Table.grid(expand=True)
        grid.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
        grid.add_column(justify="right", width=8)
        for row in self._rows.values():
            self._add_row(grid, row, now)
        title = Text(f"[+] Building {now - self._began:.1f}s ({done}/{len(self._rows)})",
                     style="bold blue" if done < len(self._rows) else "bold")
        return Group(title, grid)

    def _add_row(self, grid: Any, row: _Row, now: float) -> None:
        from rich.text import Text

        styles = {"": "blue", "CACHED": "blue", "DONE": "blue", "ERROR": "red",
                  "CANCELED": "yellow"}
        label = f" => {row.state + ' ' if row.state not in ('', 'DONE') else ''}{row.name}"
        took = "" if row.started is None else f"{(row.ended or now) - row.started:.1f}s"
        grid.add_row(Text(label, style=styles[row.state]), Text(took))
        for ident, amount in row.statuses.items():
            grid.add_row(Text(f" => => {ident}{amount}", style="blue"), Text(""))
        for short in row.warnings:
            grid.add_row(Text(f" => WARN: {short}", style="yellow"), Text(""))
        if row.state == "" or row.state == "ERROR":
            for line in row.tail:
                grid.add_row(Text(f" => => # {line}", style="dim"), Text(""))
        if row.error:
            grid.add_row(Text(f" => ERROR: {row.error}", style="red", no_wrap=False,
                              overflow="fold"), Text(""))
