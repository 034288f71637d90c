"""The conformance suite every cache backend passes (buildkit's cachestorage test suite, in
spirit): each test runs once per backend in ``dockyard.cache_backends._registry.BACKENDS``,
through a ``Harness`` that knows how to make the backend and how to damage what it stores
(S3: a fresh bucket on the session's moto server, conftest.py's ``s3_endpoint``).

A new backend joins by registering in BACKENDS and adding a harness to HARNESSES (a test
fails until it does).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import msgpack
import pytest
from _blobs import blob, run

from dockyard.cache_backends._local import TEMP_PREFIX, LocalBackend
from dockyard.cache_backends._memory import MemoryBackend
from dockyard.cache_backends._protocol import CHUNK, BlobCorrupt, BlobMissing, CacheBackend
from dockyard.cache_backends._records import CacheRecord, LayerDescriptor, StateResult
from dockyard.cache_backends._registry import BACKENDS
from dockyard.cache_backends._s3 import S3Backend
from dockyard.scheduler._errors import CacheError
from dockyard.workers._exporters import BlobPaths, BlobSource

START = 1_700_000_000.0


class Clock:
    """The backends' time: moves only when a test says."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now

    def at(self, offset: float) -> None:
        self.now = START + offset


class Harness(Protocol):
    @property
    def backend(self) -> CacheBackend: ...

    @property
    def where(self) -> str: ...

    def corrupt_blob(self, digest: str, data: bytes) -> None: ...

    def corrupt_record(self, key: str, data: bytes) -> None: ...

    def leftovers(self) -> list[str]: ...

    def blob_source(self) -> Any: ...

    @property
    def names_files(self) -> bool: ...


@dataclass
class MemoryHarness:
    backend: MemoryBackend
    where: str = "the memory cache"
    names_files: bool = False

    def corrupt_blob(self, digest: str, data: bytes) -> None:
        self.backend.inject_blob(digest, data)

    def corrupt_record(self, key: str, data: bytes) -> None:
        self.backend.inject_record(key, data)

    def leftovers(self) -> list[str]:
        return []

    def blob_source(self) -> Any:
        return self.backend.blob_source()


@dataclass
class LocalHarness:
    backend: LocalBackend
    where: str
    names_files: bool = True

    def corrupt_blob(self, digest: str, data: bytes) -> None:
        path = self.backend.root / "cache/blobs/sha256" / digest.removeprefix("sha256:")
        path.write_bytes(data)

    def corrupt_record(self, key: str, data: bytes) -> None:
        (self.backend.root / "cache/records" / key.removeprefix("sha256:")).write_bytes(data)

    def leftovers(self) -> list[str]:
        return sorted(name for name in os.listdir(self.backend.root / "tmp")
                      if name.startswith(TEMP_PREFIX))

    def blob_source(self) -> Any:
        return self.backend.blob_source()


@dataclass
class S3Harness:
    """A fresh bucket on the session's moto server; damage goes in through a plain client,
    and leftovers are spooled files or multipart uploads never completed."""

    backend: S3Backend
    endpoint: Any  # conftest.py's S3Endpoint
    bucket: str
    tmp: Path
    names_files: bool = False
    prefix: str = "team/cache/"

    @property
    def where(self) -> str:
        return f"the S3 cache (s3://{self.bucket}/{self.prefix})"

    def corrupt_blob(self, digest: str, data: bytes) -> None:
        name = f"{self.prefix}blobs/sha256/{digest.removeprefix('sha256:')}"
        self.endpoint.client().put_object(Bucket=self.bucket, Key=name, Body=data)

    def corrupt_record(self, key: str, data: bytes) -> None:
        name = f"{self.prefix}records/{key.removeprefix('sha256:')}"
        self.endpoint.client().put_object(Bucket=self.bucket, Key=name, Body=data)

    def leftovers(self) -> list[str]:
        uploads = self.endpoint.client().list_multipart_uploads(Bucket=self.bucket)
        return sorted([*os.listdir(self.tmp), *(u["Key"] for u in uploads.get("Uploads", []))])

    def blob_source(self) -> Any:
        return self.backend.blob_source()


