"""The memory case's readings of /proc and its rows (no service, no build):
``pytest benchmarks``."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from benchmarks._memory import MemoryResult, memory_rows, process_table
from devkit.processes import ProcessMemory, footprint, kind, memory, snapshot, totals


def _kind_once_running(pid: int) -> str:
    """``kind(pid)`` once the new process shows its command line (empty for a moment
    after it starts)."""
    deadline = time.monotonic() + 10
    while not (found := kind(pid)) and time.monotonic() < deadline:
        time.sleep(0.01)
    return found


def test_kind_names_a_module_a_script_and_a_binary() -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    script = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)",
                               "monitor.py"])
    module = subprocess.Popen([sys.executable, "-m", "http.server", "0", "--bind",
                               "127.0.0.1"], stdout=subprocess.DEVNULL)
    try:
        assert _kind_once_running(sleeper.pid) == "sleep"
        assert _kind_once_running(script.pid) == "monitor.py"
        assert _kind_once_running(module.pid) == "http.server"
    finally:
        for child in (sleeper, script, module):
            child.kill()
            child.wait()
    assert kind(sleeper.pid) == ""


def test_memory_of_this_process_and_of_none() -> None:
    mine = memory(os.getpid())
    assert mine is not None and 0 < mine.pss <= mine.rss
    child = subprocess.Popen(["true"])
    child.wait()
    assert memory(child.pid) is None
    assert [p.pid for p in snapshot([os.getpid(), child.pid, os.getpid()])] == [os.getpid()]


def _result(tool: str, *kib: tuple[int, int]) -> MemoryResult:
    idle = tuple(ProcessMemory(n, f"p{n}", rss, pss) for n, (rss, pss) in enumerate(kib))
    return MemoryResult(tool, idle, idle_footprint=sum(p for _, p in kib) + 512,
                        peak_rss=sum(r for r, _ in kib) + 1024,
                        peak_pss=sum(p for _, p in kib) + 1024,
                        peak_footprint=sum(p for _, p in kib) + 2048)


def test_rows_compare_idle_pss_and_show_rss_and_peaks() -> None:
    ours = _result("dockyard service", (300 * 1024, 200 * 1024), (100 * 1024, 60 * 1024))
    theirs = _result("dockerd + containerd", (120 * 1024, 80 * 1024))
    assert totals(ours.idle) == (400 * 1024, 260 * 1024)
    idle, pss, rss, peak = memory_rows(ours, theirs, "path")
    assert idle.dockyard == "260 MiB, 2 processes"
    assert idle.ratio == (260 * 1024 + 512) / (80 * 1024 + 512)
    assert idle.target == 1.0 and idle.met is False
    assert pss.ratio == 260 / 80 and pss.target is None
    assert rss.ratio == 400 / 120 and rss.target is None
    assert peak.dockyard == "262 MiB; 261 MiB; 401 MiB"
    table = process_table([ours, theirs]).splitlines()
    assert table[2] == "| dockyard service | `p0` | 300 MiB | 200 MiB |"
    assert table[4] == "| dockyard service | **total, 2 processes** | **400 MiB** | **260 MiB** |"
    assert table[5] == "| dockyard service | **counted once among them** | **260 MiB** | |"


def test_footprint_counts_a_shared_page_once() -> None:
    sleepers = [subprocess.Popen(["sleep", "30"]) for _ in range(2)]
    try:
        for one in sleepers:
            _kind_once_running(one.pid)
        one, both = footprint([sleepers[0].pid]), footprint(s.pid for s in sleepers)
        rss, _ = totals(snapshot(s.pid for s in sleepers))
        assert 0 < one < both < rss  # the second sleep shares the first one's libraries
        assert footprint([sleepers[0].pid, sleepers[0].pid]) == one
    finally:
        for child in sleepers:
            child.kill()
            child.wait()
    assert footprint(s.pid for s in sleepers) == 0
