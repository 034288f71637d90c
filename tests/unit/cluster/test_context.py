"""The client's view of the build context: the ignore file that applies, and the walk.

Each case builds a small tree in a temporary directory from a spec: ``"d/"`` is a
directory, ``"f"`` a file (content: its own path), ``"l -> target"`` a symlink.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from dockyard.cluster._context import (
    ContextEntry,
    ignore_file_for,
    load_ignore_patterns,
    walk_context,
)
from dockyard.scheduler._errors import DockerfileError, DockyardError, UsageError
from dockyard.scheduler.dockerfile._dockerignore import PatternMatcher
from dockyard.workers._context_walk import walk_entries


def _make(root: Path, spec: list[str]) -> None:
    for item in spec:
        if " -> " in item:
            name, target = item.split(" -> ")
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).symlink_to(target)
        elif item.endswith("/"):
            (root / item).mkdir(parents=True, exist_ok=True)
        else:
            (root / item).parent.mkdir(parents=True, exist_ok=True)
            (root / item).write_text(item)


# --- which ignore file: (files, Dockerfile, expected ignore file) -------------------------
# Paths are relative to a temp dir; the context is "ctx".

IGNORE_FILE_CASES: list[tuple[str, list[str], str, str | None]] = [
    ("none", ["ctx/Dockerfile"], "ctx/Dockerfile", None),
    ("context's", ["ctx/Dockerfile", "ctx/.dockerignore"], "ctx/Dockerfile", "ctx/.dockerignore"),
    ("specific wins", ["ctx/Dockerfile", "ctx/.dockerignore", "ctx/Dockerfile.dockerignore"],
     "ctx/Dockerfile", "ctx/Dockerfile.dockerignore"),
    ("next to a Dockerfile in a subdir",
     ["ctx/build/app.Dockerfile", "ctx/.dockerignore", "ctx/build/app.Dockerfile.dockerignore"],
     "ctx/build/app.Dockerfile", "ctx/build/app.Dockerfile.dockerignore"),
    ("named after the Dockerfile, not found at the context root",
     ["ctx/build/app.Dockerfile", "ctx/.dockerignore", "ctx/app.Dockerfile.dockerignore"],
     "ctx/build/app.Dockerfile", "ctx/.dockerignore"),
    ("not in the Dockerfile's dir, no fallback there",
     ["ctx/build/app.Dockerfile", "ctx/build/.dockerignore"], "ctx/build/app.Dockerfile", None),
    ("Dockerfile outside the context",
     ["other/Dockerfile", "other/Dockerfile.dockerignore", "ctx/.dockerignore"],
     "other/Dockerfile", "other/Dockerfile.dockerignore"),
    ("Dockerfile outside the context, context's file",
     ["other/Dockerfile", "ctx/.dockerignore"], "other/Dockerfile", "ctx/.dockerignore"),
    ("a directory is not an ignore file",
     ["ctx/Dockerfile", "ctx/Dockerfile.dockerignore/", "ctx/.dockerignore"],
     "ctx/Dockerfile", "ctx/.dockerignore"),
    ("the name is exact", ["ctx/Dockerfile", "ctx/Dockerfile.Dockerignore"],
     "ctx/Dockerfile", None),
]


@pytest.mark.parametrize(("files", "dockerfile", "expected"),
                         [case[1:] for case in IGNORE_FILE_CASES],
                         ids=[case[0] for case in IGNORE_FILE_CASES])
def test_ignore_file_for(tmp_path: Path, files: list[str], dockerfile: str,
                         expected: str | None) -> None:
    _make(tmp_path, files)
    found = ignore_file_for(tmp_path / "ctx", tmp_path / dockerfile)
    assert found == (None if expected is None else tmp_path / expected)


# --- load_ignore_patterns: (files with content, patterns, ignore file) --------------------

LOAD_CASES: list[tuple[dict[str, str], list[str], str | None]] = [
    ({}, [], None),
    ({".dockerignore": "# c\n*.md\n!README.md\n/build/\n"}, ["*.md", "!README.md", "build"],
     ".dockerignore"),
    ({".dockerignore": "a", "Dockerfile.dockerignore": "b\n"}, ["b"], "Dockerfile.dockerignore"),
    ({".dockerignore": "a", "Dockerfile.dockerignore": ""}, [], "Dockerfile.dockerignore"),
    ({".dockerignore": "\ufeffx\r\ny\r\n"}, ["x", "y"], ".dockerignore"),
]


@pytest.mark.parametrize(("files", "patterns", "ignore_file"), LOAD_CASES)
def test_load_ignore_patterns(tmp_path: Path, files: dict[str, str], patterns: list[str],
                              ignore_file: str | None) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8", newline="")
    found = load_ignore_patterns(tmp_path, tmp_path / "Dockerfile")
    assert found == (patterns, None if ignore_file is None else tmp_path / ignore_file)


def test_a_bad_pattern_names_the_ignore_file(tmp_path: Path) -> None:
    (tmp_path / "app.Dockerfile.dockerignore").write_text("ok\n\n  src/[x\n")
    with pytest.raises(DockerfileError) as caught:
        load_ignore_patterns(tmp_path, tmp_path / "app.Dockerfile")
    error = caught.value
    assert (error.filename, error.line, error.column) == (
        str(tmp_path / "app.Dockerfile.dockerignore"), 3, 7)
    assert error.message == "syntax error in pattern: src/[x"


# --- walk_context: (tree, patterns, listed paths in order) --------------------------------
# The listed sets were compared with Docker 20.10's BuildKit (`COPY . /` exported with
# `-o type=local`): all agree except the glob-exception rows, where 20.10 skips the
# excluded directories whole (a bug current fsutil fixed: any glob exception walks them).

TREE = ["Dockerfile", "README.md", "CHANGES.md", "a-c", "a/b", "a/c/d.txt", "a/c/e.md",
        "docs/keep.md", "docs/other.md", "docs/deep/keep.md", "node_modules/x/y.js",
        "src/main.py", "src/main.pyc", "src/pkg/mod.pyc", "src/pkg/keep/k.txt", ".dockerignore"]

WALK_CASES: list[tuple[str, list[str], list[str]]] = [
    ("nothing ignored", [], [
        ".dockerignore", "CHANGES.md", "Dockerfile", "README.md", "a", "a/b", "a/c",
        "a/c/d.txt", "a/c/e.md", "a-c", "docs", "docs/deep", "docs/deep/keep.md",
        "docs/keep.md", "docs/other.md", "node_modules", "node_modules/x",
        "node_modules/x/y.js", "src", "src/main.py", "src/main.pyc", "src/pkg",
        "src/pkg/keep", "src/pkg/keep/k.txt", "src/pkg/mod.pyc"]),
    ("a directory and the ignore file", ["node_modules", "src", "docs", "a", ".dockerignore"],
     ["CHANGES.md", "Dockerfile", "README.md", "a-c"]),
    ("exception", ["*.md", "!README.md", "a*", "docs", "node_modules", "src"],
     [".dockerignore", "Dockerfile", "README.md"]),
    ("double star", ["**/*.pyc", "**/*.md", "node_modules", "**/pkg/keep"],
     [".dockerignore", "Dockerfile", "a", "a/b", "a/c", "a/c/d.txt", "a-c", "docs",
      "docs/deep", "src", "src/main.py", "src/pkg"]),
    ("excluded dir, re-included child", ["*", "!docs/keep.md"], ["docs", "docs/keep.md"]),
    ("deep re-include lists the parents", ["*", "!src/pkg/keep"],
     ["src", "src/pkg", "src/pkg/keep", "src/pkg/keep/k.txt"]),
    ("glob exception", ["**", "!**/keep.md"],
     ["docs", "docs/deep", "docs/deep/keep.md", "docs/keep.md"]),
    ("glob exception, then a dir again", ["**", "!**/keep.md", "docs/deep"],
     ["docs", "docs/keep.md"]),
    ("glob exception, then a dir's content", ["**", "!**/keep.md", "docs/deep/**"],
     ["docs", "docs/keep.md"]),
    ("everything", ["**"], []),
    ("everything at the top", ["*"], []),
    # as Docker 20.10 does (current fsutil would list only "a")
    ("a later exception on a dir", ["*", "!a", "a/*", "!a"],
     ["a", "a/b", "a/c", "a/c/d.txt", "a/c/e.md"]),
    ("an exception under an excluded dir", ["a/c", "!a/c/*.md", "*.md", "a-c", "docs", "src"],
     [".dockerignore", "Dockerfile", "a", "a/b", "a/c", "a/c/e.md", "node_modules",
      "node_modules/x", "node_modules/x/y.js"]),
    ("parents match too", ["a/c"], [
        ".dockerignore", "CHANGES.md", "Dockerfile", "README.md", "a", "a/b", "a-c", "docs",
        "docs/deep", "docs/deep/keep.md", "docs/keep.md", "docs/other.md", "node_modules",
        "node_modules/x", "node_modules/x/y.js", "src", "src/main.py", "src/main.pyc",
        "src/pkg", "src/pkg/keep", "src/pkg/keep/k.txt", "src/pkg/mod.pyc"]),
]


@pytest.mark.parametrize(("patterns", "expected"), [case[1:] for case in WALK_CASES],
                         ids=[case[0] for case in WALK_CASES])
def test_walk_context(tmp_path: Path, patterns: list[str], expected: list[str]) -> None:
    _make(tmp_path, TREE)
    assert [entry.path for entry in walk_context(tmp_path, patterns)] == expected


@pytest.mark.parametrize(("patterns", "expected"), [case[1:] for case in WALK_CASES],
                         ids=[case[0] for case in WALK_CASES])
def test_walk_entries_is_the_walk_of_the_directory(tmp_path: Path, patterns: list[str],
                                                   expected: list[str]) -> None:
    """The walk over a list of entries (a worker has only the client's manifest) agrees
    with the walk of the directory they came from, whatever their order."""
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


# --- which directories a walk reads: (patterns, directories scanned) ----------------------

SCAN_CASES: list[tuple[list[str], list[str]]] = [
    ([], [".", "a", "a/c", "docs", "docs/deep", "node_modules", "node_modules/x", "src",
          "src/pkg", "src/pkg/keep"]),
    (["node_modules", "docs", "src", "a"], ["."]),
    (["*", "!src/pkg/keep"], [".", "src", "src/pkg", "src/pkg/keep"]),
    (["*", "!src/pkg/keep/**"], [".", "src", "src/pkg", "src/pkg/keep"]),
    (["node_modules", "!docs"], [".", "a", "a/c", "docs", "docs/deep", "src", "src/pkg",
                                 "src/pkg/keep"]),
    (["node_modules", "!**/keep.md"], [".", "a", "a/c", "docs", "docs/deep", "node_modules",
                                       "node_modules/x", "src", "src/pkg", "src/pkg/keep"]),
]


@pytest.mark.parametrize(("patterns", "scanned"), SCAN_CASES)
def test_excluded_dirs_are_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   patterns: list[str], scanned: list[str]) -> None:
    _make(tmp_path, TREE)
    seen: list[str] = []
    real_scandir = os.scandir

    def spy(path: Path) -> Any:
        seen.append(Path(path).relative_to(tmp_path).as_posix())
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", spy)
    list(walk_context(tmp_path, patterns))
    assert seen == scanned


# --- entries: kinds, modes, sizes, links ---------------------------------------------------

def test_entry_details(tmp_path: Path) -> None:
    _make(tmp_path, ["dir/", "file", "up -> ..", "rel -> dir/x", "root -> /"])
    (tmp_path / "file").write_bytes(b"12345")
    (tmp_path / "file").chmod(0o640)
    entries = {entry.path: entry for entry in walk_context(tmp_path, [])}
    assert sorted(entries) == ["dir", "file", "rel", "root", "up"]
    assert entries["file"] == ContextEntry("file", stat.S_IFREG | 0o640, 5)
    assert entries["file"].is_file and not entries["file"].is_dir
    assert entries["dir"].is_dir and entries["dir"].size == 0
    assert [(entries[n].is_symlink, entries[n].linkname, entries[n].size)
            for n in ("rel", "root", "up")] == [(True, "dir/x", 0), (True, "/", 0),
                                                (True, "..", 0)]


def test_symlinks_are_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    _make(outside, ["secret"])
    _make(tmp_path / "ctx", ["in/file", "link -> ../outside", "in/loop -> .."])
    paths = [entry.path for entry in walk_context(tmp_path / "ctx", [])]
    assert paths == ["in", "in/file", "in/loop", "link"]


def test_it_is_a_generator(tmp_path: Path) -> None:
    _make(tmp_path, ["a", "b"])
    walk = walk_context(tmp_path, [])
    assert next(walk).path == "a"


def test_a_matcher_can_be_given(tmp_path: Path) -> None:
    _make(tmp_path, ["a.md", "b.txt"])
    matcher = PatternMatcher.from_text("*.md\n")
    assert [entry.path for entry in walk_context(tmp_path, matcher)] == ["b.txt"]


def test_bad_patterns_fail_before_the_walk(tmp_path: Path) -> None:
    with pytest.raises(DockerfileError):
        walk_context(tmp_path, ["x[", "y"])


@pytest.mark.parametrize("name", ["missing", "a-file"])
def test_the_context_must_be_a_directory(tmp_path: Path, name: str) -> None:
    (tmp_path / "a-file").write_text("")
    with pytest.raises(UsageError, match="is not a directory"):
        walk_context(tmp_path / name, [])


# --- unreadable directories: (patterns, error or None) ------------------------------------

UNREADABLE_CASES: list[tuple[list[str], str | None]] = [
    ([], "cannot read the build context at 'secret': Permission denied"),
    (["secret"], None),
    (["secret", "!**/x"], None),
    (["secret", "!secret/x"], None),
    (["secret", "!secret"], "cannot read the build context at 'secret': Permission denied"),
]


@pytest.mark.parametrize(("patterns", "error"), UNREADABLE_CASES)
def test_unreadable_directories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                patterns: list[str], error: str | None) -> None:
    _make(tmp_path, ["secret/x", "z"])
    real_scandir = os.scandir

    def denying(path: Path) -> Any:
        if Path(path).name == "secret":
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", denying)
    if error is None:
        assert [entry.path for entry in walk_context(tmp_path, patterns)] == ["z"]
        return
    with pytest.raises(DockyardError) as caught:
        list(walk_context(tmp_path, patterns))
    assert caught.value.message == error
