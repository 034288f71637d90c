"""``dockyard history ls|inspect|logs|rm``: the service's build records
(cluster/_history.py), as ``docker buildx history`` shows BuildKit's.

Each command sends one ``history`` call: to ``--endpoint`` (or ``--builder``,
``DOCKYARD_ENDPOINT``) when given, else to the root's local service when it runs; when it
does not, the records are read under the root itself (no service is started to read
them).  ``BUILD`` is a build id, a unique prefix of one, or ``^N``: the Nth build before
the most recent (``^0``, the default, is the most recent).

- ``ls``: ``BUILD ID  NAME  STATUS  CREATED AT  DURATION`` (buildx's columns), newest
  first, or ``--format json``.
- ``inspect``: the build's request (Dockerfile name, context, target, platforms, build
  args, secret ids), status and timings, outputs and result, its steps (each with the
  worker that ran it, cached or not, duration, error) and the Dockerfile; or ``--format
  json`` (the record without its progress events, the Dockerfile as text).
- ``logs``: the build's progress replayed through the plain (or rawjson) printer, with
  the times it had; ``--vertex N`` only step ``#N``'s lines.
- ``rm``: the records named, or ``--all``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, TextIO

from dockyard.scheduler._errors import UsageError
from dockyard.scheduler._progress import event_from_wire

from ._build_cmd import _settings, endpoint_of
from ._gc_cmd import ago
from ._history import HistoryStore, Retention, answer
from ._render import make_renderer
from ._service import connect_endpoint, connect_running

__all__ = ["format_duration", "format_inspect", "format_table", "history_call", "run_history"]

_COLUMNS = ("BUILD ID", "NAME", "STATUS", "CREATED AT", "DURATION")
_NAME_WIDTH = 80  # a step's name in inspect's table, cut past it (the logs have it whole)


def history_call(args: argparse.Namespace, params: dict[str, Any]) -> Any:
    """The ``history`` call's answer, from the endpoint, the running local service, or
    the root's records on disk."""
    endpoint = endpoint_of(args, os.environ)
    settings = _settings(os.environ)
    client = connect_endpoint(endpoint) if endpoint else connect_running(settings)
    if client is not None:
        with client:
            return client.call("history", params)
    store = HistoryStore(settings.root / "history", Retention.from_environ(os.environ))
    return answer(store, params)


def run_history(args: argparse.Namespace) -> int:
    command = args.history_command
    if command == "ls":
        summaries = history_call(args, {"op": "ls"})
        if args.format == "json":
            _dump(summaries)
        else:
            sys.stdout.write(format_table(summaries, time.time(), full=args.no_trunc))
    elif command == "inspect":
        record = history_call(args, {"op": "get", "ref": args.build or "^0"})
        if args.format == "json":
            _dump(_json_record(record))
        else:
            sys.stdout.write(format_inspect(record, time.time()))
    elif command == "logs":
        record = history_call(args, {"op": "get", "ref": args.build or "^0"})
        write_logs(record, sys.stdout, args.progress, args.vertex)
    else:
        if not args.builds and not args.all:
            raise UsageError("'dockyard history rm' needs a BUILD or --all")
        if args.builds and args.all:
            raise UsageError("give BUILD references or --all, not both")
        removed = history_call(args, {"op": "rm", "refs": list(args.builds),
                                      "all": bool(args.all)})
        for build_id in removed:
            print(build_id)
    return 0


def _dump(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True) + "\n")


# --- ls --------------------------------------------------------------------------------


