"""``.dockerignore`` conformance: which context entries a build sees, BuildKit's and ours.

Each row is a context tree, its ignore files and the Dockerfile's path, with what BuildKit
20.10 copied with ``FROM scratch`` + ``COPY . /`` (read back from the image's layers):

- ``tree``: entries as :func:`_buildkit.write_tree` reads them (``a/`` a directory,
  ``l -> t`` a symlink); the Dockerfile (``dockerfile``) and the ``ignore`` files are added.
- ``buildkit``: the context BuildKit 20.10 sent, space-separated, directories ending in ``/``.
- ``ours``: None when ``dockyard.cluster._context.walk_context`` must include exactly ``buildkit``;
  otherwise what it includes instead, for a documented 20.10 difference (``reason``): we
  follow current fsutil.

``test_buildkit_agrees`` (marker ``oracle``) rebuilds each row on the private dockerd;
``test_walk_context_agrees`` walks the same tree with our walker (no dockerd needed).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pytest
from _buildkit import PrivateDockerd, write_tree

from dockyard.cluster._context import load_ignore_patterns, walk_context

COPY_ALL = "FROM scratch\nCOPY . /\n"
FIXED_IN_FSUTIL = ("Docker 20.10's fsutil skips an excluded directory whole despite a glob "
                   "exception that re-includes something in it; current fsutil (ours) walks in")


class Row(NamedTuple):
    id: str
    tree: tuple[str, ...]
    ignore: dict[str, str]
    buildkit: str
    dockerfile: str = "Dockerfile"
    ours: str | None = None
    reason: str = ""


DI = ".dockerignore"
BASE = ("a.txt", "b/c.txt", "b/d.md", "README.md", "empty/")

ROWS: list[Row] = [
    Row("no-ignore-file", BASE, {},
        "Dockerfile README.md a.txt b/ b/c.txt b/d.md empty/"),
    Row("one-file", BASE, {DI: "a.txt\n"},
        ".dockerignore Dockerfile README.md b/ b/c.txt b/d.md empty/"),
    Row("star-is-one-level", BASE, {DI: "*.txt\n"},
        ".dockerignore Dockerfile README.md b/ b/c.txt b/d.md empty/"),
    Row("double-star-any-depth", BASE + ("x/y/z.txt",), {DI: "**/*.txt\n"},
        ".dockerignore Dockerfile README.md b/ b/d.md empty/ x/ x/y/"),
    Row("double-star-dir", ("node_modules/m.js", "app/node_modules/n.js", "app/main.js"),
        {DI: "**/node_modules\n"}, ".dockerignore Dockerfile app/ app/main.js"),
    Row("exception", BASE, {DI: "*.md\n!README.md\n"},
        ".dockerignore Dockerfile README.md a.txt b/ b/c.txt b/d.md empty/"),
    Row("later-pattern-wins", BASE, {DI: "*.md\n!README.md\nREADME*\n"},
        ".dockerignore Dockerfile a.txt b/ b/c.txt b/d.md empty/"),
    Row("leading-slash", BASE, {DI: "/a.txt\n/b/c.txt\n"},
        ".dockerignore Dockerfile README.md b/ b/d.md empty/"),
    Row("dot-slash-and-dotdot-cleaned", BASE, {DI: "./b/../a.txt\n./b/\n"},
        ".dockerignore Dockerfile README.md empty/"),
    Row("dotdot-above-root-matches-nothing", BASE, {DI: "../a.txt\n/../README.md\n"},
        ".dockerignore Dockerfile a.txt b/ b/c.txt b/d.md empty/"),
    Row("comments-and-blanks", BASE, {DI: "# a.txt\n\n   b/c.txt   \n #README.md\n"},
        ".dockerignore Dockerfile README.md a.txt b/ b/d.md empty/"),
    # Go's classes negate with ^ only: [!a] is '!' or 'a'
    Row("question-mark-and-class", ("a1", "a2", "ab", "b1", "c2"),
        {DI: "a?\n![b]1\n[!a]1\n[^b]2\n"}, ".dockerignore Dockerfile b1"),
    Row("dir-excluded-child-reincluded", BASE + ("b/e/f.md", "b/e/g.txt"),
        {DI: "b\n!b/e/f.md\n"},
        ".dockerignore Dockerfile README.md a.txt b/ b/e/ b/e/f.md empty/"),
    Row("dir-reincluded-whole", BASE, {DI: "*\n!b\n"}, "b/ b/c.txt b/d.md"),
    Row("everything-but-one", BASE, {DI: "**\n!b/c.txt\n"}, "b/ b/c.txt"),
    Row("dir-star-then-dir-exception", ("a/b", "a/c/d"), {DI: "a/*\n!a\n"},
        ".dockerignore Dockerfile a/ a/b a/c/ a/c/d"),
    Row("glob-exception-in-excluded-dir", BASE + ("b/e/keep.md",), {DI: "b\n!**/*.md\n"},
        ".dockerignore Dockerfile README.md a.txt empty/",
        ours=".dockerignore Dockerfile README.md a.txt b/ b/d.md b/e/ b/e/keep.md empty/",
        reason=FIXED_IN_FSUTIL),
    Row("symlink-not-followed", ("b/c.txt", "l -> b", "m -> nowhere"), {DI: "b\n"},
        ".dockerignore Dockerfile l m"),
    Row("dockerfile-and-ignore-file-excluded", BASE, {DI: "Dockerfile\n.dockerignore\n"},
        "README.md a.txt b/ b/c.txt b/d.md empty/"),
    Row("dockerfile-specific-replaces", BASE, {DI: "a.txt\n", "Dockerfile.dockerignore": "b\n"},
        ".dockerignore Dockerfile Dockerfile.dockerignore README.md a.txt empty/"),
    Row("dockerfile-specific-in-subdir", BASE,
        {DI: "a.txt\n", "build/app.Dockerfile.dockerignore": "b\nREADME.md\n"},
        ".dockerignore a.txt build/ build/app.Dockerfile build/app.Dockerfile.dockerignore"
        " empty/", dockerfile="build/app.Dockerfile"),
    Row("dockerfile-specific-excludes-itself", BASE,
        {"Dockerfile.dockerignore": "Dockerfile*\n"},
        "README.md a.txt b/ b/c.txt b/d.md empty/"),
    Row("other-dockerfiles-ignore-unused", BASE, {"other.dockerignore": "a.txt\n"},
        "Dockerfile README.md a.txt b/ b/c.txt b/d.md empty/ other.dockerignore"),
]


def _write_context(root: Path, row: Row) -> Path:
    write_tree(root, row.tree)
    for name, text in {row.dockerfile: COPY_ALL, **row.ignore}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def _as_paths(listing: list[str]) -> str:
    """:func:`_buildkit.tree_listing` lines as the table writes them."""
    paths = []
    for line in listing:
        kind, _mode, _owner, rest = line.split(" ", 3)
        path = rest.split(" -> ")[0]
        paths.append(path + "/" if kind == "d" else path)
    return " ".join(sorted(paths))


def _ours(root: Path, row: Row) -> str:
    patterns, _ = load_ignore_patterns(root, root / row.dockerfile)
    entries = walk_context(root, patterns)
    return " ".join(sorted(e.path + "/" if e.is_dir else e.path for e in entries))


@pytest.mark.oracle
@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_buildkit_agrees(buildkit: PrivateDockerd, row: Row) -> None:
    context = _write_context(buildkit.new_context_dir(), row)
    result = buildkit.build_dir(context, row.dockerfile)
    assert result.ok, result.error_text
    assert _as_paths(buildkit.image_tree(str(result.image["Id"]))) == row.buildkit


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_walk_context_agrees(tmp_path: Path, row: Row) -> None:
    want = row.buildkit if row.ours is None else row.ours
    assert _ours(_write_context(tmp_path, row), row) == want


def test_table() -> None:
    assert len(ROWS) >= 15 and len({row.id for row in ROWS}) == len(ROWS)
    assert all(row.buildkit == " ".join(sorted(row.buildkit.split())) for row in ROWS)
    assert all(bool(row.reason) == (row.ours is not None) for row in ROWS)