def _local(tmp: Path, clock: Clock, request: pytest.FixtureRequest) -> LocalHarness:
    root = tmp / "root"
    return LocalHarness(LocalBackend(root, clock=clock), f"the local cache ({root})")


def _s3(tmp: Path, clock: Clock, request: pytest.FixtureRequest) -> S3Harness:
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = endpoint.bucket()
    spool = tmp / "s3-spool"
    spool.mkdir()
    backend = S3Backend(bucket, "team/cache", endpoint_url=endpoint.url, use_path_style=True,
                        region="us-east-1", clock=clock, touch_after=0, grace=0,
                        tmp_dir=spool, retry_for=5)
    return S3Harness(backend, endpoint, bucket, spool)


HARNESSES: dict[str, Callable[[Path, Clock, pytest.FixtureRequest], Harness]] = {
    "memory": lambda tmp, clock, request: MemoryHarness(MemoryBackend(clock=clock)),
    "local": _local,
    "s3": _s3,
}


def test_every_registered_backend_has_a_harness() -> None:
    assert set(HARNESSES) == set(BACKENDS)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=sorted(BACKENDS))
def harness(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> Harness:
    return HARNESSES[request.param](tmp_path, clock, request)


def key(n: int) -> str:
    return "sha256:" + hashlib.sha256(f"key {n}".encode()).hexdigest()


def record(n: int, *blobs: tuple[str, bytes], created: int = 1) -> CacheRecord:
    layers = tuple(LayerDescriptor(digest, len(data), digest) for digest, data in blobs)
    return CacheRecord(key(n), StateResult(layers), created, {"name": f"step {n}"})


async def read_all(backend: CacheBackend, digest: str) -> bytes:
    async with await backend.open_blob(digest) as reader:
        return b"".join([chunk async for chunk in reader])


# --- round trips ---------------------------------------------------------------------------


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 300_000):
        await asyncio.sleep(0)
        yield data[start:start + 300_000]


def _as_path(tmp: Path, data: bytes) -> Path:
    path = tmp / f"source-{len(data)}"
    path.write_bytes(data)
    return path


#: how a test hands the bytes to put_blob: (name, make the source, move?)
SOURCES: list[tuple[str, Callable[[Path, bytes], Any], bool]] = [
    ("bytes", lambda tmp, data: data, False),
    ("stream", lambda tmp, data: io.BytesIO(data), False),
    ("chunks", lambda tmp, data: _chunks(data), False),
    ("path", _as_path, False),
    ("moved path", _as_path, True),
]
SIZES = [0, 1, CHUNK + 1, 3 * CHUNK + 5]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(("kind", "make", "move"), SOURCES, ids=[s[0] for s in SOURCES])
def test_blob_round_trip(harness: Harness, tmp_path: Path, size: int, kind: str,
                         make: Callable[[Path, bytes], Any], move: bool) -> None:
    digest, data = blob(size)
    source = make(tmp_path, data)
    backend = harness.backend

    async def go() -> bytes:
        assert await backend.put_blob(digest, source, move=move) == size
        assert await backend.has(digest)
        return await read_all(backend, digest)

    assert run(go()) == data
    if isinstance(source, Path):
        assert source.exists() is not move
    assert harness.leftovers() == []


def test_put_of_an_existing_blob_keeps_it_and_reads_nothing(harness: Harness) -> None:
    digest, data = blob(10)

    class Unreadable(io.RawIOBase):
        def read(self, size: int = -1) -> bytes:
            raise AssertionError("the source of an existing blob was read")

    async def go() -> bytes:
        await harness.backend.put_blob(digest, data)
        assert await harness.backend.put_blob(digest, Unreadable()) == 10  # type: ignore[arg-type]
        return await read_all(harness.backend, digest)

    assert run(go()) == data


