"""``make demo``'s driver, examples/demo.py, end to end: a loopback registry with the
busybox base image, ``dockyard build`` of examples/ for two platforms through the CLI and the
embedded service, each image run under runc.  It doubles as the end-to-end check of the CLI
path: a second run must be fully cached and give the same index.

Each run has its own DOCKYARD_ROOT; after it, the registry and the service are gone and the
demo's temp dir is removed, also when the demo fails."""

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

from cluster._service import RunPaths

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


@dataclass
class DemoRun:
    status: int
    stdout: str
    stderr: str

    def said(self) -> dict[str, str]:
        """Platform -> what its image printed."""
        lines = (line.partition(": ") for line in self.stdout.splitlines())
        return {platform: text for platform, _, text in lines if platform in SAYS}

    def index(self) -> tuple[str, dict[str, object]]:
        head, _, rest = self.stdout.partition("\n")
        found = re.fullmatch(r"image index (sha256:[0-9a-f]{64}):", head)
        assert found, self.stdout
        body = rest[:rest.index("\n}\n") + 2]
        return found.group(1), json.loads(body)

    def registry_pid(self) -> int:
        found = re.search(r"^demo: registry pid (\d+) on 127\.0\.0\.1:\d+, files in (\S+)$",
                          self.stderr, re.M)
        assert found, self.stderr
        assert not Path(found.group(2)).exists(), "the demo left its temp dir"
        return int(found.group(1))


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="dyd-", dir="/tmp"))
    try:
        yield path
    finally:
        env = {**os.environ, "DOCKYARD_ROOT": str(path), "PYTHONPATH": str(PROJECT)}
        subprocess.run([sys.executable, "-m", "cluster", "stop"], env=env,
                       capture_output=True, timeout=90, check=False)
        shutil.rmtree(path, ignore_errors=True)


def run_demo(root: Path, env: dict[str, str] | None = None) -> DemoRun:
    environ = {**os.environ, "DOCKYARD_ROOT": str(root), **(env or {})}
    done = subprocess.run([sys.executable, str(DEMO)], env=environ, capture_output=True,
                          text=True, timeout=240, check=False)
    return DemoRun(done.returncode, done.stdout, done.stderr)


def gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


def assert_cleaned_up(run: DemoRun, root: Path) -> None:
    assert gone(run.registry_pid()), "the demo's registry survived it"
    assert not RunPaths(root).socket.exists(), "the dockyard service survived the demo"


def test_demo_builds_runs_and_rebuilds_from_cache(root: Path) -> None:
    first = run_demo(root)
    assert first.status == 0, first.stderr
    assert first.said() == SAYS
    digest, index = first.index()
    platforms = [m["platform"] for m in index["manifests"]]  # type: ignore[attr-defined]
    assert platforms == [{"architecture": "amd64", "os": "linux"},
                         {"architecture": "arm64", "os": "linux"}]
    assert_cleaned_up(first, root)

    second = run_demo(root)
    assert second.status == 0, second.stderr
    assert second.said() == SAYS
    assert second.index()[0] == digest
    finals = [line.split(" ", 1)[1] for line in second.stderr.splitlines()
              if re.match(r"#\d+ (DONE|CACHED)", line)]
    assert finals and set(finals) == {"CACHED"}, second.stderr
    assert_cleaned_up(second, root)


@pytest.mark.parametrize(("env", "last_lines"), FAILURES)
def test_demo_failure_says_why_and_cleans_up(root: Path, env: dict[str, str],
                                             last_lines: list[str]) -> None:
    run = run_demo(root, env)
    assert run.status == 1
    assert run.stderr.rstrip("\n").splitlines()[-len(last_lines):] == last_lines
    assert_cleaned_up(run, root)
