"""The worker actor: one per node (here: one for the embedded service, holding both arch
resources), a thin shell between the coordinator and the engine on this machine.

Every method takes and returns plain data (msgpack-able maps).  Streaming methods are async
generators of maps: ``{"event": <progress event wire map>}`` as news come, then one
``{"result": ...}`` or ``{"failure": ...}`` (errors cross Ray as data).

- ``build(request)``: one whole build on this node's ``WorkerRuntime`` through
  ``cluster._local_build.build_local`` (frontend, solver, runc, exporters), plus registry
  pushes.  The request's ``session`` part (secret values, ssh sockets) is given to that
  build only: never logged, never kept after it.
- ``echo(vertex, request)``: streams ``request["lines"]`` as output of ``vertex`` (the
  service's own tests use it to exercise the path and its cancellation).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from scheduler._errors import DockyardError
from scheduler._progress import Event, VertexLog, event_to_wire

__all__ = ["WorkerActor"]

_DONE = object()  # ends a build's queue


class _QueueSink:
    """An ``EventSink`` that queues each event's wire map (never blocks)."""

    def __init__(self, queue: asyncio.Queue[object]) -> None:
        self._queue = queue

    def emit(self, event: Event) -> None:
        self._queue.put_nowait({"event": event_to_wire(event)})


class WorkerActor:
    """The worker side of one node."""

    def __init__(self, root: str, arches: list[str]) -> None:
        self.root = root  # the DOCKYARD_ROOT whose store this worker uses
        self.arches = tuple(arches)  # the architectures this node runs
        self._running = 0  # calls in progress (>= 0)
        self._completed = 0  # calls that returned or finished streaming
        self._cancelled = 0  # calls stopped by a cancellation
        self._runtime: Any = None  # the WorkerRuntime, made by the first build

    async def ping(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "root": self.root, "arches": list(self.arches),
                "time": time.time()}

    async def build(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """One build (see the module docstring): events, then its result or failure."""
        queue: asyncio.Queue[object] = asyncio.Queue()
        self._running += 1
        task = asyncio.ensure_future(self._build(request, _QueueSink(queue), queue))
        try:
            while (item := await queue.get()) is not _DONE:
                yield item  # type: ignore[misc]
            self._completed += 1
        except (asyncio.CancelledError, GeneratorExit):
            self._cancelled += 1
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            raise
        finally:
            self._running -= 1

    async def _build(self, request: dict[str, Any], sink: _QueueSink,
                     queue: asyncio.Queue[object]) -> None:
        try:
            queue.put_nowait({"result": await self._run_build(request, sink)})
        except DockyardError as error:
            queue.put_nowait({"failure": _failure(error)})
        finally:
            queue.put_nowait(_DONE)

    async def _run_build(self, request: dict[str, Any], sink: _QueueSink) -> dict[str, Any]:
        from cluster._build_options import BuildOptions  # noqa: PLC0415 -- only builds need it
        from cluster._local_build import build_local  # noqa: PLC0415

        options = BuildOptions.from_wire(request["options"])
        stdout_file = self._stdout_file(options)
        local = _local_options(Path(self.root), options, request["session"], sink,
                               stdout_file)
        result = await build_local(request["dockerfile"], Path(options.context), local,
                                   runtime=self._engine())
        pushed = await self._push(options, result.exported)
        metadata = dict(result.metadata)
        if options.tags:
            metadata["image.name"] = ",".join(options.tags)
        stats = result.statistics
        return {"metadata": metadata, "stdout_file": stdout_file, "pushed": pushed,
                "statistics": {"executed": getattr(stats, "executed", None),
                               "cached": getattr(stats, "cached", None)}}

    def _engine(self) -> Any:
        if self._runtime is None:
            from workers._runtime import WorkerRuntime  # noqa: PLC0415 -- heavy

            self._runtime = WorkerRuntime(Path(self.root))
        return self._runtime

    def _stdout_file(self, options: Any) -> str | None:
        """Where a ``dest=-`` output is written for the client to stream (same machine)."""
        if not any(o.to_stdout for o in options.outputs):
            return None
        tmp = Path(self.root) / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="stdout-", suffix=".tar", dir=tmp)
        os.close(fd)
        return name

    async def _push(self, options: Any, exported: Any) -> list[str]:
        from workers._exporters import push_image  # noqa: PLC0415

        engine = self._engine()
        pushed = []
        for output in options.outputs:
            if output.type == "image" and output.push:
                for name in output.names:
                    digest = await push_image(exported, engine.blob_source(), engine.registry,
                                              name, scratch=engine.tmp)
                    pushed.append(f"{name}@{digest}")
        return pushed

    async def echo(self, vertex: str, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Stream ``request["lines"]`` back as stdout of ``vertex``, waiting
        ``request["delay"]`` seconds before each."""
        lines = [str(line) for line in request.get("lines", [])]
        delay = float(request.get("delay", 0.0))
        self._running += 1
        try:
            for line in lines:
                if delay:
                    await asyncio.sleep(delay)
                yield event_to_wire(VertexLog(vertex, 1, line.encode() + b"\n"))
            self._completed += 1
        except (asyncio.CancelledError, GeneratorExit):
            self._cancelled += 1
            raise
        finally:
            self._running -= 1

    async def statistics(self) -> dict[str, int]:
        return {"running": self._running, "completed": self._completed,
                "cancelled": self._cancelled}

    def __repr__(self) -> str:
        return (f"<WorkerActor arches={','.join(self.arches)} running={self._running} "
                f"completed={self._completed} cancelled={self._cancelled}>")


def _local_options(root: Path, options: Any, session: dict[str, Any], sink: _QueueSink,
                   stdout_file: str | None) -> Any:
    """The engine's ``LocalBuildOptions`` for a request (file outputs only; pushes after)."""
    from cluster._local_build import LocalBuildOptions, Output  # noqa: PLC0415
    from scheduler._platform import parse_platform  # noqa: PLC0415

    outputs = tuple(Output(o.type, Path(str(stdout_file if o.to_stdout else o.dest)))
                    for o in options.outputs if o.type != "image")
    return LocalBuildOptions(
        root=root, filename=options.filename,
        platforms=tuple(parse_platform(p) for p in options.platforms), target=options.target,
        build_args=dict(options.build_args),
        secrets={k: bytes(v) for k, v in session.get("secrets", {}).items()},
        ssh={k: Path(v) for k, v in session.get("ssh", {}).items()},
        outputs=outputs, names=options.tags, no_cache=options.no_cache, epoch=options.epoch,
        events=sink)


def _failure(error: DockyardError) -> dict[str, Any]:
    from cluster._wire import failure_from_error  # noqa: PLC0415

    failure = failure_from_error(0, error)
    return {"error": failure.error, "message": failure.message, "hint": failure.hint,
            "details": failure.details}
