"""The steps BuildKit shows around a solve, as progress vertices of the coordinator's own.

BuildKit's progress names more than the graph's vertices: loading the build definition
(with its build-check warnings), the ignore file, each base image's metadata, and one
exporter vertex per output with its sub-steps.  ``BuildSteps`` emits those, in BuildKit's
order, to a build's ``EventSink``: the graph's vertices come from the solver between
``loaded`` and ``exported``.  Each step's id is a digest of the build's id and its name,
so two builds' steps never merge in a watcher and a step is one vertex within a build.

The events are plain ``dockyard.scheduler._progress`` events; nothing here touches a file or
knows a secret (a warning's text is the lint rule's, built from the Dockerfile).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dockyard.scheduler._build_request import OutputSpec
from dockyard.scheduler._errors import ImageReferenceError
from dockyard.scheduler._progress import (
    EventSink,
    StatusUpdate,
    VertexCompleted,
    VertexFailed,
    VertexStarted,
    VertexWarning,
    warning,
)
from dockyard.scheduler._reference import parse_reference

__all__ = ["BuildSteps", "exporter_name", "metadata_name"]

Clock = Callable[[], float]


def step_digest(build_id: str, name: str) -> str:
    """The vertex id of the step ``name`` of build ``build_id``."""
    material = f"dockyard-build-step\0{build_id}\0{name}".encode()
    return "sha256:" + hashlib.sha256(material).hexdigest()


def metadata_name(ref: str, platform: str | None = None) -> str:
    """``[internal] load metadata for REF`` (REF normalised as BuildKit shows it; with
    ``platform`` for a multi-platform build, as ``[linux/arm64 internal]``)."""
    try:
        shown = str(parse_reference(ref))
    except ImageReferenceError:
        shown = ref
    scope = f"{platform} internal" if platform else "internal"
    return f"[{scope}] load metadata for {shown}"


_EXPORTERS = {"local": "exporting to client directory", "tar": "exporting to client tarball",
              "oci": "exporting to oci image format", "docker": "exporting to docker image format",
              "image": "exporting to image", "registry": "exporting to image"}


def exporter_name(output: OutputSpec) -> str:
    """The name BuildKit gives the vertex of ``output``'s exporter."""
    return _EXPORTERS.get(output.type, f"exporting to {output.type}")


@dataclass(frozen=True, slots=True)
class _Step:
    """A step that already ran (replayed later, in BuildKit's order)."""

    name: str
    started: float
    ended: float
    error: str = ""


