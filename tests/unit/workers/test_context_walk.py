"""The walk over a list of entries (workers/_context_walk.py ``walk_entries``) agrees with
the walk of the directory they came from (the walk itself is pinned by
tests/unit/cluster/test_context.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from workers._context_walk import walk_context, walk_entries

TREE = ["Dockerfile", "README.md", "CHANGES.md", "a-c", "a/b", "a/c/d.txt", "a/c/e.md",
        "docs/keep.md", "docs/other.md", "docs/deep/keep.md", "node_modules/x/y.js",
        "src/main.py", "src/main.pyc", "src/pkg/mod.pyc", "src/pkg/keep/k.txt", ".dockerignore"]

# (name, patterns, listed paths)
WALK_CASES: list[tuple[str, list[str], list[str]]] = [
    ("exception", ["*.md", "!README.md", "a*", "docs", "node_modules", "src"],
     [".dockerignore", "Dockerfile", "README.md"]),
    ("double star", ["**/*.pyc", "**/*.md", "node_modules", "**/pkg/keep"],
     [".dockerignore", "Dockerfile", "a", "a/b", "a/c", "a/c/d.txt", "a-c", "docs",
      "docs/deep", "src", "src/main.py", "src/pkg"]),
    ("deep re-include lists the parents", ["*", "!src/pkg/keep"],
     ["src", "src/pkg", "src/pkg/keep", "src/pkg/keep/k.txt"]),
    ("glob exception", ["**", "!**/keep.md"],
     ["docs", "docs/deep", "docs/deep/keep.md", "docs/keep.md"]),
    ("glob exception, then a dir again", ["**", "!**/keep.md", "docs/deep"],
     ["docs", "docs/keep.md"]),
    ("everything", ["**"], []),
    ("a later exception on a dir", ["*", "!a", "a/*", "!a"],
     ["a", "a/b", "a/c", "a/c/d.txt", "a/c/e.md"]),
]


def _make(root: Path, spec: list[str]) -> None:
    for item in spec:
        (root / item).parent.mkdir(parents=True, exist_ok=True)
        (root / item).write_text(item)


@pytest.mark.parametrize(("patterns", "expected"), [case[1:] for case in WALK_CASES],
                         ids=[case[0] for case in WALK_CASES])
def test_walk_entries_is_the_walk_of_the_directory(tmp_path: Path, patterns: list[str],
                                                   expected: list[str]) -> None:
    _make(tmp_path, TREE)
    everything = list(walk_context(tmp_path, []))
    listed = list(walk_entries(reversed(everything), patterns))
    assert listed == list(walk_context(tmp_path, patterns))
    assert [entry.path for entry in listed] == expected


def test_walk_entries_of_a_walk_with_fewer_exclusions(tmp_path: Path) -> None:
    _make(tmp_path, TREE)
    first = list(walk_context(tmp_path, ["*.md", "!README.md"]))
    narrower = ["*.md", "!README.md", "src", "**/*.md"]
    assert list(walk_entries(first, narrower)) == list(walk_context(tmp_path, narrower))
