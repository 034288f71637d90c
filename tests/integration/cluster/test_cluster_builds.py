"""Builds on a real multi-node cluster through ``dockyard build --endpoint``.

One cluster serves the module (tests/support/cluster.py): a head (amd64, 2 slots) on
127.0.0.2, an arm64 node on 127.0.0.3 (its arm64 binaries run through QEMU binfmt on this
machine, but the cluster sees a native arm64 node, as on mixed hardware), a second amd64
node on 127.0.0.4 (so that locality, not the platform, decides between two workers) and the
endpoint on 127.0.0.1.  Every node has its own root, and each client a root of its own, so
nothing passes through a shared disk; the base image comes from the loopback registry.

Which node ran a vertex is read from the plain progress: in a cluster of several workers
each executed vertex says ``running on <worker> at <address>``.  How many vertices ran is
the coordinator's count (the endpoint's ``statistics`` call).  The context bytes a client
sent are in its ``--metadata-file`` (``dockyard.context.bytes-sent``: what it answered to
the workers' ``context.read`` asks).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.cluster import (
    LocalCluster,
    containers,
    context,
    dockyard,
    environment,
    placed,
    start_build,
    wait_for,
)
from support.moto import ENVIRONMENT as MOTO_ENVIRONMENT
from support.moto import moto_server

from dockyard.cluster._ray import ray_temp_dir

HEAD_IP, ARM_IP, AMD2_IP = "127.0.0.2", "127.0.0.3", "127.0.0.4"
AMD_IPS = {HEAD_IP, AMD2_IP}


@pytest.fixture(scope="module")
def cluster(busybox_image: object) -> Iterator[LocalCluster]:
    with LocalCluster(env=dict(MOTO_ENVIRONMENT)) as running:  # the S3 cache's credentials
        running.start(("amd64", (), 2), ("arm64", (), 2), ("amd64", (), 2))
        yield running


@pytest.fixture
def base(busybox_image: Any) -> str:
    return str(busybox_image.reference)


def executed(cluster: LocalCluster) -> int:
    """How many vertices the cluster's solver has executed so far."""
    return int(cluster.statistics()["solver"]["executed"])


def test_a_multi_platform_build_runs_each_platform_on_its_node(
        cluster: LocalCluster, base: str, tmp_path: Path) -> None:
    ctx = context(tmp_path / "ctx", f"FROM {base}\nCOPY hello.txt /hello.txt\n"
                                    f"RUN uname -m > /arch && cat /hello.txt >> /arch\n",
                  {"hello.txt": "hello\n"})
    out = tmp_path / "out"
    done = cluster.build(cluster.client(), "--progress=plain", "--platform",
                         "linux/amd64,linux/arm64", "-o", f"type=local,dest={out}", str(ctx))
    progress = done.stderr.decode()
    assert (out / "linux_amd64" / "arch").read_text() == "x86_64\nhello\n", progress
    assert (out / "linux_arm64" / "arch").read_text() == "aarch64\nhello\n", progress
    runs = {name: ip for name, ip in placed(progress).items() if "RUN" in name}
    assert len(runs) == 2, progress
    for name, ip in runs.items():
        assert (ip == ARM_IP) if "linux/arm64" in name else (ip in AMD_IPS), (name, progress)


def test_node_ls_lists_every_node(cluster: LocalCluster) -> None:
    rows = json.loads(dockyard(cluster.head.root, "node", "ls", "--format", "json").stdout)
    assert sorted(row["address"] for row in rows) == [HEAD_IP, ARM_IP, AMD2_IP]


