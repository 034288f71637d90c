"""The disk a worker writes to: how much of it is free, and what to tell a user whose
build filled it (the one hint for ENOSPC, wherever a worker meets it)."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Final

__all__ = ["DISK_FULL_HINT", "free_bytes", "human_size", "is_disk_full"]

DISK_FULL_HINT: Final = ("the disk is full: free space on it (the worker keeps its layers "
                         "and cache under DOCKYARD_ROOT), or remove build cache with "
                         "`dockyard prune`")


def is_disk_full(err: OSError) -> bool:
    """True for "no space left on device" and "disk quota exceeded"."""
    return err.errno in (errno.ENOSPC, errno.EDQUOT)


def free_bytes(path: Path) -> int:
    """The bytes an unprivileged write may still use on the filesystem holding ``path``."""
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def human_size(size: int) -> str:
    """``size`` in binary units, as ``parse_size`` reads them back (``1.5GiB``)."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            if unit == "B":
                return f"{size}B"
            return f"{value:.3g}{unit}" if value < 1000 else f"{value:.0f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")
