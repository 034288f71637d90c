"""The log lines of dockyard's long-running processes -- the local service, ``dockyard
serve``, the coordinator and the worker actors -- set up in one place (``configure_logging``):

- a terminal gets plain text: ``2026-01-02T03:04:05.678Z INFO dockyard.cluster.daemon: message``,
  with ``build=ID vertex=DIGEST`` after it when known;
- anything else (a file such as the service's ``run/daemon.log``, a pipe, a container's
  stdout read by a log collector) gets one JSON object per line::

      {"time": "2026-01-02T03:04:05.678Z", "level": "info", "logger": "dockyard.cluster.daemon",
       "pid": 123, "message": "...", "build": "<build id>", "vertex": "sha256:..."}

  ``build`` and ``vertex`` only when known, ``error`` (the traceback) only with one.

A line knows its build and vertex from the record's ``extra`` (``extra={"build": id}``)
or else from the context it is logged in (``log_context``: a build's calls on a worker,
a vertex's execution, a build's task in the coordinator).  Messages never carry secrets:
they are the same texts the processes printed before.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

__all__ = ["JsonFormatter", "TextFormatter", "configure_logging", "log_context",
           "set_log_ids"]

#: The loggers set up: the package's (each module logs under its own name, all under
#: ``dockyard.``).
PACKAGES = ("dockyard",)

# The build and vertex the current task works for (None: not known).
_BUILD: contextvars.ContextVar[str | None] = contextvars.ContextVar("dockyard_log_build",
                                                                   default=None)
_VERTEX: contextvars.ContextVar[str | None] = contextvars.ContextVar("dockyard_log_vertex",
                                                                    default=None)


def set_log_ids(build: str | None = None, vertex: str | None = None) -> None:
    """From now on in this context (a task's own: ``asyncio`` copies it for each task),
    lines name ``build`` and ``vertex`` (each only when given)."""
    if build is not None:
        _BUILD.set(build)
    if vertex is not None:
        _VERTEX.set(vertex)


@contextmanager
def log_context(build: str | None = None, vertex: str | None = None) -> Iterator[None]:
    """Lines logged inside this block (in this task and the tasks it starts) name
    ``build`` and ``vertex`` (each only when given)."""
    tokens = [(var, var.set(value)) for var, value in ((_BUILD, build), (_VERTEX, vertex))
              if value is not None]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def _ids(record: logging.LogRecord) -> dict[str, str]:
    found: dict[str, str] = {}
    for key, var in (("build", _BUILD), ("vertex", _VERTEX)):
        value = getattr(record, key, None) or var.get()
        if value:
            found[key] = str(value)
    return found


def _time(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {"time": _time(record), "level": record.levelname.lower(),
                                "logger": record.name, "pid": record.process,
                                "message": record.getMessage(), **_ids(record)}
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """A plain line for a person at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        ids = "".join(f" {key}={value}" for key, value in _ids(record).items())
        text = f"{_time(record)} {record.levelname} {record.name}: {record.getMessage()}{ids}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def configure_logging(stream: IO[str], level: int = logging.INFO) -> None:
    """Send dockyard's log lines (``PACKAGES``) at ``level`` and above to ``stream``, as
    JSON unless it is a terminal.  Once per process: a second call changes nothing."""
    formatter = TextFormatter() if _is_terminal(stream) else JsonFormatter()
    for name in PACKAGES:
        logger = logging.getLogger(name)
        if any(getattr(h, "dockyard", False) for h in logger.handlers):
            continue
        handler = logging.StreamHandler(stream)
        handler.setFormatter(formatter)
        handler.dockyard = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False  # Ray's own handlers on the root logger stay out of it
