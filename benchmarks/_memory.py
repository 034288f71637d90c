"""The ``memory`` case (issue 10): what the idle service holds, beside dockerd + containerd.

Each tool builds the suite's app (benchmarks/_cases.py) once untimed (dockyard's first
build starts its embedded service), then once more with a changed source file (its
``COPY src/`` and last ``RUN`` run again) while a thread samples, every 0.1 s, the summed
RSS and PSS of the tool's processes: the largest sums are the peak.  After
``SETTLE_SECONDS`` without work, every process is read once more: the idle figures.

The processes: dockyard's daemon and its descendants (Ray's GCS, raylet and agents, the
coordinator and worker actors, and anything they run); the private dockerd and its
descendants (containerd, and what a build runs).  Three sums (devkit/processes.py): RSS
counts a page shared by several processes once per process (the service's five Python
processes share libpython and Ray's libraries); PSS divides a shared page among every
process of the machine that maps it, so it moves with what else runs (dockerd's PSS fell
by a third while other engineers' dockerds shared its binary); the footprint counts each
page of the tool's processes once among them, as if the tool ran alone.  The target is
on the footprint: what the tool costs a machine, whatever else runs there.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from benchmarks._cases import write_app
from benchmarks._stats import Row, ratio
from devkit.processes import ProcessMemory, footprint, snapshot, totals

__all__ = ["MEMORY_CASES", "MemoryResult", "describe", "measure_memory", "memory_rows",
           "process_table"]

MEMORY_CASES = ("memory",)
SETTLE_SECONDS = 5.0  # idle before the idle reading (Ray ends an idle worker after 1 s)
SAMPLE_SECONDS = 0.1
MIB = 1024  # KiB per MiB: /proc gives KiB


@dataclass(frozen=True)
class MemoryResult:
    """One tool's memory: its processes idle after a build, and the peak sums (KiB)."""

    tool: str
    idle: tuple[ProcessMemory, ...]
    idle_footprint: int  # the idle processes' pages counted once among them
    peak_rss: int
    peak_pss: int
    peak_footprint: int

    @property
    def idle_rss(self) -> int:
        return totals(self.idle)[0]

    @property
    def idle_pss(self) -> int:
        return totals(self.idle)[1]


class _Sampler:
    """The largest summed RSS and PSS of ``pids()`` seen while it runs."""

    def __init__(self, pids: Callable[[], Sequence[int]]) -> None:
        self._pids = pids
        self._stop = threading.Event()
        self.peak_rss = 0  # KiB, the largest RSS sum of one sample
        self.peak_pss = 0  # KiB, the largest PSS sum of one sample
        self.peak_footprint = 0  # KiB, the largest footprint of one sample

    def sample(self) -> None:
        pids = self._pids()
        rss, pss = totals(snapshot(pids))
        self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
        self.peak_footprint = max(self.peak_footprint, footprint(pids))

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self.sample()

    @contextmanager
    def running(self) -> Iterator[_Sampler]:
        thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)
        self.sample()
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()
            self.sample()


def measure_memory(name: str, build: Callable[[Path], float], pids: Callable[[], list[int]],
                   work: Path, base: str, settle: float = SETTLE_SECONDS) -> MemoryResult:
    """Build the app with ``build`` (warm-up), again with a change while sampling
    ``pids()``, then read the idle processes after ``settle`` seconds."""
    context = work / f"memory-{name}"
    write_app(context, base, "memory-0")
    build(context)
    write_app(context, base, "memory-1")
    with _Sampler(pids).running() as sampler:
        build(context)
    threading.Event().wait(settle)
    idle = pids()
    return MemoryResult(name, tuple(snapshot(idle)), footprint(idle), sampler.peak_rss,
                        sampler.peak_pss, sampler.peak_footprint)


def describe(kib: int) -> str:
    return f"{kib / MIB:.0f} MiB"


def _idle(result: MemoryResult) -> str:
    return f"{describe(result.idle_footprint)}, {len(result.idle)} processes"


def memory_rows(ours: MemoryResult, theirs: MemoryResult, path: str) -> list[Row]:
    """The idle footprint against dockerd + containerd's (the target); idle PSS and RSS
    and the peaks (info)."""
    return [
        Row("idle memory after a build (pages counted once among the tool's processes): "
            "the service vs dockerd + containerd", _idle(ours), _idle(theirs),
            ratio(ours.idle_footprint, theirs.idle_footprint), 1.0, True, path),
        Row("the same, PSS (shared pages divided with the whole machine)",
            describe(ours.idle_pss), describe(theirs.idle_pss),
            ratio(ours.idle_pss, theirs.idle_pss), None, True, path),
        Row("the same, RSS (shared pages counted once per process)",
            describe(ours.idle_rss), describe(theirs.idle_rss),
            ratio(ours.idle_rss, theirs.idle_rss), None, True, path),
        Row("peak during a build, sampled every 0.1 s (counted once; PSS; RSS)",
            f"{describe(ours.peak_footprint)}; {describe(ours.peak_pss)}; "
            f"{describe(ours.peak_rss)}",
            f"{describe(theirs.peak_footprint)}; {describe(theirs.peak_pss)}; "
            f"{describe(theirs.peak_rss)}",
            ratio(ours.peak_footprint, theirs.peak_footprint), None, True, path),
    ]


def process_table(results: Sequence[MemoryResult]) -> str:
    """Each tool's idle processes, one Markdown row each, then its total."""
    lines = ["| tool | process | RSS | PSS |", "|---|---|---|---|"]
    for result in results:
        for one in sorted(result.idle, key=lambda p: (-p.pss, p.kind)):
            lines.append(f"| {result.tool} | `{one.kind}` | {describe(one.rss)} | "
                         f"{describe(one.pss)} |")
        lines.append(f"| {result.tool} | **total, {len(result.idle)} processes** | "
                     f"**{describe(result.idle_rss)}** | **{describe(result.idle_pss)}** |")
        lines.append(f"| {result.tool} | **counted once among them** | "
                     f"**{describe(result.idle_footprint)}** | |")
    return "\n".join(lines)
