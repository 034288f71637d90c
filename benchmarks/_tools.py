"""The two builders the suite times, each behind ``build(context, build_args) -> seconds``.

- ``BuildKitTool``: ``docker build`` (DOCKER_BUILDKIT=1) against a private Debian dockerd
  20.10 (tests/oracle/_buildkit.py's ``PrivateDockerd``); its default export, the docker
  image store.
- ``DockyardTool``: the ``dockyard build`` console script as a subprocess, with its own
  ``DOCKYARD_ROOT``: the first build starts the embedded local service, later builds reuse
  it warm, ``stop`` ends it.  No ``--output``: a cache-only build, as ``buildx build``
  without an output.

Wall time is measured around the whole client process (start-up included), the same way
for both.  A failed build is a ``BenchmarkError`` carrying the tool's output tail.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from benchmarks._paths import REPO
from dockyard.cluster._service import RunPaths, process_tree
from dockyard.scheduler._errors import DockyardError

__all__ = ["BenchmarkError", "Builder", "BuildKitTool", "DockyardTool"]

BUILD_TIMEOUT = 300.0  # seconds for one build of either tool


class BenchmarkError(DockyardError):
    """The suite could not set up or run a build; nothing was measured for it."""


class Builder(Protocol):
    name: str

    def build(self, context: Path, build_args: Mapping[str, str] | None = None,
              no_cache: bool = False) -> float:
        """Build ``context`` (its ``Dockerfile``; ``no_cache``: every step runs, a cold
        build on the same pulled base); the wall time in seconds."""
        ...

    def client_startup(self) -> float:
        """The wall time of the client printing its version (no build, no daemon call)."""
        ...


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _args(build_args: Mapping[str, str] | None, no_cache: bool = False) -> list[str]:
    flags = ["--no-cache"] if no_cache else []
    return flags + [f"--build-arg={key}={value}" for key, value in (build_args or {}).items()]


def timed_run(argv: Sequence[str], env: Mapping[str, str], what: str) -> float:
    """Run ``argv``; its wall time, or a BenchmarkError naming ``what`` with the output."""
    return timed_output(argv, env, what)[0]


def timed_output(argv: Sequence[str], env: Mapping[str, str], what: str) -> tuple[float, str]:
    """Run ``argv``; its wall time and its stderr (where ``--progress=plain`` goes), or a
    BenchmarkError naming ``what`` with the output."""
    began = time.perf_counter()
    try:
        done = subprocess.run(list(argv), env=dict(env), capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=BUILD_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise BenchmarkError(f"{what} took over {BUILD_TIMEOUT:.0f}s",
                             hint=f"run it by hand: {' '.join(argv)}") from None
    took = time.perf_counter() - began
    if done.returncode != 0:
        raise BenchmarkError(f"{what} failed (exit {done.returncode}):\n"
                             f"{_tail(done.stderr or done.stdout)}",
                             hint=f"run it by hand: {' '.join(argv)}")
    return took, done.stderr


class DockerClient(Protocol):
    """What the suite needs of tests/oracle/_buildkit.py's ``PrivateDockerd``."""

    @property
    def pid(self) -> int | None:
        ...

    def docker(self, *args: str, timeout: float = ...) -> subprocess.CompletedProcess[str]:
        ...


def _with_descendants(pid: int | None) -> list[int]:
    """``pid`` and its live descendants ([] for None)."""
    return [] if pid is None else [pid, *(child for child, _ in process_tree(pid))]


class BuildKitTool:
    """``docker build`` on a private dockerd (its client: ``daemon.docker``)."""

    name = "BuildKit"

    def __init__(self, daemon: DockerClient) -> None:
        self._daemon = daemon
        self.last_progress = ""  # the last build's --progress=plain output

    def build(self, context: Path, build_args: Mapping[str, str] | None = None,
              no_cache: bool = False, *flags: str) -> float:
        argv = ["build", "--network=host", "--progress=plain", *_args(build_args, no_cache),
                *flags, str(context)]
        began = time.perf_counter()
        done = self._daemon.docker(*argv, timeout=BUILD_TIMEOUT)
        took = time.perf_counter() - began
        if done.returncode != 0:
            raise BenchmarkError(f"BuildKit build of {context} failed (exit "
                                 f"{done.returncode}):\n{_tail(done.stderr)}",
                                 hint="see the private dockerd's log (kept in the error)")
        self.last_progress = done.stderr
        return took

    def export(self, context: Path, archive: Path) -> None:
        """Build ``context`` (cached) and ``docker save`` the image to ``archive``."""
        iidfile = archive.with_suffix(".iid")
        self.build(context, None, False, f"--iidfile={iidfile}")
        done = self._daemon.docker("save", f"--output={archive}",
                                   iidfile.read_text().strip(), timeout=BUILD_TIMEOUT)
        if done.returncode != 0:
            raise BenchmarkError(f"docker save failed: {_tail(done.stderr)}")

    def pids(self) -> list[int]:
        """dockerd's, containerd's and any other descendant's of the private dockerd."""
        return _with_descendants(self._daemon.pid)

    def client_startup(self) -> float:
        began = time.perf_counter()
        done = self._daemon.docker("--version", timeout=60)
        took = time.perf_counter() - began
        if done.returncode != 0:
            raise BenchmarkError(f"docker --version failed: {_tail(done.stderr)}")
        return took


class DockyardTool:
    """``dockyard build`` with its state in ``root``."""

    name = "dockyard"

    def __init__(self, root: Path) -> None:
        self.root = root
        self._env = {**os.environ, "DOCKYARD_ROOT": str(root), "PYTHONPATH": str(REPO)}
        self.last_progress = ""  # the last build's --progress=plain output

    def _argv(self, *args: str) -> list[str]:
        script = Path(sys.executable).parent / "dockyard"
        if script.exists():
            return [str(script), *args]
        return [sys.executable, "-m", "dockyard", *args]

    def build(self, context: Path, build_args: Mapping[str, str] | None = None,
              no_cache: bool = False, *flags: str) -> float:
        argv = self._argv("build", "--progress=plain", *_args(build_args, no_cache), *flags,
                          str(context))
        took, self.last_progress = timed_output(argv, self._env, f"dockyard build of {context}")
        return took

    def export(self, context: Path, archive: Path) -> None:
        """Build ``context`` (cached) with a docker-archive output at ``archive``."""
        self.build(context, None, False, f"--output=type=docker,dest={archive}")

    def client_startup(self) -> float:
        return timed_run(self._argv("--version"), self._env, "dockyard --version")

    def pids(self) -> list[int]:
        """The local service's daemon and its descendants (Ray's and the actors'), or []."""
        try:
            pid = int(RunPaths(self.root).pid.read_text())
        except (OSError, ValueError):
            return []
        return _with_descendants(pid)

    def stop(self) -> None:
        """End the root's local service (nothing when none runs)."""
        subprocess.run(self._argv("stop"), env=self._env, capture_output=True,
                       stdin=subprocess.DEVNULL, timeout=120, check=False)
