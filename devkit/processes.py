"""The processes of a service, what each one is, and the memory it holds (issue 10).

``kind(pid)`` names a process the way the issue's tables do: a native binary by its file
name (``gcs_server``, ``raylet``, ``dockerd``, ``containerd``), a Ray worker or agent by the
title Ray gives it (``ray::Coordinator``, ``ray::DashboardAgent``, ``ray::IDLE`` for a
Python worker with nothing to do), a Python script by its file (``dashboard.py``,
``monitor.py``, ``log_monitor.py``) and a module run with ``-m`` by its name
(``dockyard.cluster._daemon``).

``memory(pid)`` reads two figures from /proc: RSS (``VmRSS``: every resident page the
process maps, so a page of a shared library used by five processes counts five times in a
sum) and PSS (``smaps_rollup``'s ``Pss``: each shared page divided among the processes
that map it, so a sum over processes counts it once; shared memory, such as Ray's object
store in /dev/shm, is divided the same way).  PSS divides a page with every process of
the machine that maps it, so a tool's PSS shifts with what else runs (a second dockerd,
other Python processes of the same venv).  ``footprint(pids)`` does not: the pages of a
group of processes counted once among them, as if the group ran alone (each one's private
pages, plus each shared file region once).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ProcessMemory", "footprint", "kind", "memory", "snapshot", "totals"]


def kind(pid: int) -> str:
    """What process ``pid`` is (see the module doc); ``""`` when it is gone."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return ""
    words = [a.decode(errors="replace") for a in argv if a]
    if not words:
        return ""
    if words[0].startswith("ray::"):
        return words[0].split()[0]
    if "-m" in words[:-1]:
        return words[words.index("-m") + 1]
    if Path(words[0]).name.startswith("python"):
        scripts = [w for w in words[1:] if w.endswith(".py")]
        return Path(scripts[0]).name if scripts else Path(words[0]).name
    return Path(words[0]).name


@dataclass(frozen=True)
class ProcessMemory:
    """One process's memory, in KiB."""

    pid: int
    kind: str
    rss: int
    pss: int


def _field(path: Path, key: str) -> int:
    for line in path.read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def memory(pid: int) -> ProcessMemory | None:
    """``pid``'s RSS and PSS, or None when it is gone."""
    try:
        rss = _field(Path(f"/proc/{pid}/status"), "VmRSS")
        pss = _field(Path(f"/proc/{pid}/smaps_rollup"), "Pss")
    except (OSError, ValueError):
        return None
    return ProcessMemory(pid, kind(pid), rss, pss)


def snapshot(pids: Iterable[int]) -> list[ProcessMemory]:
    """The memory of each of ``pids`` still alive, by pid."""
    found = (memory(pid) for pid in sorted(set(pids)))
    return [one for one in found if one is not None and one.kind]


def totals(processes: Iterable[ProcessMemory]) -> tuple[int, int]:
    """The summed RSS and PSS (KiB)."""
    listed = list(processes)
    return sum(p.rss for p in listed), sum(p.pss for p in listed)


_PRIVATE = ("Private_Clean:", "Private_Dirty:")
_SHARED = ("Shared_Clean:", "Shared_Dirty:")


def _regions(pid: int) -> tuple[int, dict[str, int]]:
    """``pid``'s private KiB, and its shared KiB by mapped file region (dev, inode,
    offset; an anonymous shared region by its address: never merged)."""
    private, shared = 0, {}
    region = ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if not fields[0].endswith(":"):  # a mapping's header: address perms offset dev inode
            inode = fields[4]
            region = f"{fields[3]}:{inode}:{fields[2]}" if inode != "0" else f"{pid}:{fields[0]}"
        elif fields[0] in _PRIVATE:
            private += int(fields[1])
        elif fields[0] in _SHARED:
            shared[region] = shared.get(region, 0) + int(fields[1])
    return private, shared


def footprint(pids: Iterable[int]) -> int:
    """KiB of the pages of ``pids`` counted once among them: the sum of their private pages
    and, per shared file region, the most of it any one of them has resident."""
    private, shared = 0, {}
    for pid in set(pids):
        try:
            mine, regions = _regions(pid)
        except (OSError, ValueError, IndexError):
            continue
        private += mine
        for region, kib in regions.items():
            shared[region] = max(shared.get(region, 0), kib)
    return private + sum(shared.values())
