"""``dockyard build``'s execution-side flags end to end (buildx's ``--add-host``,
``--cgroup-parent``, ``--shm-size``, ``--network``, ``--platform local``,
``--no-cache-filter``, ``--pull``, ``--call``, ``--builder``, ``-D``): the CLI as a user
runs it, against one embedded service for the module, checking what each flag does in
the RUN or the build, not only that it parses."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from support.cli_root import Dockyard, private_root
from support.progress import plain_blocks

from dockyard.scheduler._platform import default_platform


@pytest.fixture(scope="module")
def dockyard(busybox_image: Any) -> Iterator[Dockyard]:
    with private_root(busybox_image.reference, "dyx") as found:
        yield found


def _context(dockyard: Dockyard, name: str, dockerfile: str) -> Path:
    context = dockyard.work / name
    context.mkdir()
    (context / "Dockerfile").write_text(dockerfile.replace("BUSYBOX", dockyard.busybox))
    return context


def _ok(done: subprocess.CompletedProcess[bytes]) -> str:
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stderr.decode()


def _finals(progress: str) -> dict[str, str]:
    """Each step's name -> its last line (``DONE ...``, ``CACHED``, ``ERROR ...``)."""
    return {lines[0]: lines[-1] for lines in plain_blocks(progress).values()}


# --- what a RUN sees ------------------------------------------------------------------

PROBE = """\
FROM BUSYBOX
RUN cat /etc/hosts > /hosts && cat /proc/self/cgroup > /cgroup \\
    && df -k /dev/shm | tail -n 1 > /shm && uname -m > /arch && echo PROBE-1
"""

_CGROUP_ROOT = Path("/sys/fs/cgroup")


def _cgroups_writable() -> bool:
    if (_CGROUP_ROOT / "cgroup.controllers").exists():
        return os.access(_CGROUP_ROOT, os.W_OK)
    controllers = [d for d in _CGROUP_ROOT.iterdir() if (d / "cgroup.procs").exists()]
    return bool(controllers) and all(os.access(d, os.W_OK) for d in controllers)


def _remove_cgroups(parent: str) -> None:
    """The (empty) cgroups runc left under ``parent`` in every hierarchy."""
    for hierarchy in [_CGROUP_ROOT, *_CGROUP_ROOT.iterdir()]:
        for path in (hierarchy / parent / "buildkit", hierarchy / parent):
            if path.is_dir():
                path.rmdir()


