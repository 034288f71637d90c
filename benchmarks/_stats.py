"""Samples of one measurement, their median and spread, and the table the suite prints."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Row", "Series", "markdown_table", "ratio"]


@dataclass(frozen=True)
class Series:
    """The timed repetitions (seconds) of one tool on one benchmark (warm-ups left out)."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def spread(self) -> tuple[float, float]:
        """The fastest and the slowest repetition."""
        return min(self.samples), max(self.samples)

    def describe(self, unit: str = "s") -> str:
        """``1.23 s (1.20-1.31, n=5)``."""
        low, high = self.spread
        return f"{self.median:.2f} {unit} ({low:.2f}-{high:.2f}, n={len(self.samples)})"


def ratio(ours: float, theirs: float) -> float:
    """``ours / theirs``; infinity when ``theirs`` is zero (never a ZeroDivisionError)."""
    return ours / theirs if theirs > 0 else float("inf")


@dataclass(frozen=True)
class Row:
    """One line of the results table.

    ``ratio`` is dockyard over the reference; ``met`` compares it with the target
    (``at_most`` True: the ratio must not exceed ``target``; False: must reach it)."""

    benchmark: str
    dockyard: str
    reference: str
    ratio: float
    target: float | None  # None: shown for information, no target
    at_most: bool
    path: str

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        return self.ratio <= self.target if self.at_most else self.ratio >= self.target

    @property
    def target_text(self) -> str:
        if self.target is None:
            return "(info)"
        return f"{'<=' if self.at_most else '>='} {self.target:.2f}"

    @property
    def met_text(self) -> str:
        return {True: "yes", False: "**no**", None: "-"}[self.met]


_HEADER = ("benchmark", "dockyard (median, min-max)", "reference (median, min-max)",
           "ratio", "target", "met", "dockyard path")


def markdown_table(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table (the README pastes it as printed)."""
    lines = ["| " + " | ".join(_HEADER) + " |", "|" + "---|" * len(_HEADER)]
    for row in rows:
        cells = (row.benchmark, row.dockyard, row.reference, f"{row.ratio:.2f}",
                 row.target_text, row.met_text, row.path)
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)
