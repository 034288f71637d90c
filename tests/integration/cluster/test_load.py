"""``dockyard build --load`` and ``-o type=docker`` without ``dest``, as a user runs them:
the CLI (a subprocess, its own DOCKYARD_ROOT, the embedded service started by the first
build and stopped at the end) loads the image into a private Docker 20.10 engine
(tests/oracle/_buildkit.py's dockerd, on its own socket and on a loopback TCP port with
TLS, named by DOCKER_HOST and DOCKER_TLS_VERIFY/DOCKER_CERT_PATH), where
``docker images`` shows it with its tags and the image id the build reported (its
config digest), and ``docker run`` runs it.  An engine that does not answer is refused
before the build runs, with one message naming the socket and what to do; an archive
the engine refuses is one error with the engine's reason.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.tls import self_signed

from dockyard.cluster._docker_engine import engine_from_environ
from dockyard.cluster._ray import ray_temp_dir
from dockyard.cluster._service import RunPaths
from dockyard.scheduler._errors import ExportError

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "oracle"))
from _buildkit import BUSYBOX, DOCKER, DOCKERD, PrivateDockerd, make_oracle_root  # noqa: E402

PROJECT = Path(__file__).resolve().parents[3]

DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
COPY a.txt /a.txt
ENV GREETING=loaded
CMD ["/bin/busybox", "cat", "/a.txt"]
"""


