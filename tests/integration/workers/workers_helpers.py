"""Helpers shared by the workers' integration tests (imported as ``workers_helpers``:
pytest puts this folder on ``sys.path``, as for ``engine_helpers``)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

__all__ = ["aio", "mounts_under"]


def aio(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test in a fresh event loop (the suite has no asyncio plugin)."""
    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))
    return run


def mounts_under(path: Path) -> list[str]:
    """The mount points at or below ``path`` in this process's mount namespace."""
    with open("/proc/self/mountinfo") as info:
        return [p for p in (line.split()[4] for line in info) if p.startswith(str(path))]
