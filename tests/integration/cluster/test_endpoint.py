"""``dockyard serve`` for real: a subprocess of the CLI with its own DOCKYARD_ROOT and an
embedded Ray head (slow to start: one server for the module), TLS with a self-signed
certificate and a token, on a free 127.0.0.1 port; clients reach it with ``--endpoint``.

Covers: ``ping`` through the endpoint with the token and the CA; no token, a wrong token
and an unverified certificate refused through the CLI with one clear line (no
traceback); a malformed frame closing only its own connection; a build through
``--endpoint`` (the context on this machine's disk, which the worker shares here), its
build record read and removed through the endpoint (``dockyard history``), and
with ``--load`` into the client's Docker engine (a private dockerd); the
server stopping on SIGTERM with nothing it started left running; a one-file change in a
10,000-file context read and sent alone (the client's stat index, issue 10).  (The relay's round
trips are tests/integration/cluster/test_relay.py, in one process.)"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest
from support.tls import self_signed

from dockyard.cluster._ray import ray_temp_dir
from dockyard.cluster._service import alive, connect_endpoint, kill_processes, process_tree
from dockyard.cluster._wire import BlockingWebSocket, WireClosed, parse_endpoint
from dockyard.workers._context_digest import RACY_NS

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "oracle"))
from _buildkit import DOCKER, DOCKERD, PrivateDockerd, make_oracle_root  # noqa: E402

PROJECT = Path(__file__).resolve().parents[3]
TOKEN = "endpoint-token-5d1c"


@dataclass
class Served:
    url: str
    root: Path
    work: Path
    token_file: Path
    cert: Path
    process: subprocess.Popen[bytes]

    def cli(self, *argv: str, env: dict[str, str] | None = None, timeout: float = 180
            ) -> subprocess.CompletedProcess[bytes]:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
        environ |= {"DOCKYARD_ROOT": str(self.work / "client-root"),
                    "PYTHONPATH": str(PROJECT), **(env or {})}
        return subprocess.run([sys.executable, "-m", "dockyard", *argv], cwd=self.work,
                              env=environ, capture_output=True, timeout=timeout, check=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for_url(process: subprocess.Popen[bytes], timeout: float = 120) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    line = process.stdout.readline().decode()
    while not line.startswith("dockyard serving on "):
        assert process.poll() is None and time.monotonic() < deadline, \
            f"dockyard serve did not start: {line!r}"
        line = process.stdout.readline().decode()
    return line.split()[-1]


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    root = Path(tempfile.mkdtemp(prefix="dye-", dir="/tmp"))
    work = Path(tempfile.mkdtemp(prefix="dye-work-"))
    cert, key = self_signed(work)
    token_file = work / "token"
    token_file.write_text(TOKEN + "\n")
    port = _free_port()
    env = {**os.environ, "DOCKYARD_ROOT": str(root), "PYTHONPATH": str(PROJECT)}
    argv = [sys.executable, "-m", "dockyard", "serve", "--host", "127.0.0.1", "--port",
            str(port), "--token-file", str(token_file), "--tls-cert", str(cert),
            "--tls-key", str(key)]
    log = open(work / "serve.log", "wb")  # noqa: SIM115 -- closed at the end
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=log,
                               cwd=work)
    try:
        url = _wait_for_url(process)
        yield Served(url, root, work, token_file, cert, process)
    finally:
        _stop(process)
        log.close()
        shutil.rmtree(ray_temp_dir(root), ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def _stop(process: subprocess.Popen[bytes]) -> None:
    started = process_tree(process.pid)
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    deadline = time.monotonic() + 10
    while any(alive(p) for p in started) and time.monotonic() < deadline:
        time.sleep(0.05)
    leftovers = {p for p in started if alive(p)}
    kill_processes(leftovers)
    assert not leftovers, f"processes left running after SIGTERM: {sorted(leftovers)}"


def test_ping_with_the_token_over_tls(served: Served) -> None:
    assert served.url.startswith("https://127.0.0.1:")
    endpoint = parse_endpoint(served.url, TOKEN, str(served.cert))
    with connect_endpoint(endpoint) as client:
        answer = client.call("ping")
    assert answer["daemon"] == served.process.pid
    assert answer["coordinator"]["pid"] > 0


def _context(served: Served) -> Path:
    context = served.work / "ctx"
    context.mkdir(exist_ok=True)
    (context / "Dockerfile").write_text("FROM scratch\nCOPY a.txt /a.txt\n")
    (context / "a.txt").write_text("hello from the client\n")
    return context


REFUSED = [
    ({}, "this endpoint needs a token: pass the endpoint's token with --token-file FILE or "
         "DOCKYARD_TOKEN"),
    ({"DOCKYARD_TOKEN": "wrong"}, "wrong token: pass the endpoint's token with --token-file "
                                  "FILE or DOCKYARD_TOKEN"),
]


@pytest.mark.parametrize(("env", "why"), REFUSED, ids=["no-token", "wrong-token"])
def test_the_cli_refused_without_the_token(served: Served, env: dict[str, str],
                                           why: str) -> None:
    done = served.cli("build", "--endpoint", served.url, "--tls-ca", str(served.cert),
                      str(_context(served)), env=env)
    assert (done.returncode, done.stdout) == (1, b"")
    assert done.stderr.decode() == (f"error: the endpoint {served.url} refused the token: "
                                    f"{why}\n")
    assert not (served.work / "client-root" / "run").exists(), "no local service started"


def test_the_cli_refuses_an_unverified_certificate(served: Served) -> None:
    done = served.cli("build", "--endpoint", served.url, str(_context(served)),
                      env={"DOCKYARD_TOKEN": TOKEN})
    stderr = done.stderr.decode()
    assert done.returncode == 1, stderr
    assert stderr.startswith(f"error: cannot reach the dockyard endpoint {served.url}: ")
    assert "CERTIFICATE_VERIFY_FAILED" in stderr and "Traceback" not in stderr


def test_a_malformed_frame_closes_only_its_connection(served: Served) -> None:
    endpoint = parse_endpoint(served.url, TOKEN, str(served.cert))
    with connect_endpoint(endpoint) as other:
        bad = BlockingWebSocket.connect(endpoint)
        bad.send(b"\xc1 definitely not a frame")
        failure = msgpack.unpackb(bad.receive())
        assert (failure["kind"], failure["id"]) == ("failure", 0)
        with pytest.raises(WireClosed, match="not a dockyard frame"):
            bad.receive()
        assert other.call("ping")["daemon"] == served.process.pid


def test_a_build_through_the_endpoint(served: Served) -> None:
    out = served.work / "out"
    done = served.cli("build", "--progress=plain", "--endpoint", served.url,
                      "--token-file", str(served.token_file), "--tls-ca", str(served.cert),
                      "-o", f"type=local,dest={out}", str(_context(served)))
    assert done.returncode == 0, done.stderr.decode()
    assert (out / "a.txt").read_text() == "hello from the client\n"
    assert not (served.work / "client-root" / "run").exists(), "no local service started"


def test_history_through_the_endpoint(served: Served) -> None:
    """The cluster's build records, listed, inspected, read and removed through
    ``--endpoint``: kept under the server's root, none on the client."""
    context = served.work / "history-ctx"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM scratch\nCOPY h.txt /h.txt\n")
    (context / "h.txt").write_text(f"recorded {time.time()}\n")  # never cached before
    where = ("--endpoint", served.url, "--token-file", str(served.token_file),
             "--tls-ca", str(served.cert))
    meta = served.work / "history-meta.json"
    done = served.cli("build", "--progress=plain", *where, "--metadata-file", str(meta),
                      "-o", f"type=local,dest={served.work / 'history-out'}", str(context))
    assert done.returncode == 0, done.stderr.decode()
    build_id = json.loads(meta.read_text())["buildx.build.ref"].rsplit("/", 1)[1]

    def history(*argv: str) -> str:
        answer = served.cli("history", *argv, *where)
        assert answer.returncode == 0, answer.stderr.decode()
        return answer.stdout.decode()

    assert json.loads(history("ls", "--format", "json"))[0]["id"] == build_id
    record = json.loads(history("inspect", build_id[:8], "--format", "json"))
    copy = next(v for v in record["vertices"] if v["name"].endswith("COPY h.txt /h.txt"))
    assert not copy["cached"] and copy["node"].startswith("dockyard-worker-")
    assert record["outputs"][0]["type"] == "local" and record["status"] == "completed"
    assert "COPY h.txt /h.txt" in history("logs", build_id)
    assert (served.root / "history" / f"{build_id}.msgpack").is_file()
    assert history("rm", build_id).split() == [build_id]
    assert build_id not in history("ls", "--no-trunc")
    assert not (served.work / "client-root" / "history").exists()
    assert not (served.work / "client-root" / "run").exists(), "no local service started"


