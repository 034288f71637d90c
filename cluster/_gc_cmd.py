"""``dockyard du`` and ``dockyard prune``: what the local store holds, and freeing it.

The local store of a root (``DOCKYARD_ROOT``, docs/engine.md) holds four kinds of data:
layer blobs and cache records (``<root>/cache``, the ``LocalBackend``), unpacked layers
(``<root>/snapshots/layers/<diffid-hex>``) and ``RUN --mount=type=cache`` directories
(``<root>/cachemounts``); ``run scratch`` (bundles, overlay work and staging dirs, temp
files of runs: a live worker's, or a dead one's until ``dockyard stop`` or the next worker
removes it) is a row of its own when there is any.  ``du`` sizes each kind
(``--verbose``: each record too), in ``docker buildx du``'s units (decimal, four
significant digits: ``1.235MB``).

``prune`` follows ``docker buildx prune``: ``--keep-storage SIZE`` (binary units, as
buildx: ``20GB`` is 20 GiB) keeps the most recently used entries up to SIZE,
``--filter until=DURATION`` removes only what was unused for DURATION, ``--all`` takes the
cache mounts too, ``-f`` skips the question.  Order: records, then the blobs no remaining
record names (the backend's prune, under its exclusive lock), then unpacked layers no
remaining record names, then (``--all``) cache mounts.  It prints what it freed
(``Total:  1.2GB``).

Safety while a build runs: ``prune`` holds the root's service start lock for its whole
run, so no service starts meanwhile; when a service already runs, it keeps everything used
in the last ``RUNNING_GRACE`` seconds (a build in progress touches what it reads and
writes), leaves unpacked layers alone (a running build may have them mounted) and refuses
``--all`` (cache mounts may be in use).  ``prune --cache type=s3,...`` prunes a bucket
through ``S3Backend.prune``, which has its own grace period for blobs.

``du`` ends with the garbage-collection policy in force (workers/_gc_policy.py): the one
the root's worker runs (it writes it under ``run/``), each bound also in bytes.

The automatic limit: ``DOCKYARD_CACHE_MAX`` (a size, ``20GB``; unset, empty or ``off``:
none beyond the worker's garbage-collection policies, docs/cluster.md) bounds the store.
It is one more policy of each worker's background garbage collector (workers/_gc.py),
which runs after each build; ``enforce_cache_limit`` (workers/_cache_limit.py,
re-exported here) applies it to a backend at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

from dockyard.cache_backends._protocol import PruneReport
from dockyard.cache_backends._rules import decode_record
from dockyard.scheduler._errors import CacheError, ServiceError, UsageError
from dockyard.workers._cache_limit import (
    CACHE_MAX_ENV,
    RUNNING_GRACE,
    cache_limit,
    enforce_cache_limit,
    parse_size,
)

__all__ = [
    "CACHE_MAX_ENV",
    "RUNNING_GRACE",
    "DiskUsage",
    "KindUsage",
    "PruneResult",
    "cache_limit",
    "enforce_cache_limit",
    "human_size",
    "local_usage",
    "parse_duration",
    "parse_size",
    "prune_local",
    "run_du",
    "run_prune",
]

_HEX: Final = re.compile(r"[0-9a-f]{64}")
_DECIMAL: Final = ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")
_DURATION_PART: Final = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_SECONDS: Final = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
                   "h": 3600.0}


# --- units -----------------------------------------------------------------------------


def human_size(size: float) -> str:
    """Decimal units with four significant digits, as docker's ``units.HumanSize``."""
    unit = 0
    while size >= 1000 and unit < len(_DECIMAL) - 1:
        size, unit = size / 1000, unit + 1
    return f"{size:.4g}{_DECIMAL[unit]}"


def parse_duration(text: str, flag: str = "--filter until") -> float:
    """Seconds of a Go duration (``24h``, ``1h30m``, ``90s``, ``1.5h``)."""
    parts = _DURATION_PART.findall(text)
    if not text or "".join(number + unit for number, unit in parts) != text:
        raise UsageError(f"invalid {flag} {text!r}: expected a duration such as 24h, 90m "
                         "or 1h30m")
    return sum(float(number) * _SECONDS[unit] for number, unit in parts)