def format_duration(seconds: float) -> str:
    """``0.8s``, ``12.3s``, ``2m 5s``, ``1h 2m`` (as buildx's column)."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:2d}s"
    return f"{minutes // 60}h {minutes % 60:2d}m"


def _duration(record: Mapping[str, Any], now: float) -> str:
    if record.get("completed") is None:
        return format_duration(now - record["created"]) + "+"
    return format_duration(record["completed"] - record["created"])


def format_table(summaries: Sequence[Mapping[str, Any]], now: float, *,
                 full: bool = False) -> str:
    rows = [_COLUMNS] + [(s["id"] if full else s["id"][:25], s.get("name", ""),
                          str(s["status"]).capitalize(), ago(now - s["created"]),
                          _duration(s, now)) for s in summaries]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS) - 1)]
    return "".join("   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
                   + "   " + row[-1] + "\n" for row in rows)


# --- inspect ---------------------------------------------------------------------------


def _when(stamp: float) -> str:
    return datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S")


def _fields(pairs: Sequence[tuple[str, str]]) -> list[str]:
    width = max(len(name) for name, _ in pairs) + 2
    return [f"{(name + ':').ljust(width)}{value}" for name, value in pairs]


def format_inspect(record: Mapping[str, Any], now: float) -> str:
    """The record as text: its request, outcome, outputs, steps and Dockerfile."""
    vertices = record.get("vertices") or []
    cached = sum(1 for v in vertices if v.get("cached"))
    share = f" ({100 * cached // len(vertices)}% cached)" if vertices else ""
    done = sum(1 for v in vertices if v.get("completed") is not None and not v.get("error"))
    pairs = [("Build ID", record["id"]), ("Name", record.get("name", "")),
             ("Context", record.get("context", "")),
             ("Dockerfile", record.get("filename", "Dockerfile"))]
    if record.get("target"):
        pairs.append(("Target", record["target"]))
    pairs.append(("Platforms", ", ".join(record.get("platforms") or ()) or "(the node's)"))
    pairs += [(f"Build Arg {name}", value) for name, value in record.get("build_args") or ()]
    pairs += [("Secrets", ", ".join(record.get("secrets") or ()))] if record.get("secrets") \
        else []
    pairs += [("Status", str(record["status"]).capitalize()),
              ("Started", _when(record["created"])), ("Duration", _duration(record, now)),
              ("Build Steps", f"{done}/{len(vertices)}{share}")]
    if record.get("error"):
        pairs.append(("Error", str(record["error"]).split("\n")[0]))
    lines = _fields(pairs)
    lines += _outputs(record)
    lines += ["", "Steps:"] + _steps(vertices)
    lines += _dockerfile(record)
    return "\n".join(lines) + "\n"


def _outputs(record: Mapping[str, Any]) -> list[str]:
    lines = []
    outputs = record.get("outputs") or []
    if outputs:
        lines += ["", "Outputs:"]
        lines += [f"  {o['type']}" + (f"  {', '.join(o['names'])}" if o.get("names") else "")
                  + ("  (push)" if o.get("push") else "") for o in outputs]
    metadata = record.get("metadata") or {}
    if metadata:
        lines += ["", "Result:"]
        lines += _fields([(f"  {key}", str(metadata[key])) for key in sorted(metadata)])
    return lines


def _steps(vertices: Sequence[Mapping[str, Any]]) -> list[str]:
    rows = [("#", "NAME", "NODE", "CACHED", "DURATION", "ERROR")]
    for v in vertices:
        took = (format_duration(v["completed"] - v["started"])
                if v.get("completed") is not None and v.get("started") is not None else "")
        error = "canceled" if v.get("canceled") else str(v.get("error") or "").split("\n")[0]
        name = str(v.get("name") or v["digest"])
        name = name if len(name) <= _NAME_WIDTH else name[:_NAME_WIDTH - 3] + "..."
        rows.append((str(v["index"]), name, v.get("node") or "",
                     "yes" if v.get("cached") else "no", took, error))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return ["  " + "   ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "   "
            + row[-1] for row in rows]


def _dockerfile(record: Mapping[str, Any]) -> list[str]:
    data = bytes(record.get("dockerfile") or b"")
    if not data:
        return []
    lines = ["", f"{record.get('filename', 'Dockerfile')}:"]
    lines += ["  " + line for line in data.decode("utf-8", "replace").rstrip("\n").split("\n")]
    if record.get("dockerfile_size", len(data)) > len(data):
        lines.append(f"  ... (first {len(data)} of {record['dockerfile_size']} bytes kept)")
    return lines


def _json_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """The record as JSON: without its events (``history logs`` shows them), the
    Dockerfile as text."""
    shown = {k: v for k, v in record.items() if k != "events"}
    shown["dockerfile"] = bytes(record.get("dockerfile") or b"").decode("utf-8", "replace")
    return shown


# --- logs ------------------------------------------------------------------------------


def write_logs(record: Mapping[str, Any], stream: TextIO, progress: str = "plain",
               vertex: int | None = None) -> None:
    """Replay the record's events through the ``progress`` printer, each at the time it
    came; ``vertex``: only the lines of step ``#vertex`` (plain)."""
    count = len(record.get("vertices") or [])
    if vertex is not None and not 1 <= vertex <= count:
        raise UsageError(f"invalid --vertex {vertex}: build {record['id'][:12]} has steps "
                         f"1 to {count}", hint="see 'dockyard history inspect'")
    now = [float(record["created"])]
    lines = vertex is not None and progress == "plain"  # keep only #N's lines after
    kept = io.StringIO()
    out = kept if lines else stream
    renderer = make_renderer(progress, out, clock=lambda: now[0])
    digest = record["vertices"][vertex - 1]["digest"] if vertex is not None else None
    for when, wire in record.get("events") or ():
        if lines or digest is None or wire.get("vertex") == digest:
            now[0] = float(when)
            renderer.emit(event_from_wire(wire))
    renderer.close()
    if record.get("truncated"):
        out.write("(the build's progress passed what a record keeps: some output is left "
                  "out)\n")
    if lines:
        prefix = f"#{vertex} "
        stream.write("".join(line for line in kept.getvalue().splitlines(keepends=True)
                             if line.startswith(prefix)))
