"""The coordinator's view of the cluster: which workers exist, where every blob is, and
which worker runs a vertex (DESIGN.md: platform, then cache locality, then load).

- ``WorkerEntry``: one worker actor as the coordinator knows it (what its ``info()``
  answered, and how many executes it runs for the coordinator now).
- ``Registry``: the live workers by actor name.  ``refresh`` asks a ``discover`` function
  (Ray's named actors in a cluster; a fixed map in tests) and pings each new worker for its
  ``info``; a worker that vanished or that a call found dead is ``lost`` (forgotten, and
  its blobs with it).  A node that joins is seen at the next refresh: builds running then
  place their next vertices on it too.
- ``BlobIndex``: blob digest -> the workers holding it (or able to serve it: a worker
  that imported a record from a shared cache fetches its blobs on demand).
- ``Placement``: the choice itself.  Only an exec op needs a worker of its platform's
  architecture: a native one, or else one that emulates it; file ops, sources and merges
  run anywhere (BuildKit runs them without the platform too), so a build that executes
  nothing on its target platform needs no worker of it.  Among the candidates: the worker
  holding the most bytes of the vertex's input layers, then the most free slots.

No Ray here: handles are ``WorkerHandle``s (cluster/_dispatch.py), discovery a function.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from dockyard.cache_backends._records import LayerDescriptor
from dockyard.scheduler._errors import DockyardError, SolveError
from dockyard.scheduler._graph import BuildGraph, Vertex
from dockyard.scheduler._platform import Platform, default_platform

__all__ = ["BlobIndex", "Discover", "Placement", "Registry", "WorkerEntry"]

_log = logging.getLogger(__name__)

#: How long a new worker has to answer ``info`` before the next refresh tries again.
INFO_TIMEOUT = 10.0
#: Seconds between the looks of a caller waiting for a lost worker to come back.
REJOIN_POLL = 0.5


class Handle(Protocol):
    """A worker actor as the registry calls it (``dockyard.cluster._dispatch.WorkerHandle``)."""

    async def call(self, method: str, *args: Any) -> Any: ...


#: The workers that exist now, by actor name (their handles).
Discover = Callable[[], Awaitable[Mapping[str, Any]]]


@dataclass(eq=False)
class WorkerEntry:
    """One worker actor (compared by identity)."""

    name: str  # its actor name: unique in the cluster
    handle: Any  # its WorkerHandle
    arches: tuple[str, ...]  # the architectures it runs, native first
    native: tuple[str, ...]  # those it runs without emulation
    slots: int  # executes it runs at once (>= 1)
    node_ip: str = ""
    root: str = ""
    running: int = 0  # executes the coordinator has sent it that have not ended (>= 0)
    executed: int = 0  # executes it finished for the coordinator

    @classmethod
    def from_info(cls, name: str, handle: Any, info: Mapping[str, Any]) -> WorkerEntry:
        arches = tuple(str(a) for a in info.get("arches", ()))
        native = tuple(str(a) for a in info.get("native", arches[:1]))
        return cls(name=name, handle=handle, arches=arches, native=native,
                   slots=max(1, int(info.get("slots", 1))),
                   node_ip=str(info.get("node_ip", "")), root=str(info.get("root", "")))

    @property
    def free(self) -> int:
        return self.slots - self.running

    def emulates(self, arch: str) -> bool:
        return arch in self.arches and arch not in self.native

    def describe(self) -> str:
        where = f" at {self.node_ip}" if self.node_ip else ""
        return f"{self.name}{where}"


class Registry:
    """The live workers of the cluster, by actor name."""

    def __init__(self, discover: Discover | None = None) -> None:
        self._discover = discover  # None: the workers added by hand are all there are
        self.entries: dict[str, WorkerEntry] = {}  # live workers by name
        self.index = BlobIndex()  # where the blobs are
        self._refreshing: asyncio.Task[None] | None = None  # the refresh in progress
        self.lost_names: list[str] = []  # workers found dead, oldest first (for stats)
        # Set (and replaced) whenever a slot frees or the workers change: what a vertex
        # waiting for a free slot waits on.
        self._changed = asyncio.Event()

    def __repr__(self) -> str:
        return f"<Registry workers={len(self.entries)} lost={len(self.lost_names)}>"

    def add(self, name: str, handle: Any, info: Mapping[str, Any]) -> WorkerEntry:
        entry = WorkerEntry.from_info(name, handle, info)
        self.entries[name] = entry
        self.changed()
        return entry

    def changed(self) -> None:
        """A slot freed or the workers changed: wake every vertex waiting for a slot."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for_change(self) -> None:
        await self._changed.wait()

    def live(self) -> list[WorkerEntry]:
        return list(self.entries.values())

    def lost(self, entry: WorkerEntry) -> None:
        """``entry`` died: forget it and the blobs only it held."""
        if self.entries.get(entry.name) is entry:
            del self.entries[entry.name]
            self.lost_names.append(entry.name)
            _log.warning("worker %s lost", entry.describe())
        self.index.forget(entry.name)
        self.changed()

    async def rejoined(self, timeout: float, ready: Callable[[], bool] | None = None
                       ) -> None:
        """Refresh until ``ready()`` (default: any live worker) -- a worker that can do
        what waits is back: Ray restarts a killed one in seconds --, at most ``timeout``
        seconds; the caller then goes on, or refuses."""
        ready = ready or (lambda: bool(self.entries))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        await self.refresh()
        while not ready() and loop.time() < deadline:
            await asyncio.sleep(REJOIN_POLL)
            await self.refresh()

    async def refresh(self) -> None:
        """Learn the workers that joined and forget those that left (one refresh at a
        time; a caller arriving during one waits for it)."""
        if self._discover is None:
            return
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self._refresh(self._discover))
        await asyncio.shield(self._refreshing)

    async def _refresh(self, discover: Discover) -> None:
        found = dict(await discover())
        for name in [n for n in self.entries if n not in found]:
            self.lost(self.entries[name])
        new = [(name, handle) for name, handle in found.items() if name not in self.entries]
        infos = await asyncio.gather(*(_info(handle) for _, handle in new))
        for (name, handle), info in zip(new, infos, strict=True):
            if info is not None:
                self.add(name, handle, info)


