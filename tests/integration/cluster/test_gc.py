"""``dockyard du`` and ``dockyard prune`` on a real local store (files, flocks) and, for
``prune --cache type=s3,...``, against a real moto S3 server on loopback.

Each test builds a root in a tmp dir: blobs and records through ``LocalBackend``, unpacked
layer directories under ``snapshots/layers`` and cache mounts under ``cachemounts``, with
mtimes set so the least recently used order is known.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.moto import ENVIRONMENT, UNSET, S3Endpoint, moto_server

from dockyard.cache_backends._local import LocalBackend
from dockyard.cache_backends._records import CacheRecord, LayerDescriptor, StateResult
from dockyard.cluster._cli import main
from dockyard.cluster._gc_cmd import enforce_cache_limit, human_size, local_usage, prune_local

HOUR = 3600.0


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Entry:
    """One record naming one layer: its blob's bytes, its unpacked dir, its age."""

    name: str
    blob: bytes
    age: float  # hours since last use

    @property
    def digest(self) -> str:
        return _digest(self.blob)

    @property
    def diff_id(self) -> str:
        return _digest(b"diff:" + self.blob)

    @property
    def key(self) -> str:
        return _digest(b"key:" + self.blob)


ENTRIES = (Entry("old", b"o" * 3000, 48), Entry("mid", b"m" * 2000, 5),
           Entry("new", b"n" * 1000, 0))


def _set_age(path: Path, hours: float) -> None:
    when = time.time() - hours * HOUR
    os.utime(path, (when, when))


def _populate(root: Path, entries: tuple[Entry, ...] = ENTRIES) -> None:
    async def store() -> None:
        backend = LocalBackend(root)
        for entry in entries:
            await backend.put_blob(entry.digest, entry.blob)
            layer = LayerDescriptor(entry.digest, len(entry.blob), entry.diff_id)
            await backend.put_record(CacheRecord(entry.key, StateResult((layer,)), 0))

    asyncio.run(store())
    for entry in entries:
        _set_age(root / "cache" / "blobs" / "sha256" / entry.digest[7:], entry.age)
        _set_age(root / "cache" / "records" / entry.key[7:], entry.age)
        layer = root / "snapshots" / "layers" / entry.diff_id[7:]
        (layer / "etc").mkdir(parents=True)
        (layer / "etc" / "file").write_bytes(entry.blob * 2)
        os.symlink("file", layer / "etc" / "link")
        _set_age(layer, entry.age)
    mount = root / "cachemounts" / "pip"
    mount.mkdir(parents=True)
    (mount / "wheel").write_bytes(b"w" * 500)


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "root"
    _populate(path)
    monkeypatch.setenv("DOCKYARD_ROOT", str(path))
    return path


def _left(root: Path) -> dict[str, list[str]]:
    """What remains, by kind, as entry names."""
    names = {entry.digest[7:]: entry.name for entry in ENTRIES}
    names |= {entry.key[7:]: entry.name for entry in ENTRIES}
    names |= {entry.diff_id[7:]: entry.name for entry in ENTRIES}
    dirs = {"blobs": root / "cache" / "blobs" / "sha256", "records": root / "cache" / "records",
            "layers": root / "snapshots" / "layers", "mounts": root / "cachemounts"}
    return {kind: sorted(names.get(p.name, p.name) for p in path.iterdir())
            for kind, path in dirs.items()}


ALL = ["mid", "new", "old"]

DU = """\
KIND              COUNT   RECLAIMABLE   SIZE
layer blobs       3       true          6kB
cache records     3       true          {records}
unpacked layers   3       true          12.01kB
cache mounts      1       false         500B

Reclaimable:\t{reclaimable}
Total:\t\t{total}
"""


