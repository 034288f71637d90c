"""What only the S3 backend has, against a real S3 HTTP endpoint (moto's server, see
conftest.py): the bucket layout, multipart upload and ranged download of large blobs,
corrupt objects dropped only while unchanged, records refused before their blobs, two
machines writing one key at once, prune's grace period, and retries through a faulty
proxy (503 SlowDown, dropped connections) with bounded, pinned failures."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _blobs import blob, run
from _fault_proxy import FaultyProxy, running_proxy

from dockyard.cache_backends._protocol import BlobCorrupt, BlobMissing
from dockyard.cache_backends._records import CacheRecord, LayerDescriptor, StateResult
from dockyard.cache_backends._s3 import S3Backend
from dockyard.scheduler._errors import CacheError

MB = 1 << 20
PREFIX = "ci/"


def record(n: int, *blobs: tuple[str, bytes], created: int = 1) -> CacheRecord:
    key = "sha256:" + hashlib.sha256(f"key {n}".encode()).hexdigest()
    layers = tuple(LayerDescriptor(digest, len(data), digest) for digest, data in blobs)
    return CacheRecord(key, StateResult(layers), created)


async def read_all(backend: S3Backend, digest: str) -> bytes:
    async with await backend.open_blob(digest) as reader:
        return b"".join([chunk async for chunk in reader])


def blob_key(digest: str) -> str:
    return f"{PREFIX}blobs/sha256/{digest.removeprefix('sha256:')}"


@pytest.fixture
def bucket(s3_endpoint: Any) -> str:
    name: str = s3_endpoint.bucket()
    return name


def make(endpoint_url: str, bucket: str, tmp: Path, **options: Any) -> S3Backend:
    options = {"multipart_threshold": 5 * MB, "part_size": 5 * MB, "retry_for": 5.0,
               **options}
    return S3Backend(bucket, PREFIX, region="us-east-1", endpoint_url=endpoint_url,
                     use_path_style=True, tmp_dir=tmp, **options)


@pytest.fixture
def backend(s3_endpoint: Any, bucket: str, tmp_path: Path) -> S3Backend:
    return make(s3_endpoint.url, bucket, tmp_path)


def keys(s3_endpoint: Any, bucket: str) -> list[str]:
    listing = s3_endpoint.client().list_objects_v2(Bucket=bucket)
    return sorted(item["Key"] for item in listing.get("Contents", []))


def pending_uploads(s3_endpoint: Any, bucket: str) -> list[str]:
    uploads = s3_endpoint.client().list_multipart_uploads(Bucket=bucket)
    return [upload["Key"] for upload in uploads.get("Uploads", [])]


# --- layout and large blobs ------------------------------------------------------------------


def test_layout_in_the_bucket(s3_endpoint: Any, bucket: str, backend: S3Backend) -> None:
    digest, data = blob(100, 1)
    rec = record(1, (digest, data))
    run(backend.put_blob(digest, data))
    run(backend.put_record(rec))
    assert keys(s3_endpoint, bucket) == sorted([
        blob_key(digest), f"{PREFIX}records/{rec.key.removeprefix('sha256:')}"])
    stored = s3_endpoint.client().get_object(Bucket=bucket, Key=keys(s3_endpoint, bucket)[1])
    assert CacheRecord.from_bytes(stored["Body"].read()) == rec


SOURCES = ["bytes", "path", "moved path", "chunks"]


@pytest.mark.parametrize("kind", SOURCES)
def test_a_large_blob_goes_up_in_parts_and_comes_down_whole(
        s3_endpoint: Any, bucket: str, backend: S3Backend, tmp_path: Path, kind: str) -> None:
    digest, data = blob(20 * MB, 2)
    path = tmp_path / "layer"
    path.write_bytes(data)

    async def chunks() -> Any:
        for start in range(0, len(data), 3 * MB):
            yield data[start:start + 3 * MB]

    source: Any = {"bytes": data, "path": path, "moved path": path, "chunks": chunks()}[kind]
    assert run(backend.put_blob(digest, source, move=kind == "moved path")) == len(data)
    head = s3_endpoint.client().head_object(Bucket=bucket, Key=blob_key(digest))
    assert head["ETag"].endswith('-4"')  # four 5 MB parts: a multipart upload
    assert run(read_all(backend, digest)) == data
    assert path.exists() is (kind != "moved path")
    assert pending_uploads(s3_endpoint, bucket) == []
    assert [p.name for p in tmp_path.iterdir() if p.name != "layer"] == []


@pytest.mark.parametrize("size", [MB, 7 * MB], ids=["streamed", "ranged"])
def test_a_corrupt_object_is_a_miss_and_is_removed(
        s3_endpoint: Any, bucket: str, backend: S3Backend, size: int) -> None:
    digest, data = blob(size, 3)
    run(backend.put_blob(digest, data))
    bad = data[:-1] + bytes([data[-1] ^ 1])
    s3_endpoint.client().put_object(Bucket=bucket, Key=blob_key(digest), Body=bad)
    with pytest.raises(BlobCorrupt):
        run(read_all(backend, digest))
    assert keys(s3_endpoint, bucket) == []
    with pytest.raises(BlobMissing):
        run(backend.open_blob(digest))
    run(backend.put_blob(digest, data))
    assert run(read_all(backend, digest)) == data


def test_a_corrupt_object_replaced_while_it_was_read_stays(
        s3_endpoint: Any, bucket: str, backend: S3Backend) -> None:
    """The drop is conditional on the ETag read: a good copy written meanwhile is kept."""
    digest, data = blob(7 * MB, 4)
    client = s3_endpoint.client()
    client.put_object(Bucket=bucket, Key=blob_key(digest), Body=data[:100])

    async def go() -> None:
        reader = await backend.open_blob(digest)  # the bad copy is downloaded here
        client.put_object(Bucket=bucket, Key=blob_key(digest), Body=data)
        with pytest.raises(BlobCorrupt):
            async with reader:
                async for _ in reader:
                    pass

    run(go())
    assert run(read_all(backend, digest)) == data


def test_a_record_before_its_blobs_is_refused_and_not_stored(
        s3_endpoint: Any, bucket: str, backend: S3Backend) -> None:
    digest, data = blob(10, 5)
    rec = record(2, (digest, data))
    with pytest.raises(CacheError) as caught:
        run(backend.put_record(rec))
    assert caught.value.message == (
        f"cannot store the cache record {rec.key} in the S3 cache (s3://{bucket}/{PREFIX}): "
        f"it names blobs the cache does not hold: {digest}")
    assert keys(s3_endpoint, bucket) == []


def test_two_machines_write_one_key_at_once(s3_endpoint: Any, bucket: str,
                                            tmp_path: Path) -> None:
    """Two backends (two machines' clients) store the same 12 MB blob and the same key
    with different records at once: one whole blob, one whole record, nothing pending."""
    digest, data = blob(12 * MB, 6)
    machines = [make(s3_endpoint.url, bucket, tmp_path) for _ in range(2)]
    records = [record(3, (digest, data), created=n) for n in (1, 2)]

    async def machine(backend: S3Backend, rec: CacheRecord) -> None:
        await backend.put_blob(digest, data)
        await backend.put_record(rec)

    async def go() -> None:
        await asyncio.gather(*(machine(b, r) for b, r in zip(machines, records, strict=True)
                               for _ in range(2)))

    run(go())
    assert pending_uploads(s3_endpoint, bucket) == []
    for backend in machines:
        assert run(backend.get_record(records[0].key)) in records
        assert run(read_all(backend, digest)) == data
    usage = run(machines[0].usage())
    assert (usage.blob_count, usage.record_count) == (1, 1)


# --- prune while builds run --------------------------------------------------------------------


def test_prune_spares_young_blobs(s3_endpoint: Any, bucket: str, tmp_path: Path) -> None:
    """A blob just stored for a record not yet written survives a prune of everything."""
    digest, data = blob(1000, 7)
    rec = record(4)
    careful = make(s3_endpoint.url, bucket, tmp_path, grace=3600)
    run(careful.put_blob(digest, data))
    run(careful.put_record(rec))
    report = run(careful.prune())
    assert (report.records_removed, report.blobs_removed) == (1, 0)
    assert keys(s3_endpoint, bucket) == [blob_key(digest)]
    report = run(make(s3_endpoint.url, bucket, tmp_path, grace=0).prune())
    assert (report.blobs_removed, report.bytes_freed) == (1, 1000)
    assert keys(s3_endpoint, bucket) == []


def test_a_fresh_use_mark_is_not_rewritten(s3_endpoint: Any, bucket: str,
                                           tmp_path: Path) -> None:
    """A warm cache costs a GET per record: the mark is rewritten only once stale."""
    clock = [1000.0]
    backend = make(s3_endpoint.url, bucket, tmp_path, clock=lambda: clock[0],
                   touch_after=600)
    rec = record(5)
    run(backend.put_record(rec))
    name = f"{PREFIX}records/{rec.key.removeprefix('sha256:')}"

    def mark() -> str:
        head = s3_endpoint.client().head_object(Bucket=bucket, Key=name)
        return str(head["Metadata"]["dockyard-used"])

    clock[0] = 1500.0
    assert run(backend.get_record(rec.key)) == rec
    assert mark() == "1000.0"
    clock[0] = 1700.0
    assert run(backend.get_record(rec.key)) == rec
    assert mark() == "1700.0"


# --- faults --------------------------------------------------------------------------------------


@pytest.fixture
def proxy(s3_endpoint: Any) -> Iterator[FaultyProxy]:
    with running_proxy(s3_endpoint.url) as faulty:
        yield faulty


FAULTS = [
    ("slowdown", ["503", "503", "503"]),
    ("dropped", ["drop", "drop"]),
    ("mixed", ["drop", "503", "drop"]),
]


@pytest.mark.parametrize("faults", [f for _, f in FAULTS], ids=[n for n, _ in FAULTS])
def test_throttling_and_dropped_connections_are_retried(
        s3_endpoint: Any, bucket: str, proxy: FaultyProxy, tmp_path: Path,
        faults: list[str]) -> None:
    backend = make(proxy.url, bucket, tmp_path, retry_for=20.0)
    digest, data = blob(6 * MB, 8)
    rec = record(6, (digest, data))
    steps: list[Any] = [lambda: backend.put_blob(digest, data), lambda: backend.put_record(rec),
                        lambda: read_all(backend, digest), lambda: backend.get_record(rec.key)]
    results = []
    for step in steps:
        proxy.schedule(faults)
        results.append(run(step()))
        assert proxy.faults == []  # every fault was met
    assert results == [len(data), None, data, rec]
    assert pending_uploads(s3_endpoint, bucket) == []


@pytest.mark.parametrize("size", [MB, 7 * MB], ids=["streamed", "ranged"])
def test_a_body_broken_off_is_resumed_not_condemned(
        s3_endpoint: Any, bucket: str, proxy: FaultyProxy, tmp_path: Path, size: int) -> None:
    backend = make(proxy.url, bucket, tmp_path, retry_for=20.0, read_timeout=0.5)
    digest, data = blob(size, 9)
    run(backend.put_blob(digest, data))
    proxy.schedule(["cut", "hang"])
    assert run(read_all(backend, digest)) == data
    assert proxy.faults == []
    assert backend.statistics().blobs_corrupt == 0
    assert keys(s3_endpoint, bucket) == [blob_key(digest)]


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield sock.getsockname()[1]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port  # closed once the block ends: nothing listens


# (name, how the endpoint fails, the cause in the message, the most seconds it may take)
UNREACHABLE = [
    ("refused", "Could not connect to the endpoint URL: ", 2.0),
    ("silent", "Read timeout on endpoint URL: ", 8.0),
]


@pytest.mark.parametrize(("kind", "cause", "bound"), UNREACHABLE,
                         ids=[u[0] for u in UNREACHABLE])
def test_an_unreachable_store_fails_fast_then_at_once(
        tmp_path: Path, black_hole: int, kind: str, cause: str, bound: float) -> None:
    """A few quick attempts (not the 60 s budget), then every call fails at once."""
    port = black_hole if kind == "silent" else closed_port()
    url = f"http://127.0.0.1:{port}"
    backend = S3Backend("nowhere", "p", region="us-east-1", endpoint_url=url,
                        use_path_style=True, tmp_dir=tmp_path)
    digest = blob(1)[0]
    started = time.monotonic()
    with pytest.raises(CacheError) as caught:
        run(backend.has(digest))
    assert time.monotonic() - started < bound
    key = f"nowhere/p/blobs/sha256/{digest[7:]}"
    assert caught.value.message == (f"S3 cache: cannot look up s3://{key}: cannot reach "
                                    f'{url}: {cause}"{url}/{key}"')
    assert caught.value.hint == ("check endpoint_url= (or region=), the network and that "
                                 "the store is up; the build treats the cache as missing")
    started = time.monotonic()
    with pytest.raises(CacheError) as again:
        run(backend.get_record(record(1).key))
    assert time.monotonic() - started < 0.5
    assert again.value.message.startswith("S3 cache: cannot read s3://nowhere/p/records/")
    assert f"cannot reach {url}: {cause}" in again.value.message


def test_a_stall_on_a_reached_store_is_timed_out_and_retried(
        s3_endpoint: Any, bucket: str, proxy: FaultyProxy, tmp_path: Path) -> None:
    backend = make(proxy.url, bucket, tmp_path, retry_for=20.0, read_timeout=0.5)
    digest, data = blob(1000, 10)
    run(backend.put_blob(digest, data))  # reached
    proxy.schedule(["stall", "stall", "hang"])
    rec = record(7, (digest, data))
    run(backend.put_record(rec))
    assert run(backend.get_record(rec.key)) == rec
    assert run(read_all(backend, digest)) == data
    assert proxy.faults == [] and proxy.met == ["stall", "stall", "hang"]


MISSING_BUCKET = [
    ("put_blob", lambda b: b.put_blob(*blob(5)),
     "S3 cache: cannot upload s3://no-such-bucket-here/ci/blobs/sha256/"),
    ("get_record", lambda b: b.get_record(record(9).key),
     "S3 cache: cannot read s3://no-such-bucket-here/ci/records/"),
    ("usage", lambda b: b.usage(),
     "S3 cache: cannot list s3://no-such-bucket-here/ci/blobs/sha256/ at http://127.0.0.1:"),
]


@pytest.mark.parametrize(("call", "start"), [(c, s) for _, c, s in MISSING_BUCKET],
                         ids=[n for n, _, _ in MISSING_BUCKET])
def test_a_missing_bucket_is_an_error_that_says_what_to_do(
        s3_endpoint: Any, tmp_path: Path, call: Any, start: str) -> None:
    backend = make(s3_endpoint.url, "no-such-bucket-here", tmp_path)
    with pytest.raises(CacheError) as caught:
        run(call(backend))
    assert caught.value.message.startswith(start)
    assert "NoSuchBucket" in caught.value.message
    assert caught.value.hint == "create the bucket, or fix bucket= in the cache option"
