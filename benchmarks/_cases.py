"""The build benchmarks: the same Dockerfiles and contexts for BuildKit and dockyard.

Each case writes its context under the work dir (one copy per tool, so neither sees the
other's edits), runs ``warmups`` untimed builds and then ``reps`` timed ones.

- ``noop``: the identical build again, everything cached.
- ``edit``: one line of a 200-line source file changed before every build (a new value each
  time, so the ``COPY`` and the ``RUN`` after it really run again).
- ``parallel``: three independent stages each ``RUN ... sleep 2``, copied into one final
  stage, against the same Dockerfile with one such stage (the critical path as that tool
  runs it); a fresh ``NONCE`` build arg each time makes every stage run.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks._stats import Series
from benchmarks._tools import Builder

__all__ = ["APP", "CaseResult", "edit_case", "noop_case", "parallel_case",
           "parallel_dockerfile", "startup_case"]

APP = """\
FROM {base}
RUN mkdir -p /deps && for i in $(seq 1 300); do echo "dependency $i" > /deps/d$i; done
COPY deps.txt /app/deps.txt
RUN wc -l /app/deps.txt > /app/deps.count && sleep 1
COPY src/ /app/src/
RUN cat /app/src/* | wc -l > /app/lines && echo built > /app/status
"""

SOURCE_LINES = 200
EDITED_LINE = 100  # 1-based line of src/main.txt the edit case rewrites


@dataclass(frozen=True)
class CaseResult:
    """One tool's timings on one case (``reference`` only for ``parallel``: one stage)."""

    tool: str
    series: Series
    reference: Series | None = None


def _source(version: str) -> str:
    lines = [f"line {n}: some application source text" for n in range(1, SOURCE_LINES + 1)]
    lines[EDITED_LINE - 1] = f"line {EDITED_LINE}: version {version}"
    return "\n".join(lines) + "\n"


def write_app(context: Path, base: str, version: str = "0") -> None:
    (context / "src").mkdir(parents=True, exist_ok=True)
    (context / "Dockerfile").write_text(APP.format(base=base))
    (context / "deps.txt").write_text("".join(f"package-{n}==1.{n}\n" for n in range(50)))
    (context / "src" / "main.txt").write_text(_source(version))
    (context / "src" / "util.txt").write_text("helpers\n" * 50)


def _measure(run: Callable[[int], float], warmups: int, reps: int) -> Series:
    """Call ``run(i)`` for i in 0.. (warm-ups first, untimed); the timed results."""
    counter = itertools.count()
    for _ in range(warmups):
        run(next(counter))
    return Series(tuple(run(next(counter)) for _ in range(reps)))


def noop_case(tool: Builder, work: Path, base: str, warmups: int, reps: int) -> CaseResult:
    context = work / f"noop-{tool.name}"
    write_app(context, base)
    tool.build(context)  # the first, uncached build is not a warm-up of the cached one
    return CaseResult(tool.name, _measure(lambda _: tool.build(context), warmups, reps))


def startup_case(tool: Builder, work: Path, base: str, warmups: int, reps: int
                 ) -> CaseResult:
    """The client's own start-up (``--version``): the floor under every CLI figure."""
    del work, base
    return CaseResult(tool.name, _measure(lambda _: tool.client_startup(), warmups, reps))


def edit_case(tool: Builder, work: Path, base: str, warmups: int, reps: int) -> CaseResult:
    context = work / f"edit-{tool.name}"
    write_app(context, base)
    tool.build(context)

    def run(i: int) -> float:
        (context / "src" / "main.txt").write_text(_source(f"edit-{i}"))
        return tool.build(context)

    return CaseResult(tool.name, _measure(run, warmups, reps))


def parallel_dockerfile(base: str, stages: int) -> str:
    """``stages`` independent stages of one 2-second RUN, gathered by a final stage."""
    names = [chr(ord("a") + n) for n in range(stages)]
    parts = [f"FROM {base} AS {name}\nARG NONCE\nRUN echo \"$NONCE\" > /{name} && sleep 2\n"
             for name in names]
    parts.append(f"FROM {base}\n" + "".join(f"COPY --from={n} /{n} /{n}\n" for n in names))
    return "\n".join(parts)


def parallel_case(tool: Builder, work: Path, base: str, warmups: int, reps: int
                  ) -> CaseResult:
    nonces = itertools.count()

    def series(stages: int) -> Series:
        context = work / f"parallel{stages}-{tool.name}"
        context.mkdir(parents=True)
        (context / "Dockerfile").write_text(parallel_dockerfile(base, stages))

        def build(_: int) -> float:
            return tool.build(context, {"NONCE": str(next(nonces))})

        return _measure(build, warmups, reps)

    single = series(1)
    return CaseResult(tool.name, series(3), reference=single)
