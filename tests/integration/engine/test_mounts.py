"""RUN --mount kinds and remote sources, end to end: bind mounts from the context and
from stages, locked cache mounts shared by parallel stages, ssh sockets, ADD of a URL."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from dockyard.cluster._local_build import LocalBuildOptions, Output, build_local
from dockyard.scheduler._errors import SolveError
from dockyard.scheduler._platform import parse_platform


def _build(tmp_path: Path, dockerfile: str, **extra: Any) -> Path:
    context = tmp_path / "context"
    context.mkdir(parents=True, exist_ok=True)
    (context / "hello.txt").write_text("hello\n")
    out = tmp_path / "out"
    options = LocalBuildOptions(root=tmp_path / "root",
                                platforms=(parse_platform("linux/amd64"),),
                                outputs=(Output("local", out),), **extra)
    asyncio.run(build_local(dockerfile.encode(), context, options))
    return out


def test_bind_mounts_from_the_context_and_a_stage(tmp_path: Path,
                                                  busybox_image: Any) -> None:
    base = busybox_image.reference
    out = _build(tmp_path, f"FROM {base} AS data\nRUN echo staged > /s\n"
                           f"FROM {base}\n"
                           "RUN --mount=type=bind,source=hello.txt,target=/h "
                           "--mount=type=bind,from=data,source=/s,target=/m/s "
                           "cat /h /m/s > /both && ! touch /h 2>/dev/null\n")
    assert (out / "both").read_text() == "hello\nstaged\n"
    assert not (out / "h").exists() and not (out / "m").exists()


def test_a_locked_cache_mount_is_used_by_one_run_at_a_time(tmp_path: Path,
                                                           busybox_image: Any) -> None:
    base = busybox_image.reference
    run = ("RUN --mount=type=cache,id=shared,target=/c,sharing=locked "
           "echo start-{0} >> /c/log && sleep 0.5 && echo end-{0} >> /c/log && "
           "cp /c/log /log-{0}\n")
    dockerfile = (f"FROM {base} AS a\n{run.format('a')}FROM {base} AS b\n{run.format('b')}"
                  f"FROM {base}\nCOPY --from=a /log-a /\nCOPY --from=b /log-b /\n")
    _build(tmp_path, dockerfile)
    log = (tmp_path / "root" / "cachemounts" / "shared" / "log").read_text().split()
    assert sorted(log) == ["end-a", "end-b", "start-a", "start-b"]
    first = log[0].split("-")[1]
    assert log[1] == f"end-{first}"


def test_an_ssh_socket_is_forwarded_and_a_missing_one_fails(tmp_path: Path,
                                                            busybox_image: Any) -> None:
    agent = tmp_path / "agent.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(agent))
    try:
        out = _build(tmp_path, f"FROM {busybox_image.reference}\n"
                               "RUN --mount=type=ssh test -S /run/buildkit/ssh_agent.0 "
                               "&& echo ok > /ssh\n", ssh={"default": agent})
    finally:
        server.close()
    assert (out / "ssh").read_text() == "ok\n"
    with pytest.raises(SolveError, match="no ssh agent socket with id 'default'"):
        _build(tmp_path / "again", f"FROM {busybox_image.reference}\n"
                                   "RUN --mount=type=ssh,required=true true\n")


@pytest.fixture
def http_files(tmp_path: Path) -> Iterator[str]:
    served = tmp_path / "served"
    served.mkdir()
    (served / "data.txt").write_text("from http\n")
    handler = partial(SimpleHTTPRequestHandler, directory=str(served))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_add_of_a_url(tmp_path: Path, busybox_image: Any, http_files: str) -> None:
    out = _build(tmp_path, f"FROM {busybox_image.reference}\n"
                           f"ADD {http_files}/data.txt /fetched/\n")
    fetched = out / "fetched" / "data.txt"
    assert fetched.read_text() == "from http\n"
    assert fetched.stat().st_mode & 0o777 == 0o600
