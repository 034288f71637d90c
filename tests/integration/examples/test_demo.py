"""``make demo``'s driver, examples/demo.py, end to end: a loopback registry with the
busybox base image, a local cluster (an amd64 head on 127.0.0.2, an arm64 node on
127.0.0.3, ``dockyard serve``), ``dockyard build --endpoint`` of examples/ for two
platforms, each executed step saying which node ran it, each image run under runc,
``dockyard node ls``.  A second run in the same directory works as the first.

Each test has its own DOCKYARD_DEMO_DIR; after a run, the registry, the endpoint and the
nodes are gone (no process names one of its roots) and the demo's temp dir is removed,
also when the demo fails."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.progress import around_solve, plain_blocks

from devkit.local_cluster import LocalCluster, root_processes

PROJECT = Path(__file__).resolve().parents[3]
DEMO = PROJECT / "examples" / "demo.py"

SAYS = {
    "linux/amd64": "hello from dockyard (greet 1.0.0, built for amd64, running on x86_64)",
    "linux/arm64": "hello from dockyard (greet 1.0.0, built for arm64, running on aarch64)",
}

FAILURES = [
    # (environment, the demo's last lines on stderr)
    ({"DOCKYARD_BUSYBOX_ARM64": "/nonexistent/busybox"},
     ["demo: error: the arm64 busybox /nonexistent/busybox is missing",
      "hint: run 'make setup'"]),
]
NODES = {"127.0.0.2", "127.0.0.3"}
STAMP = re.compile(r"^demo \[\s*[0-9.]+s\]: ", re.M)  # the demo's lines, seconds dropped


@dataclass
class DemoRun:
    status: int
    stdout: str
    stderr: str

    def said(self) -> dict[str, str]:
        """Platform -> what its image printed."""
        lines = (line.partition(": ") for line in self.stdout.splitlines())
        return {platform: text for platform, _, text in lines if platform in SAYS}

    def lines(self) -> list[str]:
        """stderr, the demo's own lines without their seconds."""
        return STAMP.sub("demo: ", self.stderr).splitlines()

    def index(self) -> tuple[str, dict[str, object]]:
        head, _, rest = self.stdout.partition("\n")
        found = re.fullmatch(r"image index (sha256:[0-9a-f]{64}):", head)
        assert found, self.stdout
        body = rest[:rest.index("\n}\n") + 2]
        return found.group(1), json.loads(body)

    def registry_pid(self) -> int:
        found = re.search(r"^demo: registry pid (\d+) on 127\.0\.0\.1:\d+, files in (\S+)$",
                          "\n".join(self.lines()), re.M)
        assert found, self.stderr
        assert not Path(found.group(2)).exists(), "the demo left its temp dir"
        return int(found.group(1))


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="dyd-", dir="/tmp"))
    try:
        yield path
    finally:
        LocalCluster(path).clear()  # what a failed assertion left
        shutil.rmtree(path, ignore_errors=True)


def run_demo(root: Path, env: dict[str, str] | None = None) -> DemoRun:
    environ = {**os.environ, "DOCKYARD_DEMO_DIR": str(root), **(env or {})}
    done = subprocess.run([sys.executable, str(DEMO)], env=environ, capture_output=True,
                          text=True, timeout=400, check=False)
    return DemoRun(done.returncode, done.stdout, done.stderr)


def gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


def assert_cleaned_up(run: DemoRun, root: Path) -> None:
    assert gone(run.registry_pid()), "the demo's registry survived it"
    left = {path.name: pids for path in root.iterdir() if (pids := root_processes(path))}
    assert not left, f"processes of the demo's roots survived it: {left}"


def placements(stderr: str) -> dict[str, set[str]]:
    """Step number -> how it ended (DONE, CACHED) and the nodes it says it ran on (the
    graph's steps: not those BuildKit shows around the solve, which run on no node)."""
    found: dict[str, set[str]] = {}
    around = {number.lstrip("#") for number, lines in plain_blocks(stderr).items()
              if around_solve(lines[0])}
    for line in stderr.splitlines():
        if line.startswith("#") and line[1:].partition(" ")[0] in around:
            continue
        if ended := re.match(r"#(\d+) (DONE|CACHED)", line):
            found.setdefault(ended.group(1), set()).add(ended.group(2))
        if ran := re.match(r"#(\d+) running on dockyard-worker-\w+ at (\S+)$", line):
            found.setdefault(ran.group(1), set()).add(ran.group(2))
    return found


def check_run(run: DemoRun, root: Path) -> None:
    assert run.status == 0, run.stderr
    assert run.said() == SAYS
    _, index = run.index()
    platforms = [m["platform"] for m in index["manifests"]]  # type: ignore[attr-defined]
    assert platforms == [{"architecture": "amd64", "os": "linux"},
                         {"architecture": "arm64", "os": "linux"}]
    steps = placements(run.stderr)
    assert steps, run.stderr
    for step, seen in steps.items():  # --no-cache: every step runs, on a node it names
        assert "DONE" in seen and len(seen & NODES) == 1, (step, seen, run.stderr)
    listed = re.findall(r"^dockyard-worker-\w+\s+(\S+)\s+(\w+)\s", run.stdout, re.M)
    assert sorted(listed) == [("127.0.0.2", "amd64"), ("127.0.0.3", "arm64")], run.stdout
    assert_cleaned_up(run, root)


def test_demo_builds_on_a_cluster_runs_and_runs_again(root: Path) -> None:
    first = run_demo(root)
    check_run(first, root)
    second = run_demo(root)
    check_run(second, root)


@pytest.mark.parametrize(("env", "last_lines"), FAILURES)
def test_demo_failure_says_why_and_cleans_up(root: Path, env: dict[str, str],
                                             last_lines: list[str]) -> None:
    run = run_demo(root, env)
    assert run.status == 1
    assert run.lines()[-len(last_lines):] == last_lines
    assert_cleaned_up(run, root)
