"""Helpers shared by the workers' integration tests (imported as ``workers_helpers``:
pytest puts this folder on ``sys.path``, as for ``engine_helpers``)."""

from __future__ import annotations

import asyncio
import functools
import os
import stat
from collections.abc import Callable, Collection, Coroutine
from pathlib import Path
from typing import Any

__all__ = ["aio", "mounts_under", "tree_listing"]


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


def tree_listing(root: Path, hidden: Collection[str] = ()) -> list[str]:
    """Every entry below ``root`` but the ``hidden`` paths (``/etc/passwd``: relative to
    ``root``), one sorted line each, in the form the file-op tests pin:

        d PATH MODE UID:GID
        f PATH MODE UID:GID SIZE [links=N]    (``links`` only when hardlinked)
        l PATH -> TARGET UID:GID
    """
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = "/" + str(path.relative_to(root))
            if rel not in hidden:
                out.append(_describe(rel, os.lstat(path), path))
    return sorted(out)


def _describe(rel: str, info: os.stat_result, path: Path) -> str:
    owner = f"{info.st_uid}:{info.st_gid}"
    mode = oct(stat.S_IMODE(info.st_mode))[2:]
    if stat.S_ISLNK(info.st_mode):
        return f"l {rel} -> {os.readlink(path)} {owner}"
    if stat.S_ISDIR(info.st_mode):
        return f"d {rel} {mode} {owner}"
    links = f" links={info.st_nlink}" if info.st_nlink > 1 else ""
    return f"f {rel} {mode} {owner} {info.st_size}{links}"
