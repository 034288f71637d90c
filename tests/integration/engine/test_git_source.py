"""ADD of git sources, end to end: a bare repository served by a real ``git daemon`` on a
loopback port, ``#ref:subdir`` fragments, ``--keep-git-dir``, and the cache keyed by the
commit the ref names (a rebuild hits while the ref stays put, misses when it moves)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cluster._local_build import LocalBuildOptions, LocalBuildResult, Output, build_local
from scheduler._errors import SolveError
from scheduler._platform import parse_platform

_ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env=_ENV, check=True,
                          capture_output=True, text=True).stdout.strip()


@dataclass
class Served:
    """A bare repository ``repo.git`` behind git daemon (``url``), and the work tree that
    pushes to it (``work``)."""

    url: str
    work: Path

    def commit(self, name: str, text: str) -> None:
        (self.work / name).write_text(text)
        _git(self.work, "add", ".")
        _git(self.work, "commit", "-q", "-m", name)
        _git(self.work, "push", "-q", "origin", "main")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_listening(port: int, daemon: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            pytest.fail(f"git daemon exited with {daemon.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    pytest.fail("git daemon did not listen within 10 s")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    base, work = tmp_path / "served", tmp_path / "work"
    work.mkdir(parents=True)
    base.mkdir()
    _git(work, "init", "-q", "-b", "main")
    (work / "sub").mkdir()
    (work / "sub" / "f").write_text("f1\n")
    (work / "README").write_text("v1\n")
    _git(work, "add", ".")
    _git(work, "commit", "-q", "-m", "one")
    _git(work, "tag", "-a", "v1", "-m", "v1")
    _git(base, "clone", "-q", "--bare", str(work), "repo.git")
    _git(work, "remote", "add", "origin", str(base / "repo.git"))
    port = _free_port()
    daemon = subprocess.Popen(["git", "daemon", f"--base-path={base}", "--export-all",
                               "--reuseaddr", f"--port={port}", "--listen=127.0.0.1",
                               str(base)], stderr=subprocess.DEVNULL)
    try:
        _wait_listening(port, daemon)
        yield Served(f"git://127.0.0.1:{port}/repo.git", work)
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)


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
