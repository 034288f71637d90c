"""The cluster cases' rows in the suite's table (see benchmarks/_cluster.py for the cases).

Every cluster case runs on one cluster, grown as they go: 1 node for ``overhead`` and
``context``, then ``scale`` adds nodes (1, 2, 4), ``concurrent`` uses the 4, ``transfer``
adds an arm64 node.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence

from benchmarks._cluster import (
    NONCES,
    ClusterBench,
    ConcurrentResult,
    ContextResult,
    OverheadResult,
    TransferResult,
    cluster_bench,
    concurrent_case,
    context_case,
    grow,
    overhead_case,
    scale_case,
    transfer_case,
)
from benchmarks._stats import Row, Series, ratio

__all__ = ["CLUSTER_CASES", "cluster_rows", "concurrent_rows", "context_rows",
           "overhead_rows", "scale_rows", "transfer_rows"]

CLUSTER_CASES = ("overhead", "context", "scale", "concurrent", "transfer")
ENDPOINT = "CLI `dockyard build --endpoint`, cluster on loopback"
MIB = 1024 * 1024
SCALE_NODES = (1, 2, 4)


def _log(text: str) -> None:
    print(f"bench: {text}", flush=True)


def scale_rows(times: dict[int, Series]) -> list[Row]:
    """Speed-up over 1 node, against 0.8 x the node count (a ratio of at least 1.0)."""
    one = times[1]
    rows = [Row("8 x 2 s stages, 2 slots per worker, 1 node (the reference)",
                one.describe(), one.describe(), 1.0, None, True, ENDPOINT)]
    for nodes, series in times.items():
        if nodes == 1:
            continue
        speedup = ratio(one.median, series.median)
        rows.append(Row(f"8 x 2 s stages on {nodes} nodes: speed-up {speedup:.2f} vs 1 "
                        f"node, over the target {0.8 * nodes:.1f} (0.8 x {nodes})",
                        series.describe(), one.describe(), speedup / (0.8 * nodes), 1.0,
                        False, ENDPOINT))
    return rows


def concurrent_rows(result: ConcurrentResult) -> list[Row]:
    return [
        Row("10 identical builds at once (one 2 s RUN, shared) vs one build",
            result.many.describe(), result.one.describe(),
            ratio(result.many.median, result.one.median), 1.5, True, ENDPOINT + ", 4 nodes"),
        Row("the same 10 at once, fully cached, vs one fully cached build (info: what each "
            "build pays besides the RUN)", result.many_cached.describe(),
            result.one_cached.describe(),
            ratio(result.many_cached.median, result.one_cached.median), None, True,
            ENDPOINT + ", 4 nodes"),
    ]


def overhead_rows(result: OverheadResult) -> list[Row]:
    per = result.cached.median / result.vertices * 1000
    local_per = result.local_cached.median / result.vertices * 1000
    return [
        Row(f"fully cached {result.vertices}-vertex build: ms per vertex (the whole "
            "client call / vertices)", f"{per:.3f} ms; {result.cached.describe()}",
            "1 ms per vertex", per, 1.0, True, ENDPOINT + ", 1 node"),
        Row(f"dispatch overhead per executed vertex (`--no-cache`, {result.vertices} "
            "vertices): (cluster - in-process) / vertices, in ms",
            f"{result.dispatch_ms:.2f} ms; cluster {result.cold.describe()}",
            f"in-process `build_local` {result.local.describe()}", result.dispatch_ms, 10.0,
            True, ENDPOINT + ", 1 node"),
        Row("the same fully cached build in-process (`build_local`, no Ray, no client): "
            "ms per vertex, info", f"{local_per:.3f} ms; {result.local_cached.describe()}",
            "-", local_per, None, True, "in-process `dockyard.cluster._local_build.build_local`"),
    ]


def context_rows(result: ContextResult) -> list[Row]:
    sent = statistics.median(result.sent)
    allowed = result.changed + result.manifest
    served = statistics.median(result.served)
    return [
        Row(f"one-line change in a {result.files:,}-file context: bytes the client sent "
            f"(content served {served:.0f} B) vs the changed file ({result.changed} B) + "
            f"the manifest ({result.manifest:,} B)", f"{sent:,.0f} B (n={len(result.sent)})",
            f"{allowed:,} B", ratio(sent, allowed), 2.0, True, ENDPOINT + ", 1 node"),
        Row(f"one-line change in a {result.files:,}-file context: time through the "
            "endpoint vs the embedded service", result.endpoint.describe(),
            result.embedded.describe(), ratio(result.endpoint.median,
                                              result.embedded.median), 1.2, True,
            ENDPOINT + " vs CLI `dockyard build` (embedded)"),
    ]


def transfer_rows(result: TransferResult) -> list[Row]:
    size = result.size / MIB
    return [
        Row(f"a {size:.0f} MiB layer made on an amd64 node, used on the arm64 node: the "
            "worker's peer fetch vs the blob over a loopback socket into an fsynced file",
            result.fetch.describe(), result.socket.describe(),
            ratio(result.fetch.median, result.socket.median), 1.5, True,
            "worker log line of workers/_runtime.py (PeerBlobs.fetch_into)"),
        Row("of the peer fetch: the chunks received through Ray (info)",
            result.received.describe(), result.socket.describe(),
            ratio(result.received.median, result.socket.median), None, True,
            "workers/_peers.py log line"),
        Row("of the peer fetch: the staged blob read back and hashed (info)",
            result.checked.describe(), "-", float("nan"), None, True,
            "workers/_peers.py log line"),
        Row("the whole build (200 MiB of urandom on amd64, COPY --from, a RUN on arm64), "
            "info", result.build.describe(), "-", float("nan"), None, True, ENDPOINT),
    ]


def _run(bench: ClusterBench, cases: Sequence[str], args: argparse.Namespace
         ) -> list[Row]:
    rows: list[Row] = []
    reps = args.cluster_reps
    if "overhead" in cases:
        rows += overhead_rows(overhead_case(bench, 0, reps))  # its first builds warm up
    if "context" in cases:
        rows += context_rows(context_case(bench, 0, reps))
    if "scale" in cases:
        times: dict[int, Series] = {}
        for nodes in SCALE_NODES:
            grow(bench, nodes)
            times[nodes] = scale_case(bench, nodes, args.warmups, reps, NONCES)
        rows += scale_rows(times)
    if "concurrent" in cases:
        grow(bench, max(SCALE_NODES))
        rows += concurrent_rows(concurrent_case(bench, args.warmups, reps, NONCES))
    if "transfer" in cases:
        rows += transfer_rows(transfer_case(bench, args.warmups, reps, NONCES))
    return rows


def cluster_rows(cases: Sequence[str], args: argparse.Namespace) -> list[Row]:
    chosen = [case for case in CLUSTER_CASES if case in cases]
    if not chosen:
        return []
    _log(f"cluster: {', '.join(chosen)} on a local multi-node cluster")
    with cluster_bench() as bench:
        return _run(bench, chosen, args)
