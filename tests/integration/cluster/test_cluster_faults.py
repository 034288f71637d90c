"""Faults and membership on a real cluster: a worker killed mid-RUN, a client that goes
away mid-RUN, a node that joins mid-build.

One cluster serves the module (tests/support/cluster.py): a single amd64 node with one
slot (so a slot that is not given back blocks the next build), and, in the last test, a
second node added while a build runs.  The tests run in file order: the node added last
changes the cluster.  A worker's containers are ``runc --root <node root>/run/runc list``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.cluster import (
    LocalCluster,
    Node,
    containers,
    context,
    placed,
    root_processes,
    start_build,
    wait_for,
)
from support.progress import plain_blocks

STAGES = 6


@pytest.fixture(scope="module")
def cluster(busybox_image: object) -> Iterator[LocalCluster]:
    with LocalCluster() as running:
        running.start(("amd64", (), 1))
        yield running


@pytest.fixture
def base(busybox_image: Any) -> str:
    return str(busybox_image.reference)


def worker_actor_pid(node: Node) -> int | None:
    """The pid of the ``ray::WorkerActor`` process under ``node``'s root."""
    for pid in root_processes(node.root):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::WorkerActor"):
                return pid
    return None


def test_a_worker_killed_mid_run_and_the_build_still_succeeds(
        cluster: LocalCluster, base: str, tmp_path: Path) -> None:
    node = cluster.head
    ctx = context(tmp_path / "ctx", f"FROM {base}\nRUN echo start > /marker && sleep 4 && "
                                    f"echo {tmp_path.name} >> /marker\n")
    out = tmp_path / "out"
    build = start_build(cluster, cluster.client(), "--progress=plain", "-o",
                        f"type=local,dest={out}", str(ctx))
    wait_for("the RUN's container", lambda: containers(node), 120)
    pid = wait_for("the worker actor", lambda: worker_actor_pid(node), 10)
    os.kill(pid, signal.SIGKILL)
    _, err = build.communicate(timeout=240)
    progress = err.decode(errors="replace")
    assert build.returncode == 0, progress
    assert (out / "marker").read_text() == f"start\n{tmp_path.name}\n", progress
    assert worker_actor_pid(node) not in (None, pid)  # restarted
    again = plain_blocks(cluster.build(cluster.client(), "--progress=plain",
                                       str(ctx)).stderr.decode())
    run = [lines for lines in again.values() if "RUN echo start" in lines[0]]
    assert run and run[0][-1] == "CACHED", again  # the record is whole: a rebuild hits it


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL])
def test_a_client_that_goes_away_cancels_its_build(
        cluster: LocalCluster, base: str, tmp_path: Path, how: signal.Signals) -> None:
    node = cluster.head
    ctx = context(tmp_path / "ctx", f"FROM {base}\nRUN sleep 300 # {tmp_path.name}\n")
    build = start_build(cluster, cluster.client(), "--progress=plain", str(ctx))
    wait_for("the RUN's container", lambda: containers(node), 120)
    build.send_signal(how)
    build.wait(30)
    wait_for("the container to go", lambda: not containers(node), 30)
    quick = context(tmp_path / "quick", f"FROM {base}\nRUN echo {tmp_path.name} > /q\n")
    began = time.monotonic()
    cluster.build(cluster.client(), str(quick), timeout=120)
    assert time.monotonic() - began < 60  # the one slot was free again


def test_a_node_added_mid_build_takes_work(
        cluster: LocalCluster, base: str, tmp_path: Path) -> None:
    """Independent 3 s stages, one slot: the stages queue on the head while the node
    joins (``node start`` takes 4-10 s on 2 busy cores, hence 6 stages, not 4)."""
    stages = "".join(f"FROM {base} AS s{i}\nRUN sleep 3 && echo {i} {tmp_path.name} > /s\n"
                     for i in range(STAGES))
    final = "FROM scratch\n" + "".join(f"COPY --from=s{i} /s /s{i}\n" for i in range(STAGES))
    ctx = context(tmp_path / "ctx", stages + final)
    out = tmp_path / "out"
    build = start_build(cluster, cluster.client(), "--progress=plain", "-o",
                        f"type=local,dest={out}", str(ctx))
    wait_for("the first stage's container", lambda: containers(cluster.head), 120)
    began = time.monotonic()
    added = cluster.add_node("amd64", (), 1)
    joined = time.monotonic() - began
    _, err = build.communicate(timeout=300)
    progress = err.decode(errors="replace")
    assert build.returncode == 0, progress
    assert sorted(p.name for p in out.iterdir()) == [f"s{i}" for i in range(STAGES)]
    runs = {name: ip for name, ip in placed(progress).items() if "RUN" in name}
    assert added.ip in runs.values(), f"node start took {joined:.1f}s\n{progress}"