def test_du_by_kind(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    usage = local_usage(root)
    records = usage.kinds[1].size
    assert main(["du"]) == 0
    total = 6000 + records + 12012 + 500  # the symlinks: 4 bytes each
    table = capsys.readouterr().out.split("\nGC policy")[0]  # the policy: test_gc_policy.py
    assert table == DU.format(
        records=human_size(records), reclaimable=f"{(total - 500) / 1000:.4g}kB",
        total=f"{total / 1000:.4g}kB")


def test_du_verbose_lists_records_newest_first(root: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["du", "--verbose"]) == 0
    out = capsys.readouterr().out
    rows = out.split("\nID ")[1].splitlines()[1:4]
    assert [row.split()[0] for row in rows] == [e.key for e in reversed(ENTRIES)]
    assert [" ".join(row.split()[1:]) for row in rows] == [
        "1 true 1kB just now", "1 true 2kB 5 hours ago", "1 true 3kB 2 days ago"]


def test_du_of_a_root_never_used(tmp_path: Path) -> None:
    usage = local_usage(tmp_path / "nothing")
    assert (usage.total, usage.records) == (0, ())
    assert not (tmp_path / "nothing").exists()


# (arguments, what is left afterwards)
PRUNES = [
    (["-f"], {"blobs": [], "records": [], "layers": [], "mounts": ["pip"]}),
    (["-f", "--all"], {"blobs": [], "records": [], "layers": [], "mounts": []}),
    (["-f", "--filter", "until=24h"],
     {"blobs": ["mid", "new"], "records": ["mid", "new"], "layers": ["mid", "new"],
      "mounts": ["pip"]}),
    (["-f", "--filter", "until=1h"],
     {"blobs": ["new"], "records": ["new"], "layers": ["new"], "mounts": ["pip"]}),
    (["-f", "--keep-storage", "3000b"],
     {"blobs": ["new"], "records": ["new"], "layers": ["new"], "mounts": ["pip"]}),
]


@pytest.mark.parametrize(("argv", "left"), PRUNES)
def test_prune_local(root: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                     left: dict[str, list[str]]) -> None:
    before = local_usage(root).total
    assert main(["prune", *argv]) == 0
    out = capsys.readouterr().out
    after = local_usage(root).total
    assert _left(root) == left
    assert out.splitlines()[-1] == f"Total:\t{(before - after) / 1000:.4g}kB"
    assert not list((root / "tmp").iterdir())  # nothing half removed left behind


def test_prune_report_by_kind(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prune", "-f", "--filter", "until=24h"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["KIND", "REMOVED", "RECLAIMED"]
    assert lines[1].split()[:5] == ["cache", "1", "records,", "1", "blobs"]
    assert lines[2].split() == ["unpacked", "layers", "1", "6.004kB"]
    assert lines[3].split() == ["cache", "mounts", "0", "0B"]


@pytest.mark.parametrize(("answer", "pruned"), [("y\n", True), ("yes\n", True),
                                                 ("n\n", False), ("\n", False)])
def test_prune_asks_first(root: Path, capsys: pytest.CaptureFixture[str],
                          monkeypatch: pytest.MonkeyPatch, tmp_path: Path, answer: str,
                          pruned: bool) -> None:
    stdin = tmp_path / "stdin"
    stdin.write_text(answer)
    with open(stdin) as stream:
        monkeypatch.setattr("sys.stdin", stream)
        assert main(["prune"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("WARNING! This will remove all build cache. Are you sure you want "
                          "to continue? [y/N] ")
    assert (_left(root)["records"] == []) is pruned


@pytest.fixture
def service(root: Path) -> Iterator[None]:
    """A running service as prune sees one: the root's daemon lock held."""
    run = root / "run"
    run.mkdir(exist_ok=True)
    fd = os.open(run / "daemon.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def test_prune_while_the_service_runs_keeps_recent_and_layers(
        root: Path, service: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prune", "-f"]) == 0
    captured = capsys.readouterr()
    assert _left(root) == {"blobs": ["new"], "records": ["new"], "layers": ALL,
                           "mounts": ["pip"]}
    assert captured.err == (
        f"WARN: the dockyard service for {root} is running: kept what was used in the last "
        "hour and every unpacked layer (run `dockyard stop` first to prune them)\n")


def test_prune_all_refused_while_the_service_runs(
        root: Path, service: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prune", "-f", "--all"]) == 1
    assert capsys.readouterr().err == (
        f"error: prune --all would remove cache mounts while the dockyard service for {root} "
        "is running (a build may be using them)\nhint: run `dockyard stop` first, or prune "
        "without --all\n")
    assert _left(root)["records"] == ALL


def test_prune_api_keep_bytes(root: Path) -> None:
    result = prune_local(root, keep_bytes=0)
    assert (result.cache.records_removed, result.cache.blobs_removed,
            result.layers_removed) == (3, 3, 3)


# --- S3 ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in ENVIRONMENT.items():
            patch.setenv(name, value)
        for name in UNSET:
            patch.delenv(name, raising=False)
        with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as endpoint:
            yield endpoint


def test_prune_s3_records_first_blobs_in_grace_kept(
        moto: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dockyard.cache_backends._s3 import S3Backend

    bucket = moto.bucket()

    async def store() -> None:
        backend = S3Backend(bucket, "gc", region="us-east-1", endpoint_url=moto.url,
                            use_path_style=True)
        for entry in ENTRIES:
            await backend.put_blob(entry.digest, entry.blob)
            layer = LayerDescriptor(entry.digest, len(entry.blob), entry.diff_id)
            await backend.put_record(CacheRecord(entry.key, StateResult((layer,)), 0))

    asyncio.run(store())
    spec = (f"type=s3,bucket={bucket},region=us-east-1,prefix=gc,endpoint_url={moto.url},"
            "use_path_style=true")
    assert main(["prune", "-f", "--cache", spec, "--older-than", "0s"]) == 0
    out = capsys.readouterr().out
    listing = moto.client().list_objects_v2(Bucket=bucket).get("Contents", [])
    left = sorted(item["Key"].split("/")[1] for item in listing)
    assert left == ["blobs"] * 3  # records gone; blobs written just now are in the grace
    assert out.splitlines()[0].endswith(": 3 records, 0 blobs")
    assert out.splitlines()[1].startswith("Total:\t")


def test_prune_s3_refuses_local_cache_type(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prune", "-f", "--cache", f"type=local,src={tmp_path}"]) == 1
    assert capsys.readouterr().err == (
        f"error: invalid --cache 'type=local,src={tmp_path}': prune takes type=s3 only\n"
        "hint: the local store is pruned without --cache\n")


# --- the automatic limit -------------------------------------------------------------------


# DOCKYARD_CACHE_MAX -> the records left after a build (the last hour is always kept)
LIMITS = [("", ALL), ("off", ALL), ("1GB", ALL), ("4000b", ["mid", "new"]),
          ("3000b", ["new"]), ("0", ["new"])]


@pytest.mark.parametrize(("limit", "left"), LIMITS)
def test_enforce_cache_limit(root: Path, limit: str, left: list[str]) -> None:
    report = asyncio.run(enforce_cache_limit(LocalBackend(root), {"DOCKYARD_CACHE_MAX": limit}))
    assert _left(root)["records"] == left
    assert _left(root)["blobs"] == left
    assert _left(root)["layers"] == ALL  # left to dockyard prune
    assert (report is None) is (left == ALL)
