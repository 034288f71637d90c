"""``dockyard node start|stop|ls`` for real: a three-node Ray cluster on this machine,
each node on its own loopback address and ``DOCKYARD_ROOT``, started through the CLI.

One cluster serves the module (a start costs ~4-6 s): a head on 127.0.0.2, an amd64 node
on 127.0.0.3 and a node emulating arm64 on 127.0.0.4 join it.  The tests that stop nodes
come last.  Whatever happens, every process of the module's roots is stopped at the end
(``node stop``, then by pid), and the last test checks that ``node stop`` left none.
Roots are short directories in /tmp (Ray's session sockets must fit a unix socket path).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.cluster import environment, root_processes

from dockyard.cluster._node import NodePaths, NodeRecord, read_record

PROJECT = Path(__file__).resolve().parents[3]
HEAD_IP, AMD64_IP, ARM64_IP = "127.0.0.2", "127.0.0.3", "127.0.0.4"

# A driver of the cluster, as the coordinator will be: the library's list_workers (each
# worker's info()) and node_alive of the node ids given as arguments.
_DRIVER = """
import asyncio, json, os, sys
from pathlib import Path
from dockyard.cluster._node_ls import connected, list_workers, node_alive
from dockyard.cluster._ray import ray_environment

root = Path(os.environ["DOCKYARD_ROOT"])
with connected(sys.argv[1], sys.argv[2], ray_environment(root, os.environ)):
    workers = list_workers()
    async def infos():
        return [await ref.call("info") for _, ref in workers]
    answers = asyncio.run(infos())
    alive = {node: node_alive(node) for node in sys.argv[3:]}
print(json.dumps({"workers": dict(zip([n for n, _ in workers], answers)), "alive": alive}))
"""


@dataclass
class Node:
    """A root a node was started under."""

    root: Path
    ip: str

    @property
    def record(self) -> NodeRecord:
        record = read_record(NodePaths(self.root))
        assert record is not None, f"no node.json under {self.root}"
        return record


def dockyard(root: Path, *argv: str, check: bool = True,
             extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "dockyard", *argv],
                            env=environment(root) | (extra or {}), capture_output=True,
                            text=True, timeout=180, check=False)
    if check:
        assert result.returncode == 0, f"dockyard {' '.join(argv)}: {result.stderr}"
    return result


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def ls_json(node: Node, *extra: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(
        dockyard(node.root, "node", "ls", "--format", "json", *extra).stdout)
    return rows


def drive(node: Node, *node_ids: str) -> dict[str, Any]:
    record = node.record
    result = subprocess.run([sys.executable, "-c", _DRIVER, record.address, node.ip,
                             *node_ids], env=environment(node.root), capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    return answer


def _kill_root(root: Path) -> None:
    """The safety net: SIGKILL what a failed test left of ``root``, by pid."""
    for pid in root_processes(root):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, Node]]:
    base = Path(tempfile.mkdtemp(prefix="dyn-", dir="/tmp"))
    nodes = {name: Node(base / name, ip) for name, ip in
             (("head", HEAD_IP), ("amd64", AMD64_IP), ("arm64", ARM64_IP))}
    try:
        head = dockyard(nodes["head"].root, "node", "start", "--head", "--node-ip", HEAD_IP,
                        "--slots", "2")
        token = NodePaths(nodes["head"].root).token
        assert f"--token-file {token}" in head.stdout
        address = nodes["head"].record.address
        assert f"cluster address: {address}" in head.stdout
        dockyard(nodes["amd64"].root, "node", "start", "--address", address, "--node-ip",
                 AMD64_IP, "--slots", "1", "--token-file", str(token))
        dockyard(nodes["arm64"].root, "node", "start", "--address", address, "--node-ip",
                 ARM64_IP, "--slots", "1", "--emulate", "arm64",
                 extra={"RAY_AUTH_TOKEN_PATH": str(token)})
        yield nodes
    finally:
        for node in reversed(nodes.values()):
            if node.root.exists():
                dockyard(node.root, "node", "stop", check=False)
                _kill_root(node.root)
        shutil.rmtree(base, ignore_errors=True)


def test_ls_shows_every_worker_with_its_arches_and_root(cluster: dict[str, Node]) -> None:
    rows = {row["name"]: row for row in ls_json(cluster["amd64"])}
    expected = {node.record.worker: (node, arches) for node, arches in (
        (cluster["head"], ["amd64"]), (cluster["amd64"], ["amd64"]),
        (cluster["arm64"], ["amd64", "arm64"]))}
    assert set(rows) == set(expected)
    for name, (node, arches) in expected.items():
        row = rows[name]
        assert (row["status"], row["address"], row["root"]) == ("ready", node.ip,
                                                                str(node.root))
        assert (row["arches"], row["native"]) == (arches, ["amd64"])
        assert row["slots"] == node.record.slots and row["running"] == 0


def test_ls_table_from_a_client_root(cluster: dict[str, Node]) -> None:
    """``dockyard ls`` from a root without a node, given the cluster's address and token."""
    client = Path(tempfile.mkdtemp(prefix="dyc-", dir="/tmp"))
    try:
        token = NodePaths(cluster["head"].root).token
        result = dockyard(client, "ls", extra={
            "DOCKYARD_RAY_ADDRESS": cluster["head"].record.address,
            "RAY_AUTH_TOKEN_PATH": str(token)})
    finally:
        shutil.rmtree(client, ignore_errors=True)
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NODE", "ADDRESS", "ARCH", "SLOTS", "RUNNING", "STORE",
                                "STATUS"]
    emulating = cluster["arm64"].record.worker
    assert any(line.startswith(emulating) and "amd64, arm64 (emulated)" in line
               for line in lines)
    assert len(lines) == 4 and all(line.endswith("ready") for line in lines[1:])


