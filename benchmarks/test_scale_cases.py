"""Issue 10's scale cases: their Dockerfiles, contexts, edits and rows (no build):
``pytest benchmarks``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from benchmarks._main import CASES
from benchmarks._scale_cases import (
    EDITED_LINE,
    LAYERS,
    MANY_FILES,
    SCALE_CASES,
    STAGES,
    WRITE_MIB,
    ScaleResult,
    big_file_context,
    layers_dockerfile,
    many_files_dockerfile,
    measure_scale,
    scale_rows,
    stages_dockerfile,
    write_big_dockerfile,
    write_random_file,
)
from benchmarks._stats import Series


def test_every_scale_case_is_a_choice_of_the_cli() -> None:
    assert set(SCALE_CASES) <= set(CASES)


def test_stages_dockerfile_is_a_fan_in_of_independent_stages() -> None:
    text = stages_dockerfile("reg/busybox")
    runs = [line for line in text.splitlines() if line.startswith("RUN ")]
    assert text.count("FROM reg/busybox") == STAGES
    assert len(runs) == STAGES - 1 and len(set(runs)) == STAGES - 1
    assert text.count("COPY --from=") == STAGES - 1


def test_stages_edit_changes_one_line() -> None:
    before, after = (stages_dockerfile("b", v).splitlines() for v in ("0", "edit-1"))
    assert len(before) == len(after)
    assert [(a, b) for a, b in zip(before, after, strict=True) if a != b] == [
        ("RUN echo s00 0 > /s00", "RUN echo s00 edit-1 > /s00")]


def test_many_files_dockerfile_edits_only_the_run_on_top() -> None:
    before, after = (many_files_dockerfile("b", v).splitlines() for v in ("0", "1"))
    assert before[:2] == after[:2] and before[2] != after[2]
    assert f"-lt {MANY_FILES}" in before[1]


def _changed(write: Callable[[str], str]) -> list[tuple[str, str]]:
    """The lines ``write`` changes between version "0" and "edit-1" (same line count)."""
    before, after = (write(v).splitlines() for v in ("0", "edit-1"))
    assert len(before) == len(after)
    return [(a, b) for a, b in zip(before, after, strict=True) if a != b]


def test_write_big_dockerfile_writes_1_gib_and_edits_only_the_run_on_top() -> None:
    text = write_big_dockerfile("b")
    assert f"RUN dd if=/dev/urandom of=/big bs=1M count={WRITE_MIB}\n" in text
    assert WRITE_MIB == 1024
    assert _changed(lambda v: write_big_dockerfile("b", v)) == [
        ("RUN ls -l /big > /listing && echo 0 > /version",
         "RUN ls -l /big > /listing && echo edit-1 > /version")]


def test_layers_dockerfile_is_a_chain_of_one_run_layers_edited_at_its_top() -> None:
    runs = [line for line in layers_dockerfile("b").splitlines() if line.startswith("RUN ")]
    assert len(runs) == LAYERS == 60 and len(set(runs)) == LAYERS
    assert runs[0] == "RUN echo 0 > /f0"
    assert _changed(lambda v: layers_dockerfile("b", v)) == [
        ("RUN echo 59 0 > /f59", "RUN echo 59 edit-1 > /f59")]


def test_random_file_is_the_same_bytes_every_time_whatever_the_chunk(tmp_path: Path) -> None:
    write_random_file(tmp_path / "a", 1000, chunk=256)
    write_random_file(tmp_path / "b", 1000, chunk=1000)
    write_random_file(tmp_path / "c", 1000, seed=11)
    a = (tmp_path / "a").read_bytes()
    assert len(a) == 1000 and a == (tmp_path / "b").read_bytes()
    assert a != (tmp_path / "c").read_bytes()


def test_copy_big_context_edits_one_line_of_the_small_file_only(tmp_path: Path) -> None:
    context = tmp_path / "ctx"
    edit = big_file_context(context, "b", size=4096)
    assert (context / "Dockerfile").read_text().splitlines()[1:3] == [
        "COPY big.bin /big.bin", "COPY small.txt /small.txt"]
    big = context / "big.bin"
    assert big.stat().st_size == 4096
    stamp = big.stat().st_mtime_ns
    before = (context / "small.txt").read_text().splitlines()
    edit("edit-1")
    after = (context / "small.txt").read_text().splitlines()
    assert [n for n, (a, b) in enumerate(zip(before, after, strict=True), 1) if a != b] == [
        EDITED_LINE]
    assert big.stat().st_mtime_ns == stamp  # the edit never rewrites the big file


TARGETS = [
    # case, figures with issue 10's 1.0x target
    ("files10k", {"edit"}),
    ("files100k", {"edit"}),
    ("manyfiles", {"cold", "edit"}),
    ("stages40", {"cold", "warm"}),
    ("copy1g", {"cold", "edit"}),
    ("write1g", {"cold", "edit"}),
    ("layers60", set()),
]


@pytest.mark.parametrize(("case", "targets"), TARGETS)
def test_targets(case: str, targets: set[str]) -> None:
    assert SCALE_CASES[case].targets == targets


def test_files_case_writes_the_context_and_edits_one_file(tmp_path: Path) -> None:
    edit = SCALE_CASES["files10k"].setup(tmp_path / "ctx", "b")
    files = [p for p in (tmp_path / "ctx").rglob("*") if p.is_file() and p.name != "Dockerfile"]
    assert len(files) == 10_000
    before = (tmp_path / "ctx" / "src" / "main.txt").read_text()
    edit("edit-0")
    after = (tmp_path / "ctx" / "src" / "main.txt").read_text()
    assert sum(a != b for a, b in zip(before.splitlines(), after.splitlines(), strict=True)) == 1


class CountingTool:
    """A Builder that records its builds: (Dockerfile text, no_cache) each, 1 s each."""

    name = "fake"

    def __init__(self) -> None:
        self.builds: list[tuple[str, bool]] = []

    def build(self, context: Path, build_args: Mapping[str, str] | None = None,
              no_cache: bool = False) -> float:
        self.builds.append(((context / "Dockerfile").read_text(), no_cache))
        return float(len(self.builds))

    def client_startup(self) -> float:
        return 0.0


def test_measure_scale_runs_cold_warm_edit_per_round(tmp_path: Path) -> None:
    tool = CountingTool()
    result = measure_scale("stages40", tool, tmp_path, "b", warmups=1, reps=2)
    assert len(tool.builds) == 1 + 3 * 3
    assert [cold for _, cold in tool.builds] == [False] + [True, False, False] * 3
    assert len({text for text, _ in tool.builds}) == 4  # the first and three edits
    assert result.figures == {"cold": Series((5.0, 8.0)), "warm": Series((6.0, 9.0)),
                              "edit": Series((7.0, 10.0))}


def test_scale_rows_put_targets_where_issue_10_does() -> None:
    ours = ScaleResult("dockyard", {n: Series((2.0,)) for n in ("cold", "warm", "edit")})
    theirs = ScaleResult("BuildKit", {n: Series((1.0,)) for n in ("cold", "warm", "edit")})
    rows = scale_rows("stages40", ours, theirs, "p")
    assert [(r.ratio, r.target) for r in rows] == [(2.0, 1.0), (2.0, 1.0), (2.0, None)]
    assert rows[0].benchmark == "40-stage graph with a fan-in: cold (`--no-cache`)"
