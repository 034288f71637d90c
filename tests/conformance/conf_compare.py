"""Comparing one side's result with the other's: trees line by line, configs key by key.
A result is ``Built(tree, config)`` or ``Failed(message)``."""

from __future__ import annotations

import difflib
import json
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Built:
    tree: list[str]
    config: dict[str, Any]


@dataclass(frozen=True)
class Failed:
    message: str


Result = Built | Failed


def tree_diff(expected: list[str], actual: list[str]) -> list[str]:
    """Unified-diff lines (``-`` expected only, ``+`` actual only); empty when equal."""
    if expected == actual:
        return []
    lines = difflib.unified_diff(expected, actual, "buildkit", "dockyard", n=0, lineterm="")
    return [line for line in lines if not line.startswith(("---", "+++", "@@"))]


def config_diff(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """One line per differing key (``config.Env``, ``history[2]``, ``layers``...)."""
    lines = []
    for key in sorted(set(expected) | set(actual)):
        want, got = expected.get(key), actual.get(key)
        if key == "config":
            lines += _dict_diff("config.", want or {}, got or {})
        elif key == "history":
            lines += _history_diff(want or [], got or [])
        elif want != got:
            lines.append(f"{key}: buildkit {want!r} != dockyard {got!r}")
    return lines


def _dict_diff(prefix: str, want: dict[str, Any], got: dict[str, Any]) -> list[str]:
    return [f"{prefix}{key}: buildkit {want.get(key)!r} != dockyard {got.get(key)!r}"
            for key in sorted(set(want) | set(got)) if want.get(key) != got.get(key)]


def _history_diff(want: list[Any], got: list[Any]) -> list[str]:
    lines = [f"history[{i}]: buildkit {w!r} != dockyard {g!r}"
             for i, (w, g) in enumerate(zip(want, got, strict=False)) if w != g]
    if len(want) != len(got):
        lines.append(f"history: buildkit has {len(want)} entries, dockyard {len(got)}")
    return lines


def without_paths(tree: list[str], paths: Collection[str]) -> list[str]:
    """``tree`` without the lines of ``paths`` (a case's ``ignore_paths``)."""
    return [line for line in tree if line.split(" ", 5)[4] not in paths]


def compare(expected: Result, actual: Result, failure: dict[str, str] | None,
            ignore: Collection[str] = ()) -> list[str]:
    """Every difference between BuildKit's ``expected`` and dockyard's ``actual`` result;
    ``failure``: the case's ``expect_failure`` (message fragments per side); ``ignore``:
    paths left out of both trees."""
    if failure is not None:
        return _failure_diff(expected, actual, failure)
    if isinstance(expected, Failed):
        return [f"buildkit failed: {expected.message}"]
    if isinstance(actual, Failed):
        return [f"dockyard failed: {actual.message}"]
    trees = without_paths(expected.tree, ignore), without_paths(actual.tree, ignore)
    return tree_diff(*trees) + config_diff(expected.config,
                                                               actual.config)


def _failure_diff(expected: Result, actual: Result, failure: dict[str, str]) -> list[str]:
    lines = []
    for side, result in (("buildkit", expected), ("dockyard", actual)):
        if not isinstance(result, Failed):
            lines.append(f"{side} built an image, but the case must fail")
        elif failure.get(side, "") not in result.message:
            lines.append(f"{side}'s error lacks {failure.get(side)!r}: {result.message}")
    return lines


# --- recordings ---------------------------------------------------------------------------


def save(result: Result, folder: Path) -> None:
    """Write ``result`` as ``tree.txt`` + ``config.json``, or ``error.txt``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("tree.txt", "config.json", "error.txt"):
        (folder / name).unlink(missing_ok=True)
    if isinstance(result, Failed):
        (folder / "error.txt").write_text(result.message.rstrip("\n") + "\n")
        return
    (folder / "tree.txt").write_text("".join(f"{line}\n" for line in result.tree))
    (folder / "config.json").write_text(json.dumps(result.config, indent=1, sort_keys=True)
                                        + "\n")


def load(folder: Path) -> Result:
    """A result written by :func:`save`."""
    if (folder / "error.txt").exists():
        return Failed((folder / "error.txt").read_text().rstrip("\n"))
    return Built((folder / "tree.txt").read_text().splitlines(),
                 json.loads((folder / "config.json").read_text()))