async def _info(handle: Any) -> Mapping[str, Any] | None:
    """The worker's ``info()``, or None when it does not answer in time."""
    with contextlib.suppress(DockyardError, TimeoutError):
        async with asyncio.timeout(INFO_TIMEOUT):
            info: Mapping[str, Any] = await handle.call("info")
            return info
    return None


class BlobIndex:
    """Blob digest -> the names of the workers holding it, and its size."""

    def __init__(self) -> None:
        self._holders: dict[str, set[str]] = {}  # digest -> worker names (never empty)
        self._sizes: dict[str, int] = {}  # digest -> compressed size in bytes

    def __repr__(self) -> str:
        return f"<BlobIndex blobs={len(self._holders)}>"

    def add(self, worker: str, layers: Iterable[LayerDescriptor]) -> None:
        for layer in layers:
            self._holders.setdefault(layer.digest, set()).add(worker)
            self._sizes[layer.digest] = layer.size

    def holders(self, digest: str) -> set[str]:
        return set(self._holders.get(digest, ()))

    def held_bytes(self, worker: str, layers: Iterable[LayerDescriptor]) -> int:
        unique = {layer.digest: layer.size for layer in layers}
        return sum(size for digest, size in unique.items()
                   if worker in self._holders.get(digest, ()))

    def peers_for(self, worker: str, layers: Iterable[LayerDescriptor]) -> dict[str, str]:
        """For each of ``layers`` that ``worker`` is not known to hold: a worker that
        holds it (the lexically first: deterministic)."""
        peers: dict[str, str] = {}
        for layer in layers:
            holders = self._holders.get(layer.digest, set())
            if holders and worker not in holders:
                peers[layer.digest] = min(holders)
        return peers

    def forget(self, worker: str) -> None:
        for digest in [d for d, names in self._holders.items() if worker in names]:
            names = self._holders[digest]
            names.discard(worker)
            if not names:
                del self._holders[digest]
                self._sizes.pop(digest, None)


