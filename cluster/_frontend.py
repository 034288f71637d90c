"""The frontend as the coordinator runs it: a Dockerfile to a ``BuildGraph`` in a thread,
cancellable, its base-image questions answered on the build's event loop.

Split from cluster/_local_build.py (which re-exports these names) so the coordinator's
process imports the frontend and not the worker's execution stack (runc, layers, the
registry client, S3): a smaller process (issue 10).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import json
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dockyard.scheduler._build_request import NamedContext
from dockyard.scheduler._entitlements import check_entitlements
from dockyard.scheduler._graph import Healthcheck, HistoryEntry, ImageConfig, Ulimit
from dockyard.scheduler._platform import Platform
from dockyard.scheduler.dockerfile._convert._model import BaseImage
from dockyard.scheduler.dockerfile._frontend import FrontendResult, build_graph, with_labels

__all__ = ["FrontendRequest", "ResolveImage", "base_image", "image_config_of", "run_frontend"]

#: How the frontend's base-image questions are answered: (reference, platform) -> image.
ResolveImage = Callable[[str, Platform], Coroutine[Any, Any, BaseImage]]


@dataclass(frozen=True)
class FrontendRequest:
    """What the frontend needs of a build request (the coordinator runs it)."""

    filename: str = "Dockerfile"
    platforms: tuple[Platform, ...] = ()
    target: str | None = None
    build_args: Mapping[str, str] = field(default_factory=dict)
    allow: frozenset[str] = frozenset()  # entitlements granted (scheduler/_entitlements.py)
    ulimits: tuple[Ulimit, ...] = ()  # every RUN's resource limits (--ulimit)
    shm_size: int = 0  # every RUN's /dev/shm in bytes (--shm-size; 0: the default)
    network: str = "default"  # a RUN's network when it names none (--network)
    extra_hosts: tuple[tuple[str, str], ...] = ()  # every RUN's /etc/hosts entries (--add-host)
    cgroup_parent: str = ""  # every RUN's cgroup parent (--cgroup-parent)
    no_cache_filter: tuple[str, ...] = ()  # stages whose steps skip the cache
    named_contexts: tuple[NamedContext, ...] = ()  # --build-context
    labels: tuple[tuple[str, str], ...] = ()  # the images' labels (--label), over LABEL's


async def run_frontend(dockerfile: bytes, request: FrontendRequest, patterns: Sequence[str],
                       resolve: ResolveImage) -> FrontendResult:
    """The Dockerfile as a graph, with its build-check warnings (in a thread: the frontend
    is synchronous; its base-image questions go to ``resolve`` on this loop).

    A thread cannot be cancelled, so the frontend is interruptible instead: cancelled, this
    sets ``stop``, the frontend raises at its next step (a line, an instruction, a word; a
    base-image question is given up) and only then does the cancellation go on, so a build
    whose client went away leaves no frontend running."""
    stop = threading.Event()  # set once: the frontend is to stop at its next checkpoint

    def interrupt() -> None:
        if stop.is_set():
            raise asyncio.CancelledError("the build was cancelled")

    work = functools.partial(
        build_graph, dockerfile, filename=request.filename, target=request.target,
        platforms=request.platforms, build_args=request.build_args, ignore_patterns=patterns,
        image_resolver=_Resolver(_with_layouts(resolve, request.named_contexts),
                                 asyncio.get_running_loop(), interrupt),
        interrupt=interrupt, ulimits=request.ulimits, shm_size=request.shm_size,
        network=request.network, extra_hosts=request.extra_hosts,
        cgroup_parent=request.cgroup_parent, no_cache_filter=request.no_cache_filter,
        named_contexts=request.named_contexts)
    running = asyncio.ensure_future(asyncio.to_thread(work))
    try:
        frontend = await asyncio.shield(running)
    except asyncio.CancelledError:
        stop.set()
        await asyncio.wait([running])  # the thread's end: within one step of the frontend
        raise
    check_entitlements(frontend.graph, request.allow)
    return dataclasses.replace(frontend, graph=with_labels(frontend.graph, request.labels))


def _with_layouts(resolve: ResolveImage, contexts: Sequence[NamedContext]) -> ResolveImage:
    """``resolve``, answering the ``oci-layout://`` sources of ``contexts`` itself: their
    image configs came with the request (the client read the layout)."""
    layouts = {c.source: base_image(c.source.rpartition("@")[2], c.config)
               for c in contexts if c.source.startswith("oci-layout://") and c.config}
    if not layouts:
        return resolve

    async def answer(ref: str, platform: Platform) -> BaseImage:
        known = layouts.get(ref)
        return known if known is not None else await resolve(ref, platform)
    return answer


def base_image(digest: str, config: bytes) -> BaseImage:
    """What the frontend needs of a resolved base image."""
    return BaseImage(digest=digest, config=image_config_of(config))


# --- the frontend's view of base images --------------------------------------------------


class _Resolver:
    """The frontend's ``ImageResolver``, called from its thread: resolves on the build's
    loop (so the build's resolution is shared with the solver's).  While it waits, it
    calls ``interrupt`` every ``_POLL`` seconds: a cancelled build gives the question up."""

    _POLL = 0.2

    def __init__(self, resolve: ResolveImage, loop: asyncio.AbstractEventLoop,
                 interrupt: Callable[[], None]) -> None:
        self._resolve = resolve
        self._loop = loop
        self._interrupt = interrupt

    def __call__(self, ref: str, platform: Platform) -> BaseImage | None:
        coroutine = self._resolve(ref, platform)
        answer = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        while True:
            try:
                image: BaseImage = answer.result(timeout=self._POLL)
                return image
            except concurrent.futures.TimeoutError:
                self._interrupt_or_cancel(answer)

    def _interrupt_or_cancel(self, answer: concurrent.futures.Future[BaseImage]) -> None:
        try:
            self._interrupt()
        except BaseException:
            answer.cancel()
            raise


def image_config_of(data: bytes) -> ImageConfig:
    """An image config JSON as the frontend's ``ImageConfig`` (what a stage inherits)."""
    try:
        document = json.loads(data)
    except ValueError:
        document = {}
    raw = document.get("config") if isinstance(document, dict) else None
    config: dict[str, Any] = raw if isinstance(raw, dict) else {}
    return ImageConfig(
        env=tuple(config.get("Env") or ()),
        cmd=_strings_or_none(config.get("Cmd")),
        entrypoint=_strings_or_none(config.get("Entrypoint")),
        user=str(config.get("User") or ""), working_dir=str(config.get("WorkingDir") or ""),
        labels=tuple(sorted((config.get("Labels") or {}).items())),
        exposed_ports=tuple(sorted(config.get("ExposedPorts") or {})),
        volumes=tuple(sorted(config.get("Volumes") or {})),
        stop_signal=str(config.get("StopSignal") or ""),
        healthcheck=_healthcheck(config.get("Healthcheck")),
        on_build=tuple(config.get("OnBuild") or ()), shell=tuple(config.get("Shell") or ()),
        author=str(document.get("author") or "") if isinstance(document, dict) else "",
        history=_history(document.get("history") if isinstance(document, dict) else None))


def _strings_or_none(value: Any) -> tuple[str, ...] | None:
    return None if value is None else tuple(str(item) for item in value)


def _healthcheck(value: Any) -> Healthcheck | None:
    if not isinstance(value, dict) or not value.get("Test"):
        return None
    return Healthcheck(test=tuple(value["Test"]), interval=int(value.get("Interval") or 0),
                       timeout=int(value.get("Timeout") or 0),
                       start_period=int(value.get("StartPeriod") or 0),
                       start_interval=int(value.get("StartInterval") or 0),
                       retries=int(value.get("Retries") or 0))


def _history(value: Any) -> tuple[HistoryEntry, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(HistoryEntry(created_by=str(item.get("created_by") or ""),
                              empty_layer=bool(item.get("empty_layer")),
                              comment=str(item.get("comment") or ""))
                 for item in value if isinstance(item, dict))