def test_run_sees_hosts_cgroup_shm_network_and_platform(dockyard: Dockyard) -> None:
    context = _context(dockyard, "probe", PROBE)
    out = dockyard.work / "probe-out"
    parent = f"dockyard-test-{os.getpid()}"
    argv = ["--add-host", "db:10.0.0.7", "--add-host", "v6=[2001:DB8::33]",
            "--shm-size", "1.5g", "--network", "host", "--platform", "local",
            "-o", f"type=local,dest={out}", str(context)]
    try:
        done = dockyard.build("--cgroup-parent", parent, *argv)
        if not _cgroups_writable():  # a machine that cannot honour it refuses it
            assert done.returncode == 1
            assert "this worker cannot create cgroups" in done.stderr.decode()
            _ok(dockyard.build(*argv))
        else:
            _ok(done)
            cgroups = (out / "cgroup").read_text().splitlines()
            assert cgroups and all(f":/{parent}/buildkit/dockyard-" in line
                                   for line in cgroups), cgroups
    finally:
        _remove_cgroups(parent)
    assert (out / "hosts").read_text() == (
        "127.0.0.1\tlocalhost buildkitsandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        "10.0.0.7\tdb\n2001:db8::33\tv6\n")  # as BuildKit writes them (20.10 checked)
    assert (out / "shm").read_text().split()[1] == str(3 << 19)  # KiB of 1.5 GiB
    machine = {"amd64": "x86_64", "arm64": "aarch64"}[default_platform().architecture]
    assert (out / "arch").read_text().strip() == machine


def test_add_host_ip_change_keeps_the_cache_a_new_name_does_not(dockyard: Dockyard) -> None:
    """As BuildKit's exec key: the names of ``--add-host`` count, their addresses not."""
    context = _context(dockyard, "hosts-key", "FROM BUSYBOX\nRUN cat /etc/hosts\n")
    out = dockyard.work / "hosts-key-out"
    _ok(dockyard.build("--add-host", "db=10.0.0.7", "-o", f"type=local,dest={out}",
                       str(context)))
    again = _finals(_ok(dockyard.build("--add-host", "db=10.0.0.8", "-o",
                                       f"type=local,dest={out}", str(context))))
    renamed = _finals(_ok(dockyard.build("--add-host", "cache=10.0.0.7", "-o",
                                         f"type=local,dest={out}", str(context))))
    step = next(name for name in again if "RUN cat /etc/hosts" in name)
    assert (again[step], renamed[step].split()[0]) == ("CACHED", "DONE")


def test_bad_flags_are_refused_before_any_build(dockyard: Dockyard) -> None:
    context = _context(dockyard, "bad-flags", "FROM BUSYBOX\n")
    for argv, message in [
        (["--add-host", "db:not-an-ip"], "invalid --add-host 'db:not-an-ip'"),
        (["--cgroup-parent", "../escape"], "invalid --cgroup-parent '../escape'"),
        (["--network", "bridge"], "network mode 'bridge' not supported"),
        (["--builder", "mybuilder"], "--builder 'mybuilder': no such builder"),
        (["--call", "lint"], "unknown call 'lint'"),
    ]:
        done = dockyard.build(*argv, str(context))
        assert done.returncode == 1, argv
        assert message in done.stderr.decode(), done.stderr.decode()


# --- the cache: --no-cache-filter, --pull ---------------------------------------------

STAGES = """\
FROM BUSYBOX AS deps
RUN echo deps > /deps
FROM BUSYBOX AS other
RUN echo other > /other
FROM deps
COPY --from=other /other /other
RUN cat /deps /other
"""


def test_no_cache_filter_reruns_that_stage_and_what_follows(dockyard: Dockyard) -> None:
    context = _context(dockyard, "stages", STAGES)
    out = dockyard.work / "stages-out"
    argv = ["-o", f"type=local,dest={out}", str(context)]
    _ok(dockyard.build(*argv))
    finals = _finals(_ok(dockyard.build("--no-cache-filter", "deps", *argv)))
    by_step = {step: next(name for name in finals if step in name)
               for step in ("RUN echo deps", "RUN echo other", "RUN cat /deps /other")}
    assert finals[by_step["RUN echo deps"]].startswith("DONE"), finals
    assert finals[by_step["RUN echo other"]] == "CACHED", finals
    assert finals[by_step["RUN cat /deps /other"]].startswith("DONE"), finals
    assert (out / "deps").read_text() == "deps\n"


class _Counting(BaseHTTPRequestHandler):
    """Forwards each request to the registry (``server.upstream``) and logs it."""

    server: Any

    def _forward(self) -> None:
        self.server.log.append((self.command, self.path))
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        upstream = http.client.HTTPConnection(*self.server.upstream, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
        upstream.request(self.command, self.path, body or None, headers)
        answer = upstream.getresponse()
        data = answer.read()
        self.send_response(answer.status)
        for key, value in answer.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        upstream.close()

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = _forward

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture
def counting_registry(busybox_image: Any) -> Iterator[Any]:
    host, port = busybox_image.domain.rsplit(":", 1)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Counting)
    server.upstream, server.log = (host, int(port)), []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_pull_resolves_the_base_image_from_the_registry_again(
        dockyard: Dockyard, counting_registry: Any) -> None:
    """A known tag is asked with a HEAD (its manifest then comes from the cache); with
    ``--pull`` the tag and the platform's manifest are fetched again."""
    port = counting_registry.server_address[1]
    context = dockyard.work / "pull"
    context.mkdir()
    (context / "Dockerfile").write_text(
        f"FROM 127.0.0.1:{port}/library/busybox:latest\nRUN echo pulled\n")
    out = dockyard.work / "pull-out"
    argv = ["-o", f"type=local,dest={out}", str(context)]
    _ok(dockyard.build(*argv))
    log = counting_registry.log
    log.clear()
    _ok(dockyard.build(*argv))
    tag = "/v2/library/busybox/manifests/latest"
    assert ("HEAD", tag) in log and ("GET", tag) not in log, log
    log.clear()
    _ok(dockyard.build("--pull", *argv))
    gets = [path for method, path in log if method == "GET" and "/manifests/" in path]
    assert tag in gets and any("/manifests/sha256:" in path for path in gets), log
    assert ("HEAD", tag) not in log, log


# --- command-level flags -------------------------------------------------------------

CALLED = """\
ARG BASE=BUSYBOX
# base The base image
FROM ${BASE} AS base
# VERSION the version to build
ARG VERSION=1.0
FROM base AS build
RUN --mount=type=secret,id=token,required true
"""


def test_call_answers_without_building(dockyard: Dockyard) -> None:
    context = _context(dockyard, "called", CALLED)
    targets = dockyard.run("build", "--call", "targets", str(context))
    assert targets.stdout.decode() == ("TARGET          DESCRIPTION\nbase            "
                                       "The base image\nbuild (default) \n")
    listed = json.loads(dockyard.run("build", "--call=targets,format=json",
                                     str(context)).stdout)
    assert [t.get("name") for t in listed["Targets"]] == ["base", "build"]
    outlined = dockyard.run("build", "--call", "outline", "--target", "build",
                            str(context)).stdout.decode()
    assert "VERSION     1.0" in outlined and "the version to build" in outlined
    assert "SECRET   REQUIRED\ntoken    true\n" in outlined
    checked = dockyard.run("build", "--call", "check", str(context))
    assert checked.stdout.decode() == dockyard.run("build", "--check",
                                                   str(context)).stdout.decode()
    assert checked.stdout.startswith(b"Check complete")


def test_builder_default_is_the_local_service_and_debug_shows_the_stack(
        dockyard: Dockyard) -> None:
    context = _context(dockyard, "debugged", "FROM BUSYBOX\nRUN echo boom-out && exit 3\n")
    done = dockyard.build("--builder", "default", "-D", str(context),
                          env={"BUILDX_BUILDER": "elsewhere"})
    text = done.stderr.decode()
    assert done.returncode == 1
    assert "debug: ExecError" in text and "exit_code=3" in text, text
    assert "debug: stack:" in text and "Traceback" in text, text
    plain = dockyard.build(str(context)).stderr.decode()
    assert "debug:" not in plain and "Traceback" not in plain
