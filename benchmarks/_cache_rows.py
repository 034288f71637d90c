"""The S3 cache cases' rows in the suite's table (see benchmarks/_cache.py for the cases)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from benchmarks._cache import (
    LAYERS,
    ExportResult,
    RequestsResult,
    RestoreResult,
    buildkit_inline_restore,
    export_overhead,
    requests_case,
    restore_case,
)
from benchmarks._env import BenchEnvironment, _dockerd
from benchmarks._stats import Row, Series, ratio
from benchmarks._tools import BenchmarkError

__all__ = ["CACHE_CASES", "cache_rows", "export_row", "requests_row", "restore_rows"]

CACHE_CASES = ("restore", "requests", "s3-export")
RESTORE_PATH = "CLI `dockyard build --cache-from type=s3 -o type=oci`, new root"
BUILD_PATH = "CLI `dockyard build`, warm local service"


def _log(text: str) -> None:
    print(f"bench: {text}", flush=True)


def restore_rows(result: RestoreResult, mib: int, buildkit: Series | str) -> list[Row]:
    """Ours against boto3 (the target), and BuildKit's inline registry cache beside it."""
    size = f"{result.size / 1024 / 1024:.0f} MiB in {result.blobs} blobs"
    rows = [Row(f"S3 restore of a {LAYERS} x {mib} MiB image ({size}) vs boto3 "
                "`download_file` of the same blobs", result.ours.describe(),
                result.boto3.describe(), ratio(result.ours.median, result.boto3.median),
                1.3, True, RESTORE_PATH)]
    rows.append(Row("the same build again on that root, every blob local (client, FROM "
                    "lookup, one record GET, OCI tarball: the restore's floor) vs boto3",
                    result.local.describe(), result.boto3.describe(),
                    ratio(result.local.median, result.boto3.median), None, True,
                    RESTORE_PATH))
    if isinstance(buildkit, Series):
        rows.append(Row("same restore, dockyard S3 vs BuildKit inline registry cache "
                        "(`--cache-from IMAGE`, fresh dockerd; not type=local)",
                        result.ours.describe(), buildkit.describe(),
                        ratio(result.ours.median, buildkit.median), None, True,
                        RESTORE_PATH))
    else:
        rows.append(Row(f"BuildKit inline registry cache restore: {buildkit}", "-", "-",
                        float("nan"), None, True, "(not measured)"))
    return rows


def requests_row(result: RequestsResult) -> Row:
    """Requests per vertex of a no-change rebuild (the worst repetition)."""
    worst = max(result.requests)
    kinds = ", ".join(f"{count} {kind}" for kind, count in result.kinds.items()) or "none"
    return Row("no-change rebuild, warm S3 cache, empty store: S3 requests per vertex",
               f"{worst} requests ({kinds}; n={len(result.requests)})",
               f"{result.vertices} vertices", ratio(worst, result.vertices), 1.0, True,
               BUILD_PATH + ", no output")


def export_row(result: ExportResult) -> Row:
    """A cold build with ``--cache-to type=s3,mode=max`` against the same build without."""
    share = result.overhead
    return Row(f"cold 4-RUN build with `--cache-to type=s3,mode=max` vs without "
               f"({(share - 1) * 100:+.0f}%, median of paired ratios)",
               result.exported.describe(), result.plain.describe(), share, 1.1, True,
               BUILD_PATH)


def _buildkit_restore(env: BenchEnvironment, args: argparse.Namespace) -> Series | str:
    domain = env.base.split("/", 1)[0]
    try:
        return buildkit_inline_restore(_dockerd, domain, env.work, env.base,
                                       args.restore_mib, args.warmups, args.reps)
    except BenchmarkError as err:
        _log(f"BuildKit inline-cache restore did not run: {err}")
        return f"did not run ({str(err).splitlines()[0]})"


def cache_rows(env: BenchEnvironment, cases: Sequence[str], args: argparse.Namespace
               ) -> list[Row]:
    rows: list[Row] = []
    if "restore" in cases:
        _log(f"restore: {LAYERS} x {args.restore_mib} MiB from S3 (moto), against boto3")
        result = restore_case(env.work, env.base, args.restore_mib, args.warmups, args.reps)
        _log("restore: BuildKit's inline registry cache on fresh dockerd roots")
        rows += restore_rows(result, args.restore_mib, _buildkit_restore(env, args))
    if "requests" in cases:
        _log("requests: no-change rebuild on an empty root, counting S3 requests")
        rows.append(requests_row(requests_case(env.work, env.base, min(args.reps, 3))))
    if "s3-export" in cases:
        _log("s3-export: cold builds without and with --cache-to type=s3,mode=max")
        rows.append(export_row(export_overhead(env.work, env.base, args.warmups, args.reps)))
    return rows
