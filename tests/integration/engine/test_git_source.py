"""ADD of git sources, end to end: a bare repository served by a real ``git daemon`` on a
loopback port, ``#ref:subdir`` fragments, ``--keep-git-dir``, and the cache keyed by the
commit the ref names (a rebuild hits while the ref stays put, misses when it moves)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.served import ServedGit as Served
from support.served import serve_git

from dockyard.cluster._local_build import LocalBuildOptions, LocalBuildResult, Output, build_local
from dockyard.scheduler._errors import SolveError
from dockyard.scheduler._platform import parse_platform


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with serve_git(tmp_path) as found:
        yield found


def _build(tmp_path: Path, dockerfile: str, out: str) -> LocalBuildResult:
    context = tmp_path / "context"
    context.mkdir(exist_ok=True)
    options = LocalBuildOptions(root=tmp_path / "root",
                                platforms=(parse_platform("linux/amd64"),),
                                outputs=(Output("local", tmp_path / out),))
    return asyncio.run(build_local(dockerfile.encode(), context, options))


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_ref_subdir_and_keep_git_dir(tmp_path: Path, busybox_image: Any,
                                     served: Served) -> None:
    _build(tmp_path, f"FROM {busybox_image.reference}\n"
                     f"ADD {served.url}#main:sub /sub/\n"
                     f"ADD {served.url}#v1 /plain/\n"
                     f"ADD --keep-git-dir=true {served.url}#v1 /kept/\n", "out")
    out = tmp_path / "out"
    assert _files(out / "sub") == ["f"]
    assert _files(out / "plain") == ["README", "sub", "sub/f"]
    assert (out / "kept" / ".git").is_dir() and (out / "kept" / "README").read_text() == "v1\n"


def test_rebuild_hits_while_the_commit_stays_and_misses_when_the_ref_moves(
        tmp_path: Path, busybox_image: Any, served: Served) -> None:
    dockerfile = (f"FROM {busybox_image.reference}\n"
                  f"ADD --keep-git-dir=true {served.url}#main /src/\n"
                  f"ADD {served.url}#v1 /tag/\n")
    first = _build(tmp_path, dockerfile, "out1")
    assert first.statistics.executed > 0
    again = _build(tmp_path, dockerfile, "out2")
    assert again.statistics.executed == 0
    served.commit("README", "v2\n")
    moved = _build(tmp_path, dockerfile, "out3")
    assert (tmp_path / "out3" / "src" / "README").read_text() == "v2\n"
    assert (tmp_path / "out3" / "tag" / "README").read_text() == "v1\n"
    # main's checkout, its ADD and the ADD above it; v1's checkout stays cached
    assert (moved.statistics.executed, moved.statistics.cached) == (3, 2)


GIT_ERRORS = [
    ("missing-ref", "#nope", "ref 'nope' not found in the repository"),
    ("missing-subdir", "#main:nope", "subdir 'nope' is not a directory in the repository"),
]


@pytest.mark.parametrize(("fragment", "message"), [c[1:] for c in GIT_ERRORS],
                         ids=[c[0] for c in GIT_ERRORS])
def test_git_failures_name_the_repository(tmp_path: Path, busybox_image: Any, served: Served,
                                          fragment: str, message: str) -> None:
    with pytest.raises(SolveError, match=message) as caught:
        _build(tmp_path, f"FROM {busybox_image.reference}\nADD {served.url}{fragment} /x/\n",
               "out")
    assert served.url in str(caught.value)
