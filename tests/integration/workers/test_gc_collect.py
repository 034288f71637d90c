"""The worker's collector (workers/_gc.py ``collect``) on a real store: records of each
kind with their blobs and unpacked layers, cache mounts, context contents, with known
ages; policies by keep-duration, kind and keep-storage; what builds lease and what a RUN
has locked survives; every run is counted."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dockyard.cache_backends._local import LocalBackend
from dockyard.cache_backends._records import CacheRecord, LayerDescriptor, StateResult
from dockyard.workers._gc import Leases, collect, measure
from dockyard.workers._gc_policy import GcSettings, parse_policy
from dockyard.workers._gc_stats import gc_statistics

HOUR = 3600.0


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Entry:
    """One record of ``kind`` naming one layer (blob and unpacked dir), ``age`` hours old."""

    name: str
    kind: str
    size: int
    age: float

    @property
    def blob(self) -> bytes:
        return self.name.encode() * (self.size // len(self.name))

    @property
    def digest(self) -> str:
        return _digest(self.blob)

    @property
    def diff_id(self) -> str:
        return _digest(b"diff:" + self.blob)

    @property
    def key(self) -> str:
        return _digest(b"key:" + self.blob)


ENTRIES = (Entry("base", "image", 4000, 100), Entry("run1", "exec", 3000, 50),
           Entry("ctx1", "context", 2000, 30), Entry("run2", "exec", 1000, 0.5))
MOUNTS = (("apt", 1500, 80.0), ("pip", 500, 0.2))  # name, bytes, hours unused
CONTENTS = ((b"a" * 700, 70.0), (b"b" * 300, 0.1))  # context contents, hours unused


def _age(path: Path, hours: float) -> None:
    when = time.time() - hours * HOUR
    os.utime(path, (when, when))


def _populate(root: Path) -> None:
    async def store() -> None:
        backend = LocalBackend(root)
        for e in ENTRIES:
            await backend.put_blob(e.digest, e.blob)
            layer = LayerDescriptor(e.digest, len(e.blob), e.diff_id)
            await backend.put_record(CacheRecord(e.key, StateResult((layer,)), 0,
                                                 {"name": e.name, "kind": e.kind}))

    asyncio.run(store())
    for e in ENTRIES:
        _age(root / "cache" / "blobs" / "sha256" / e.digest[7:], e.age)
        _age(root / "cache" / "records" / e.key[7:], e.age)
        layer = root / "snapshots" / "layers" / e.diff_id[7:]
        layer.mkdir(parents=True)
        (layer / "file").write_bytes(e.blob)
    for name, size, hours in MOUNTS:
        mount = root / "cachemounts" / name
        mount.mkdir(parents=True)
        (mount / "data").write_bytes(b"m" * size)
        _age(mount, hours)
    for data, hours in CONTENTS:
        path = root / "contexts" / "sha256" / _digest(data)[7:]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        _age(path, hours)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    _populate(tmp_path / "root")
    return tmp_path / "root"


def _left(root: Path) -> dict[str, list[str]]:
    names = {p: e.name for e in ENTRIES for p in (e.digest[7:], e.key[7:], e.diff_id[7:])}
    names |= {_digest(data)[7:]: data[:1].decode() for data, _ in CONTENTS}
    dirs = {"blobs": root / "cache" / "blobs" / "sha256",
            "records": root / "cache" / "records", "layers": root / "snapshots" / "layers",
            "mounts": root / "cachemounts", "contexts": root / "contexts" / "sha256"}
    return {kind: sorted(names.get(p.name, p.name) for p in path.iterdir())
            for kind, path in dirs.items()}


def _run(root: Path, *policies: str, leases: Leases | None = None
         ) -> dict[str, tuple[int, int]]:
    settings = GcSettings(policies=tuple(parse_policy(p) for p in policies), grace=0.0)
    return collect(root, settings, leases or Leases())


ALL = ["base", "ctx1", "run1", "run2"]


def _bytes(root: Path, entry: Entry) -> int:
    """A record's file, its blob and its unpacked layer."""
    record = root / "cache" / "records" / entry.key[7:]
    return record.stat().st_size + 2 * len(entry.blob)


def test_keep_duration_removes_only_old(root: Path) -> None:
    base, run1 = ENTRIES[0], ENTRIES[1]
    expected = {"image": (3, _bytes(root, base)), "exec": (3, _bytes(root, run1)),
                "cachemount": (1, MOUNTS[0][1]), "context": (1, len(CONTENTS[0][0]))}
    before = gc_statistics()
    assert _run(root, "keep-duration=40h,all=true") == expected
    assert _left(root) == {"blobs": ["ctx1", "run2"], "records": ["ctx1", "run2"],
                           "layers": ["ctx1", "run2"], "mounts": ["pip"], "contexts": ["b"]}
    after = gc_statistics()
    assert after["runs"] == before["runs"] + 1
    for kind, (items, size) in expected.items():
        assert after["kinds"][kind]["items"] - before["kinds"][kind]["items"] == items
        assert after["kinds"][kind]["bytes"] - before["kinds"][kind]["bytes"] == size


def test_a_kind_filter_removes_only_that_kind(root: Path) -> None:
    removed = _run(root, "keep-storage=0,filter=exec")
    assert set(removed) == {"exec"}
    assert removed["exec"][0] == 6  # two records, their blobs and unpacked layers
    assert _left(root) == {"blobs": ["base", "ctx1"], "records": ["base", "ctx1"],
                           "layers": ["base", "ctx1"], "mounts": ["apt", "pip"],
                           "contexts": ["a", "b"]}
    _run(root, "keep-storage=0,filter=cachemount")
    assert _left(root)["mounts"] == [] and _left(root)["records"] == ["base", "ctx1"]


@contextlib.contextmanager
def _mounted_by_a_run(path: Path) -> Iterator[None]:
    """What a RUN holds on a cache mount (workers/_ops_exec.py): a shared flock."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_SH)
    try:
        yield
    finally:
        os.close(fd)


def test_keep_storage_spares_what_builds_hold(root: Path) -> None:
    base = ENTRIES[0]
    leases = Leases()
    leases.add("build-1", [base.key, base.digest, base.diff_id])
    with _mounted_by_a_run(root / "cachemounts" / "apt"):
        _run(root, "keep-storage=3000,all=true", leases=leases)
    assert _left(root) == {"blobs": ["base"], "records": ["base"], "layers": ["base"],
                           "mounts": ["apt"], "contexts": ["a", "b"]}  # an open build
    assert measure(root).total > 3000  # what is held stays, over the bound
    leases.release("build-1")
    _run(root, "keep-storage=3000,all=true", leases=leases)
    assert measure(root).total <= 3000
    assert _left(root)["records"] == []


def test_within_the_bound_nothing_goes(root: Path) -> None:
    total = measure(root).total
    assert _run(root, f"keep-storage={total},all=true") == {}
    assert _left(root)["records"] == ALL
