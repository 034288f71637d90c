"""What a worker process counts for the cluster's metrics (cluster/_metrics.py sums every
worker's ``report`` at a scrape): plain counts, since this process started.

- cache lookups by backend kind, object and result: the node's own store (``worker``:
  its ``statistics()``, exact) plus each remote backend a build used (``--cache-from``,
  ``--cache-to``, the cluster's cache; their ``name``: ``s3``, ``local``...), added when
  the build's session closes (``absorb``);
- blob bytes read from and written to remote backends, by kind (``moved``);
- build-context bytes received from clients (``received``).

Everything here is counts under bounded labels: never a key, a digest or a path.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from dockyard.cache_backends._protocol import BackendStatistics, CacheBackend

__all__ = ["WORKER_METRICS", "WorkerMetrics", "backend_kind"]

REPORT_VERSION = 1
#: The label of a node's own store (its LocalBackend under DOCKYARD_ROOT).
STORE = "worker"


def backend_kind(backend: object) -> str:
    """A backend's kind (its class's ``name``: ``s3``, ``local``...), a bounded label."""
    name = getattr(type(backend), "name", None)
    return name if isinstance(name, str) and name.isidentifier() else "other"


class WorkerMetrics:
    """This process's counts."""

    def __init__(self) -> None:
        # (backend kind, object, result) -> lookups of remote backends whose builds ended
        self.cache: dict[tuple[str, str, str], int] = {}
        self.cache_bytes: dict[tuple[str, str], int] = {}  # (backend kind, direction) -> bytes
        self.context_bytes = 0  # build-context bytes received from clients

    def absorb(self, backends: Iterable[CacheBackend]) -> None:
        """Add the lookups of a finished build's remote ``backends`` (each once)."""
        seen: set[int] = set()
        for backend in backends:
            if id(backend) not in seen:
                seen.add(id(backend))
                self._add(self.cache, backend_kind(backend), backend.statistics())

    def moved(self, backend: object, direction: str, size: int) -> None:
        """``size`` blob bytes ``read`` from or ``written`` to a remote ``backend``."""
        key = (backend_kind(backend), direction)
        self.cache_bytes[key] = self.cache_bytes.get(key, 0) + size

    def received(self, size: int) -> None:
        self.context_bytes += size

    def report(self, store: CacheBackend | None) -> dict[str, Any]:
        """The plain-data report a scrape asks for (``store``: the node's own, if open)."""
        cache = dict(self.cache)
        if store is not None:
            self._add(cache, STORE, store.statistics())
        from ._gc_stats import gc_statistics  # noqa: PLC0415 -- the collector's module

        gc = gc_statistics()
        return {"version": REPORT_VERSION,
                "gc": {"runs": gc["runs"], "failures": gc["failures"],
                       "removed": [[kind, counts["items"], counts["bytes"]]
                                   for kind, counts in sorted(gc["kinds"].items())]},
                "cache": [[*labels, count] for labels, count in sorted(cache.items())],
                "cache_bytes": [[*labels, size]
                                for labels, size in sorted(self.cache_bytes.items())],
                "context_bytes": self.context_bytes}

    @staticmethod
    def _add(into: dict[tuple[str, str, str], int], kind: str,
             stats: BackendStatistics) -> None:
        for obj, result, count in (("record", "hit", stats.record_hits),
                                   ("record", "miss", stats.record_misses),
                                   ("blob", "hit", stats.blob_hits),
                                   ("blob", "miss", stats.blob_misses)):
            key = (kind, obj, result)
            into[key] = into.get(key, 0) + count


#: The counts of this worker process.
WORKER_METRICS = WorkerMetrics()
