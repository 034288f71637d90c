"""What the cache backend tests share: running a coroutine, and made-up blobs."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Awaitable
from typing import Any


def run(coro: Awaitable[Any]) -> Any:
    """``coro`` run to its end on a new event loop."""
    async def main() -> Any:
        return await coro
    return asyncio.run(main())


def blob(size: int, seed: int = 0) -> tuple[str, bytes]:
    """``size`` random bytes, the same for the same ``size`` and ``seed``, and their
    digest; blobs of one seed and different sizes are not prefixes of each other."""
    data = random.Random(seed * 7919 + size).randbytes(size)
    return "sha256:" + hashlib.sha256(data).hexdigest(), data