def test_a_chain_stays_on_one_node_and_a_follow_up_runs_where_its_inputs_are(
        cluster: LocalCluster, base: str, tmp_path: Path) -> None:
    """Two amd64 workers: a chain's steps run on one node (``home``); then, while a build
    on top of the chain keeps one of home's two slots busy (so the other amd64 node has
    more free slots), a step on top of the chain still runs on home: locality before
    load."""
    client = cluster.client()
    tag = secrets.token_hex(4)
    steps = "".join(f"RUN echo {tag}-{i} >> /chain && head -c 300000 /dev/urandom "
                    f"> /blob{i}\n" for i in range(3))
    chain = context(tmp_path / "chain", f"FROM {base}\n{steps}")
    progress = cluster.build(client, "--progress=plain", str(chain)).stderr.decode()
    runs = {name: ip for name, ip in placed(progress).items() if "RUN" in name}
    assert len(runs) == 3 and len(set(runs.values())) == 1, progress
    (home_ip,) = set(runs.values())
    home = next(node for node in cluster.nodes if node.ip == home_ip)
    assert home.arch == "amd64", progress
    busy = context(tmp_path / "busy", f"FROM {base}\n{steps}RUN sleep 15\n")
    blocker = start_build(cluster, cluster.client("busy"), str(busy))
    try:
        wait_for("the blocker's container on home", lambda: containers(home), 60)
        more = context(tmp_path / "more", f"FROM {base}\n{steps}RUN cat /chain > /again\n")
        again = cluster.build(client, "--progress=plain", str(more)).stderr.decode()
    finally:
        blocker.kill()
        blocker.wait(30)
    follow = {name: ip for name, ip in placed(again).items() if "RUN" in name}
    assert list(follow.values()) == [home_ip], again  # only the new step ran, on home


def test_ten_concurrent_identical_builds_run_the_step_once(
        cluster: LocalCluster, base: str, tmp_path: Path) -> None:
    ctx = context(tmp_path / "ctx", f"FROM {base}\nRUN echo {secrets.token_hex(8)} && "
                                    "date +%s%N > /t\n")
    before = executed(cluster)
    clients = []
    for i in range(10):
        root = cluster.client(f"dedup{i}")
        argv = [sys.executable, "-m", "dockyard", "build", "--progress=plain",
                "--metadata-file", str(tmp_path / f"meta{i}.json"),
                "-o", f"type=oci,dest={tmp_path}/image{i}.tar", str(ctx)]
        env = environment(root, {"DOCKYARD_ENDPOINT": cluster.url,
                                 "DOCKYARD_TOKEN": cluster.token})
        clients.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE))
    outputs = [client.communicate(timeout=300) for client in clients]
    for client, (_, err) in zip(clients, outputs, strict=True):
        assert client.returncode == 0, err.decode(errors="replace")
    digests = {json.loads((tmp_path / f"meta{i}.json").read_text())["containerimage.digest"]
               for i in range(10)}
    assert len(digests) == 1, digests
    assert executed(cluster) - before == 1  # the RUN, once for the ten
    stamps = {_file_in_oci(tmp_path / f"image{i}.tar", "t") for i in range(10)}
    assert len(stamps) == 1 and stamps.pop()[:10].isdigit()  # busybox date: no %N


def _file_in_oci(archive: Path, name: str) -> bytes:
    """``name`` in the top layer of the single-platform OCI tarball ``archive``."""
    with tarfile.open(archive) as oci:
        def blob(digest: str) -> Any:
            return oci.extractfile(f"blobs/sha256/{digest.split(':')[1]}")
        index = json.load(oci.extractfile("index.json"))  # type: ignore[arg-type]
        manifest = json.load(blob(index["manifests"][0]["digest"]))
        with tarfile.open(fileobj=blob(manifest["layers"][-1]["digest"])) as layer:
            member = layer.extractfile(name)
            assert member is not None, layer.getnames()
            return member.read()


def test_a_one_file_change_sends_about_one_file(
        cluster: LocalCluster, base: str, tmp_path: Path) -> None:
    files = {f"f{i:03}.txt": secrets.token_hex(2048) for i in range(200)}  # 4 KiB each
    ctx = context(tmp_path / "ctx", f"FROM {base}\nCOPY . /ctx\n", files)
    client = cluster.client("sync")
    sent = []
    for change in ("", "a changed line\n"):
        (ctx / "f007.txt").write_text(files["f007.txt"] + change)
        meta = tmp_path / "meta.json"
        cluster.build(client, "--metadata-file", str(meta), str(ctx))
        sent.append(json.loads(meta.read_text())["dockyard.context.bytes-sent"])
    total = sum(len(text) for text in files.values())
    assert sent[0] >= total, sent
    one_file = len(files["f007.txt"]) + len("a changed line\n")
    assert one_file <= sent[1] <= 2 * one_file, sent


