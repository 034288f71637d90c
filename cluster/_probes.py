"""``/healthz`` and ``/readyz``: the endpoint's probes for an orchestrator (the Helm chart's
liveness and readiness probes, helm/dockyard).

- ``/healthz``: 200 while the process serves HTTP (503 once it is stopping).
- ``/readyz``: 200 when the coordinator's registry holds at least one worker of each
  required arch (``dockyard serve --ready-arch amd64,arm64``); with none required, at
  least one worker of any arch.  Else 503.  A worker counts for the arches it runs
  natively: an amd64 worker that emulates arm64 does not make an arm64 group ready.

Both are plain GETs without the client token (a kubelet's probe has none), so their
bodies say only counts of workers per arch and what is missing: no names, addresses,
roots or tokens.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aiohttp import web

from dockyard.scheduler._errors import UsageError

from ._ray import ARCHES

__all__ = ["HEALTH_PATH", "PROBE_PATHS", "READY_PATH", "Probes", "parse_ready_arches",
           "readiness"]

HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
PROBE_PATHS = frozenset({HEALTH_PATH, READY_PATH})
#: How long ``/readyz`` waits for the coordinator's list of workers (seconds).
READY_TIMEOUT = 5.0


def parse_ready_arches(text: str | None) -> tuple[str, ...]:
    """``amd64,arm64`` -> ``("amd64", "arm64")``; None or empty: ``()`` (any arch)."""
    arches: list[str] = []
    for item in (text or "").split(","):
        arch = item.strip()
        if not arch:
            continue
        if arch not in ARCHES:
            raise UsageError(f"invalid --ready-arch {arch!r}: use {', '.join(ARCHES)}")
        if arch not in arches:
            arches.append(arch)
    return tuple(arches)


def readiness(workers: Iterable[Mapping[str, Any]], required: Sequence[str]
              ) -> tuple[bool, dict[str, Any]]:
    """Whether the cluster is ready, and the body that says so (counts only)."""
    native: dict[str, int] = {}
    for worker in workers:
        for arch in worker.get("native", ()):
            native[str(arch)] = native.get(str(arch), 0) + 1
    if required:
        missing = [arch for arch in required if not native.get(arch)]
        ready = not missing
    else:
        missing = [] if native else ["a worker of any arch"]
        ready = bool(native)
    body: dict[str, Any] = {"ready": ready, "workers": dict(sorted(native.items())),
                            "required": list(required) or "any"}
    if missing:
        body["missing"] = missing
    return ready, body


class Probes:
    """The two handlers over a coordinator (anything with ``async call("workers")``)."""

    def __init__(self, coordinator: Any, required: Sequence[str],
                 stopping: asyncio.Event) -> None:
        self._coordinator = coordinator
        self._required = tuple(required)  # arches that each need a native worker
        self._stopping = stopping  # set once the endpoint is shutting down

    def routes(self, app: web.Application) -> None:
        app.router.add_get(HEALTH_PATH, self.healthz)
        app.router.add_get(READY_PATH, self.readyz)

    async def healthz(self, request: web.Request) -> web.Response:
        if self._stopping.is_set():
            return web.json_response({"status": "stopping"}, status=503)
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        if self._stopping.is_set():
            return web.json_response({"ready": False, "error": "stopping"}, status=503)
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                workers = await self._coordinator.call("workers")
        except Exception:  # noqa: BLE001 -- any failure is "not ready", said without detail
            return web.json_response(
                {"ready": False, "error": "the coordinator did not answer"}, status=503)
        ready, body = readiness(workers, self._required)
        return web.json_response(body, status=200 if ready else 503)
