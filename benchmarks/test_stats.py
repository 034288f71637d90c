"""The suite's arithmetic and table (no builds): ``pytest benchmarks/test_stats.py``."""

from __future__ import annotations

import pytest

from benchmarks._cases import parallel_dockerfile
from benchmarks._stats import Row, Series, markdown_table, ratio

SERIES_CASES = [
    # samples, median, spread, describe()
    ((1.0,), 1.0, (1.0, 1.0), "1.00 s (1.00-1.00, n=1)"),
    ((3.0, 1.0, 2.0), 2.0, (1.0, 3.0), "2.00 s (1.00-3.00, n=3)"),
    ((0.5, 0.7, 0.6, 0.9), 0.65, (0.5, 0.9), "0.65 s (0.50-0.90, n=4)"),
]


@pytest.mark.parametrize(("samples", "median", "spread", "text"), SERIES_CASES)
def test_series(samples: tuple[float, ...], median: float, spread: tuple[float, float],
                text: str) -> None:
    series = Series(samples)
    assert series.median == pytest.approx(median)
    assert series.spread == spread
    assert series.describe() == text


ROW_CASES = [
    # ratio, target, at_most, met, target text, met text
    (1.0, 1.0, True, True, "<= 1.00", "yes"),
    (1.21, 1.2, True, False, "<= 1.20", "**no**"),
    (0.8, 0.8, False, True, ">= 0.80", "yes"),
    (0.79, 0.8, False, False, ">= 0.80", "**no**"),
    (5.0, None, True, None, "(info)", "-"),
]


@pytest.mark.parametrize(("value", "target", "at_most", "met", "target_text", "met_text"),
                         ROW_CASES)
def test_row_verdict(value: float, target: float | None, at_most: bool, met: bool | None,
                     target_text: str, met_text: str) -> None:
    row = Row("b", "d", "r", value, target, at_most, "p")
    assert (row.met, row.target_text, row.met_text) == (met, target_text, met_text)


def test_ratio_of_zero_is_infinite() -> None:
    assert ratio(1.0, 0.0) == float("inf")
    assert ratio(3.0, 2.0) == 1.5


def test_table_escapes_pipes_in_cells() -> None:
    table = markdown_table([Row("speed vs `tar | gzip`", "1 s", "2 s", 0.5, 0.8, False, "x")])
    assert table.splitlines()[2] == (
        "| speed vs `tar \\| gzip` | 1 s | 2 s | 0.50 | >= 0.80 | **no** | x |")


def test_parallel_dockerfile_has_independent_stages() -> None:
    text = parallel_dockerfile("base:1", 3)
    assert text.count("sleep 2") == 3
    assert [line for line in text.splitlines() if line.startswith("COPY")] == [
        "COPY --from=a /a /a", "COPY --from=b /b /b", "COPY --from=c /c /c"]