def test_a_secret_is_in_no_file_of_the_cluster(
        cluster: LocalCluster, base: str, tmp_path: Path) -> None:
    value = f"dockyard-secret-{secrets.token_hex(16)}".encode()
    secret = tmp_path / "secret"
    secret.write_bytes(value)
    ctx = context(tmp_path / "ctx", f"FROM {base}\nRUN --mount=type=secret,id=s "
                                    "sha256sum /run/secrets/s | cut -c1-64 > /hash\n")
    out = tmp_path / "out"
    client = cluster.client("secret")
    done = cluster.build(client, "--progress=plain", "--secret", f"id=s,src={secret}",
                         "-o", f"type=local,dest={out}", str(ctx))
    import hashlib

    assert (out / "hash").read_text().strip() == hashlib.sha256(value).hexdigest()
    assert value not in done.stderr + done.stdout
    places = [n.root for n in cluster.nodes] + [ray_temp_dir(n.root) for n in cluster.nodes]
    places += [client, cluster.base / "serve.log"]
    assert [str(path) for path in _files_holding(value, places)] == []


def _files_holding(value: bytes, places: list[Path]) -> Iterator[Path]:
    """The regular files under ``places`` whose bytes contain ``value``."""
    for place in places:
        walked = [(str(place.parent), [], [place.name])] if place.is_file() else os.walk(place)
        for top, _, names in walked:
            for name in names:
                path = Path(top) / name
                try:
                    if path.is_file() and not path.is_symlink() and value in path.read_bytes():
                        yield path
                except OSError:
                    continue


def test_the_client_in_its_own_mount_namespace(
        cluster: LocalCluster, base: str, tmp_path: Path) -> None:
    """The context and the output exist only in the client's namespace (a private tmpfs):
    a worker that opened a client path would not find the context, and the output is
    looked at from inside the namespace."""
    private = tmp_path / "private"
    private.mkdir()
    script = (f"set -e; mount -t tmpfs none {private}; mkdir {private}/ctx; "
              f"printf 'FROM {base}\\nCOPY in.txt /in.txt\\nRUN cat /in.txt > /out.txt\\n' "
              f"> {private}/ctx/Dockerfile; echo only-in-the-namespace > {private}/ctx/in.txt;"
              f' "$@"; cat {private}/out/out.txt; stat -c %u:%g {private}/out/out.txt')
    prefix = ("unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh")
    done = cluster.build(cluster.client("private"), "-o", f"type=local,dest={private}/out",
                         f"{private}/ctx", prefix=prefix)
    assert done.stdout.decode().split() == ["only-in-the-namespace", f"{os.getuid()}:"
                                            f"{os.getgid()}"], done.stderr.decode()
    assert list(private.iterdir()) == []  # nothing of it outside the namespace


@pytest.mark.parametrize("token", [None, "not-the-token"])
def test_a_build_without_the_token_is_refused(
        cluster: LocalCluster, base: str, tmp_path: Path, token: str | None) -> None:
    ctx = context(tmp_path / "ctx", f"FROM {base}\nRUN true\n")
    env = environment(cluster.client("auth"), {"DOCKYARD_ENDPOINT": cluster.url}
                      | ({"DOCKYARD_TOKEN": token} if token else {}))
    done = subprocess.run([sys.executable, "-m", "dockyard", "build", str(ctx)], env=env,
                          capture_output=True, timeout=60, check=False)
    err = done.stderr.decode()
    assert done.returncode == 1, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "token" in err.lower(), err


def test_a_platform_no_worker_runs_is_refused_at_once(
        cluster: LocalCluster, base: str, tmp_path: Path) -> None:
    ctx = context(tmp_path / "ctx", f"FROM {base}\nRUN echo never > /x\n")
    before = executed(cluster)
    began = time.monotonic()
    done = cluster.build(cluster.client(), "--platform", "linux/riscv64", str(ctx),
                         check=False, timeout=60)
    took = time.monotonic() - began
    err = done.stderr.decode()
    assert done.returncode == 1 and "Traceback" not in err, err
    assert "riscv64" in err and "amd64" in err and "arm64" in err, err
    assert took < 15, took
    assert executed(cluster) == before, err


def test_buildplatform_steps_into_scratch_build_for_any_platform(
        cluster: LocalCluster, base: str, tmp_path: Path) -> None:
    ctx = context(tmp_path / "ctx", f"FROM --platform=$BUILDPLATFORM {base} AS build\n"
                                    "ARG TARGETPLATFORM\n"
                                    "RUN echo built for $TARGETPLATFORM > /x\n"
                                    "FROM scratch\nCOPY --from=build /x /x\n")
    out = tmp_path / "out"
    done = cluster.build(cluster.client(), "--progress=plain", "--platform", "darwin/ppc64le",
                         "-o", f"type=local,dest={out}", str(ctx))
    assert (out / "x").read_text() == "built for darwin/ppc64le\n", done.stderr.decode()


