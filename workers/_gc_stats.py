"""What the background garbage collector of this process removed: counters to read.

One collector runs in each worker process (workers/_gc.py); every run adds here.
``gc_statistics()`` is the function to read them (the metrics exporter, ``dockyard node
ls``, tests)::

    {"runs": 3,               # collector runs that finished (including those that found
                              # nothing to remove)
     "failures": 0,           # runs that stopped on an error (logged; the next run retries)
     "last_run": 1765000000.0,  # unix time the last run finished (0.0: none yet)
     "kinds": {"image": {"items": 4, "bytes": 81920}, "exec": {...},
               "context": {...}, "cachemount": {...}}}

Bytes are those of the files removed; an item is a cache record, a blob no record named,
an unpacked layer, a context content or a cache-mount directory.  Counts only grow, for
the life of the process (Prometheus counters' semantics).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

from ._gc_policy import KINDS

__all__ = ["count_failure", "count_run", "gc_statistics"]

_lock = threading.Lock()  # the collector counts from a thread; readers run anywhere
# kind -> [items, bytes] removed since the process started (only grows)
_removed: dict[str, list[int]] = {kind: [0, 0] for kind in KINDS}
_runs = [0, 0]  # [finished runs, failed runs] (only grow)
_last = [0.0]  # unix time of the last finished run


def count_run(removed: Mapping[str, tuple[int, int]]) -> None:
    """Add one finished run: ``removed`` maps a kind to (items, bytes) it removed."""
    with _lock:
        for kind, (items, size) in removed.items():
            counts = _removed.setdefault(kind, [0, 0])
            counts[0] += items
            counts[1] += size
        _runs[0] += 1
        _last[0] = time.time()


def count_failure() -> None:
    with _lock:
        _runs[1] += 1


def gc_statistics() -> dict[str, Any]:
    """A copy of the counters (see the module docstring)."""
    with _lock:
        return {"runs": _runs[0], "failures": _runs[1], "last_run": _last[0],
                "kinds": {kind: {"items": items, "bytes": size}
                          for kind, (items, size) in _removed.items()}}
