"""``python -m benchmarks``: run the cases, print the header and the Markdown table.

Exit status 0 when every case ran (whether or not its target was met: the table says), 1 with
``error: ...`` on stderr when the suite could not run, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks._cache_rows import CACHE_CASES, cache_rows
from benchmarks._cases import CaseResult, edit_case, noop_case, parallel_case, startup_case
from benchmarks._cluster_rows import CLUSTER_CASES, cluster_rows
from benchmarks._debian_base import DEBIAN_CACHE, push_debian_base
from benchmarks._debian_cases import (
    DEBIAN_CASES,
    compare_archives,
    diff_section,
    rootfs_row,
    step_table,
)
from benchmarks._env import BenchEnvironment, bench_environment
from benchmarks._export import MIB, export_case
from benchmarks._memory import MEMORY_CASES, measure_memory, memory_rows, process_table
from benchmarks._paths import REPO
from benchmarks._scale_cases import SCALE_CASES, measure_scale, scale_rows
from benchmarks._stats import Row, Series, markdown_table, ratio
from dockyard.scheduler._errors import DockyardError

__all__ = ["main"]

CASES = ("noop", "edit", "parallel", *SCALE_CASES, *DEBIAN_CASES, "export", *MEMORY_CASES,
         *CACHE_CASES, *CLUSTER_CASES)
CLI_PATH = "CLI `dockyard build`, warm local service"
EXPORT_PATH = "in-process `dockyard.workers._layers.write_layer`"
MEMORY_PATH = "the local service's processes, after `dockyard build`"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks",
                                     description="dockyard against BuildKit (see README.md)")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per build")
    parser.add_argument("--warmups", type=int, default=1, help="untimed builds first")
    parser.add_argument("--export-mb", type=int, default=500, help="size of the export")
    parser.add_argument("--export-reps", type=int, default=3, help="timed exports")
    parser.add_argument("--restore-mib", type=int, default=40,
                        help="MiB per RUN layer of the 5-layer S3 restore image")
    parser.add_argument("--cluster-reps", type=int, default=3,
                        help="timed repetitions per figure of the cluster cases")
    parser.add_argument("--only", action="append", choices=CASES, default=[],
                        help="run only this case (repeatable)")
    parser.add_argument("--markdown", type=Path, help="also write the report to this file")
    return parser


def _log(text: str) -> None:
    print(f"bench: {text}", flush=True)


def _versus(name: str, target: float | None, ours: CaseResult, theirs: CaseResult,
            path: str = CLI_PATH) -> Row:
    return Row(name, ours.series.describe(), theirs.series.describe(),
               ratio(ours.series.median, theirs.series.median), target, True, path)


def _parallel_rows(ours: CaseResult, theirs: CaseResult) -> list[Row]:
    rows = []
    for result in (ours, theirs):
        assert result.reference is not None
        rows.append(Row(f"3 x 2 s stages / 1 stage ({result.tool})", result.series.describe(),
                        result.reference.describe(),
                        ratio(result.series.median, result.reference.median), 1.2, True,
                        CLI_PATH if result.tool == "dockyard" else "(BuildKit itself)"))
    rows.append(_versus("3 x 2 s stages, dockyard / BuildKit", None,
                        ours, theirs))
    return rows


#: case -> (its function, its row's title, its target ratio or None); "startup" runs with noop
_STEPS: dict[str, tuple[Callable[..., CaseResult], str, float | None]] = {
    "noop": (noop_case, "no-op rebuild", 1.0),
    "startup": (startup_case, "client start-up alone (`--version`, info)", None),
    "edit": (edit_case, "rebuild after a one-line source change", 1.2),
}


def _build_rows(env: BenchEnvironment, cases: Sequence[str], args: argparse.Namespace
                ) -> list[Row]:
    rows: list[Row] = []
    chosen = [c for c in _STEPS if c in cases or (c == "startup" and "noop" in cases)]
    for case in chosen:
        run, title, target = _STEPS[case]
        _log(f"{case}: BuildKit, then dockyard")
        theirs = run(env.buildkit, env.work, env.base, args.warmups, args.reps)
        ours = run(env.dockyard, env.work, env.base, args.warmups, args.reps)
        path = "CLI `dockyard --version`" if case == "startup" else CLI_PATH
        rows.append(_versus(title, target, ours, theirs, path))
    if "parallel" in cases:
        _log("parallel: BuildKit, then dockyard")
        theirs = parallel_case(env.buildkit, env.work, env.base, args.warmups, args.reps)
        ours = parallel_case(env.dockyard, env.work, env.base, args.warmups, args.reps)
        rows += _parallel_rows(ours, theirs)
    for case in (c for c in SCALE_CASES if c in cases):
        rows += _scale(env, case, args)
    return rows


def _scale(env: BenchEnvironment, case: str, args: argparse.Namespace) -> list[Row]:
    """One of issue 10's scale cases (benchmarks/_scale_cases.py): its three rows."""
    _log(f"{case}: BuildKit, then dockyard (cold, warm, one-line change)")
    theirs = measure_scale(case, env.buildkit, env.work, env.base, args.warmups, args.reps)
    ours = measure_scale(case, env.dockyard, env.work, env.base, args.warmups, args.reps)
    return scale_rows(case, ours, theirs, CLI_PATH)


