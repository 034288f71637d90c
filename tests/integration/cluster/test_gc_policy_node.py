"""``dockyard node start --gc-policy/--gc-interval`` for real: a one-node cluster whose
worker runs with the flags' policies, as ``dockyard du`` under its root shows."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from pathlib import Path

from support.cluster import dockyard, root_processes

from dockyard.cluster._gc_cmd import human_size

HEAD_IP = "127.0.0.9"


def test_node_start_gc_flags_reach_the_worker() -> None:
    root = Path(tempfile.mkdtemp(prefix="dyg-", dir="/tmp")) / "head"
    try:
        dockyard(root, "node", "start", "--head", "--node-ip", HEAD_IP, "--slots", "1",
                 "--gc-policy", "keep-duration=2d,filter=context,filter=cachemount",
                 "--gc-policy", "keep-storage=25%,all=true", "--gc-interval", "90s")
        out = dockyard(root, "du").stdout.decode()
        assert "GC policy in force (written by this root's worker):" in out
        assert "GC: every 90s and after each build, policies from --gc-policy" in out
        assert "  1: keep-duration=2d,filter=context,filter=cachemount\n" in out
        quarter = shutil.disk_usage(root).total // 4
        assert f"  2: keep-storage=25%,all=true  (keep {human_size(quarter)})" in out
    finally:
        dockyard(root, "node", "stop", check=False)
        for pid in root_processes(root):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(root.parent, ignore_errors=True)
