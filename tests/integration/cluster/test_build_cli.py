"""``dockyard build`` end to end, as a user runs it: a subprocess of the CLI with its own
DOCKYARD_ROOT, the embedded service (started by the first build, reused by the others,
ended by ``dockyard stop``), real runc and overlayfs, the registry fixture's busybox.

The service is started once for the module; the last test stops it and checks that none of
its processes survive (the fixture stops it too when a test failed before)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.cli_root import PROJECT, Dockyard, private_root
from support.leaks import files_containing
from support.progress import plain_blocks, solve_blocks
from support.ssh_tools import copy_ssh_add, make_key

from dockyard.cluster._ray import ray_temp_dir
from dockyard.cluster._service import RunPaths, alive

SECRET = "s3cr3t-value-8c1f0e"  # must appear nowhere but the one RUN that mounts it


def _stop(dockyard: Dockyard) -> None:
    dockyard.run("stop", timeout=90)


@pytest.fixture(scope="module")
def dockyard(busybox_image: Any) -> Iterator[Dockyard]:
    with private_root(busybox_image.reference, "dyb") as found:
        yield found


def _context(dockyard: Dockyard, name: str, dockerfile: str) -> Path:
    context = dockyard.work / name
    context.mkdir()
    (context / "Dockerfile").write_text(dockerfile.replace("BUSYBOX", dockyard.busybox))
    (context / "file.txt").write_text("from the context\n")
    return context


SMALL = """\
FROM BUSYBOX
COPY file.txt /file.txt
RUN echo built-by-run > /hello && cat /file.txt
"""


def _ok(done: subprocess.CompletedProcess[bytes]) -> str:
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stderr.decode()


def test_build_to_oci_and_local_then_fully_cached(dockyard: Dockyard) -> None:
    context = _context(dockyard, "small", SMALL)
    out = dockyard.work / "out"
    argv = ["-o", f"type=oci,dest={out}/image.tar", "-o", f"type=local,dest={out}/rootfs",
            "--metadata-file", f"{out}/meta.json", "-t", "example/small:1", str(context)]
    out.mkdir()
    progress = _ok(dockyard.build(*argv))
    blocks = plain_blocks(progress)
    run_block = next(lines for lines in blocks.values() if lines[0].startswith("[2/3] RUN")
                     or "RUN echo built-by-run" in lines[0])
    assert any(line.endswith("from the context") for line in run_block)
    assert run_block[-1].startswith("DONE ")
    assert (out / "rootfs" / "hello").read_text() == "built-by-run\n"
    assert (out / "rootfs" / "file.txt").read_text() == "from the context\n"
    with tarfile.open(out / "image.tar") as oci:
        assert {"oci-layout", "index.json"} <= set(oci.getnames())
    meta = json.loads((out / "meta.json").read_text())
    assert meta["containerimage.digest"].startswith("sha256:")
    assert meta["containerimage.config.digest"].startswith("sha256:")
    assert meta["containerimage.descriptor"]["digest"] == meta["containerimage.digest"]

    began = time.monotonic()
    again = _ok(dockyard.build(*argv))
    took = time.monotonic() - began
    finals = [lines[-1] for lines in solve_blocks(again).values()]
    assert not [f for f in finals if f.startswith("DONE")], again
    assert "CACHED" in finals
    def image_keys(meta: dict[str, Any]) -> dict[str, Any]:  # dockyard.* keys say how it went
        return {k: v for k, v in meta.items() if k.startswith("containerimage.")}
    assert image_keys(json.loads((out / "meta.json").read_text())) == image_keys(meta)
    assert took < 10, f"a fully cached rebuild took {took:.1f}s"


def test_failing_run_names_instruction_exit_code_and_output(dockyard: Dockyard) -> None:
    context = _context(dockyard, "failing", "FROM BUSYBOX\nRUN echo last-words && exit 3\n")
    done = dockyard.build("-o", f"type=tar,dest={dockyard.work}/never.tar", str(context))
    stderr = done.stderr.decode()
    assert done.returncode == 1, stderr
    error = stderr[stderr.index("ERROR: failed to solve: "):]  # as buildx ends a failed build
    assert "RUN echo last-words && exit 3" in error
    assert "exit code: 3" in error
    assert "------\n > " in stderr and "\nlast-words\n------" in stderr
    assert "Traceback" not in stderr


def test_docker_archive_to_stdout(dockyard: Dockyard) -> None:
    context = _context(dockyard, "stdout", SMALL)
    done = dockyard.run("build", "--progress=quiet", "-t", "example/stdout:1",
                        "-o", "type=docker,dest=-", str(context))
    assert done.returncode == 0, done.stderr.decode()
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as archive:
        manifest = json.load(archive.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert manifest[0]["RepoTags"] == ["example/stdout:1"]
    assert not list((dockyard.root / "tmp").glob("stdout-*"))


SECRET_DOCKERFILE = """\
FROM BUSYBOX
RUN --mount=type=secret,id=token sha256sum /run/secrets/token | cut -c1-64 > /seen
"""


def test_secret_reaches_only_its_run(dockyard: Dockyard) -> None:
    context = _context(dockyard, "secret", SECRET_DOCKERFILE)
    out = dockyard.work / "secret-out"
    done = dockyard.run("build", "--progress=rawjson", "--no-cache", "--secret",
                        "id=token,env=TOKEN", "-o", f"type=local,dest={out}", "-o",
                        f"type=oci,dest={out}.tar", str(context), env={"TOKEN": SECRET})
    assert done.returncode == 0, done.stderr.decode()
    digest = hashlib.sha256(SECRET.encode()).hexdigest()
    assert (out / "seen").read_text() == digest + "\n"  # the RUN saw the value
    assert SECRET.encode() not in done.stderr + done.stdout  # no event carries it
    for place in (dockyard.root / "run" / "daemon.log", ray_temp_dir(dockyard.root),
                  dockyard.root / "cache", dockyard.root / "snapshots", out,
                  Path(f"{out}.tar")):
        assert files_containing(place, [SECRET.encode()]) == [], place
    assert not (out / "run" / "secrets" / "token").exists()


SSH_DOCKERFILE = """\
FROM BUSYBOX
COPY tools/ /
COPY deploy.pub /deploy.pub
RUN --mount=type=ssh echo "$SSH_AUTH_SOCK" > /sock && ssh-add -l > /listed \\
    && ssh-add -T /deploy.pub && echo signed > /signed