def _debian(env: BenchEnvironment, cases: Sequence[str], args: argparse.Namespace
            ) -> tuple[list[Row], list[str]]:
    """Issue 10's Debian cases (benchmarks/_debian_cases.py): per case its three timed rows
    and its root filesystem row; the step-time tables and the filesystem differences."""
    chosen = [c for c in DEBIAN_CASES if c in cases]
    if not chosen:
        return [], []
    base = f"{env.registry}/library/debian:bookworm"
    made = "cached" if DEBIAN_CACHE.is_dir() else "debootstrap first, a few minutes"
    _log(f"debian: the bookworm base ({DEBIAN_CACHE}: {made}) to {base}")
    push_debian_base(env.work, base)
    rows: list[Row] = []
    sections: list[str] = []
    for case in chosen:
        _log(f"{case}: BuildKit, then dockyard (cold, warm, one-line change)")
        results = [measure_scale(case, tool, env.work, base, args.warmups, args.reps,
                                 DEBIAN_CASES) for tool in (env.buildkit, env.dockyard)]
        rows += scale_rows(case, results[1], results[0], CLI_PATH, DEBIAN_CASES)
        _log(f"{case}: both images exported, their root filesystems compared")
        archives = [env.work / f"{case}-{tool.name}.tar" for tool in (env.buildkit,
                                                                       env.dockyard)]
        env.buildkit.export(env.work / f"{case}-BuildKit", archives[0])
        env.dockyard.export(env.work / f"{case}-dockyard", archives[1])
        diff = compare_archives(*archives)
        rows.append(rootfs_row(case, diff, "CLI `dockyard build -o type=docker`"))
        sections += [step_table(case, results), diff_section(case, diff)]
    return rows, sections


def _memory(env: BenchEnvironment) -> tuple[list[Row], str]:
    """The ``memory`` case's rows, and the table of each tool's idle processes."""
    _log("memory: BuildKit (dockerd + containerd), then dockyard's service")
    theirs = measure_memory("dockerd + containerd", env.buildkit.build, env.buildkit.pids,
                            env.work, env.base)
    ours = measure_memory("dockyard service", env.dockyard.build, env.dockyard.pids,
                          env.work, env.base)
    return memory_rows(ours, theirs, MEMORY_PATH), process_table([ours, theirs])


def _speed(size: int, series: Series) -> str:
    return f"{size / MIB / series.median:.0f} MiB/s; {series.describe()}"


def _export_row(work: Path, args: argparse.Namespace) -> Row:
    _log(f"export: {args.export_mb} MiB, dockyard's layer writer and tar | gzip -6")
    size, ours, theirs = export_case(work, args.export_mb, 1, args.export_reps)
    return Row(f"export a {args.export_mb} MiB layer, speed vs `tar | gzip`",
               _speed(size, ours), _speed(size, theirs), ratio(theirs.median, ours.median),
               0.8, False, EXPORT_PATH)


def _machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.machine()}, {os.cpu_count()} cpus ({cpu}), Linux {platform.release()}"


def _commit() -> str:
    done = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=False)
    return done.stdout.strip() or "unknown"


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def _method(args: argparse.Namespace) -> str:
    cases = args.only or list(CASES)
    parts = []
    if set(cases) - set(CLUSTER_CASES):
        parts.append(f"BuildKit: Debian docker.io 20.10 (private dockerd); {args.warmups} "
                     f"warm-up, {args.reps} timed builds ({args.export_reps} exports) per "
                     "figure")
    if set(cases) & set(CLUSTER_CASES):
        parts.append(f"cluster cases: {args.cluster_reps} timed repetitions per figure "
                     f"({args.warmups} warm-up; overhead and context: their first builds)")
    return "; ".join(parts)


def _report(rows: Sequence[Row], args: argparse.Namespace, took: float,
            sections: Sequence[str] = ()) -> str:
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    head = (f"Measured {date} on {_machine()}, dockyard {_commit()}; {_method(args)}; the "
            f"run took {took / 60:.1f} min; load average {_loadavg()}.")
    return "\n\n".join([head, markdown_table(rows), *sections]) + "\n"


def run(args: argparse.Namespace) -> str:
    cases = args.only or list(CASES)
    began = time.monotonic()
    rows: list[Row] = []
    sections: list[str] = []  # tables printed after the main one
    if set(cases) - set(CLUSTER_CASES):  # the cluster cases need no dockerd
        with bench_environment() as env:
            rows += _build_rows(env, cases, args)
            debian_rows, debian_sections = _debian(env, cases, args)
            rows += debian_rows
            sections += debian_sections
            if "export" in cases:
                rows.append(_export_row(env.work, args))
            if "memory" in cases:
                memory, table = _memory(env)
                rows += memory
                sections.append(table)
            rows += cache_rows(env, cases, args)
    rows += cluster_rows(cases, args)
    return _report(rows, args, time.monotonic() - began, sections)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # dockyard is measured as a user runs it: its modules compiled once, as pip's install
    # does.  This machine's shells set PYTHONDONTWRITEBYTECODE, under which every client
    # start compiled ~100 modules again: 0.81 s against 0.38-0.54 s for the 40-stage
    # cached rebuild (2026-12-06).  The services the bench starts inherit the unset.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    try:
        report = run(args)
    except DockyardError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(report)
    if args.markdown is not None:
        args.markdown.write_text(report)
    return 0
