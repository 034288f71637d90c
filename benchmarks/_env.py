"""The bench's world: a loopback registry holding busybox, a private dockerd, a dockyard root.

``bench_environment()`` starts them (offline: the base image is pushed to a registry on
127.0.0.1 from the host's static busybox, and both builders pull ``FROM`` it) and stops
every one of them on the way out, also when a benchmark fails or Ctrl-C arrives.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import _buildkit  # tests/oracle, on sys.path through benchmarks/__init__.py
from support.busybox_image import skopeo_push, write_busybox_layout
from support.registry import loopback_registry

from benchmarks._tools import BenchmarkError, BuildKitTool, DockyardTool

__all__ = ["BenchEnvironment", "bench_environment"]


@dataclass(frozen=True)
class BenchEnvironment:
    base: str  # the busybox reference both builders use in FROM
    registry: str  # the loopback registry's host:port, for other bases (the debian-* cases)
    buildkit: BuildKitTool
    dockyard: DockyardTool
    work: Path  # scratch space for contexts and data, removed at the end


def _log(text: str) -> None:
    print(f"bench: {text}", flush=True)


@contextmanager
def _dockerd() -> Iterator[_buildkit.PrivateDockerd]:
    if not _buildkit.DOCKERD.exists():
        raise BenchmarkError(f"{_buildkit.DOCKERD} is not installed",
                             hint="run 'make setup' (Debian's docker.io)")
    daemon = _buildkit.PrivateDockerd(_buildkit.make_oracle_root())
    try:
        daemon.start()
    except _buildkit.OracleUnavailable as err:
        raise BenchmarkError(f"cannot start the private dockerd: {err}") from None
    try:
        yield daemon
    finally:
        daemon.stop()


@contextmanager
def bench_environment() -> Iterator[BenchEnvironment]:
    """Everything a run needs, torn down on exit."""
    work = Path(tempfile.mkdtemp(prefix="dockyard-bench-"))
    (work / "registry").mkdir()
    dockyard = DockyardTool(Path(tempfile.mkdtemp(prefix="dyb-", dir="/tmp")))
    try:
        with loopback_registry(work / "registry") as registry, _dockerd() as daemon:
            began = time.monotonic()
            write_busybox_layout(work / "busybox-layout")
            base = f"{registry.domain}/library/busybox:latest"
            skopeo_push(work / "busybox-layout", "latest", base)
            _log(f"registry {registry.url}, dockerd at {daemon.root}, dockyard root "
                 f"{dockyard.root} (ready in {time.monotonic() - began:.1f}s)")
            buildkit = BuildKitTool(daemon)
            try:
                yield BenchEnvironment(base, registry.domain, buildkit, dockyard, work)
            finally:
                dockyard.stop()
    finally:
        shutil.rmtree(dockyard.root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