def ago(seconds: float) -> str:
    """``just now``, ``5 minutes ago``, ``3 hours ago``, ``2 days ago`` (buildx's column)."""
    for unit, length in (("day", 86400), ("hour", 3600), ("minute", 60)):
        count = int(seconds // length)
        if count >= 1:
            return f"{count} {unit}{'s' if count > 1 else ''} ago"
    return "just now"


# --- what the store holds --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KindUsage:
    """One kind of data: its entries, their bytes, and whether ``prune`` frees them."""

    kind: str
    count: int
    size: int
    reclaimable: bool


@dataclass(frozen=True, slots=True)
class RecordInfo:
    """One cache record for ``du --verbose``."""

    key: str
    layers: int
    size: int
    last_used: float


@dataclass(frozen=True, slots=True)
class DiskUsage:
    kinds: tuple[KindUsage, ...]
    records: tuple[RecordInfo, ...]

    @property
    def total(self) -> int:
        return sum(kind.size for kind in self.kinds)

    @property
    def reclaimable(self) -> int:
        return sum(kind.size for kind in self.kinds if kind.reclaimable)


@contextlib.contextmanager
def _os_errors(action: str, path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as err:
        raise CacheError(f"cannot {action} {path}: {err.strerror or err}",
                         hint="check DOCKYARD_ROOT and its permissions") from None


def _entries(directory: Path) -> list[os.DirEntry[str]]:
    """The entries of ``directory`` (none when it does not exist)."""
    try:
        with os.scandir(directory) as found:
            return list(found)
    except FileNotFoundError:
        return []
    except OSError as err:
        raise CacheError(f"cannot list {directory}: {err.strerror or err}",
                         hint="check DOCKYARD_ROOT and its permissions") from None


def tree_size(path: Path) -> int:
    """Bytes of the files under ``path`` (hard links once, symlinks not followed)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    stack = [path]
    while stack:
        for entry in _entries(stack.pop()):
            stat = entry.stat(follow_symlinks=False)
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
            elif (stat.st_dev, stat.st_ino) not in seen:
                seen.add((stat.st_dev, stat.st_ino))
                total += stat.st_size
    return total


def _files(directory: Path) -> list[tuple[str, int]]:
    """(name, size) of the digest-named files in ``directory``."""
    return [(entry.name, entry.stat().st_size) for entry in _entries(directory)
            if _HEX.fullmatch(entry.name) and entry.is_file(follow_symlinks=False)]


def read_records(root: Path) -> list[tuple[RecordInfo, frozenset[str]]]:
    """Each decodable record of the root, with the diff_ids of its layers."""
    found: list[tuple[RecordInfo, frozenset[str]]] = []
    directory = root / "cache" / "records"
    for entry in _entries(directory):
        if not _HEX.fullmatch(entry.name):
            continue
        try:
            data, stat = Path(entry.path).read_bytes(), entry.stat()
        except FileNotFoundError:
            continue
        except OSError as err:
            raise CacheError(f"cannot read the record {entry.path}: {err.strerror or err}",
                             hint="check DOCKYARD_ROOT and its permissions") from None
        record = decode_record(data)
        if record is None:
            continue
        layers = record.result.layers
        info = RecordInfo(record.key, len(layers), sum(layer.size for layer in layers),
                          stat.st_mtime)
        found.append((info, frozenset(layer.diff_id for layer in layers)))
    return found


def _dirs(directory: Path) -> list[Path]:
    return [Path(entry.path) for entry in _entries(directory)
            if entry.is_dir(follow_symlinks=False)]


def local_usage(root: Path) -> DiskUsage:
    """The usage of ``root``'s store by kind, and its records."""
    blobs = _files(root / "cache" / "blobs" / "sha256")
    records = _files(root / "cache" / "records")
    layers = [tree_size(path) for path in _dirs(root / "snapshots" / "layers")
              if _HEX.fullmatch(path.name)]
    mounts = [tree_size(path) for path in _dirs(root / "cachemounts")]
    kinds = (KindUsage("layer blobs", len(blobs), sum(size for _, size in blobs), True),
             KindUsage("cache records", len(records), sum(size for _, size in records), True),
             KindUsage("unpacked layers", len(layers), sum(layers), True),
             KindUsage("cache mounts", len(mounts), sum(mounts), False),
             *_scratch_usage(root))
    infos = sorted((info for info, _ in read_records(root)), key=lambda info: -info.last_used)
    return DiskUsage(kinds, tuple(infos))


def _scratch_usage(root: Path) -> tuple[KindUsage, ...]:
    """The runs' scratch (bundles, overlay work dirs, staging dirs, temp files), as a kind
    of its own when there is any: a live worker's runs, or what a dead one left (which
    ``dockyard stop`` and the next worker remove; prune does not)."""
    from dockyard.workers._janitor import entry_size, leftover_entries

    sizes = [entry_size(path) for path in leftover_entries(root)]
    return (KindUsage("run scratch", len(sizes), sum(sizes), False),) if sizes else ()


def format_usage(usage: DiskUsage, *, verbose: bool, now: float) -> str:
    """``du``'s table: one row per kind, then (verbose) one per record in buildx's columns
    (ID, RECLAIMABLE, SIZE, LAST ACCESSED; a record's size is that of the layers it names,
    which records may share), then buildx's ``Reclaimable:`` and ``Total:`` lines."""
    rows = [("KIND", "COUNT", "RECLAIMABLE", "SIZE")]
    rows += [(kind.kind, str(kind.count), str(kind.reclaimable).lower(), human_size(kind.size))
             for kind in usage.kinds]
    lines = _columns(rows)
    if verbose and usage.records:
        records = [("ID", "LAYERS", "RECLAIMABLE", "SIZE", "LAST ACCESSED")]
        records += [(info.key, str(info.layers), "true", human_size(info.size),
                     ago(now - info.last_used)) for info in usage.records]
        lines += ["", *_columns(records)]
    lines += ["", f"Reclaimable:\t{human_size(usage.reclaimable)}",
              f"Total:\t\t{human_size(usage.total)}"]
    return "\n".join(lines) + "\n"


def _columns(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["   ".join(cell.ljust(width) for cell, width in zip(row, widths,
                                                               strict=True)).rstrip()
            for row in rows]


# --- prune ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PruneResult:
    """What a prune freed, by kind, and what it left alone and why."""

    cache: PruneReport
    layers_removed: int = 0
    layer_bytes: int = 0
    mounts_removed: int = 0
    mount_bytes: int = 0
    notes: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        return self.cache.bytes_freed + self.layer_bytes + self.mount_bytes


@contextlib.contextmanager
def _start_lock(root: Path, timeout: float = 30.0) -> Iterator[None]:
    """Hold the root's service start lock, so no service starts while prune runs."""
    from dockyard.cluster._service import RunPaths

    paths = RunPaths(root)
    with _os_errors("create", paths.run):
        paths.run.mkdir(parents=True, exist_ok=True)
    with _os_errors("open", paths.start_lock):
        fd = os.open(paths.start_lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ServiceError(f"a dockyard service for {root} has been starting "
                                       f"for {timeout:.0f}s; prune did not run",
                                       hint="retry when it is up") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


def _service_running(root: Path) -> bool:
    from dockyard.cluster._service import RunPaths, daemon_running

    return daemon_running(RunPaths(root))


def _remove_tree(path: Path, trash: Path) -> int:
    """Remove the directory ``path`` (renamed away first, so nobody sees it half gone);
    the bytes it held."""
    size = tree_size(path)
    gone = trash / f"gc-{uuid.uuid4().hex}"
    with _os_errors("remove", path):
        trash.mkdir(parents=True, exist_ok=True)
        os.rename(path, gone)
        shutil.rmtree(gone)
    return size


def _old_enough(path: Path, older_than: float | None, now: float) -> bool:
    if older_than is None:
        return True
    with _os_errors("stat", path):
        return path.stat().st_mtime <= now - older_than


def _prune_layers(root: Path, older_than: float | None, now: float) -> tuple[int, int]:
    """Remove the unpacked layers no remaining record names: (count, bytes)."""
    named = set().union(*(ids for _, ids in read_records(root)))
    count = size = 0
    for path in _dirs(root / "snapshots" / "layers"):
        if not _HEX.fullmatch(path.name) or f"sha256:{path.name}" in named:
            continue
        if _old_enough(path, older_than, now):
            size += _remove_tree(path, root / "tmp")
            count += 1
    return count, size


def _prune_mounts(root: Path, older_than: float | None, now: float) -> tuple[int, int]:
    count = size = 0
    for path in _dirs(root / "cachemounts"):
        if _old_enough(path, older_than, now):
            size += _remove_tree(path, root / "tmp")
            count += 1
    return count, size


def prune_local(root: Path, *, keep_bytes: int | None = None,
                older_than: float | None = None, everything: bool = False,
                now: Callable[[], float] = time.time) -> PruneResult:
    """Prune ``root``'s store (see the module docstring)."""
    from dockyard.cache_backends._local import LocalBackend

    with _start_lock(root):
        running = _service_running(root)
        if running and everything:
            raise ServiceError(f"prune --all would remove cache mounts while the dockyard "
                               f"service for {root} is running (a build may be using them)",
                               hint="run `dockyard stop` first, or prune without --all")
        notes: tuple[str, ...] = ()
        if running:
            older_than = max(older_than or 0.0, RUNNING_GRACE)
            notes = (f"the dockyard service for {root} is running: kept what was used in "
                     "the last hour and every unpacked layer (run `dockyard stop` first to "
                     "prune them)",)
        report = asyncio.run(LocalBackend(root).prune(keep_bytes=keep_bytes,
                                                      older_than=older_than))
        layers = (0, 0) if running else _prune_layers(root, older_than, now())
        mounts = _prune_mounts(root, older_than, now()) if everything else (0, 0)
    return PruneResult(report, *layers, *mounts, notes=notes)


def format_prune(result: PruneResult) -> str:
    """What ``prune`` freed, by kind, then buildx's ``Total:`` line."""
    cache = result.cache
    rows = [("KIND", "REMOVED", "RECLAIMED"),
            ("cache", f"{cache.records_removed} records, {cache.blobs_removed} blobs",
             human_size(cache.bytes_freed)),
            ("unpacked layers", str(result.layers_removed), human_size(result.layer_bytes)),
            ("cache mounts", str(result.mounts_removed), human_size(result.mount_bytes))]
    return "\n".join([*_columns(rows), f"Total:\t{human_size(result.total)}"]) + "\n"


# --- the automatic limit ---------------------------------------------------------------

# --- the commands --------------------------------------------------------------------------


def _root() -> Path:
    from dockyard.cluster._service import default_root

    return default_root()


def run_du(args: argparse.Namespace) -> int:
    root = _root()
    usage = local_usage(root)
    sys.stdout.write(format_usage(usage, verbose=args.verbose, now=time.time()))
    sys.stdout.write(format_policy(root))
    return 0


def format_policy(root: Path) -> str:
    """The garbage-collection policy in force for ``root``: what its worker wrote when it
    started (workers/_gc.py), each bound also in bytes of this disk; else what a worker
    started now from this environment would use."""
    from dockyard.workers._gc import read_policy_file
    from dockyard.workers._gc_policy import settings_from_environ, with_cache_max

    settings = read_policy_file(root)
    if settings is None:
        settings = with_cache_max(settings_from_environ())
        lines = ["", "GC policy (no worker has run under this root yet; from the "
                 "environment):"]
    else:
        lines = ["", "GC policy in force (written by this root's worker):"]
    lines.append(settings.describe()[0])
    for index, policy in enumerate(settings.policies, 1):
        bound = policy.bound(root)
        size = f"  (keep {human_size(bound)})" if bound is not None else ""
        lines.append(f"  {index}: {policy.describe()}{size}")
    return "\n".join(lines) + "\n"


_WARNING: Final = "WARNING! This will remove all build cache. Are you sure you want to continue?"
_WARNING_ALL: Final = ("WARNING! This will remove all build cache, cache mounts included. Are "
                       "you sure you want to continue?")


def confirmed(everything: bool, stdin: IO[str], stdout: IO[str]) -> bool:
    """buildx's question; only ``y``/``yes`` goes on."""
    stdout.write(f"{_WARNING_ALL if everything else _WARNING} [y/N] ")
    stdout.flush()
    return stdin.readline().strip().lower() in ("y", "yes")


def parse_filters(values: Iterable[str]) -> float | None:
    """``--filter until=DURATION`` (the only filter of the local store): seconds."""
    until: float | None = None
    for value in values:
        key, equals, text = value.partition("=")
        if key != "until" or not equals:
            raise UsageError(f"invalid --filter {value!r}: only until=DURATION is supported",
                             hint="e.g. --filter until=24h")
        until = parse_duration(text)
    return until


def run_prune(args: argparse.Namespace) -> int:
    keep = parse_size(args.keep_storage) if args.keep_storage is not None else None
    older = parse_filters(args.filter)
    if args.older_than is not None:
        older = parse_duration(args.older_than, "--older-than")
    if args.cache is not None:
        return _prune_remote(args, keep, older)
    if not args.force and not confirmed(args.all, sys.stdin, sys.stdout):
        return 0
    result = prune_local(_root(), keep_bytes=keep, older_than=older, everything=args.all)
    for note in result.notes:
        print(f"WARN: {note}", file=sys.stderr)
    sys.stdout.write(format_prune(result))
    return 0


_S3_KEYS: Final = ("bucket", "region", "prefix", "endpoint_url", "use_path_style")


def parse_s3_cache(value: str) -> dict[str, str]:
    """``--cache type=s3,bucket=B,region=R,prefix=P,endpoint_url=URL,use_path_style=true``
    (buildx's ``--cache-to`` spelling; credentials come from boto3's chain, never a flag)."""
    attrs: dict[str, str] = {}
    for item in value.split(","):
        key, equals, text = item.partition("=")
        if not equals:
            raise UsageError(f"invalid --cache {value!r}: {item!r} is not key=value")
        attrs[key.strip()] = text.strip()
    if attrs.pop("type", "") != "s3":
        raise UsageError(f"invalid --cache {value!r}: prune takes type=s3 only",
                         hint="the local store is pruned without --cache")
    unknown = sorted(set(attrs) - set(_S3_KEYS))
    if unknown:
        raise UsageError(f"invalid --cache {value!r}: unsupported attribute {unknown[0]!r}",
                         hint="credentials come from the environment, a profile or a role")
    if not attrs.get("bucket"):
        raise UsageError(f"invalid --cache {value!r}: bucket is required for the s3 cache")
    if attrs.get("use_path_style", "false").lower() not in ("true", "false"):
        raise UsageError(f"invalid --cache {value!r}: use_path_style must be true or false")
    return attrs


def _prune_remote(args: argparse.Namespace, keep: int | None, older: float | None) -> int:
    if args.all:
        raise UsageError("--all applies to the local store only, not to --cache")
    attrs = parse_s3_cache(args.cache)
    if not args.force and not confirmed(False, sys.stdin, sys.stdout):
        return 0
    from dockyard.cache_backends._s3 import S3Backend  # boto3: only when asked

    backend = S3Backend(attrs["bucket"], attrs.get("prefix", ""),
                        region=attrs.get("region") or None,
                        endpoint_url=attrs.get("endpoint_url") or None,
                        use_path_style=attrs.get("use_path_style", "").lower() == "true")
    report = asyncio.run(backend.prune(keep_bytes=keep, older_than=older))
    sys.stdout.write(format_remote(report, backend.where))
    return 0


def format_remote(report: PruneReport, where: str) -> str:
    return (f"Pruned {where}: {report.records_removed} records, {report.blobs_removed} "
            f"blobs\nTotal:\t{human_size(report.bytes_freed)}\n")
