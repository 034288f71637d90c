"""The one exception tree of dockyard.

Every error a user can see derives from ``DockyardError`` and says what went wrong, where
(file:line:column, vertex, URL) and, when there is something to do, what to do::

    DockyardError
     ├── UsageError           a bad command-line flag or option value
     │    └── FlagError       a flag the command line cannot read (unknown, no value)
     ├── DockerfileError      the frontend rejected a Dockerfile (file, line, column)
     ├── ImageReferenceError  an image reference that cannot be parsed (its text)
     ├── GraphError           a build graph that is malformed, inconsistent, or encoded
     │                        with an unknown version
     ├── SolveError           a vertex could not be built (its name and position)
     │    ├── ExecError       a RUN exited non-zero (exit code, last lines of output)
     │    └── WorkerLost      the worker running a vertex died or vanished
     ├── LayerError           a layer or tar that is corrupt or escapes its root (the path)
     ├── CacheError           a cache backend failed (the backend and key or digest)
     │    └── BlobLost        layers a cached result names are gone or corrupt (digests)
     ├── RegistryError        a registry refused or failed (the URL, what to do)
     ├── ExportError          an output could not be written (the destination)
     └── ServiceError         the local dockyard service could not start or be reached

One module, one tree.  Third-party errors (OS, Ray, boto) are translated at
the boundary where they occur and never leak to the user as tracebacks.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

__all__ = [
    "error_from_wire",
    "error_to_wire",
    "BlobLost",
    "CacheError",
    "DockerfileError",
    "DockyardError",
    "ExecError",
    "ExportError",
    "FlagError",
    "GraphError",
    "ImageReferenceError",
    "LayerError",
    "RegistryError",
    "ServiceError",
    "SolveError",
    "UsageError",
    "WorkerLost",
]


class DockyardError(Exception):
    """Base of every error dockyard reports to a user.

    ``hint`` is the "what to do" part of the message, shown on its own line.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\nhint: {self.hint}"
        return self.message


class UsageError(DockyardError):
    """A command-line flag, option or argument that cannot be used as given."""


class FlagError(UsageError):
    """A command line whose flags cannot be read: an unknown (or abbreviated) flag, a flag
    without its value.  Docker's CLI exits 125 for these, and so does ``dockyard``."""