"""


def test_ssh_agent_stays_on_the_client(dockyard: Dockyard) -> None:
    """``--ssh default=KEY``: the client's ephemeral agent answers, over the session
    channel, an ``ssh-add -l`` and a signature (``-T``) in the RUN, found through the
    SSH_AUTH_SOCK the RUN was given; the request names the id only."""
    context = _context(dockyard, "ssh", SSH_DOCKERFILE)
    copy_ssh_add(context)
    key = make_key(dockyard.work / "deploy-key", "deploy-key-7f3a")
    shutil.copyfile(f"{key}.pub", context / "deploy.pub")
    out = dockyard.work / "ssh-out"
    _ok(dockyard.build("--no-cache", "--ssh", f"default={key}", "-o",
                       f"type=local,dest={out}", str(context)))
    assert (out / "sock").read_text() == "/run/buildkit/ssh_agent.0\n"
    assert "deploy-key-7f3a (ED25519)" in (out / "listed").read_text()
    assert (out / "signed").read_text() == "signed\n"
    private = key.read_bytes().split(b"\n")[1]  # a line of the private key's base64
    for place in (dockyard.root, out):
        assert files_containing(place, [private]) == [], place
    assert files_containing(dockyard.root / "run" / "daemon.log", [str(key).encode()]) == []


def test_bad_flag_is_a_usage_error_before_any_service(dockyard: Dockyard) -> None:
    done = dockyard.run("build", "--secret", "id=x,bogus=1", str(dockyard.work))
    assert (done.returncode, done.stderr.decode()) == (
        1, "error: invalid --secret 'id=x,bogus=1': unexpected key 'bogus' in 'bogus=1'\n")


def test_push_to_the_registry(dockyard: Dockyard, busybox_image: Any) -> None:
    context = _context(dockyard, "push", SMALL)
    name = f"{busybox_image.domain}/example/pushed:1"
    meta = dockyard.work / "push-meta.json"
    _ok(dockyard.build("-t", name, "--push", "--metadata-file", str(meta), str(context)))
    digest = json.loads(meta.read_text())["containerimage.digest"]
    accept = "application/vnd.oci.image.manifest.v1+json"
    request = urllib.request.Request(
        f"http://{busybox_image.domain}/v2/example/pushed/manifests/1",
        headers={"Accept": accept}, method="HEAD")
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.headers["Docker-Content-Digest"] == digest


def _mounts_under(root: Path) -> list[str]:
    return [line for line in Path("/proc/mounts").read_text().splitlines()
            if str(root) in line]


def test_ctrl_c_cancels_the_build(dockyard: Dockyard) -> None:
    # 61 s: a duration no other test or tool here sleeps for, so the check below
    # finds only this build's process
    context = _context(dockyard, "cancel", "FROM BUSYBOX\nRUN echo sleeping && sleep 61\n")
    environ = {**os.environ, "DOCKYARD_ROOT": str(dockyard.root), "PYTHONPATH": str(PROJECT)}
    process = subprocess.Popen([sys.executable, "-m", "dockyard", "build", "--progress=plain",
                                "--no-cache", str(context)], cwd=dockyard.work, env=environ,
                               stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        assert process.stderr is not None
        for raw in process.stderr:
            if raw.rstrip().endswith(b" sleeping"):
                break
        began = time.monotonic()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 130
        assert time.monotonic() - began < 20
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    deadline = time.monotonic() + 15
    while _mounts_under(dockyard.root) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _mounts_under(dockyard.root) == []
    assert not [p for p in Path("/proc").iterdir() if p.name.isdigit()
                and _cmdline(p).startswith(b"sleep\x0061")]


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""


def test_two_platforms_one_index(dockyard: Dockyard) -> None:
    context = _context(dockyard, "multi", "FROM BUSYBOX\nRUN uname -m > /arch\n")
    out = dockyard.work / "multi-out"
    meta = dockyard.work / "multi-meta.json"
    # the image keys come from the output writing an image (oci), as BuildKit's exporters
    # give them: a local output alone gives none
    _ok(dockyard.build("--platform", "linux/amd64,linux/arm64", "-o",
                       f"type=local,dest={out}", "-o", f"type=oci,dest={out}.tar",
                       "--metadata-file", str(meta), str(context)))
    assert (out / "linux_amd64" / "arch").read_text() == "x86_64\n"
    assert (out / "linux_arm64" / "arch").read_text() == "aarch64\n"
    descriptor = json.loads(meta.read_text())["containerimage.descriptor"]
    assert descriptor["mediaType"] == "application/vnd.oci.image.index.v1+json"


def test_stop_leaves_no_processes(dockyard: Dockyard) -> None:
    _ok(dockyard.build("-o", f"type=tar,dest={dockyard.work}/s.tar",
                       str(_context(dockyard, "stop", SMALL))))
    started = dockyard.processes()
    assert started
    done = dockyard.run("stop", timeout=90)
    assert done.returncode == 0, done.stderr.decode()
    assert "stopped the dockyard service" in done.stderr.decode()
    deadline = time.monotonic() + 10
    while any(alive(p) for p in started) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [p for p in started if alive(p)] == []
    assert not RunPaths(dockyard.root).socket.exists()
