"""ADD's remote sources against real servers on loopback: an aiohttp server on 127.0.0.1
for URLs, a local bare git repository (file://) for git sources.  No outside network."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from dockyard.scheduler._errors import SolveError
from dockyard.workers._fetch import fetch_git, fetch_http, redact_url, resolve_git

BODY = b"remote content\n"
SHA = hashlib.sha256(BODY).hexdigest()
LAST_MODIFIED = "Wed, 21 Oct 2015 07:28:00 GMT"


async def _file(request: web.Request) -> web.Response:
    headers = {"Last-Modified": LAST_MODIFIED}
    if request.query.get("cd"):
        headers["Content-Disposition"] = f'attachment; filename="{request.query["cd"]}"'
    return web.Response(body=BODY, headers=headers)


async def _missing(request: web.Request) -> web.Response:
    return web.Response(status=404)


async def _fetch(path: str, dest: Path, **kwargs: str) -> Path:
    app = web.Application()
    app.router.add_get("/missing", _missing)
    app.router.add_get("/{tail:.*}", _file)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        return await fetch_http(f"http://127.0.0.1:{port}{path}", dest,
                                filename=kwargs.get("filename", ""),
                                checksum=kwargs.get("checksum", ""))
    finally:
        await runner.cleanup()


# (id, URL path, fetch_http keywords, expected file name)
HTTP_CASES = [
    ("named-by-attribute", "/dl/x.tgz", {"filename": "given.bin"}, "given.bin"),
    ("named-by-url-path", "/dl/tool-1.2.tar.gz", {}, "tool-1.2.tar.gz"),
    ("named-by-content-disposition", "/dl/get?cd=real.txt", {}, "real.txt"),
    ("disposition-cannot-climb", "/dl/get?cd=../../evil", {}, "evil"),
    ("index-when-no-name", "/", {}, "index"),
    ("checksum-ok", "/f", {"checksum": "sha256:" + SHA}, "f"),
]


@pytest.mark.parametrize(("path", "kwargs", "name"), [c[1:] for c in HTTP_CASES],
                         ids=[c[0] for c in HTTP_CASES])
def test_http_fetch(tmp_path: Path, path: str, kwargs: dict[str, str], name: str) -> None:
    got = asyncio.run(_fetch(path, tmp_path, **kwargs))
    assert got == tmp_path / name
    assert got.read_bytes() == BODY
    info = os.stat(got)
    assert (oct(info.st_mode & 0o7777), info.st_uid, info.st_gid) == (oct(0o600), 0, 0)
    assert info.st_mtime == 1445412480
    assert sorted(os.listdir(tmp_path)) == [name]


HTTP_ERRORS = [
    ("checksum-mismatch", "/f", {"checksum": "sha256:" + "0" * 64},
     f"ADD http://127.0.0.1:PORT/f: digest mismatch sha256:{SHA}: sha256:{'0' * 64}"),
    ("checksum-unsupported", "/f", {"checksum": "md5:abc"},
     "ADD http://127.0.0.1:PORT/f: unsupported checksum 'md5:abc'"),
    ("not-found", "/missing", {}, "ADD http://127.0.0.1:PORT/missing: invalid response "
                                  "status 404"),
]


@pytest.mark.parametrize(("path", "kwargs", "message"), [c[1:] for c in HTTP_ERRORS],
                         ids=[c[0] for c in HTTP_ERRORS])
def test_http_errors(tmp_path: Path, path: str, kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(SolveError) as caught:
        asyncio.run(_fetch(path, tmp_path, **kwargs))
    text = caught.value.message
    port = text.split("127.0.0.1:")[1].split("/")[0]
    assert text.replace(port, "PORT", 1) == message
    assert os.listdir(tmp_path) == []


def test_http_server_down(tmp_path: Path) -> None:
    with pytest.raises(SolveError, match=r"^ADD http://127\.0\.0\.1:9/x: download failed"):
        asyncio.run(fetch_http("http://127.0.0.1:9/x", tmp_path))


def test_redact_url() -> None:
    assert redact_url("https://u:secret@h:8443/p") == "https://u:xxxxx@h:8443/p"
    assert redact_url("https://h/p") == "https://h/p"


# --- git --------------------------------------------------------------------------------

def _git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[str]:
    """A bare repository with two commits: tag v1 (README) and main (README, sub/f)."""
    work = tmp_path / "work"
    work.mkdir()
    _git(work, "init", "-q", "-b", "main")
    (work / "README").write_text("v1\n")
    _git(work, "add", ".")
    _git(work, "commit", "-q", "-m", "one")
    _git(work, "tag", "v1")
    (work / "README").write_text("v2\n")
    (work / "sub").mkdir()
    (work / "sub/f").write_text("f\n")
    (work / "sub/run.sh").write_text("#!/bin/sh\n")
    (work / "sub/run.sh").chmod(0o755)
    _git(work, "add", ".")
    _git(work, "commit", "-q", "-m", "two")
    _git(tmp_path, "clone", "-q", "--bare", str(work), "repo.git")
    yield f"file://{tmp_path}/repo.git"


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if ".git" not in p.relative_to(root).parts)


def test_git_default_branch(tmp_path: Path, repo: str) -> None:
    dest = fetch_git(repo, tmp_path / "out")
    assert _tree(dest) == ["README", "sub", "sub/f", "sub/run.sh"]
    assert (dest / "README").read_text() == "v2\n"
    assert os.stat(dest / "sub/run.sh").st_mode & 0o777 == 0o755
    assert not (dest / ".git").exists()


def test_git_tag(tmp_path: Path, repo: str) -> None:
    dest = fetch_git(repo, tmp_path / "out", ref="v1", keep_git_dir=True)
    assert (dest / "README").read_text() == "v1\n"
    assert (dest / ".git").is_dir()


def test_git_subdir(tmp_path: Path, repo: str) -> None:
    dest = fetch_git(repo, tmp_path / "out", ref="main", subdir="sub")
    assert _tree(dest) == ["f", "run.sh"]


GIT_ERRORS = [
    ("missing-ref", {"ref": "nope"}, "git fetch failed"),
    ("subdir-missing", {"subdir": "nope"}, "subdir 'nope' is not a directory"),
    ("subdir-climbs", {"subdir": "../.."}, "subdir '../..' climbs out"),
]


@pytest.mark.parametrize(("kwargs", "fragment"), [c[1:] for c in GIT_ERRORS],
                         ids=[c[0] for c in GIT_ERRORS])
def test_git_errors(tmp_path: Path, repo: str, kwargs: dict[str, str], fragment: str) -> None:
    with pytest.raises(SolveError, match=fragment):
        fetch_git(repo, tmp_path / "out", **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".git-")] == []


# --- resolve_git: the commit a ref names ---------------------------------------------

RESOLVE = [  # (ref, the work tree's revision it must name)
    ("", "main"),
    ("main", "main"),
    ("refs/heads/main", "main"),
    ("v1", "v1"),
]


@pytest.mark.parametrize(("ref", "revision"), RESOLVE, ids=[r or "HEAD" for r, _ in RESOLVE])
def test_resolve_git(tmp_path: Path, repo: str, ref: str, revision: str) -> None:
    assert resolve_git(repo, ref) == _git(tmp_path / "work", "rev-parse", revision)


def test_resolve_git_peels_an_annotated_tag_and_passes_a_commit_id(tmp_path: Path,
                                                                   repo: str) -> None:
    work = tmp_path / "work"
    _git(work, "tag", "-a", "v2", "-m", "annotated")
    _git(work, "push", "-q", f"{tmp_path}/repo.git", "v2")
    head = _git(work, "rev-parse", "HEAD")
    assert resolve_git(repo, "v2") == head
    assert resolve_git("file:///nowhere", head) == head


def test_fetch_git_refuses_a_ref_that_moved(tmp_path: Path, repo: str) -> None:
    old = _git(tmp_path / "work", "rev-parse", "v1")
    with pytest.raises(SolveError, match=r"ref 'main' moved during the build \(from "
                                         f"{old[:12]} to "):
        fetch_git(repo, tmp_path / "out", ref="main", commit=old)
    assert not (tmp_path / "out").exists()


def test_resolve_git_names_a_missing_ref(repo: str) -> None:
    with pytest.raises(SolveError, match=f"ADD {repo}: ref 'nope' not found"):
        resolve_git(repo, "nope")