@dataclass
class Dockyard:
    root: Path
    work: Path
    context: Path

    def build(self, *argv: str, docker_host: str, env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess[str]:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER")}
        environ |= {"DOCKYARD_ROOT": str(self.root), "PYTHONPATH": str(PROJECT),
                    "DOCKER_HOST": docker_host, **(env or {})}
        return subprocess.run([sys.executable, "-m", "dockyard", "build", "--progress=plain",
                               *argv, str(self.context)], cwd=self.work, env=environ,
                              capture_output=True, text=True, timeout=240, check=False)


class TlsDockerd(PrivateDockerd):
    """The private dockerd, listening on a loopback TCP port with TLS as well (clients
    present a certificate the engine verifies, ``--tlsverify``)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.certs = root / "certs"
        self.certs.mkdir()
        cert, _ = self_signed(self.certs)
        shutil.copy(cert, self.certs / "ca.pem")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]

    def _dockerd_argv(self) -> list[str]:
        certs = self.certs
        return [*super()._dockerd_argv(), f"--host=tcp://127.0.0.1:{self.port}",
                "--tlsverify", f"--tlscacert={certs / 'ca.pem'}",
                f"--tlscert={certs / 'cert.pem'}", f"--tlskey={certs / 'key.pem'}"]


@pytest.fixture(scope="module")
def dockerd() -> Iterator[TlsDockerd]:
    for path in (DOCKERD, DOCKER):
        if not path.exists():
            if os.environ.get("CI") == "true":
                pytest.fail(f"{path} is missing under CI (make setup installs docker.io)")
            pytest.skip(f"{path} is not installed (make setup installs docker.io)")
    daemon = TlsDockerd(make_oracle_root())
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def dockyard() -> Iterator[Dockyard]:
    root = Path(tempfile.mkdtemp(prefix="dyl-", dir="/tmp"))
    work = Path(tempfile.mkdtemp(prefix="dyl-work-"))
    context = work / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(DOCKERFILE)
    (context / "a.txt").write_text("hello from a loaded image\n")
    shutil.copy(BUSYBOX, context / "busybox")
    found = Dockyard(root, work, context)
    try:
        yield found
    finally:
        if RunPaths(root).pid.exists():
            subprocess.run([sys.executable, "-m", "dockyard", "stop"], timeout=90, check=False,
                           env={**os.environ, "DOCKYARD_ROOT": str(root),
                                "PYTHONPATH": str(PROJECT)}, capture_output=True)
        shutil.rmtree(ray_temp_dir(root), ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def _images(dockerd: TlsDockerd) -> dict[str, str]:
    """``docker images`` of the engine: REPOSITORY:TAG -> full image id."""
    listed = dockerd.docker("images", "--no-trunc", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}")
    assert listed.returncode == 0, listed.stderr
    return dict(line.split() for line in listed.stdout.splitlines())


def _engine(dockerd: TlsDockerd, over: str) -> tuple[str, dict[str, str]]:
    """DOCKER_HOST and the TLS variables naming the engine ``over`` its socket or TCP."""
    if over == "unix":
        return f"unix://{dockerd.socket}", {}
    return f"tcp://127.0.0.1:{dockerd.port}", {"DOCKER_TLS_VERIFY": "1",
                                               "DOCKER_CERT_PATH": str(dockerd.certs)}


# (flags naming the engine output, the tags, how the engine is reached) -> loaded so
LOADS = [
    (["--load"], ["example/loaded:1", "example/loaded:latest"], "unix"),
    (["-o", "type=docker"], ["example/docker-out:2"], "unix"),
    (["--load"], ["example/over-tls:3"], "tcp+tls"),
]


@pytest.mark.parametrize(("flags", "tags", "over"), LOADS,
                         ids=["load", "docker-without-dest", "load-over-tcp-tls"])
def test_the_image_is_loaded_into_the_engine(dockyard: Dockyard, dockerd: TlsDockerd,
                                             flags: list[str], tags: list[str],
                                             over: str) -> None:
    metadata = dockyard.work / f"meta-{tags[0].replace('/', '-')}.json"
    argv = [*flags, *(f"-t{tag}" for tag in tags), "--metadata-file", str(metadata)]
    host, env = _engine(dockerd, over)
    done = dockyard.build(*argv, docker_host=host, env=env)
    assert done.returncode == 0, done.stderr
    image_id = json.loads(metadata.read_text())["containerimage.config.digest"]
    images = _images(dockerd)
    assert {tag: images.get(tag) for tag in tags} == {tag: image_id for tag in tags}
    assert "importing to docker" in done.stderr
    for tag in tags:
        assert f"Loaded image: {tag}" in done.stderr
    inspect = json.loads(dockerd.docker("image", "inspect", tags[0]).stdout)[0]
    assert "GREETING=loaded" in inspect["Config"]["Env"]
    ran = dockerd.docker("run", "--rm", "--network=none", tags[0])
    assert (ran.returncode, ran.stdout) == (0, "hello from a loaded image\n"), ran.stderr


def test_an_archive_the_engine_refuses(dockerd: TlsDockerd, tmp_path: Path) -> None:
    engine = engine_from_environ({"DOCKER_HOST": f"unix://{dockerd.socket}"})
    with (tmp_path / "bad.tar").open("w+b") as archive:
        archive.write(b"not a tar at all" * 64)
        archive.seek(0)
        with pytest.raises(ExportError) as caught:
            engine.load(archive, 1024)
    assert str(caught.value).startswith(f"the Docker engine at unix://{dockerd.socket} "
                                        f"could not load the image: ")


def test_load_beside_another_output(dockyard: Dockyard, dockerd: TlsDockerd) -> None:
    out = dockyard.work / "rootfs"
    done = dockyard.build("--load", "-o", f"type=local,dest={out}", "-t", "example/both:1",
                          docker_host=f"unix://{dockerd.socket}")
    assert done.returncode == 0, done.stderr
    assert (out / "a.txt").read_text() == "hello from a loaded image\n"
    assert "example/both:1" in _images(dockerd)


def test_an_image_output_with_unpack(dockyard: Dockyard, dockerd: TlsDockerd) -> None:
    """``type=image,unpack=true`` builds the same image as ``--load`` (a dockyard result
    already is unpacked snapshots: nothing more to do), and loads nothing."""
    ids = []
    for flags in (["-o", "type=image,name=example/unpacked:1,unpack=true"], ["--load"]):
        metadata = dockyard.work / "meta-unpack.json"
        done = dockyard.build(*flags, "-t", "example/unpacked:1", "--metadata-file",
                              str(metadata), docker_host=f"unix://{dockerd.socket}")
        assert done.returncode == 0, done.stderr
        ids.append(json.loads(metadata.read_text())["containerimage.config.digest"])
        if flags[0] == "-o":
            assert "example/unpacked:1" not in _images(dockerd)
    assert ids[0] == ids[1] and _images(dockerd)["example/unpacked:1"] == ids[1]


# (DOCKER_HOST, extra flags) -> the exact error, before anything is built
REFUSED = [
    ("unix:///nonexistent/docker.sock", [],
     "error: cannot reach the Docker engine at unix:///nonexistent/docker.sock to load the "
     "image: No such file or directory\nhint: start the Docker engine, or set DOCKER_HOST to "
     "its socket (unix:///PATH or tcp://HOST:PORT); or write the image to a file with "
     "-o type=docker,dest=FILE\n"),
    ("ssh://me@builder", [],
     "error: DOCKER_HOST 'ssh://me@builder': --load speaks to an engine over unix:// or "
     "tcp:// only\nhint: forward the engine's socket (ssh -L /tmp/docker.sock:/var/run/"
     "docker.sock HOST) and set DOCKER_HOST=unix:///tmp/docker.sock, or write the image "
     "with -o type=docker,dest=FILE\n"),
    ("unix:///nonexistent/docker.sock", ["--platform", "linux/amd64,linux/arm64"],
     "error: docker exporter does not currently support exporting manifest lists\n"
     "hint: build one --platform to --load it, or push the platforms with --push, or "
     "write them with -o type=oci,dest=FILE\n"),
]


@pytest.mark.parametrize(("host", "flags", "message"), REFUSED,
                         ids=["unreachable", "ssh", "platforms"])
def test_refused_before_the_build(tmp_path: Path, host: str, flags: list[str],
                                  message: str) -> None:
    root = tmp_path / "root"
    found = Dockyard(root, tmp_path, tmp_path)
    (tmp_path / "Dockerfile").write_text(DOCKERFILE)
    done = found.build("--load", *flags, docker_host=host)
    assert (done.returncode, done.stdout, done.stderr) == (1, "", message)
    assert not RunPaths(root).pid.exists(), "no service was started for a refused build"
