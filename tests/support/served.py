"""Remote sources on loopback for tests of ADD and of URL build contexts: a bare git
repository behind a real ``git daemon`` (``serve_git``) and a directory behind a plain
HTTP server (``serve_http``), each on a free 127.0.0.1 port and stopped on exit."""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from support.busybox_image import SetupError

GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, check=True,
                          capture_output=True, text=True).stdout.strip()


@dataclass
class ServedGit:
    """A bare repository ``repo.git`` behind git daemon (``url``), and the work tree that
    pushes to it (``work``)."""

    url: str
    work: Path

    def commit(self, name: str, text: str) -> None:
        path = self.work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        git(self.work, "add", ".")
        git(self.work, "commit", "-q", "-m", name)
        git(self.work, "push", "-q", "origin", "main")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_listening(port: int, daemon: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise SetupError(f"git daemon exited with {daemon.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SetupError("git daemon did not listen within 10 s")


@contextlib.contextmanager
def serve_git(tmp: Path) -> Iterator[ServedGit]:
    """A repository on branch ``main`` with ``README`` (``v1``) and ``sub/f`` (``f1``),
    tagged ``v1`` (annotated), served read-only at ``git://127.0.0.1:PORT/repo.git``."""
    base, work = tmp / "served", tmp / "work"
    work.mkdir(parents=True)
    base.mkdir()
    git(work, "init", "-q", "-b", "main")
    (work / "sub").mkdir()
    (work / "sub" / "f").write_text("f1\n")
    (work / "README").write_text("v1\n")
    git(work, "add", ".")
    git(work, "commit", "-q", "-m", "one")
    git(work, "tag", "-a", "v1", "-m", "v1")
    git(base, "clone", "-q", "--bare", str(work), "repo.git")
    git(work, "remote", "add", "origin", str(base / "repo.git"))
    port = free_port()
    daemon = subprocess.Popen(["git", "daemon", f"--base-path={base}", "--export-all",
                               "--reuseaddr", f"--port={port}", "--listen=127.0.0.1",
                               str(base)], stderr=subprocess.DEVNULL)
    try:
        _wait_listening(port, daemon)
        yield ServedGit(f"git://127.0.0.1:{port}/repo.git", work)
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *_: object) -> None:
        pass


@contextlib.contextmanager
def serve_http(directory: Path) -> Iterator[str]:
    """``directory``'s files over plain HTTP; yields the base URL (``http://127.0.0.1:P``)."""
    handler = functools.partial(_Quiet, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