def test_an_arm64_step_gets_an_amd64_layer_from_its_peer(
        cluster: LocalCluster, base: str, tmp_path: Path) -> None:
    tag = secrets.token_hex(4)
    ctx = context(tmp_path / "ctx", f"FROM --platform=linux/amd64 {base} AS amd\n"
                                    f"RUN echo {tag} > /tag && uname -m > /m\n"
                                    f"FROM --platform=linux/arm64 {base}\n"
                                    "COPY --from=amd /m /tag /\n"
                                    "RUN cat /tag /m > /n && uname -m >> /n\n")
    out = tmp_path / "out"
    done = cluster.build(cluster.client(), "--progress=plain", "--platform", "linux/arm64",
                         "-o", f"type=local,dest={out}", str(ctx))
    progress = done.stderr.decode()
    assert (out / "n").read_text() == f"{tag}\nx86_64\naarch64\n", progress
    runs = {name: ip for name, ip in placed(progress).items() if "RUN" in name}
    assert len(runs) == 2, progress
    assert {ip for name, ip in runs.items() if "uname -m > /m" in name} <= AMD_IPS, progress
    assert [ip for name, ip in runs.items() if "cat /tag" in name] == [ARM_IP], progress


def test_an_arm64_step_with_an_s3_cache_next_to_its_peer(
        cluster: LocalCluster, base: str, tmp_path: Path) -> None:
    """With ``--cache-to/--cache-from type=s3`` (moto on loopback), an amd64 stage's layer
    goes to the cache, and an arm64 step that copies from it builds from the cache's
    records.  The S3 credentials here are the cluster's own (its nodes' environment;
    test_cluster_session.py forwards a client's).  The COPY runs where the amd64 layers
    are (locality), so the arm64 node then takes the COPY's new layer from that peer:
    no layer of the cache is fetched here (a blob both a cache and a peer hold is asked
    of the cache first: workers/_peers.py ``FirstOf``, tested in tests/unit)."""
    tag = secrets.token_hex(4)
    ctx = context(tmp_path / "ctx", f"FROM --platform=linux/amd64 {base} AS amd\n"
                                    f"RUN echo {tag} > /tag\n"
                                    f"FROM --platform=linux/arm64 {base}\n"
                                    "COPY --from=amd /tag /\nRUN cat /tag > /n\n")
    with moto_server(tmp_path / "moto.log") as s3:
        bucket = s3.bucket()
        fields = {"type": "s3", "bucket": bucket, "region": "us-east-1",
                  "prefix": "ci/", "endpoint_url": s3.url, "use_path_style": "true"}
        cache = ",".join(f"{key}={value}" for key, value in fields.items())
        client = cluster.client("s3")
        cluster.build(client, "--platform", "linux/amd64", "--target", "amd",
                      "-o", f"type=oci,dest={tmp_path}/amd.tar",
                      "--cache-to", f"{cache},mode=max", str(ctx))
        layer = _top_layer(tmp_path / "amd.tar").split(":")[1]
        s3.client().head_object(Bucket=bucket, Key=f"ci/blobs/sha256/{layer}")
        out = tmp_path / "out"
        done = cluster.build(client, "--progress=plain", "--platform", "linux/arm64",
                             "--cache-from", cache, "-o", f"type=local,dest={out}",
                             str(ctx))
    progress = done.stderr.decode()
    assert (out / "n").read_text() == f"{tag}\n", progress
    runs = {name: ip for name, ip in placed(progress).items() if "RUN" in name}
    assert list(runs.values()) == [ARM_IP], progress  # the amd64 step came from a cache


def _top_layer(archive: Path) -> str:
    with tarfile.open(archive) as oci:
        def blob(digest: str) -> Any:
            return oci.extractfile(f"blobs/sha256/{digest.split(':')[1]}")
        index = json.load(oci.extractfile("index.json"))  # type: ignore[arg-type]
        return str(json.load(blob(index["manifests"][0]["digest"]))["layers"][-1]["digest"])