def test_has_many_and_misses(harness: Harness) -> None:
    (a, da), (b, _), (c, dc) = blob(1, 1), blob(1, 2), blob(1, 3)
    backend = harness.backend

    async def go() -> None:
        await backend.put_blob(a, da)
        await backend.put_blob(c, dc)
        assert await backend.has_many([a, b, c]) == {a, c}
        assert await backend.has_many([]) == set()
        assert not await backend.has(b)
        with pytest.raises(BlobMissing) as caught:
            await backend.open_blob(b)
        assert str(caught.value) == f"blob {b} is not in {harness.where}"
        assert await backend.get_record(key(1)) is None

    run(go())


def test_record_round_trip(harness: Harness) -> None:
    layers = [blob(100, 1), blob(200, 2)]
    rec = record(1, *layers, created=1234)

    async def go() -> CacheRecord | None:
        for digest, data in layers:
            await harness.backend.put_blob(digest, data)
        await harness.backend.put_record(rec)
        await harness.backend.put_record(rec)  # idempotent
        return await harness.backend.get_record(rec.key)

    assert run(go()) == rec


def test_record_without_layers_needs_no_blob(harness: Harness) -> None:
    rec = CacheRecord(key(2), StateResult((), b'{"config":{}}'), 7)

    async def go() -> CacheRecord | None:
        await harness.backend.put_record(rec)
        return await harness.backend.get_record(rec.key)

    assert run(go()) == rec


# --- refusals --------------------------------------------------------------------------------

BAD = "sha256:" + "0" * 63
REFUSALS: list[tuple[str, Callable[[CacheBackend], Awaitable[object]], str]] = [
    ("has", lambda b: b.has("md5:abc"),
     "invalid blob digest 'md5:abc': expected sha256: and 64 lowercase hex digits"),
    ("has_many", lambda b: b.has_many([BAD]),
     f"invalid blob digest '{BAD}': expected sha256: and 64 lowercase hex digits"),
    ("open_blob", lambda b: b.open_blob("sha256:../../etc/passwd"),
     "invalid blob digest 'sha256:../../etc/passwd': expected sha256: and 64 lowercase hex "
     "digits"),
    ("put_blob", lambda b: b.put_blob("SHA256:" + "A" * 64, b""),
     f"invalid blob digest '{'SHA256:' + 'A' * 64}': expected sha256: and 64 lowercase hex "
     "digits"),
    ("get_record", lambda b: b.get_record("latest"),
     "invalid cache key 'latest': expected sha256: and 64 lowercase hex digits"),
    ("put_record", lambda b: b.put_record(CacheRecord("k", StateResult(), 0)),
     "invalid cache key 'k': expected sha256: and 64 lowercase hex digits"),
]


@pytest.mark.parametrize(("call", "message"), [(c, m) for _, c, m in REFUSALS],
                         ids=[r[0] for r in REFUSALS])
def test_malformed_digests_and_keys_are_refused(
        harness: Harness, call: Callable[[CacheBackend], Awaitable[object]],
        message: str) -> None:
    with pytest.raises(CacheError) as caught:
        run(call(harness.backend))
    assert caught.value.message == message


@pytest.mark.parametrize(("kind", "make", "move"), SOURCES, ids=[s[0] for s in SOURCES])
def test_a_blob_that_does_not_match_its_digest_is_not_stored(
        harness: Harness, tmp_path: Path, kind: str, make: Callable[[Path, bytes], Any],
        move: bool) -> None:
    digest, _ = blob(CHUNK + 10, 1)
    _, other = blob(CHUNK + 10, 2)
    actual = "sha256:" + hashlib.sha256(other).hexdigest()
    with pytest.raises(CacheError) as caught:
        run(harness.backend.put_blob(digest, make(tmp_path, other), move=move))
    assert caught.value.message == (f"cannot store blob {digest} in {harness.where}: its "
                                    f"bytes hash to {actual}")
    assert not run(harness.backend.has(digest))
    assert harness.leftovers() == []