class DockerfileError(DockyardError):
    """The Dockerfile frontend rejected its input.

    ``line`` and ``column`` are 1-based.  ``source_line`` is the text of that line; when
    given, ``str()`` shows it with a caret under ``column``::

        Dockerfile:3:1: unknown instruction: RUNN
          3 | RUNN echo hi
            | ^
    """

    def __init__(
        self,
        message: str,
        *,
        filename: str = "Dockerfile",
        line: int = 1,
        column: int = 1,
        source_line: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.filename = filename
        self.line = max(line, 1)
        self.column = max(column, 1)
        self.source_line = source_line

    @property
    def location(self) -> str:
        return f"{self.filename}:{self.line}:{self.column}"

    def __str__(self) -> str:
        text = f"{self.location}: {self.message}"
        if self.source_line is not None:
            number = str(self.line)
            pad = " " * len(number)
            shown, column = _window(self.source_line.rstrip("\r\n").expandtabs(1),
                                    self.column)
            text += f"\n  {number} | {shown}\n  {pad} | {' ' * (column - 1)}^"
        if self.hint:
            text += f"\nhint: {self.hint}"
        return text


_SHOWN_LINE = 160  # characters of a source line an error shows around its column


def _window(line: str, column: int) -> tuple[str, int]:
    """A long source line cut to ``_SHOWN_LINE`` characters around ``column`` (with "..."
    where it was cut), and the column within what is shown."""
    if len(line) <= _SHOWN_LINE:
        return line, column
    start = max(0, min(column - 1 - _SHOWN_LINE // 2, len(line) - _SHOWN_LINE))
    end = start + _SHOWN_LINE
    shown = ("..." if start else "") + line[start:end] + ("..." if end < len(line) else "")
    return shown, column - start + (3 if start else 0)


class GraphError(DockyardError):
    """A build graph that cannot be used: an input missing from the graph, a decoded
    graph that is malformed or has an unknown ``version``, a digest that does not match."""


class ImageReferenceError(DockyardError):
    """An image reference (``alpine:3.19``, ``host:5000/a/b@sha256:...``) that does not
    parse; the message quotes the reference.  The frontend re-raises it as a
    ``DockerfileError`` at the FROM line."""


class SolveError(DockyardError):
    """A vertex could not be built.  ``vertex`` is its human name (``[build 2/4] RUN make``);
    ``location`` the Dockerfile position (``Dockerfile:7:1``) when known."""

    def __init__(self, message: str, *, vertex: str = "", location: str = "",
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.vertex = vertex
        self.location = location

    def __str__(self) -> str:
        where = " ".join(part for part in (self.location, self.vertex) if part)
        text = f"{where}: {self.message}" if where else self.message
        return f"{text}\nhint: {self.hint}" if self.hint else text


class ExecError(SolveError):
    """A process in a RUN exited non-zero: ``exit_code`` and the last lines of its output."""

    def __init__(self, message: str, *, exit_code: int, output_tail: str = "",
                 vertex: str = "", location: str = "", hint: str | None = None) -> None:
        super().__init__(message, vertex=vertex, location=location, hint=hint)
        self.exit_code = exit_code
        self.output_tail = output_tail


class WorkerLost(SolveError):
    """The worker that ran a vertex died or became unreachable."""


class LayerError(DockyardError):
    """A layer blob or tar that is corrupt, does not match its digest, or has an entry that
    would escape its root; the message names the entry."""


class CacheError(DockyardError):
    """A cache backend failed; the message names the backend and the key or digest."""


class BlobLost(CacheError):
    """Layer blobs a cached result names turned out missing or corrupt when a build needed
    them (``digests``): a cache miss, so the solver rebuilds what owns them and retries."""

    def __init__(self, message: str, *, digests: tuple[str, ...] | list[str] = (),
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.digests = tuple(str(digest) for digest in digests)


class RegistryError(DockyardError):
    """A registry refused or failed a request; the message names the URL."""


class ExportError(DockyardError):
    """An output (``--output``) could not be written; the message names the destination."""


class ServiceError(DockyardError):
    """The local dockyard service could not be started or reached."""


# --- errors as plain data ----------------------------------------------------------------
# An error crosses a process boundary (Ray, the wire) as a map, never pickled: keyword-only
# attributes do not survive pickling, and a peer may run another version.

#: The attributes each class carries across, besides message and hint.
_DETAILS: dict[str, tuple[str, ...]] = {
    "DockerfileError": ("filename", "line", "column", "source_line"),
    "SolveError": ("vertex", "location"),
    "WorkerLost": ("vertex", "location"),
    "ExecError": ("exit_code", "output_tail", "vertex", "location"),
    "BlobLost": ("digests",),
}


def error_to_wire(error: DockyardError) -> dict[str, Any]:
    """``{"error", "message", "hint", "details"}``: ``error`` as plain data (its nearest
    class of this tree, so a private subclass travels as its public parent)."""
    name = _nearest_tree_class(type(error)).__name__
    details = {key: _plain(getattr(error, key, None)) for key in _DETAILS.get(name, ())}
    return {"error": name, "message": error.message, "hint": error.hint, "details": details}


def error_from_wire(data: Mapping[str, Any]) -> DockyardError:
    """The error ``error_to_wire`` made (a ``ServiceError`` for a class this dockyard does
    not know)."""
    name, message = str(data.get("error")), str(data.get("message", ""))
    hint = data.get("hint")
    hint = None if hint is None else str(hint)
    cls = getattr(sys.modules[__name__], name, None)
    if not (isinstance(cls, type) and issubclass(cls, DockyardError)):
        return ServiceError(f"{name}: {message}", hint=hint)
    allowed = _DETAILS.get(name, ())
    raw = data.get("details") or {}
    details = {k: v for k, v in raw.items() if k in allowed} if isinstance(raw, Mapping) else {}
    try:
        error: DockyardError = cls(message, hint=hint, **details)
    except TypeError:
        error = cls(message, hint=hint)
    return error


def _plain(value: Any) -> Any:
    """A detail as msgpack gives it back (a tuple travels as a list)."""
    return list(value) if isinstance(value, tuple) else value


def _nearest_tree_class(cls: type[DockyardError]) -> type[DockyardError]:
    """The closest ancestor of ``cls`` that is part of this tree."""
    module = sys.modules[__name__]
    for base in cls.__mro__:
        if getattr(module, base.__name__, None) is base and issubclass(base, DockyardError):
            found: type[DockyardError] = base
            return found
    return DockyardError
