"""A load run on the embedded service: waves of concurrent builds for a few minutes.

``run_load(root, base, work, seconds)`` starts waves of ``CONCURRENCY`` (20) ``dockyard
build`` clients at once on the service of ``root``, until ``seconds`` have passed.  Each
wave mixes

- ``IDENTICAL`` builds of one context (the wave's own): their RUN writes 16 random bytes,
  so every one of them getting the same bytes shows that the RUN ran once for all;
- ``DIFFERENT`` builds, each of a context of its own: each must give its own file;
- the rest failing builds (a RUN exiting 3): each must fail, naming the exit code.

After each wave it samples the resident memory of the service's processes (the daemon and
everything it started: Ray, the coordinator, the worker); at the end it checks the root
(devkit/root_state.py: no leftovers, a consistent cache) and stops the service.

``python -m devkit.load --seconds 240`` (``make load``) starts a loopback registry with
the busybox base image and prints a line per wave and the totals.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from devkit.busybox_image import SetupError
from devkit.faults import base_image_in_registry, dockyard, say, settle
from devkit.local_cluster import environment
from devkit.root_state import mounts_below, rss_bytes, service_processes

__all__ = ["LoadReport", "Wave", "main", "run_load"]

CONCURRENCY = 20
IDENTICAL = 8
DIFFERENT = 8
BUILD_TIMEOUT = 600.0
MIB = 1024 * 1024


@dataclass
class Wave:
    number: int
    seconds: float = 0.0
    builds: int = 0
    wrong: list[str] = field(default_factory=list)  # builds without their right result
    stamps: int = 0  # distinct RUN stamps among the identical builds (1: ran once)
    rss: int = 0  # bytes, the service's processes after the wave
    worker_rss: int = 0
    coordinator_rss: int = 0

    def line(self) -> str:
        return (f"wave {self.number}: {self.builds} builds in {self.seconds:.1f}s, "
                f"{len(self.wrong)} wrong, identical RUN ran {self.stamps}x; service RSS "
                f"{self.rss / MIB:.0f} MiB (worker {self.worker_rss / MIB:.0f}, "
                f"coordinator {self.coordinator_rss / MIB:.0f})"
                + "".join(f"\n    {w}" for w in self.wrong))


@dataclass
class LoadReport:
    waves: list[Wave] = field(default_factory=list)
    seconds: float = 0.0
    leftovers: list[str] = field(default_factory=list)

    @property
    def builds(self) -> int:
        return sum(w.builds for w in self.waves)

    @property
    def wrong(self) -> list[str]:
        return [f"wave {w.number}: {line}" for w in self.waves for line in w.wrong]

    def memory(self) -> str:
        """The service's RSS after the second wave (warm) and after the last, and the
        peak: what "flat" is judged on."""
        if len(self.waves) < 2:
            return "too few waves to judge memory"
        warm, last = self.waves[1], self.waves[-1]
        peak = max(w.rss for w in self.waves)
        return (f"service RSS {warm.rss / MIB:.0f} MiB after wave 2, {last.rss / MIB:.0f} "
                f"MiB after wave {last.number} ({(last.rss - warm.rss) / MIB:+.0f} MiB), "
                f"peak {peak / MIB:.0f} MiB; worker {warm.worker_rss / MIB:.0f} -> "
                f"{last.worker_rss / MIB:.0f} MiB, coordinator "
                f"{warm.coordinator_rss / MIB:.0f} -> {last.coordinator_rss / MIB:.0f} MiB")

    def summary(self) -> str:
        ran_once = sum(w.stamps == 1 for w in self.waves)
        return (f"{len(self.waves)} waves of {CONCURRENCY} concurrent builds in "
                f"{self.seconds:.0f}s: {self.builds} builds, {len(self.wrong)} without "
                f"their right result; identical builds' RUN ran once in {ran_once} of "
                f"{len(self.waves)} waves; {self.memory()}; leftovers and cache problems "
                f"after: {len(self.leftovers)}")


def _write(context: Path, dockerfile: str) -> Path:
    context.mkdir(parents=True, exist_ok=True)
    (context / "Dockerfile").write_text(dockerfile)
    return context


def _contexts(work: Path, number: int, base: str) -> list[tuple[str, Path, str]]:
    """The wave's builds: (kind, context, expected /result or failure text)."""
    wave = work / f"wave-{number}"
    stamp = (f"FROM {base}\nRUN echo {{tag}} && sleep 1 && head -c 16 /dev/urandom | od -An "
             "-tx1 | tr -d ' \\n' > /stamp && echo {tag} > /result\n")
    same = _write(wave / "same", stamp.format(tag=f"same-{number}"))
    builds = [("identical", same, f"same-{number}\n")] * IDENTICAL
    for index in range(DIFFERENT):
        tag = f"different-{number}-{index}"
        builds.append(("different", _write(wave / f"d{index}", stamp.format(tag=tag)),
                       f"{tag}\n"))
    for index in range(CONCURRENCY - IDENTICAL - DIFFERENT):
        failing = _write(wave / f"f{index}", f"FROM {base}\nRUN echo failing-{number} && "
                                             "exit 3\n")
        builds.append(("failing", failing, "exit code: 3"))
    return builds


