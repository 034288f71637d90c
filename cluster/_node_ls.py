"""The workers of a running cluster, as a connected driver sees them: ``list_workers``
(the named worker actors), ``node_alive`` (Ray's node table), and ``worker_rows``, what
``dockyard node ls`` prints (``format_table``, buildx ls's layout, or JSON).

A worker is found by its name (``dockyard-worker-<node id prefix>``, namespace
``dockyard``); its row comes from its ``info()`` answer within a short timeout, else from
the node table, marked ``unreachable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from dockyard.scheduler._errors import DockyardError, ServiceError

from ._ray import NAMESPACE, WORKER_PREFIX, ActorRef, RayRuntime, RaySettings

__all__ = ["check_reachable", "connected", "format_table", "human_size", "list_workers",
           "node_alive", "own_node", "ping_worker", "worker_rows"]

_COLUMNS = ("NODE", "ADDRESS", "ARCH", "SLOTS", "RUNNING", "STORE", "STATUS")


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Refuse an ``address`` (HOST:PORT) where nothing accepts a connection: Ray would
    retry for minutes before giving up."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as exc:
        raise ServiceError(f"no Ray cluster answers at {address}: "
                           f"{getattr(exc, 'strerror', None) or exc}",
                           hint="check the address printed by 'dockyard node start --head' "
                                "and that the head runs") from None


@contextlib.contextmanager
def connected(address: str, node_ip: str | None,
              env: Mapping[str, str]) -> Iterator[RayRuntime]:
    """This process as a driver of the cluster at ``address`` (through the raylet at
    ``node_ip`` when given), with ``env`` (a root's Ray environment) for the while."""
    check_reachable(address)
    os.environ.update(env)
    Path(env["HOME"]).mkdir(parents=True, exist_ok=True)
    runtime = RayRuntime(RaySettings.for_machine(Path(env["DOCKYARD_ROOT"])))
    runtime.attach(address, node_ip)
    try:
        yield runtime
    finally:
        runtime.shutdown()


def list_workers() -> list[tuple[str, ActorRef]]:
    """The cluster's worker actors, (name, ref), sorted by name; a connected driver."""
    import ray

    names = sorted(entry["name"] for entry in ray.util.list_named_actors(all_namespaces=True)
                   if entry["namespace"] == NAMESPACE
                   and entry["name"].startswith(WORKER_PREFIX))
    found: list[tuple[str, ActorRef]] = []
    for name in names:
        with contextlib.suppress(ValueError):  # it died between the list and the lookup
            found.append((name, ActorRef(ray.get_actor(name, namespace=NAMESPACE), name)))
    return found


def _nodes() -> list[dict[str, Any]]:
    import ray

    nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    return nodes


def node_alive(node_id: str) -> bool:
    """Whether Ray's node table has ``node_id`` (hex, or the prefix a worker name holds)
    alive."""
    return any(node["NodeID"].startswith(node_id) and node["Alive"] for node in _nodes())


def own_node(temp_dir: Path, node_ip: str | None, timeout: float = 30.0) -> dict[str, Any]:
    """The node table entry of the node whose Ray directory is ``temp_dir``: alive, at
    ``node_ip`` when given, the newest session when several are."""
    deadline = time.monotonic() + timeout
    prefix = f"{temp_dir}/"
    while True:
        mine = [node for node in _nodes() if node["Alive"]
                and node["RayletSocketName"].startswith(prefix)
                and (node_ip is None or node["NodeManagerAddress"] == node_ip)]
        if mine:
            return max(mine, key=lambda node: str(node["RayletSocketName"]))
        if time.monotonic() > deadline:
            raise ServiceError(f"the node started under {temp_dir} is not in the cluster's "
                               f"node table after {timeout:.0f}s")
        time.sleep(0.2)


def ping_worker(ref: ActorRef, timeout: float = 120.0) -> dict[str, Any]:
    """The worker's ``info()``, waiting up to ``timeout`` (a new actor starts in ~1 s)."""
    async def ask() -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            info: dict[str, Any] = await ref.call("info")
            return info

    try:
        return asyncio.run(ask())
    except TimeoutError:
        raise ServiceError(f"the worker {ref.name} did not answer in {timeout:.0f}s",
                           hint="see the node's Ray logs (session_dir in node.json)") from None


async def _row(name: str, ref: ActorRef, timeout: float) -> dict[str, Any]:
    row: dict[str, Any] = {"name": name, "node_id": name.removeprefix(WORKER_PREFIX)}
    try:
        async with asyncio.timeout(timeout):
            info = await ref.call("info")
    except (TimeoutError, DockyardError):
        return row | {"status": "unreachable"}
    return row | {"status": "ready", "address": info["node_ip"], "arches": info["arches"],
                  "native": info["native"], "slots": info["slots"],
                  "running": info["running"], "store_bytes": info["store_bytes"],
                  "root": info["root"], "pid": info["pid"]}


def worker_rows(timeout: float = 5.0) -> list[dict[str, Any]]:
    """One row per worker: its ``info()`` and ``status`` ``ready``, or ``unreachable``
    (with its node's address from the node table); a connected driver."""
    workers = list_workers()

    async def gather() -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(_row(n, r, timeout) for n, r in workers)))

    rows = asyncio.run(gather())
    addresses = {node["NodeID"][:12]: node["NodeManagerAddress"] for node in _nodes()}
    for row in rows:
        row.setdefault("address", addresses.get(row["node_id"], ""))
    return rows


def human_size(size: int) -> str:
    """``size`` bytes as buildx prints sizes (``1.5MB``)."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.3g}{unit}"
        value /= 1000
    raise AssertionError("unreachable")


def _arch_cell(row: Mapping[str, Any]) -> str:
    native = set(row.get("native", ()))
    return ", ".join(a if a in native else f"{a} (emulated)" for a in row.get("arches", ()))


def _cells(row: Mapping[str, Any]) -> tuple[str, ...]:
    if row["status"] != "ready":
        return (row["name"], row["address"], "", "", "", "", row["status"])
    return (row["name"], row["address"], _arch_cell(row), str(row["slots"]),
            str(row["running"]), human_size(row["store_bytes"]), row["status"])


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as ``buildx ls`` lays out its builders: aligned columns, a header line."""
    table = [_COLUMNS, *(_cells(row) for row in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(_COLUMNS))]
    lines = ("   ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True))
             for line in table)
    return "".join(line.rstrip() + "\n" for line in lines)
