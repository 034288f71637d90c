"""``FirstOf``: a build's shared caches first, then the peer holding the blob (fake sources
that count their fetches; the real ones are tested against moto and a real cluster)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from dockyard.cache_backends._protocol import BlobCorrupt, BlobMissing
from dockyard.workers._peers import FirstOf

DIGEST = "sha256:" + "b" * 64


class Source:
    def __init__(self, where: str, outcome: int | type[Exception]) -> None:
        self.where = where
        self.outcome = outcome  # the size it delivers, or the error it raises
        self.asked = 0

    async def fetch_into(self, digest: str, sink: Any) -> int:
        self.asked += 1
        if isinstance(self.outcome, int):
            return self.outcome
        raise self.outcome(f"{self.where} lacks {digest}")


CASES = [
    # (outcomes in order, expected size or error, how many were asked)
    ([7], 7, 1),
    ([BlobMissing, 9], 9, 2),  # not uploaded to the cache yet: the peer serves it
    ([BlobCorrupt, 9], 9, 2),
    ([5, 9], 5, 1),  # the cache has it: the peer is never asked
    ([BlobMissing, BlobMissing], BlobMissing, 2),
    ([BlobMissing, BlobCorrupt], BlobCorrupt, 2),
]


@pytest.mark.parametrize(("outcomes", "expected", "asked"), CASES)
def test_sources_are_tried_in_order(outcomes: list[Any], expected: Any, asked: int) -> None:
    sources = [Source(f"s{i}", outcome) for i, outcome in enumerate(outcomes)]
    first = FirstOf(sources)
    assert first.where == " or ".join(s.where for s in sources)
    if isinstance(expected, int):
        assert asyncio.run(first.fetch_into(DIGEST, None)) == expected
    else:
        with pytest.raises(expected):
            asyncio.run(first.fetch_into(DIGEST, None))
    assert sum(s.asked for s in sources) == asked