def test_a_record_before_its_blobs_is_refused(harness: Harness) -> None:
    (a, da), (b, db) = blob(5, 1), blob(5, 2)
    rec = record(3, (a, da), (b, db), (a, da))
    first, second = sorted([a, b])
    backend = harness.backend
    with pytest.raises(CacheError) as caught:
        run(backend.put_record(rec))
    assert caught.value.message == (
        f"cannot store the cache record {rec.key} in {harness.where}: it names blobs the "
        f"cache does not hold: {first}, {second}")
    assert run(backend.get_record(rec.key)) is None
    run(backend.put_blob(a, da))
    with pytest.raises(CacheError) as caught:
        run(backend.put_record(rec))
    assert caught.value.message.endswith(f"does not hold: {b}")
    assert caught.value.hint == "store a record's blobs before the record"
    run(backend.put_blob(b, db))
    run(backend.put_record(rec))
    assert run(backend.get_record(rec.key)) == rec


# --- damage: a miss, never a wrong result -----------------------------------------------------

DAMAGE = [
    ("flipped byte", lambda data: bytes([data[0] ^ 1]) + data[1:]),
    ("truncated", lambda data: data[:-1]),
    ("extended", lambda data: data + b"\0"),
    ("emptied", lambda data: b""),
]


@pytest.mark.parametrize("damage", [d for _, d in DAMAGE], ids=[n for n, _ in DAMAGE])
def test_a_corrupt_blob_raises_at_its_end_and_is_removed(
        harness: Harness, damage: Callable[[bytes], bytes]) -> None:
    digest, data = blob(2 * CHUNK + 3, 4)
    backend = harness.backend
    run(backend.put_blob(digest, data))
    bad = damage(data)
    harness.corrupt_blob(digest, bad)
    actual = "sha256:" + hashlib.sha256(bad).hexdigest()
    with pytest.raises(BlobCorrupt) as caught:
        run(read_all(backend, digest))
    assert caught.value.message == (f"blob {digest} in {harness.where} is corrupt (its bytes "
                                    f"hash to {actual}); it was removed")
    assert not run(backend.has(digest))
    assert backend.statistics().blobs_corrupt == 1
    run(backend.put_blob(digest, data))  # repaired by the next build
    assert run(read_all(backend, digest)) == data


def test_a_corrupt_blob_read_through_the_exporters_source(harness: Harness) -> None:
    digest, data = blob(CHUNK + 1, 5)
    run(harness.backend.put_blob(digest, data))
    source: BlobSource = harness.blob_source()
    with source.open_blob(digest) as stream:
        assert stream.read() == data
    harness.corrupt_blob(digest, data[:10])
    with pytest.raises(BlobCorrupt), source.open_blob(digest) as stream:
        while stream.read(1000):
            pass
    assert not run(harness.backend.has(digest))
    with pytest.raises(BlobMissing):
        source.open_blob(digest)


def test_the_exporters_source_names_files_when_it_can(harness: Harness) -> None:
    digest, data = blob(64, 6)
    run(harness.backend.put_blob(digest, data))
    paths: BlobPaths = harness.blob_source()
    path = paths.blob_path(digest)
    if not harness.names_files:
        assert path is None
    else:
        assert path is not None and path.read_bytes() == data
        assert paths.blob_path(blob(65, 6)[0]) is None


def _packed(value: object) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


BAD_RECORDS = [
    ("garbage", b"\xc1\xc1 not msgpack"),
    ("empty", b""),
    ("future version", _packed({"version": 99, "key": key(1), "result": {"layers": []},
                                "created": 0})),
    ("wrong shape", _packed({"version": 1, "key": key(1), "result": {"layers": [{}]},
                             "created": 0})),
    ("another key's record", record(2).to_bytes()),
    ("a list", _packed([1, 2, 3])),
]