def test_image_flags_through_the_endpoint(served: Served) -> None:
    """``--label``, ``--annotation``, ``--iidfile``, ``-q`` and the metadata keys travel
    in the options' wire form and come back as on the embedded service."""
    out = served.work / "flags-out"
    out.mkdir()
    done = served.cli("build", "-q", "--endpoint", served.url, "--token-file",
                      str(served.token_file), "--tls-ca", str(served.cert), "--label", "l=1",
                      "--annotation", "a=2", "--iidfile", f"{out}/iid", "--metadata-file",
                      f"{out}/meta.json", "-o", f"type=oci,dest={out}/image.tar",
                      str(_context(served)))
    assert done.returncode == 0, done.stderr.decode()
    with tarfile.open(out / "image.tar") as tar:
        def blob(digest: str) -> Any:
            member = tar.extractfile("blobs/sha256/" + digest.removeprefix("sha256:"))
            return json.loads(member.read())  # type: ignore[union-attr]
        top = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
        manifest = blob(top["manifests"][0]["digest"])
        config_digest = manifest["config"]["digest"]
        assert blob(config_digest)["config"]["Labels"] == {"l": "1"}
    assert manifest["annotations"] == {"a": "2"}
    assert done.stdout.decode() == f"{config_digest}\n"
    assert (out / "iid").read_text() == config_digest
    meta = json.loads((out / "meta.json").read_text())
    assert meta["containerimage.config.digest"] == config_digest
    assert meta["buildx.build.ref"].startswith("dockyard/")


