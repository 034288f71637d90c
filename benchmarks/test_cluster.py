"""The cluster cases' pure helpers and rows (no cluster, no build): ``pytest benchmarks``."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from benchmarks._cluster import (
    _FETCHED,
    _PHASES,
    OverheadResult,
    _placed,
    overhead_dockerfile,
    scale_dockerfile,
    socket_copy,
)
from benchmarks._cluster_rows import overhead_rows, scale_rows
from benchmarks._stats import Series

DIGEST = "sha256:" + "ab" * 32


def test_scale_dockerfile_has_independent_distinct_stages() -> None:
    text = scale_dockerfile("reg/busybox", 8)
    runs = [line for line in text.splitlines() if line.startswith("RUN ")]
    assert len(runs) == 8 and len(set(runs)) == 8
    assert all("sleep 2" in run for run in runs)
    assert text.count("COPY --from=") == 8


@pytest.mark.parametrize(("stages", "steps", "copies"), [(1, 1, 2), (3, 4, 15), (100, 9, 1000)])
def test_overhead_dockerfile_counts(stages: int, steps: int, copies: int) -> None:
    text = overhead_dockerfile(stages, steps)
    assert text.count("COPY ") == copies
    assert text.count("FROM scratch") == stages + 1


PLACED_CASES = [
    # progress, RUN vertex -> address
    ("#5 [s0 2/2] RUN sleep 2\n#5 running on w1 at 127.0.0.3\n", {"5": "127.0.0.3"}),
    ("#6 [stage-8 2/9] COPY --from=s0 /s0 /s0\n#6 running on w1 at 127.0.0.2\n", {}),
    ("#5 [s0 2/2] RUN sleep 2\n#5 DONE 2.1s\n", {}),
]


@pytest.mark.parametrize(("progress", "expected"), PLACED_CASES)
def test_placed(progress: str, expected: dict[str, str]) -> None:
    assert _placed(progress) == expected


def test_log_lines_parse() -> None:
    fetched = (f"2026 INFO dockyard.workers._runtime: fetched blob {DIGEST} (209748371 bytes) "
               "from worker dockyard-worker-0839334dcf2f in 2.231 s")
    phases = (f"INFO dockyard.workers._peers: blob {DIGEST} from worker dockyard-worker-08: "
              "received in 1.871 s, checked in 0.263 s, published in 0.097 s")
    assert _FETCHED.findall(fetched) == [(DIGEST, "209748371", "2.231")]
    assert _PHASES.findall(phases) == [(DIGEST, "1.871", "0.263", "0.097")]


SCALE_CASES = [
    # 1-node median, n-node median, nodes, row ratio (speed-up / (0.8 n)), met
    (8.0, 2.5, 4, 3.2 / 3.2, True),
    (8.0, 5.0, 2, 1.6 / 1.6, True),
    (8.0, 4.0, 4, 2.0 / 3.2, False),
]


@pytest.mark.parametrize(("one", "many", "nodes", "expected", "met"), SCALE_CASES)
def test_scale_rows(one: float, many: float, nodes: int, expected: float, met: bool) -> None:
    rows = scale_rows({1: Series((one,)), nodes: Series((many,))})
    assert rows[0].met is None
    assert math.isclose(rows[1].ratio, expected)
    assert rows[1].met is met


def test_overhead_rows() -> None:
    result = OverheadResult(1000, cached=Series((0.8,)), cold=Series((30.0,)),
                            local=Series((25.0,)), local_cached=Series((0.5,)))
    cached, dispatch, local = overhead_rows(result)
    assert math.isclose(cached.ratio, 0.8) and cached.met is True
    assert math.isclose(dispatch.ratio, 5.0) and dispatch.met is True
    assert local.met is None


def test_socket_copy_copies_the_bytes(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(bytes(range(256)) * 4096)
    assert socket_copy(blob, tmp_path / "copy") > 0
    assert (tmp_path / "copy").read_bytes() == blob.read_bytes()
