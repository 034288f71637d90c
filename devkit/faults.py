"""Fault injection on the embedded service: builds killed at random moments, and what the
service must do about it.

``run_seed(seed, rounds, root, base_image)`` runs ``rounds`` rounds on the embedded
service of ``root`` (``dockyard build`` under that ``DOCKYARD_ROOT``, as a user runs it).
Each round

1. starts a build whose RUN sleeps (a context and a build argument of its own, so it
   really runs), and kills one of ``TARGETS`` with SIGKILL at a moment drawn from the
   seed: the client (``dockyard build``), the service (its daemon), the worker actor,
   the coordinator actor (after ``delay`` seconds), or the ``runc`` process of the RUN
   (``delay`` seconds after it appeared);
2. waits for the killed build to end (it may fail, or survive: a lost worker's step runs
   again), then runs the same build again: it must succeed and give the right file;
3. checks the root (devkit/root_state.py): no container, mount, bundle, staging dir or
   stray process left once the service is idle, and a consistent cache (every blob hashes
   to its name, every record names existing blobs).

The targets come in a shuffled cycle drawn from the seed (every target once per
``len(TARGETS)`` rounds), the moments uniformly from the seed too: the same seed gives the
same kills at the same moments (the service's own timing still varies).  After the last
round ``dockyard stop`` must leave nothing running or mounted.

``python -m devkit.faults --seeds 1,2,3 --rounds 10`` (``make faults``) starts a loopback
registry with the busybox base image, runs each seed on a fresh root and prints a line per
round and the totals; tests/integration/cluster/test_fault_injection.py runs a short fixed
set in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from devkit.busybox_image import SetupError, skopeo_push, write_busybox_layout
from devkit.local_cluster import environment
from devkit.registry import loopback_registry
from devkit.root_state import (
    cache_problems,
    leftovers,
    mounts_below,
    runc_processes,
    service_processes,
)

__all__ = ["TARGETS", "FaultReport", "Round", "base_image_in_registry", "dockyard",
           "main", "run_seed", "say", "settle", "wait_for"]

TARGETS = ("client", "service", "worker", "coordinator", "runc")
RUN_SECONDS = 2.0  # how long each round's RUN sleeps
BUILD_TIMEOUT = 240.0  # a build (killed or not) that runs longer is a finding
SETTLE_TIMEOUT = 20.0  # how long an idle service may take to finish cleaning up


def say(line: str) -> None:
    """Print ``line`` at once (a run's output is often a file: block-buffered)."""
    print(line, flush=True)


def wait_for(what: str, check: Callable[[], object], timeout: float,
             poll: float = 0.05) -> object:
    """``check()``'s first true value, polled; a ``SetupError`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise SetupError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(poll)
    return value


def dockyard(root: Path, *argv: str, timeout: float = BUILD_TIMEOUT
             ) -> subprocess.CompletedProcess[str]:
    """``dockyard ARGV`` under ``root``, its output captured."""
    return subprocess.run([sys.executable, "-m", "dockyard", *argv], env=environment(root),
                          cwd=root, capture_output=True, text=True, timeout=timeout,
                          check=False)


def settle(root: Path, *, service_may_run: bool = True,
           timeout: float = SETTLE_TIMEOUT) -> list[str]:
    """The root's leftovers and cache problems once the clean-up after the last build had
    ``timeout`` seconds to end (an empty list as soon as there is nothing)."""
    deadline = time.monotonic() + timeout
    while True:
        found = leftovers(root, service_may_run=service_may_run) + cache_problems(root)
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


@dataclass
class Round:
    """One kill and what followed it."""

    seed: int
    number: int
    target: str
    delay: float  # seconds after the build started (runc: after the RUN's runc appeared)
    killed: int | None = None  # the pid killed; None when the target was not there
    outcome: str = ""  # the killed build: "succeeded", or its error and hint
    next_ok: bool = False  # the next build succeeded with the right result
    next_seconds: float = 0.0
    problems: list[str] = field(default_factory=list)  # leftovers and cache problems

    def line(self) -> str:
        kill = f"pid {self.killed}" if self.killed else "missed (not running then)"
        verdict = "next build ok" if self.next_ok else "NEXT BUILD FAILED"
        return (f"seed {self.seed} round {self.number}: kill {self.target} at "
                f"{self.delay:.2f}s ({kill}); killed build: {self.outcome}; {verdict} in "
                f"{self.next_seconds:.1f}s; {len(self.problems)} leftovers/cache problems"
                + "".join(f"\n    {problem}" for problem in self.problems))


@dataclass
class FaultReport:
    """Every round of a run, and what ``dockyard stop`` left at the end of each seed."""

    rounds: list[Round] = field(default_factory=list)
    after_stop: list[str] = field(default_factory=list)  # leftovers after each stop

    @property
    def kills(self) -> int:
        return sum(r.killed is not None for r in self.rounds)

    @property
    def survived(self) -> int:
        """Kills after which the next build succeeded and nothing was left."""
        return sum(r.killed is not None and r.next_ok and not r.problems for r in self.rounds)

    @property
    def problems(self) -> list[str]:
        found = [f"seed {r.seed} round {r.number}: next build failed" for r in self.rounds
                 if not r.next_ok]
        found += [f"seed {r.seed} round {r.number}: {p}" for r in self.rounds
                  for p in r.problems]
        return found + self.after_stop

    def summary(self) -> str:
        per = {t: sum(r.target == t and r.killed is not None for r in self.rounds)
               for t in TARGETS}
        failed = sum(r.killed is not None and r.outcome != "succeeded" for r in self.rounds)
        return (f"{len(self.rounds)} rounds, {self.kills} kills ("
                + ", ".join(f"{t} {n}" for t, n in per.items())
                + f"), {self.survived} survived; killed builds that failed: {failed}, "
                f"that succeeded anyway: {self.kills - failed}; leftovers and cache "
                f"problems found: {len(self.problems)}")


class _Build:
    """One ``dockyard build`` of a round's context to a local directory, running."""

    def __init__(self, root: Path, context: Path, nonce: str, out: Path) -> None:
        self.out = out
        self.log = out.with_suffix(".log")
        argv = [sys.executable, "-m", "dockyard", "build", "--progress=plain",
                "--build-arg", f"NONCE={nonce}", "-o", f"type=local,dest={out}",
                str(context)]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(argv, env=environment(root), cwd=root,
                                            stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def wait(self, timeout: float = BUILD_TIMEOUT) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise SetupError(f"a build ran over {timeout:.0f}s: see {self.log}") from None

    def failure(self) -> str:
        """Its last ``error:`` and ``hint:`` lines."""
        lines = self.log.read_text(errors="replace").splitlines()
        said = [line for line in lines if line.startswith(("error:", "hint:"))]
        return " / ".join(said[-2:]) or (lines[-1] if lines else "(no output)")


def _context(work: Path, seed: int, number: int, base: str) -> tuple[Path, str, str]:
    """A round's context, its nonce, and the ``/result`` its build must give."""
    context = work / f"ctx-{seed}-{number}"
    context.mkdir(parents=True)
    payload = f"seed {seed} round {number}\n"
    (context / "input.txt").write_text(payload)
    (context / "Dockerfile").write_text(
        f"FROM {base}\nARG NONCE\nCOPY input.txt /input.txt\n"
        f"RUN echo start $NONCE && sleep {RUN_SECONDS:g} && cat /input.txt > /result && "
        "echo $NONCE >> /result\n")
    nonce = f"{seed}-{number}-{os.getpid()}"
    return context, nonce, f"{payload}{nonce}\n"


def _target_pid(target: str, root: Path, build: _Build) -> int | None:
    if target == "client":
        return build.process.pid if build.process.poll() is None else None
    if target == "runc":
        found = runc_processes(root)
        return found[0] if found else None
    service = service_processes(root)
    if service is None:
        return None
    return {"service": service.daemon, "worker": service.worker,
            "coordinator": service.coordinator}[target]


def _kill_at(target: str, delay: float, root: Path, build: _Build) -> int | None:
    """Kill ``target`` ``delay`` seconds from now (runc: from its appearance); its pid."""
    if target == "runc":
        try:
            wait_for("the RUN's runc", lambda: runc_processes(root) or build.process.poll()
                     is not None, 120)
        except SetupError:
            return None
    time.sleep(delay)  # the drawn moment itself, not a wait for a condition
    pid = _target_pid(target, root, build)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            return pid
    return None


def _one_round(root: Path, work: Path, base: str, seed: int, number: int, target: str,
               delay: float, echo: Callable[[str], None]) -> Round:
    context, nonce, expected = _context(work, seed, number, base)
    this = Round(seed, number, target, delay)
    build = _Build(root, context, nonce, work / f"out-{seed}-{number}-killed")
    this.killed = _kill_at(target, delay, root, build)
    code = build.wait()
    this.outcome = "succeeded" if code == 0 else f"exit {code}: {build.failure()}"
    began = time.monotonic()
    again = _Build(root, context, nonce, work / f"out-{seed}-{number}")
    code = again.wait()
    this.next_seconds = time.monotonic() - began
    result = again.out / "result"
    this.next_ok = code == 0 and result.is_file() and result.read_text() == expected
    if not this.next_ok:
        this.problems.append(f"the next build: exit {code}: {again.failure()}")
    this.problems += settle(root)
    echo(this.line())
    return this


def run_seed(seed: int, rounds: int, root: Path, base: str, work: Path,
             echo: Callable[[str], None] = say) -> FaultReport:
    """``rounds`` rounds of seed ``seed`` on the service of ``root`` (see the module
    docstring), then ``dockyard stop`` and a last look."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    echo(f"fault injection: seed {seed}, {rounds} rounds, root {root}")
    report = FaultReport()
    try:
        first = dockyard(root, "build", "--progress=plain", str(_warm_up(work, base)))
        if first.returncode != 0:
            raise SetupError(f"the first build under {root} failed: {first.stderr.strip()}")
        order: list[str] = []
        for number in range(1, rounds + 1):
            if not order:
                order = rng.sample(TARGETS, len(TARGETS))
            target = order.pop(0)
            span = RUN_SECONDS if target == "runc" else RUN_SECONDS + 2.0
            report.rounds.append(_one_round(root, work, base, seed, number, target,
                                            rng.uniform(0.0, span), echo))
    finally:
        stopped = dockyard(root, "stop", timeout=120)
        echo(f"dockyard stop: exit {stopped.returncode}: {stopped.stderr.strip()}")
    report.after_stop = [f"seed {seed} after stop: {line}"
                         for line in settle(root, service_may_run=False, timeout=10.0)]
    return report


def _warm_up(work: Path, base: str) -> Path:
    context = work / "ctx-warm-up"
    context.mkdir(parents=True, exist_ok=True)
    (context / "Dockerfile").write_text(f"FROM {base}\nRUN echo warm\n")
    return context


@contextlib.contextmanager
def base_image_in_registry(work: Path) -> Iterator[str]:
    """A loopback registry holding the multi-arch busybox image: its reference."""
    (work / "registry").mkdir(parents=True)
    with loopback_registry(work / "registry") as registry:
        reference = f"{registry.domain}/library/busybox:latest"
        write_busybox_layout(work / "busybox-layout")
        skopeo_push(work / "busybox-layout", "latest", reference)
        yield reference


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devkit.faults",
                                     description="kill builds at random moments")
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds")
    parser.add_argument("--rounds", type=int, default=10, help="rounds per seed")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    work = Path(tempfile.mkdtemp(prefix="dy-faults-", dir="/tmp"))
    report = FaultReport()
    began = time.monotonic()
    try:
        with base_image_in_registry(work) as base:
            for seed in seeds:
                part = run_seed(seed, args.rounds, work / f"root-{seed}", base,
                                work / f"seed-{seed}")
                report.rounds += part.rounds
                report.after_stop += part.after_stop
    finally:
        print(f"\n{report.summary()}; {time.monotonic() - began:.0f}s; load average "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
        for problem in report.problems:
            print(f"  {problem}")
        if mounts_below(work):  # never remove through a mount
            print(f"kept {work}: something is still mounted below it")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
