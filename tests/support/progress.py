"""Reading ``--progress=plain`` output in tests."""

from __future__ import annotations


def plain_blocks(progress: str) -> dict[str, list[str]]:
    """``#N`` -> its lines (without the ``#N ``), from --progress=plain output."""
    found: dict[str, list[str]] = {}
    for line in progress.splitlines():
        if line.startswith("#"):
            number, _, rest = line.partition(" ")
            found.setdefault(number, []).append(rest)
    return found
