"""The S3 cache cases' pure helpers and rows (no server, no build): ``pytest benchmarks``."""

from __future__ import annotations

import json

import pytest

from benchmarks._cache import (
    ExportResult,
    RequestsResult,
    RestoreResult,
    cache_flag,
    cached_steps,
    count_vertices,
    ran_steps,
    restore_dockerfile,
)
from benchmarks._cache_rows import export_row, requests_row, restore_rows
from benchmarks._s3 import classify
from benchmarks._stats import Series

CLASSIFY_CASES = [
    # method, request target, kind
    ("GET", "/restore/blobs/sha256/ab12", "GET blob"),
    ("HEAD", "/restore/blobs/sha256/ab12", "HEAD blob"),
    ("GET", "/restore/team/blobs/sha256/ab12?partNumber=1", "GET blob"),
    ("GET", "/restore/records/0f0f", "GET record"),
    ("PUT", "/restore/ci/records/0f0f", "PUT record"),
    ("GET", "/restore?list-type=2&prefix=blobs%2F", "GET list"),
    ("GET", "/restore/", "GET list"),
    ("PUT", "/restore", "PUT bucket"),
    ("DELETE", "/restore/other/thing", "DELETE other"),
]


@pytest.mark.parametrize(("method", "path", "kind"), CLASSIFY_CASES)
def test_classify(method: str, path: str, kind: str) -> None:
    assert classify(method, path) == kind


FLAG_CASES = [
    ("to", "max", "--cache-to=type=s3,bucket=bk1,region=us-east-1,"
     "endpoint_url=http://127.0.0.1:9,use_path_style=true,mode=max"),
    ("to", "min", "--cache-to=type=s3,bucket=bk1,region=us-east-1,"
     "endpoint_url=http://127.0.0.1:9,use_path_style=true,mode=min"),
    ("from", "max", "--cache-from=type=s3,bucket=bk1,region=us-east-1,"
     "endpoint_url=http://127.0.0.1:9,use_path_style=true"),
]


@pytest.mark.parametrize(("direction", "mode", "flag"), FLAG_CASES)
def test_cache_flag(direction: str, mode: str, flag: str) -> None:
    assert cache_flag(direction, "http://127.0.0.1:9", "bk1", mode) == flag


def test_count_vertices_leaves_results_out() -> None:
    lines = [{"digest": "sha256:1", "op": "source"}, {"digest": "sha256:2", "op": "exec"},
             {"result": "stage-0", "root": "sha256:2"}]
    assert count_vertices("\n".join(json.dumps(line) for line in lines) + "\n\n") == 2


@pytest.mark.parametrize(("progress", "cached"), [
    ("#1 [1/2] FROM x\n#1 CACHED\n#2 [2/2] RUN y\n#2 CACHED\n", 2),
    ("#2 [2/2] RUN y\n#2 DONE 0.1s\n", 0),
    ("#5 CACHED \n#6 sha256:ab CACHED later\n", 1),
    ("", 0),
])
def test_cached_steps(progress: str, cached: int) -> None:
    assert cached_steps(progress) == cached


def test_restore_dockerfile() -> None:
    assert restore_dockerfile("reg/busybox", 2, 1) == (
        "FROM reg/busybox\n"
        "RUN head -c 1048576 /dev/urandom > /data0.bin\n"
        "RUN head -c 1048576 /dev/urandom > /data1.bin\n")


def test_restore_rows() -> None:
    result = RestoreResult(Series((2.6, 2.4, 2.5)), Series((2.0, 2.2, 1.8)), 6,
                           201 * 1024 * 1024, Series((1.0,)))
    ours, floor, beside = restore_rows(result, 40, Series((5.0,)))
    assert (floor.ratio, floor.met_text) == (pytest.approx(0.5), "-")
    assert (ours.ratio, ours.target_text, ours.met_text) == (pytest.approx(1.25), "<= 1.30",
                                                             "yes")
    assert "201 MiB in 6 blobs" in ours.benchmark
    assert (beside.ratio, beside.met_text) == (pytest.approx(0.5), "-")
    _, _, missing = restore_rows(result, 40, "did not run (no dockerd)")
    assert missing.benchmark.endswith("did not run (no dockerd)")


def test_requests_row_takes_the_worst_repetition() -> None:
    row = requests_row(RequestsResult((7, 9, 8), 8, {"GET record": 8, "GET blob": 1}))
    assert row.dockyard == "9 requests (8 GET record, 1 GET blob; n=3)"
    assert (row.reference, row.met_text) == ("8 vertices", "**no**")
    assert row.ratio == pytest.approx(9 / 8)


@pytest.mark.parametrize(("plain", "exported", "share", "met"), [
    ((2.0, 2.0), (2.1, 2.1), "+5%", "yes"),
    ((2.0, 2.0), (2.4, 2.4), "+20%", "**no**"),
    # load drifts up: the ratio of medians would say +50%, the pairs say +5%
    ((1.0, 2.0, 4.0), (1.05, 4.2, 4.2), "+5%", "yes"),
])
def test_export_row(plain: tuple[float, ...], exported: tuple[float, ...], share: str,
                    met: str) -> None:
    row = export_row(ExportResult(Series(plain), Series(exported)))
    assert f"({share}, median of paired ratios)" in row.benchmark
    assert row.met_text == met


RAN_CASES = [
    ("#1 [1/3] FROM x\n#1 DONE 0.1s\n#2 [2/3] RUN a\n#2 CACHED\n#3 [3/3] RUN b > /c\n"
     "#3 0.120 output\n#3 DONE 0.2s\n", ["RUN b > /c"]),
    ("#2 [stage 2/3] RUN a\n#2 CACHED\n", []),
    ("#12 [2/3] RUN a\n#12 DONE 0.1s\n#1 [1/3] RUN z\n#1 ERROR\n", ["RUN a"]),
    ("", []),
]


@pytest.mark.parametrize(("progress", "ran"), RAN_CASES)
def test_ran_steps(progress: str, ran: list[str]) -> None:
    assert ran_steps(progress) == ran
