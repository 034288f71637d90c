"""BuildKit's "did you mean" (util/suggest): the name nearest a mistyped one.

Part of the parser layer, below everything else in the frontend: the parser uses it for
unknown instructions, the instruction layer (``_flags.suggest``) for flags, mount types
and mount keys.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["closest"]

_MAX_DISTANCE = 3  # a suggestion must be nearer than this


def _levenshtein(a: str, b: str) -> int:
    """Edit distance: insert, delete and substitute cost 1 each."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def closest(value: str, options: Iterable[str]) -> str:
    """The first of ``options`` at the least distance from ``value`` below 3; "" when none
    is that near, or when ``value`` is itself one of ``options`` (case-sensitive)."""
    best, best_distance = "", _MAX_DISTANCE
    for option in options:
        if option == value:
            return ""
        distance = _levenshtein(value, option)
        if distance < best_distance:
            best, best_distance = option, distance
    return best
