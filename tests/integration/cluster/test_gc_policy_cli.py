"""A worker's background collector, end to end: the embedded service started with a
small keep-storage (``DOCKYARD_GC_CONFIG``, short interval for the test) runs builds that
each add more than the bound; while a long RUN of another build holds its inputs, the
store is brought under the bound in the background, and that build's inputs survive (its
later steps read them) and it succeeds.  ``dockyard du`` shows the policy in force; bad
policies are refused before anything starts."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.cli_root import Dockyard, private_root

from dockyard.workers._gc import measure

BOUND = 6 * 1024**2  # keep-storage of the test's worker
CONFIG = """\
interval = "0.3s"
grace = "1s"
[[gcpolicy]]
keepBytes = "6MB"
all = true
"""
LONG = """\
FROM BUSYBOX
RUN sleep 12 && echo slept > /slept
RUN busybox ls /bin > /listing && cat /slept
"""
BIG = """\
FROM BUSYBOX
ARG N
RUN echo "$N" && head -c 4000000 /dev/urandom > /big
"""


@pytest.fixture(scope="module")
def dockyard(busybox_image: Any) -> Iterator[Dockyard]:
    with private_root(busybox_image.reference, "dygc") as found:
        (found.work / "gc.toml").write_text(CONFIG)
        yield found


def _context(dockyard: Dockyard, name: str, dockerfile: str) -> Path:
    context = dockyard.work / name
    context.mkdir(exist_ok=True)
    (context / "Dockerfile").write_text(dockerfile.replace("BUSYBOX", dockyard.busybox))
    return context


def _env(dockyard: Dockyard) -> dict[str, str]:
    return {"DOCKYARD_GC_CONFIG": str(dockyard.work / "gc.toml")}


def _ok(done: subprocess.CompletedProcess[bytes]) -> None:
    assert done.returncode == 0, done.stderr.decode(errors="replace")


def test_store_kept_under_the_bound_while_a_long_run_holds_its_inputs(
        dockyard: Dockyard) -> None:
    env = _env(dockyard)
    big = _context(dockyard, "big", BIG)
    _ok(dockyard.build("--build-arg", "N=0", str(big), env=env))  # starts the service
    long = _context(dockyard, "long", LONG)
    out = dockyard.work / "long-out"
    argv = [sys.executable, "-m", "dockyard", "build", "--progress=plain", "-o",
            f"type=local,dest={out}", str(long)]
    environ = {**os.environ, "DOCKYARD_ROOT": str(dockyard.root),
               "PYTHONPATH": str(Path(__file__).resolve().parents[3]), **env}
    process = subprocess.Popen(argv, cwd=dockyard.work, env=environ,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for_running(dockyard.root)
        for n in (1, 2):  # each adds 4 MB of layer blob and 4 MB unpacked: over the bound
            _ok(dockyard.build("--build-arg", f"N={n}", str(big), env=env))
        under = _wait_under(dockyard.root, BOUND, process)
        assert under is not None, f"store still {measure(dockyard.root).total} bytes"
        assert process.poll() is None, "the long build ended before the store was collected"
    finally:
        stdout, stderr = process.communicate(timeout=180)
    assert process.returncode == 0, stderr.decode(errors="replace")
    assert (out / "slept").read_text() == "slept\n"
    assert "busybox" in (out / "listing").read_text()


def _wait_for_running(root: Path, timeout: float = 60.0) -> None:
    """Until a RUN of the long build has a container (a bundle under run/bundles)."""
    deadline = time.monotonic() + timeout
    bundles = root / "run" / "bundles"
    while time.monotonic() < deadline:
        if bundles.is_dir() and any(bundles.iterdir()):
            return
        time.sleep(0.1)
    raise AssertionError("the long build's RUN never started")


def _wait_under(root: Path, bound: int, process: subprocess.Popen[bytes],
                timeout: float = 20.0) -> int | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        total = measure(root).total
        if total <= bound:
            return total
        time.sleep(0.1)
    return None


def test_du_shows_the_policy_in_force(dockyard: Dockyard) -> None:
    done = dockyard.run("du", env=_env(dockyard))
    _ok(done)
    out = done.stdout.decode()
    assert "GC policy in force (written by this root's worker):" in out
    assert f"GC: every 0.3s and after each build, policies from {dockyard.work}/gc.toml" in out
    assert f"  1: keep-storage={BOUND},all=true  (keep 6.291MB)" in out


@pytest.mark.parametrize(("argv", "env", "message"), [
    (["build", "."], {"DOCKYARD_GC_POLICY": "keep-storage=lots"},
     "invalid gc policy (DOCKYARD_GC_POLICY): keep-storage 'lots': expected a size"),
    (["node", "start", "--head", "--gc-policy", "keep-storage=1GB,filter=layers"], {},
     "invalid gc policy (--gc-policy): unknown filter 'layers'"),
    (["node", "start", "--head", "--gc-policy", "filter=exec"], {},
     "it has neither keep-storage nor keep-duration"),
])
def test_bad_policies_refused_before_anything_starts(
        tmp_path: Path, argv: list[str], env: dict[str, str], message: str) -> None:
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY Dockerfile /\n")
    fresh = Dockyard(tmp_path / "root", "unused", tmp_path)
    done = fresh.run(*argv, env=env, timeout=60)
    assert done.returncode == 1
    err = done.stderr.decode()
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "root" / "run" / "dockyard.pid").exists()