class Placement:
    """Which worker runs a vertex, among the registry's live workers."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def __repr__(self) -> str:
        return f"<Placement {self.offers()}>"

    def candidates(self, arch: str | None) -> tuple[list[WorkerEntry], bool]:
        """The workers that can run an op needing ``arch`` (None: any), and whether they
        emulate it (native workers first; emulating ones only when no native one exists)."""
        live = self.registry.live()
        if arch is None:
            return live, False
        native = [w for w in live if arch in w.native]
        if native:
            return native, False
        return [w for w in live if w.emulates(arch)], True

    def choose(self, vertex: Vertex, layers: Sequence[LayerDescriptor],
               avoid: Iterable[str] = ()) -> tuple[WorkerEntry | None, bool]:
        """The worker for ``vertex`` whose inputs are ``layers``, and whether it emulates
        the vertex's platform; None when every candidate's slots are taken (wait for
        ``Registry.wait_for_change`` and ask again).  Workers named in ``avoid`` only if
        nobody else can; a ``SolveError`` when nobody can at all."""
        pool, emulated = self.candidates(needed_arch(vertex))
        if not pool:
            raise self._refusal(vertex)
        avoided = set(avoid)
        pool = [w for w in pool if w.name not in avoided] or pool
        free = [w for w in pool if w.free > 0]
        if not free:
            return None, emulated
        index = self.registry.index
        best = max(free, key=lambda w: (index.held_bytes(w.name, layers), w.free,
                                        _reverse(w.name)))
        return best, emulated

    async def take(self, vertex: Vertex, layers: Sequence[LayerDescriptor],
                   avoid: Iterable[str] = ()) -> tuple[WorkerEntry, bool]:
        """``choose``, waiting for a free slot; the slot is taken (``release`` it)."""
        while True:
            entry, emulated = self.choose(vertex, layers, avoid)
            if entry is not None:
                entry.running += 1
                return entry, emulated
            await self.registry.wait_for_change()

    def release(self, entry: WorkerEntry) -> None:
        entry.running -= 1
        self.registry.changed()

    def any_worker(self, avoid: Iterable[str] = ()) -> WorkerEntry:
        """A live worker for a call that needs no particular one (the least loaded)."""
        avoided = set(avoid)
        live = [w for w in self.registry.live() if w.name not in avoided]
        live = live or self.registry.live()
        if not live:
            raise SolveError("the cluster has no live worker",
                             hint="start a node ('dockyard node start') and build again")
        return max(live, key=lambda w: (w.free, _reverse(w.name)))

    def check(self, graph: BuildGraph) -> None:
        """Every exec vertex of ``graph`` has a worker: else a ``SolveError`` naming the
        first that has none and what the cluster offers, before anything runs."""
        for vertex in graph.vertices.values():
            arch = needed_arch(vertex)
            if arch is not None and not self.candidates(arch)[0]:
                raise self._refusal(vertex)

    def offers(self) -> str:
        """What the cluster runs: ``linux/amd64 (2 workers), linux/arm64 (emulated, 1
        worker)``."""
        arches: dict[str, list[WorkerEntry]] = {}
        for worker in self.registry.live():
            for arch in worker.arches:
                arches.setdefault(arch, []).append(worker)
        parts = []
        for arch, workers in sorted(arches.items()):
            emulated = "" if any(arch in w.native for w in workers) else "emulated, "
            count = f"{len(workers)} worker{'s' if len(workers) > 1 else ''}"
            parts.append(f"linux/{arch} ({emulated}{count})")
        return ", ".join(parts) or "no workers"

    def _refusal(self, vertex: Vertex) -> SolveError:
        platform = vertex.platform or default_platform()
        error = SolveError(f"no worker can run {_describe(platform)}: this cluster offers "
                           f"{self.offers()}",
                           hint="build for a platform the cluster serves (--platform), or "
                                "add a node of that architecture ('dockyard node start "
                                "--arch ...' or '--emulate ...')")
        error.vertex = vertex.name or vertex.op.kind
        error.location = vertex.location
        return error


def needed_arch(vertex: Vertex) -> str | None:
    """The architecture a worker must run for ``vertex``: an exec op's platform's (the
    coordinator's own platform when the vertex has none), else None (any worker)."""
    if vertex.op.kind != "exec":
        return None
    platform = vertex.platform or default_platform()
    if platform.os != "linux":
        return f"{platform.os}/{platform.architecture}"  # no worker runs another OS
    return platform.architecture


def _describe(platform: Platform) -> str:
    return f"platform {platform}"


def _reverse(name: str) -> tuple[int, ...]:
    """A key that makes ``max`` prefer the lexically first name among equals."""
    return tuple(-ord(c) for c in name)