@pytest.mark.oracle
def test_load_through_the_endpoint(served: Served) -> None:
    """``--load`` with ``--endpoint``: the docker tar comes back over the session channel
    and the client loads it into its own engine (a private dockerd here)."""
    if not (DOCKERD.exists() and DOCKER.exists()):
        pytest.skip("docker.io is not installed (make setup installs it)")
    dockerd = PrivateDockerd(make_oracle_root())
    dockerd.start()
    try:
        meta = served.work / "load-meta.json"
        done = served.cli("build", "--endpoint", served.url, "--token-file",
                          str(served.token_file), "--tls-ca", str(served.cert), "--load",
                          "-t", "example/remote:1", "--metadata-file", str(meta),
                          str(_context(served)), env={"DOCKER_HOST": f"unix://{dockerd.socket}"})
        assert done.returncode == 0, done.stderr.decode()
        listed = dockerd.docker("images", "--no-trunc", "--format", "{{.ID}}", "example/remote:1")
        digest = json.loads(meta.read_text())["containerimage.config.digest"]
        assert listed.stdout.split() == [digest], listed.stderr
    finally:
        dockerd.stop()


def test_exporter_attributes_through_the_endpoint(served: Served) -> None:
    """The exporter attributes cross the wire (issue 11): a zstd OCI layout directory
    named twice, and one platform split into its directory."""
    out = served.work / "attrs-out"
    done = served.cli("build", "--progress=plain", "--endpoint", served.url,
                      "--token-file", str(served.token_file), "--tls-ca", str(served.cert),
                      "-o", f'type=oci,dest={out}/layout,tar=false,compression=zstd,'
                            f'"name=example/a:1,example/b:2"',
                      "-o", f"type=local,dest={out}/split,platform-split=true",
                      str(_context(served)))
    assert done.returncode == 0, done.stderr.decode()
    index = json.loads((out / "layout" / "index.json").read_text())
    assert [e["annotations"]["org.opencontainers.image.ref.name"]
            for e in index["manifests"]] == ["1", "2"]
    manifest = json.loads((out / "layout" / "blobs" / "sha256" /
                           index["manifests"][0]["digest"].split(":")[1]).read_text())
    assert [layer["mediaType"] for layer in manifest["layers"]] == [
        "application/vnd.oci.image.layer.v1.tar+zstd"]
    (platform,) = os.listdir(out / "split")
    assert platform.startswith("linux_")
    assert (out / "split" / platform / "a.txt").read_text() == "hello from the client\n"


