"""Issue 10's scale cases: big contexts, a RUN of many files, a wide graph, on both tools.

Each case is built by BuildKit and by dockyard from the same busybox base, three ways per
repetition, in this order:

- cold: ``--no-cache`` (every step runs; the base is already pulled);
- warm: the identical build again, everything cached;
- edit: one line changed (a new value each time), the build again.

The cases:

- ``files10k`` / ``files100k``: a 10,000- / 100,000-file context (benchmarks/_cluster.py's
  ``big_context``: ``COPY lib/``, ``COPY src/``, a ``RUN``); the edit is one line of
  ``src/main.txt``.
- ``manyfiles``: a ``RUN`` writes 50,000 small files, a ``RUN`` on top reads them; the edit
  is that second ``RUN``'s line of the Dockerfile.
- ``stages40``: 39 independent stages of one ``RUN`` each, gathered by a 40th stage's
  ``COPY --from`` of every one (the fan-in); the edit is one stage's ``RUN`` line.
- ``copy1g``: a context holding one 1 GiB file of random bytes (``big.bin``, written once,
  from a seeded generator: both tools' contexts are the same bytes) and a small text file;
  ``COPY big.bin``, ``COPY small.txt``, a small ``RUN``. The edit is one line of
  ``small.txt``: the 1 GiB ``COPY`` stays cached and the steps after it run again, so the
  figure is what an unrelated change costs beside a big unchanged file (seeing it is
  unchanged without re-sending or re-hashing it, then running on top of it), not a second
  copy of the gigabyte, which the cold figure already times.
- ``write1g``: a ``RUN`` writing 1 GiB of ``/dev/urandom`` with busybox ``dd`` in one
  layer, a ``RUN`` on top; the edit is that second ``RUN``'s line.
- ``layers60``: 60 ``RUN echo N > /fN`` steps, one layer each, a chain 60 deep; the edit
  is the last ``RUN``'s line (59 cached steps under one that runs on a 59-layer stack).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks._cluster import big_context, main_txt
from benchmarks._stats import Row, Series, ratio
from benchmarks._tools import Builder

__all__ = ["SCALE_CASES", "ScaleCase", "ScaleResult", "big_file_context", "copy_big_dockerfile",
           "layers_dockerfile", "many_files_dockerfile", "measure_scale", "scale_rows",
           "small_txt", "stages_dockerfile", "write_big_dockerfile", "write_random_file"]

MANY_FILES = 50_000
STAGES = 40  # with the final one
BIG_FILE = 1 << 30  # bytes of copy1g's big.bin
WRITE_MIB = 1024  # MiB write1g's dd writes
CHUNK = 16 << 20  # bytes generated and written at a time
SMALL_LINES = 20
EDITED_LINE = 10  # 1-based line of small.txt the copy1g edit rewrites
LAYERS = 60


def many_files_dockerfile(base: str, version: str = "0") -> str:
    """A RUN writing ``MANY_FILES`` small files in one layer, a RUN on top (``version``
    is that second RUN's one-line edit)."""
    return (f"FROM {base}\n"
            f"RUN mkdir /many && cd /many && i=0 && while [ $i -lt {MANY_FILES} ]; do "
            "echo $i > f$i; i=$((i+1)); done\n"
            f"RUN ls /many | wc -l > /count && echo {version} > /version\n")


def stages_dockerfile(base: str, version: str = "0", stages: int = STAGES) -> str:
    """``stages - 1`` independent one-RUN stages and a last stage copying from each (the
    fan-in); ``version`` is written by the first stage's RUN (its one-line edit)."""
    names = [f"s{n:02d}" for n in range(stages - 1)]
    parts = [f"FROM {base} AS {name}\nRUN echo {name} > /{name}\n" for name in names]
    parts[0] = f"FROM {base} AS {names[0]}\nRUN echo {names[0]} {version} > /{names[0]}\n"
    parts.append(f"FROM {base}\n" + "".join(f"COPY --from={n} /{n} /{n}\n" for n in names))
    return "\n".join(parts)


def write_big_dockerfile(base: str, version: str = "0") -> str:
    """A RUN writing ``WRITE_MIB`` MiB of random bytes (busybox dd), a RUN on top
    (``version`` is that second RUN's one-line edit)."""
    return (f"FROM {base}\n"
            f"RUN dd if=/dev/urandom of=/big bs=1M count={WRITE_MIB}\n"
            f"RUN ls -l /big > /listing && echo {version} > /version\n")


def layers_dockerfile(base: str, version: str = "0", layers: int = LAYERS) -> str:
    """``layers`` one-line RUNs, one layer each; ``version`` is written by the last one
    (its one-line edit)."""
    runs = [f"RUN echo {n} > /f{n}\n" for n in range(layers - 1)]
    runs.append(f"RUN echo {layers - 1} {version} > /f{layers - 1}\n")
    return f"FROM {base}\n" + "".join(runs)


def copy_big_dockerfile(base: str) -> str:
    """``COPY`` the big file, then the small one, then a small RUN reading both."""
    return (f"FROM {base}\nCOPY big.bin /big.bin\nCOPY small.txt /small.txt\n"
            "RUN ls -l /big.bin > /listing && wc -l /small.txt > /lines\n")


def small_txt(version: str) -> str:
    """``SMALL_LINES`` lines, line ``EDITED_LINE`` carrying ``version``."""
    lines = [f"setting {n} = default" for n in range(1, SMALL_LINES + 1)]
    lines[EDITED_LINE - 1] = f"setting {EDITED_LINE} = {version}"
    return "\n".join(lines) + "\n"


def write_random_file(path: Path, size: int, seed: int = 10, chunk: int = CHUNK) -> None:
    """``size`` bytes from a generator seeded with ``seed`` (incompressible, the same bytes
    on every call), ``chunk`` bytes at a time."""
    rng = random.Random(seed)
    with path.open("wb") as out:
        for start in range(0, size, chunk):
            out.write(rng.randbytes(min(chunk, size - start)))


def big_file_context(context: Path, base: str, size: int = BIG_FILE
                     ) -> Callable[[str], None]:
    """copy1g's context (``big.bin`` of ``size`` random bytes, ``small.txt``, the
    Dockerfile); the one-line edit of ``small.txt`` (``big.bin`` is never written again)."""
    context.mkdir(parents=True, exist_ok=True)
    (context / "Dockerfile").write_text(copy_big_dockerfile(base))
    write_random_file(context / "big.bin", size)

    def edit(version: str) -> None:
        (context / "small.txt").write_text(small_txt(version))

    edit("0")
    return edit


def _files_case(count: int) -> Callable[[Path, str], Callable[[str], None]]:
    def setup(context: Path, base: str) -> Callable[[str], None]:
        big_context(context, base, count)
        return lambda version: (context / "src" / "main.txt").write_text(main_txt(version))
    return setup


def _dockerfile_case(write: Callable[[str, str], str]
                     ) -> Callable[[Path, str], Callable[[str], None]]:
    def setup(context: Path, base: str) -> Callable[[str], None]:
        context.mkdir(parents=True, exist_ok=True)

        def edit(version: str) -> None:
            (context / "Dockerfile").write_text(write(base, version))

        edit("0")
        return edit
    return setup


@dataclass(frozen=True)
class ScaleCase:
    """A case's title, its setup and which of its three figures carry issue 10's 1.0x."""

    title: str
    #: writes the context under the given dir for the given base; returns the one-line edit
    setup: Callable[[Path, str], Callable[[str], None]]
    targets: frozenset[str]  # among "cold", "warm", "edit"


SCALE_CASES: dict[str, ScaleCase] = {
    "files10k": ScaleCase("10,000-file context, COPY then RUN", _files_case(10_000),
                          frozenset({"edit"})),
    "files100k": ScaleCase("100,000-file context, COPY then RUN", _files_case(100_000),
                           frozenset({"edit"})),
    "manyfiles": ScaleCase(f"a RUN writing {MANY_FILES:,} files, a RUN on top",
                           _dockerfile_case(many_files_dockerfile),
                           frozenset({"cold", "edit"})),
    "stages40": ScaleCase(f"{STAGES}-stage graph with a fan-in",
                          _dockerfile_case(stages_dockerfile), frozenset({"cold", "warm"})),
    "copy1g": ScaleCase("a 1 GiB context file, COPY then a small RUN", big_file_context,
                        frozenset({"cold", "edit"})),
    "write1g": ScaleCase(f"a RUN writing {WRITE_MIB:,} MiB (dd), a RUN on top",
                         _dockerfile_case(write_big_dockerfile), frozenset({"cold", "edit"})),
    "layers60": ScaleCase(f"{LAYERS} one-RUN layers", _dockerfile_case(layers_dockerfile),
                          frozenset()),
}


@dataclass(frozen=True)
class ScaleResult:
    """One tool's timings on one case: ``figures`` maps cold / warm / edit to a Series;
    ``progress`` each figure's last ``--progress=plain`` output (when the tool keeps it)."""

    tool: str
    figures: dict[str, Series]
    progress: dict[str, str] = field(default_factory=dict)


def measure_scale(case: str, tool: Builder, work: Path, base: str, warmups: int,
                  reps: int, cases: Mapping[str, ScaleCase] = SCALE_CASES) -> ScaleResult:
    """``warmups`` untimed rounds, then ``reps`` timed rounds of cold, warm and edit
    (``case`` one of ``cases``)."""
    edit = cases[case].setup(work / f"{case}-{tool.name}", base)
    context = work / f"{case}-{tool.name}"
    tool.build(context)  # the first build: the base pulled, the service warm
    samples: dict[str, list[float]] = {"cold": [], "warm": [], "edit": []}
    progress: dict[str, str] = {}
    for rep in range(warmups + reps):
        times = {}
        for name in samples:
            if name == "edit":
                edit(f"edit-{rep}")
            times[name] = tool.build(context, no_cache=name == "cold")
            progress[name] = getattr(tool, "last_progress", "")
        if rep >= warmups:
            for name, took in times.items():
                samples[name].append(took)
    return ScaleResult(tool.name, {name: Series(tuple(s)) for name, s in samples.items()},
                       progress)


_FIGURES = {"cold": "cold (`--no-cache`)", "warm": "warm (no change)",
            "edit": "after a one-line change"}


def scale_rows(case: str, ours: ScaleResult, theirs: ScaleResult, path: str,
               cases: Mapping[str, ScaleCase] = SCALE_CASES) -> list[Row]:
    """Three rows, dockyard / BuildKit: cold, warm, edit; 1.0 where issue 10 sets it."""
    spec = cases[case]
    rows = []
    for name, text in _FIGURES.items():
        mine, other = ours.figures[name], theirs.figures[name]
        target = 1.0 if name in spec.targets else None
        rows.append(Row(f"{spec.title}: {text}", mine.describe(), other.describe(),
                        ratio(mine.median, other.median), target, True, path))
    return rows