@pytest.mark.parametrize("data", [d for _, d in BAD_RECORDS], ids=[n for n, _ in BAD_RECORDS])
def test_an_undecodable_record_is_a_miss_and_is_removed(harness: Harness, data: bytes) -> None:
    backend = harness.backend
    run(backend.put_record(record(1)))
    harness.corrupt_record(key(1), data)
    assert run(backend.get_record(key(1))) is None
    assert run(backend.usage()).record_count == 0
    stats = backend.statistics()
    assert (stats.records_dropped, stats.record_misses) == (1, 1)
    run(backend.put_record(record(1)))
    assert run(backend.get_record(key(1))) == record(1)


# --- concurrency -------------------------------------------------------------------------------


def test_concurrent_puts_of_one_blob_and_one_record(harness: Harness) -> None:
    digest, data = blob(3 * CHUNK, 7)
    rec = record(4, (digest, data))
    backend = harness.backend

    async def go() -> None:
        sizes = await asyncio.gather(*(backend.put_blob(digest, _chunks(data))
                                       for _ in range(6)))
        assert sizes == [len(data)] * 6
        readers = [read_all(backend, digest) for _ in range(4)]
        writers = [backend.put_record(rec) for _ in range(6)]
        results = await asyncio.gather(*readers, *writers)
        assert results[:4] == [data] * 4
        assert await backend.get_record(rec.key) == rec

    run(go())
    usage = run(backend.usage())
    assert (usage.blob_count, usage.record_count) == (1, 1)
    assert harness.leftovers() == []


def test_a_cancelled_put_leaves_nothing(harness: Harness) -> None:
    digest, data = blob(2 * CHUNK, 8)

    async def slow() -> AsyncIterator[bytes]:
        yield data[:CHUNK]
        await asyncio.sleep(30)
        yield data[CHUNK:]

    async def go() -> None:
        task = asyncio.create_task(harness.backend.put_blob(digest, slow()))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(go())
    assert not run(harness.backend.has(digest))
    assert harness.leftovers() == []


# --- prune and usage -----------------------------------------------------------------------------

A, B, C, D = blob(10_000, 1), blob(20_000, 2), blob(40_000, 3), blob(80_000, 4)
R1, R2 = record(1, A), record(2, A, B)
RECORD_BYTES = {R1.key: len(R1.to_bytes()), R2.key: len(R2.to_bytes())}


def _fill(harness: Harness, clock: Clock) -> None:
    """C at t=50 (never named), A and R1 at 100, B and R2 (naming A, B) at 200, D at 300
    (never named); then it is t=1000."""
    steps: list[tuple[int, Callable[[], Awaitable[object]]]] = [
        (50, lambda: harness.backend.put_blob(*C)),
        (100, lambda: harness.backend.put_blob(*A)),
        (100, lambda: harness.backend.put_record(R1)),
        (200, lambda: harness.backend.put_blob(*B)),
        (200, lambda: harness.backend.put_record(R2)),
        (300, lambda: harness.backend.put_blob(*D)),
    ]
    for when, step in steps:
        clock.at(when)
        run(step())
    clock.at(1000)


def _size(name: str) -> int:
    sizes = {A[0]: 10_000, B[0]: 20_000, C[0]: 40_000, D[0]: 80_000}
    return sizes.get(name) or RECORD_BYTES[name]