def test_each_worker_runs_on_its_node_under_its_root(cluster: dict[str, Node]) -> None:
    answer = drive(cluster["head"], *(node.record.node_id for node in cluster.values()))
    assert all(answer["alive"].values()) and len(answer["alive"]) == 3
    for node in cluster.values():
        info = answer["workers"][node.record.worker]
        assert (info["root"], info["node_ip"]) == (str(node.root), node.ip)
        assert info["pid"] in root_processes(node.root)
        session = Path(f"/proc/{info['pid']}/stat").read_text().rsplit(")", 1)[1].split()[3]
        assert int(session) == node.record.session  # started by that node's raylet


def test_a_second_node_under_a_running_root_is_refused(cluster: dict[str, Node]) -> None:
    node = cluster["amd64"]
    before = root_processes(node.root)
    result = dockyard(node.root, "node", "start", "--head", "--node-ip", "127.0.0.9",
                      check=False)
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"error: a dockyard node already runs under {node.root}: {node.record.worker} at "
        f"{AMD64_IP} (cluster {node.record.address})\n")
    assert root_processes(node.root) == before


def test_stopping_a_node_removes_it_from_the_cluster(cluster: dict[str, Node]) -> None:
    node, head = cluster["amd64"], cluster["head"]
    record = node.record
    assert root_processes(node.root)
    result = dockyard(node.root, "node", "stop")
    assert result.stdout == f"stopped {record.worker} ({AMD64_IP}) under {node.root}\n"
    assert root_processes(node.root) == set()
    assert not NodePaths(node.root).record.exists()

    def gone() -> bool:
        rows = {row["name"]: row["status"] for row in ls_json(head)}
        assert rows.get(record.worker, "unreachable") == "unreachable"
        return record.worker not in rows and len(rows) == 2

    wait_until(gone, 30, f"{record.worker} to leave 'node ls'")
    assert drive(head, record.node_id)["alive"] == {record.node_id: False}
    again = dockyard(node.root, "node", "stop")
    assert again.stdout == f"no dockyard node runs under {node.root}\n"


def test_stop_leaves_no_process_of_any_root(cluster: dict[str, Node]) -> None:
    for name in ("arm64", "head"):
        node = cluster[name]
        assert root_processes(node.root)
        dockyard(node.root, "node", "stop")
        assert root_processes(node.root) == set(), f"{name} left processes"
