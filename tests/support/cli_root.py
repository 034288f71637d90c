"""The CLI run as a user runs it, against a private ``DOCKYARD_ROOT`` (its embedded
service): ``Dockyard(root, busybox, work).build(...)`` is a subprocess of ``python -m
dockyard build --progress=plain`` in ``work``; ``processes`` are the service's."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dockyard.cluster._ray import ray_temp_dir
from dockyard.cluster._service import Proc, RunPaths, process_tree

__all__ = ["PROJECT", "Dockyard", "private_root"]

PROJECT = Path(__file__).resolve().parents[2]


@dataclass
class Dockyard:
    """A root, and how to run the CLI against it."""

    root: Path
    busybox: str
    work: Path

    def run(self, *argv: str, env: dict[str, str] | None = None, timeout: float = 180
            ) -> subprocess.CompletedProcess[bytes]:
        environ = {**os.environ, "DOCKYARD_ROOT": str(self.root), "PYTHONPATH": str(PROJECT),
                   **(env or {})}
        return subprocess.run([sys.executable, "-m", "dockyard", *argv], cwd=self.work,
                              env=environ, capture_output=True, timeout=timeout, check=False)

    def build(self, *argv: str, env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess[bytes]:
        return self.run("build", "--progress=plain", *argv, env=env)

    def processes(self) -> set[Proc]:
        pid_file = RunPaths(self.root).pid
        if not pid_file.exists():
            return set()
        pid = int(pid_file.read_text())
        start = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        return {(pid, start)} | process_tree(pid)


@contextmanager
def private_root(busybox: str, prefix: str) -> Iterator[Dockyard]:
    """A new root and working directory for one test module's embedded service (named
    ``/tmp/PREFIX-*``); afterwards the service is stopped and both are removed."""
    root = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir="/tmp"))
    work = Path(tempfile.mkdtemp(prefix=f"{prefix}-work-"))
    found = Dockyard(root, busybox, work)
    try:
        yield found
    finally:
        found.run("stop", timeout=90)
        shutil.rmtree(ray_temp_dir(root), ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