def test_a_lowercase_dockerfile_builds_through_the_endpoint(served: Served) -> None:
    """BuildKit's testDockerfileLowercase: no -f and only ``dockerfile`` in the context."""
    context = served.work / "lower"
    context.mkdir()
    (context / "dockerfile").write_text("FROM scratch\nCOPY b.txt /b.txt\n")
    (context / "b.txt").write_text("found by the lower-case name\n")
    out = served.work / "lower-out"
    done = served.cli("build", "--progress=plain", "--endpoint", served.url,
                      "--token-file", str(served.token_file), "--tls-ca", str(served.cert),
                      "-o", f"type=local,dest={out}", str(context))
    assert done.returncode == 0, done.stderr.decode()
    assert (out / "b.txt").read_text() == "found by the lower-case name\n"


def _many_files(context: Path, dirs: int = 100, files: int = 100) -> int:
    """``dirs`` x ``files`` small files and a Dockerfile in ``context``; their bytes."""
    context.mkdir()
    (context / "Dockerfile").write_text("FROM scratch\nCOPY d42/ /d42/\n")
    for d in range(dirs):
        (context / f"d{d:02d}").mkdir(parents=True)
        for f in range(files):
            (context / f"d{d:02d}" / f"f{f:02d}.txt").write_text(f"file {d}/{f}\n")
    return sum(p.stat().st_size for p in context.rglob("*") if p.is_file())


def _context_bytes(served: Served, context: Path) -> dict[str, int]:
    meta = served.work / "meta.json"
    done = served.cli("build", "--endpoint", served.url, "--token-file",
                      str(served.token_file), "--tls-ca", str(served.cert),
                      "--metadata-file", str(meta), str(context))
    assert done.returncode == 0, done.stderr.decode()
    found = json.loads(meta.read_text())
    return {key: found[f"dockyard.context.bytes-{key}"] for key in ("hashed", "sent")}


def test_a_one_file_change_is_the_only_file_read_and_sent(served: Served) -> None:
    """The client's stat index (workers/_context_index.py): after a one-file change in a
    10,000-file context, the client reads that one file to list its digest, and the
    worker, which kept the others, asks for that one alone."""
    context = served.work / "many"
    total = _many_files(context)
    time.sleep(RACY_NS / 1e9 + 0.1)  # past the racy window: the first build remembers all
    assert _context_bytes(served, context) == {"hashed": total, "sent": total}
    (context / "d42" / "f42.txt").write_text("changed\n")
    assert _context_bytes(served, context) == {"hashed": len("changed\n"),
                                               "sent": len("changed\n")}


def test_stdin_and_named_contexts_travel_through_the_endpoint(served: Served) -> None:
    """A tar on stdin as the context and a ``--build-context`` directory: both sent as
    manifests with their contents read from the client (the bytes sent count both)."""
    import io
    import tarfile

    named = served.work / "named-ctx"
    named.mkdir()
    (named / "n.txt").write_text("named through the endpoint\n")
    archive = io.BytesIO()
    files = (("Dockerfile", b"FROM scratch\nCOPY m.txt /\nCOPY --from=data n.txt /\n"),
             ("m.txt", b"main from stdin\n"))
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out, metadata = served.work / "named-out", served.work / "named-meta.json"
    done = subprocess.run(
        [sys.executable, "-m", "dockyard", "build", "--progress=plain", "--endpoint",
         served.url, "--token-file", str(served.token_file), "--tls-ca", str(served.cert),
         "--metadata-file", str(metadata), "--build-context", f"data={named}",
         "-o", f"type=local,dest={out}", "-"],
        input=archive.getvalue(), cwd=served.work, capture_output=True, timeout=180,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")},
             "DOCKYARD_ROOT": str(served.work / "client-root"), "PYTHONPATH": str(PROJECT)},
        check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert (out / "m.txt").read_text() == "main from stdin\n"
    assert (out / "n.txt").read_text() == "named through the endpoint\n"
    sent = json.loads(metadata.read_text())["dockyard.context.bytes-sent"]
    # every file of both contexts: the server had none of them
    assert sent == sum(len(data) for _, data in files) + (named / "n.txt").stat().st_size