ALL = {"R1", "R2", "A", "B", "C", "D"}
NAMES = {"R1": R1.key, "R2": R2.key, "A": A[0], "B": B[0], "C": C[0], "D": D[0]}
TOTAL = sum(_size(NAMES[name]) for name in ALL)
#: (prune's arguments, what remains); LRU order: C(50) R1(100) R2(200; frees A, B) D(300)
PRUNES: list[tuple[dict[str, float], set[str]]] = [
    ({}, set()),
    ({"older_than": 900}, {"R2", "A", "B", "D"}),
    ({"older_than": 10_000}, ALL),
    ({"keep_bytes": TOTAL}, ALL),
    ({"keep_bytes": TOTAL - 1}, ALL - {"C"}),
    ({"keep_bytes": TOTAL - 40_000 - 1}, {"R2", "A", "B", "D"}),
    ({"keep_bytes": 80_000}, {"D"}),
    ({"keep_bytes": 0, "older_than": 750}, {"D"}),
    ({"keep_bytes": 0}, set()),
]


@pytest.mark.parametrize(("arguments", "remains"), PRUNES, ids=[str(p[0]) for p in PRUNES])
def test_prune(harness: Harness, clock: Clock, arguments: dict[str, Any],
               remains: set[str]) -> None:
    _fill(harness, clock)
    before = run(harness.backend.usage())
    assert before.total_bytes == TOTAL
    report = run(harness.backend.prune(**arguments))
    assert _present(harness) == remains
    after = run(harness.backend.usage())
    assert report.bytes_freed == TOTAL - after.total_bytes
    assert report.records_removed == len({"R1", "R2"} - remains)
    assert report.blobs_removed == len({"A", "B", "C", "D"} - remains)


def _present(harness: Harness) -> set[str]:
    backend = harness.backend
    blobs = run(backend.has_many([NAMES[n] for n in "ABCD"]))
    found = {name for name in "ABCD" if NAMES[name] in blobs}
    return found | {name for name in ("R1", "R2") if run(backend.get_record(NAMES[name]))}


def test_prune_keeps_what_was_read_lately(harness: Harness, clock: Clock) -> None:
    """Reads mark use: R1 read and D opened at t=900 outlive an older_than=500 prune, and
    A stays because R1 still names it, while R2's own blob B goes with it."""
    _fill(harness, clock)
    clock.at(900)
    assert run(harness.backend.get_record(R1.key)) == R1
    run(read_all(harness.backend, D[0]))
    clock.at(1000)
    run(harness.backend.prune(older_than=500))
    assert _present(harness) == {"R1", "A", "D"}


def test_usage_counts_bytes_by_kind(harness: Harness, clock: Clock) -> None:
    assert run(harness.backend.usage()).total_bytes == 0
    _fill(harness, clock)
    usage = run(harness.backend.usage())
    assert (usage.blob_bytes, usage.blob_count) == (150_000, 4)
    assert (usage.record_bytes, usage.record_count) == (sum(RECORD_BYTES.values()), 2)


def test_statistics_count_what_happened(harness: Harness) -> None:
    backend = harness.backend
    digest, data = blob(3, 9)

    async def go() -> None:
        await backend.put_blob(digest, data)
        await read_all(backend, digest)
        with pytest.raises(BlobMissing):
            await backend.open_blob(blob(4, 9)[0])
        await backend.put_record(record(5, (digest, data)))
        await backend.get_record(key(5))
        await backend.get_record(key(6))

    run(go())
    stats = backend.statistics()
    assert (stats.blobs_written, stats.blob_hits, stats.blob_misses) == (1, 1, 1)
    assert (stats.records_written, stats.record_hits, stats.record_misses) == (1, 1, 1)
    assert (stats.blobs_corrupt, stats.records_dropped) == (0, 0)


def _adapters_fit(local: LocalBackend, memory: MemoryBackend,
                  s3: S3Backend) -> list[BlobSource | BlobPaths]:
    """Never called: mypy checks that the adapters are the exporters' sources."""
    sources: list[BlobSource] = [local.blob_source(), memory.blob_source(), s3.blob_source()]
    paths: list[BlobPaths] = [local.blob_source(), memory.blob_source(), s3.blob_source()]
    return [*sources, *paths]
