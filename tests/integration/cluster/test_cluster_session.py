"""What stays on the client, through a real cluster endpoint (tests/support/cluster.py:
one amd64 node with its own root, ``dockyard serve`` on loopback, a client with a root
of its own): its ssh agent, relayed into a RUN over the session channel, and its S3
credentials, forwarded for one build's ``--cache-to`` while the nodes and the endpoint
run with none.  The key's and the credentials' bytes are in no file under any root."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.cluster import LocalCluster
from support.leaks import files_containing
from support.moto import REGION, S3Endpoint, moto_server
from support.ssh_tools import copy_ssh_add, make_key

#: The cluster's processes: no AWS credentials, and no chain that could find some.
NO_CREDENTIALS = {"AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": os.devnull,
                  "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
FORWARDED = {"AWS_ACCESS_KEY_ID": "AKIACLUSTERFWD4410", "AWS_REGION": REGION,
             "AWS_SECRET_ACCESS_KEY": "cluster-forwarded-secret-6a1e"}


@pytest.fixture(scope="module")
def cluster(busybox_image: object) -> Iterator[LocalCluster]:
    with pytest.MonkeyPatch.context() as patch:
        for name in [name for name in os.environ if name.startswith("AWS_")]:
            patch.delenv(name)
        for name, value in NO_CREDENTIALS.items():
            patch.setenv(name, value)
        with LocalCluster() as running:
            running.start(("amd64", (), 2))
            yield running


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as endpoint:
        yield endpoint


def _roots(cluster: LocalCluster) -> list[Path]:
    return [node.root for node in cluster.nodes]


def test_ssh_agent_relayed_from_the_client(cluster: LocalCluster, busybox_image: Any,
                                           tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    copy_ssh_add(ctx)
    key = make_key(tmp_path / "cluster-key", "cluster-key-91d0")
    (ctx / "key.pub").write_bytes(Path(f"{key}.pub").read_bytes())
    (ctx / "Dockerfile").write_text(
        f"FROM {busybox_image.reference}\nCOPY tools/ /\nCOPY key.pub /key.pub\n"
        "RUN --mount=type=ssh,id=git,uid=65534,mode=0600 "
        "su -s /bin/sh nobody -c 'ssh-add -l > /tmp/listed && ssh-add -T /key.pub' "
        "&& cp /tmp/listed /listed && echo \"$SSH_AUTH_SOCK\" > /sock\n")
    out = tmp_path / "out"
    done = cluster.build(cluster.client(), "--progress=plain", "--ssh", f"git={key}",
                         "-o", f"type=local,dest={out}", str(ctx), check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert "cluster-key-91d0 (ED25519)" in (out / "listed").read_text()
    assert (out / "sock").read_text() == "/run/buildkit/ssh_agent.0\n"
    private = key.read_bytes().split(b"\n")[1]
    for root in _roots(cluster):
        assert files_containing(root, [private, str(key).encode()]) == [], root
    assert str(key) not in cluster.serve_log()


def test_s3_credentials_forwarded_for_one_build(cluster: LocalCluster, moto: S3Endpoint,
                                                busybox_image: Any, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {busybox_image.reference}\n"
                                    "RUN echo through-the-cluster > /f\n")
    bucket = moto.bucket()
    cache = (f"type=s3,bucket={bucket},prefix=c/,endpoint_url={moto.url},"
             f"use_path_style=true,mode=max")
    argv = ("--progress=plain", "--no-cache", "--cache-to", cache, str(ctx))
    client = cluster.client("s3-client")
    without = cluster.build(client, *argv, check=False)
    assert without.returncode != 0, "the cluster found credentials of its own"
    assert "credentials" in without.stderr.decode().lower(), without.stderr.decode()

    done = cluster.build(client, *argv, check=False, extra=FORWARDED)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    listed = moto.client().list_objects_v2(Bucket=bucket, Prefix="c/records/")
    assert listed.get("KeyCount", 0) >= 2
    needles = [FORWARDED["AWS_ACCESS_KEY_ID"].encode(),
               FORWARDED["AWS_SECRET_ACCESS_KEY"].encode()]
    for root in _roots(cluster):
        assert files_containing(root, needles) == [], root
    assert not any(needle.decode() in cluster.serve_log() for needle in needles)
