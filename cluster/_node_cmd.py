"""``dockyard node start|stop|ls`` and ``dockyard ls``: the commands over cluster/_node.py
and cluster/_node_ls.py (arguments declared in cluster/_cli.py)."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
from collections.abc import Mapping

from dockyard.scheduler._errors import UsageError

from ._node import NodePaths, NodeRecord, NodeSettings, read_record, start_node, stop_node
from ._ray import ray_environment
from ._service import default_root

__all__ = ["cluster_address", "run_ls", "run_node_start", "run_node_stop"]


def run_node_start(args: argparse.Namespace) -> int:
    from dockyard.workers._gc_policy import settings_from_flags

    gc = settings_from_flags(args.gc_config, args.gc_policy, args.gc_interval,
                             enabled=not args.no_gc)
    settings = NodeSettings.from_args(
        head=args.head, address=args.address, arch=args.arch, emulate=args.emulate,
        slots=args.slots, node_ip=args.node_ip, port=args.port,
        object_store=args.object_store_memory, token_file=args.token_file, gc=gc.to_wire())
    root = default_root()
    started = start_node(settings, root)
    record, info = started.record, started.info
    kinds = [a if a == settings.arch else f"{a} (emulated)" for a in record.arches]
    role = "head" if record.head else "node"
    print(f"started {role} {record.node_id[:12]} on {record.node_ip} under {root}")
    print(f"worker {record.worker} (pid {info['pid']}): {', '.join(kinds)}, "
          f"{record.slots} slot{'s' if record.slots != 1 else ''}")
    print(f"cluster address: {record.address}")
    print(f"cluster token: {started.token} (keep it secret)")
    print(f"join with: dockyard node start --address {record.address} "
          f"--token-file {started.token}")
    return 0


def run_node_stop(args: argparse.Namespace) -> int:
    root = default_root()
    record = stop_node(root)
    if record is None:
        print(f"no dockyard node runs under {root}")
        return 0
    print(f"stopped {record.worker} ({record.node_ip}) under {root}")
    return 0


def cluster_address(option: str | None, record: NodeRecord | None,
                    environ: Mapping[str, str]) -> tuple[str, str | None]:
    """The cluster to list (``--address``, ``DOCKYARD_RAY_ADDRESS``, the root's node) and
    the node address to connect through: the root's node's, else the head's when it is a
    loopback address (a cluster on this machine), else Ray's choice."""
    address = option or environ.get("DOCKYARD_RAY_ADDRESS") or (record and record.address)
    if not address:
        raise UsageError("no cluster to list: no node runs under this root",
                         hint="give --address HOST:PORT, set DOCKYARD_RAY_ADDRESS, or "
                              "start a node with 'dockyard node start'")
    if record is not None:
        return address, record.node_ip
    host = address.rpartition(":")[0].strip("[]")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    return address, host if loopback else None


def run_ls(args: argparse.Namespace) -> int:
    from ._node_ls import connected, format_table, worker_rows

    root = default_root()
    address, node_ip = cluster_address(args.address, read_record(NodePaths(root)), os.environ)
    env = ray_environment(root, os.environ)
    with connected(address, node_ip, env):
        rows = worker_rows(timeout=args.timeout)
    if args.format == "json":
        json.dump(rows, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_table(rows))
    sys.stdout.flush()
    return 0

