"""Builds on a real multi-node cluster through ``dockyard build --endpoint``.

One cluster serves the module (tests/support/cluster.py): a head (amd64, 2 slots) on
127.0.0.2, an arm64 node on 127.0.0.3 (its arm64 binaries run through QEMU binfmt on this
machine, but the cluster sees a native arm64 node, as on mixed hardware) and the endpoint
on 127.0.0.1.  Every node has its own root, and the client a root of its own, so nothing
passes through a shared disk; the base image comes from the loopback registry.

Which node ran a vertex is read from the plain progress: in a cluster of several workers
each executed vertex says ``running on <worker> at <address>``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cluster import LocalCluster

HEAD_IP, ARM_IP = "127.0.0.2", "127.0.0.3"


@pytest.fixture(scope="module")
def cluster(busybox_image: object) -> Iterator[LocalCluster]:
    with LocalCluster() as running:
        running.start(("amd64", (), 2), ("arm64", (), 2))
        yield running


def placed(progress: str) -> dict[str, str]:
    """Vertex name -> the address of the node that ran it, from plain progress."""
    names: dict[str, str] = {}
    where: dict[str, str] = {}
    for line in progress.splitlines():
        match = re.match(r"#(\d+) (\[.*)$", line)
        if match and match.group(1) not in names:
            names[match.group(1)] = match.group(2)
        ran = re.match(r"#(\d+) running on \S+ at (\S+)", line)
        if ran:
            where[names.get(ran.group(1), ran.group(1))] = ran.group(2)
    return where


def context(tmp: Path, dockerfile: str, files: dict[str, str] | None = None) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "Dockerfile").write_text(dockerfile)
    for name, text in (files or {}).items():
        (tmp / name).write_text(text)
    return tmp


def test_a_multi_platform_build_runs_each_platform_on_its_node(
        cluster: LocalCluster, busybox_image: object, tmp_path: Path) -> None:
    base = busybox_image.reference  # type: ignore[attr-defined]
    ctx = context(tmp_path / "ctx", f"FROM {base}\nCOPY hello.txt /hello.txt\n"
                                    f"RUN uname -m > /arch && cat /hello.txt >> /arch\n",
                  {"hello.txt": "hello\n"})
    out = tmp_path / "out"
    client = cluster.client()
    done = cluster.build(client, "--progress=plain", "--platform", "linux/amd64,linux/arm64",
                         "-o", f"type=local,dest={out}", str(ctx))
    progress = done.stderr.decode()
    assert (out / "linux_amd64" / "arch").read_text() == "x86_64\nhello\n", progress
    assert (out / "linux_arm64" / "arch").read_text() == "aarch64\nhello\n", progress
    where = placed(progress)
    runs = {name: ip for name, ip in where.items() if "RUN" in name}
    assert sorted(runs.values()) == [HEAD_IP, ARM_IP], progress
    for name, ip in runs.items():
        assert ip == (ARM_IP if "linux/arm64" in name else HEAD_IP), (name, progress)


def test_node_ls_lists_both_nodes(cluster: LocalCluster) -> None:
    from support.cluster import dockyard

    rows = json.loads(dockyard(cluster.head.root, "node", "ls", "--format", "json").stdout)
    assert sorted(row["address"] for row in rows) == [HEAD_IP, ARM_IP]
