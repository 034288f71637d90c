"""Where a value that must stay secret turned up: every regular file under some roots."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def files_containing(root: Path, needles: Iterable[bytes]) -> list[str]:
    """``"<path>: <needle>"`` for each needle found in a regular file under ``root`` (or
    ``root`` itself, a file); symlinks are not followed, unreadable files passed over."""
    wanted = list(needles)
    found = []
    for path in [root] if root.is_file() else root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                data = path.read_bytes()
            except OSError:
                continue
            found += [f"{path}: {needle!r}" for needle in wanted if needle in data]
    return found