class BuildSteps:
    """Emits one build's steps to ``events`` (see the module doc)."""

    def __init__(self, events: EventSink, build_id: str, *, clock: Clock = time.time) -> None:
        self._events = events
        self._build_id = build_id
        self._clock = clock
        self.began = clock()  # when the build was received: the definition's start
        self._resolved: list[_Step] = []  # base images looked up during the frontend
        self._export_started = self.began  # when ``exporting`` was called

    def _digest(self, name: str) -> str:
        return step_digest(self._build_id, name)

    def _run(self, name: str, started: float, ended: float,
             statuses: Sequence[tuple[str, int]] = (), error: str = "") -> str:
        """Emit a whole step: started, its done statuses (id, bytes), then done or failed."""
        digest = self._digest(name)
        self._events.emit(VertexStarted(digest, name, started))
        for ident, current in statuses:
            self._events.emit(StatusUpdate(digest, ident, current=current, done=True))
        if error:
            self._events.emit(VertexFailed(digest, name, error))
        else:
            self._events.emit(VertexCompleted(digest, name, max(ended - started, 0.0)))
        return digest

    # -- before the solve --

    def resolving(self, ref: str, platform: str | None = None) -> Callable[[str], None]:
        """Note the start of a base image's lookup; call the answer with "" when it
        succeeded, or with the error's text."""
        started = self._clock()

        def done(error: str) -> None:
            self._resolved.append(_Step(metadata_name(ref, platform), started, self._clock(),
                                        error))
        return done

    def loaded(self, filename: str, dockerfile_size: int, ignore_size: int,
               warnings: Sequence[Any] = (), notices: Sequence[str] = ()) -> None:
        """The frontend has run: the definition (``warnings``: its ``CheckWarning``s),
        the ignore file, then each base image's metadata, as BuildKit shows them."""
        name = f"[internal] load build definition from {filename.rsplit('/', 1)[-1]}"
        digest = self._digest(name)
        self._events.emit(VertexStarted(digest, name, self.began))
        self._events.emit(StatusUpdate(digest, "transferring dockerfile:",
                                       current=dockerfile_size, done=True))
        for found in warnings:
            self._events.emit(VertexWarning(
                digest, f"{found.rule}: {found.message} (line {found.line})",
                detail=found.description, url=found.url, filename=found.filename,
                line=found.line))
        now = self._clock()
        self._events.emit(VertexCompleted(digest, name, max(now - self.began, 0.0)))
        self._run("[internal] load .dockerignore", now, now,
                  [("transferring context:", ignore_size)])
        for step in self._resolved:
            self._run(step.name, step.started, step.ended, error=step.error)
        self._resolved.clear()
        for notice in notices:
            self._events.emit(warning("frontend", notice))

    # -- after the solve --

    def exporting(self, outputs: Sequence[OutputSpec]) -> None:
        """The export begins: one vertex per output, open while the export runs (a step
        the client does meanwhile, such as loading an image, shows between)."""
        self._export_started = self._clock()
        for index, output in enumerate(outputs):
            name = exporter_name(output)
            self._events.emit(VertexStarted(self._exporter(index, name), name,
                                            self._export_started))

    def exported(self, outputs: Sequence[OutputSpec], metadata: Mapping[str, Any],
                 sent: Mapping[int, int] | None = None) -> None:
        """Each output's vertex done, its sub-steps named from what the export did
        (``sent``: the bytes sent to the client, by output index)."""
        took = max(self._clock() - self._export_started, 0.0)
        for index, output in enumerate(outputs):
            name = exporter_name(output)
            digest = self._exporter(index, name)
            for ident, current in _sub_steps(output, metadata, (sent or {}).get(index, 0)):
                self._events.emit(StatusUpdate(digest, ident, current=current, done=True))
            self._events.emit(VertexCompleted(digest, name, took))

    def export_failed(self, outputs: Sequence[OutputSpec], error: str) -> None:
        """The export failed: the first output's vertex shows the error, the others were
        cancelled with it."""
        for index, output in enumerate(outputs):
            name = exporter_name(output)
            self._events.emit(VertexFailed(self._exporter(index, name), name, error,
                                           cancelled=index > 0))

    def _exporter(self, index: int, name: str) -> str:
        """The vertex of output ``index`` (two outputs of one type are two vertices)."""
        return self._digest(f"{name}\0{index}")


def _sub_steps(output: OutputSpec, metadata: Mapping[str, Any], sent: int
               ) -> list[tuple[str, int]]:
    """The sub-steps BuildKit's exporter of ``output`` shows, named from the result's
    ``metadata``; a local output's ``copying files`` with the bytes ``sent`` to the client
    (its files' tar stream)."""
    manifest = str(metadata.get("containerimage.digest") or "")
    config = str(metadata.get("containerimage.config.digest") or "")
    if output.type == "local":
        return [("copying files", sent)]
    if output.type == "tar":
        return [("sending tarball", 0)]
    if output.type in ("oci", "docker"):
        return [*_manifest_steps(manifest, config), ("sending tarball", 0)]
    names = [_shown(name) for name in output.names]
    if not output.push:  # as the Docker engine's exporter: the image id is its config's
        written = ([(f"writing image {config}", 0)] if config else
                   [(f"exporting manifest list {manifest}", 0)] if manifest else [])
        return [("exporting layers", 0), *written, *((f"naming to {n}", 0) for n in names)]
    pushes = [(f"pushing manifest for {n}@{manifest}", 0) for n in names if manifest]
    return [*_manifest_steps(manifest, config), *((f"naming to {n}", 0) for n in names),
            ("pushing layers", 0), *pushes]


def _manifest_steps(manifest: str, config: str) -> list[tuple[str, int]]:
    if manifest and config:
        described = [(f"exporting manifest {manifest}", 0), (f"exporting config {config}", 0)]
    elif manifest:
        described = [(f"exporting manifest list {manifest}", 0)]
    else:
        described = []
    return [("exporting layers", 0), *described]


def _shown(name: str) -> str:
    try:
        return str(parse_reference(name))
    except ImageReferenceError:
        return name