def _wave(root: Path, work: Path, number: int, base: str) -> Wave:
    wave = Wave(number)
    builds = _contexts(work, number, base)
    began = time.monotonic()
    running = []
    for index, (kind, context, expected) in enumerate(builds):
        out = work / f"wave-{number}" / f"out-{index}"
        argv = [sys.executable, "-m", "dockyard", "build", "--progress=plain", "-o",
                f"type=local,dest={out}", str(context)]
        log = open(out.with_suffix(".log"), "wb")  # noqa: SIM115 -- closed below
        running.append((kind, out, expected, log, subprocess.Popen(
            argv, env=environment(root), cwd=root, stdout=log, stderr=subprocess.STDOUT)))
    stamps = set()
    for kind, out, expected, log, process in running:
        try:
            code = process.wait(timeout=BUILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        log.close()
        said = out.with_suffix(".log").read_text(errors="replace")
        if kind == "failing":
            if code != 1 or expected not in said:
                wave.wrong.append(f"failing build {out}: exit {code}, not '{expected}'")
            continue
        result = out / "result"
        if code != 0 or not result.is_file() or result.read_text() != expected:
            wave.wrong.append(f"{kind} build {out}: exit {code}: {said.strip()[-300:]}")
        elif kind == "identical":
            stamps.add((out / "stamp").read_text())
    wave.seconds = time.monotonic() - began
    wave.builds = len(running)
    wave.stamps = len(stamps)
    _sample(root, wave)
    return wave


def _sample(root: Path, wave: Wave) -> None:
    service = service_processes(root)
    if service is None:
        wave.wrong.append("no service is running after the wave")
        return
    wave.rss = rss_bytes({service.daemon, *service.tree})
    wave.worker_rss = rss_bytes({service.worker} if service.worker else set())
    wave.coordinator_rss = rss_bytes({service.coordinator} if service.coordinator else set())


def run_load(root: Path, base: str, work: Path, seconds: float,
             echo: Callable[[str], None] = say) -> LoadReport:
    """Waves until ``seconds`` have passed (at least two), then the checks and
    ``dockyard stop``."""
    root.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    report = LoadReport()
    began = time.monotonic()
    try:
        warm = _write(work / "warm-up", f"FROM {base}\nRUN echo warm\n")
        first = dockyard(root, "build", "--progress=plain", str(warm))
        if first.returncode != 0:
            raise SetupError(f"the first build under {root} failed: {first.stderr.strip()}")
        echo(f"load: {CONCURRENCY} concurrent builds per wave for {seconds:.0f}s, root {root}")
        number = 0
        while number < 2 or time.monotonic() - began < seconds:
            number += 1
            report.waves.append(_wave(root, work, number, base))
            echo(report.waves[-1].line())
        report.seconds = time.monotonic() - began
        report.leftovers = settle(root)
    finally:
        stopped = dockyard(root, "stop", timeout=120)
        echo(f"dockyard stop: exit {stopped.returncode}: {stopped.stderr.strip()}")
    report.leftovers += [f"after stop: {line}"
                         for line in settle(root, service_may_run=False, timeout=10.0)]
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devkit.load",
                                     description="concurrent builds on the embedded service")
    parser.add_argument("--seconds", type=float, default=240.0, help="how long to go on")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="dy-load-", dir="/tmp"))
    report = LoadReport()
    try:
        with base_image_in_registry(work) as base:
            report = run_load(work / "root", base, work / "builds", args.seconds)
    finally:
        print(f"\n{report.summary()}; load average "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
        for problem in report.wrong + report.leftovers:
            print(f"  {problem}")
        if mounts_below(work):  # never remove through a mount
            print(f"kept {work}: something is still mounted below it")
        else:
            shutil.rmtree(work, ignore_errors=True)
    flat = len(report.waves) >= 2 and report.waves[-1].rss <= report.waves[1].rss * 1.25
    return 0 if not report.wrong and not report.leftovers and flat else 1


if __name__ == "__main__":
    sys.exit(main())
