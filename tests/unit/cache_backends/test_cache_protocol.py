"""The rules every backend shares, without I/O: digest syntax, the prune policy, the
verifying stream, and the in-memory backend's own extras."""

from __future__ import annotations

import asyncio
import hashlib
import io

import pytest

from dockyard.cache_backends._memory import MemoryBackend
from dockyard.cache_backends._protocol import (
    CHUNK,
    BlobCorrupt,
    PruneEntry,
    StreamReader,
    Usage,
    digest_hex,
    plan_prune,
    verified_stream,
)
from dockyard.scheduler._errors import CacheError

HEX = "ab" * 32
DIGESTS: list[tuple[object, str | None]] = [
    (f"sha256:{HEX}", HEX),
    (f"sha256:{HEX[:-1]}", "expected"),
    (f"sha256:{HEX}0", "expected"),
    (f"sha256:{HEX.upper()}", "expected"),
    (f"sha512:{HEX}", "expected"),
    (HEX, "expected"),
    ("sha256:" + "../" * 21 + "x", "expected"),
    (f"sha256:{HEX}\n", "expected"),
    ("", "expected"),
    (None, "expected"),
]


@pytest.mark.parametrize(("digest", "outcome"), DIGESTS)
def test_digest_syntax(digest: object, outcome: str) -> None:
    if outcome == HEX:
        assert digest_hex(digest) == HEX  # type: ignore[arg-type]
        return
    with pytest.raises(CacheError) as caught:
        digest_hex(digest, "cache key")  # type: ignore[arg-type]
    assert caught.value.message == (f"invalid cache key {digest!r}: expected sha256: and 64 "
                                    "lowercase hex digits")


# --- the prune policy --------------------------------------------------------------------------

def entry(name: str, size: int, used: float, *blobs: str) -> PruneEntry:
    return PruneEntry(name, size, used, frozenset(blobs))


#: records r1 (t=10, names a), r2 (t=20, names a, b), r3 (t=30, names a blob nobody holds);
#: blobs a (100 bytes), b (200), c (400, named by no record, t=5), d (800, t=40)
RECORDS = [entry("r1", 1, 10, "a"), entry("r2", 2, 20, "a", "b"), entry("r3", 4, 30, "zz")]
BLOBS = [entry("a", 100, 50), entry("b", 200, 50), entry("c", 400, 5), entry("d", 800, 40)]
TOTAL = 1 + 2 + 4 + 100 + 200 + 400 + 800

PLANS: list[tuple[int | None, float | None, tuple[str, ...], tuple[str, ...]]] = [
    # keep_bytes, older_than -> records removed, blobs removed (in removal order)
    (None, None, ("r1", "r2", "r3"), ("c", "a", "b", "d")),
    (TOTAL, None, (), ()),
    (TOTAL - 1, None, (), ("c",)),
    (TOTAL - 400, None, (), ("c",)),
    (TOTAL - 401, None, ("r1",), ("c",)),
    (1000, None, ("r1", "r2"), ("c", "a", "b")),
    (0, None, ("r1", "r2", "r3"), ("c", "a", "b", "d")),
    (None, 100 - 10, ("r1",), ("c",)),
    (None, 100 - 20, ("r1", "r2"), ("c", "a", "b")),
    (None, 100 - 40, ("r1", "r2", "r3"), ("c", "a", "b", "d")),
    (None, 1000, (), ()),
    (TOTAL - 401, 100 - 5, (), ("c",)),
]


@pytest.mark.parametrize(("keep", "older", "records", "blobs"), PLANS)
def test_prune_plan(keep: int | None, older: float | None, records: tuple[str, ...],
                    blobs: tuple[str, ...]) -> None:
    plan = plan_prune(RECORDS, BLOBS, now=100, keep_bytes=keep, older_than=older)
    assert (plan.records, plan.blobs) == (records, blobs)
    sizes = {item.name: item.size for item in [*RECORDS, *BLOBS]}
    assert plan.bytes_freed == sum(sizes[name] for name in records + blobs)


def test_a_record_and_a_blob_used_at_once_go_record_first() -> None:
    plan = plan_prune([entry("r", 1, 7)], [entry("x", 1, 7)], now=10, keep_bytes=1,
                      older_than=None)
    assert (plan.records, plan.blobs) == (("r",), ())


# --- the verifying stream ----------------------------------------------------------------------

DATA = bytes(range(256)) * 5000
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()
READS = [
    ("whole", lambda s: s.read()),
    ("chunks", lambda s: b"".join(iter(lambda: s.read(7777), b""))),
    ("big chunks", lambda s: b"".join(iter(lambda: s.read(CHUNK * 2), b""))),
    ("readinto", lambda s: _readinto(s)),
]


def _readinto(stream: io.BufferedIOBase) -> bytes:
    out = bytearray()
    buffer = bytearray(4096)
    while count := stream.readinto(buffer):
        out += buffer[:count]
    return bytes(out)


@pytest.mark.parametrize("size", [None, len(DATA)])
@pytest.mark.parametrize("read", [r for _, r in READS], ids=[n for n, _ in READS])
def test_a_good_stream_reads_through(read: object, size: int | None) -> None:
    dropped: list[bool] = []
    with verified_stream(io.BytesIO(DATA), DIGEST, "here", lambda: dropped.append(True),
                         size=size) as s:
        assert read(s) == DATA  # type: ignore[operator]
        assert s.read() == b""
    assert dropped == []


@pytest.mark.parametrize("size", [None, len(DATA)])
@pytest.mark.parametrize("read", [r for _, r in READS], ids=[n for n, _ in READS])
def test_a_bad_stream_fails_at_its_end_once(read: object, size: int | None) -> None:
    dropped: list[bool] = []
    bad = DATA[:-1] + b"!"
    stream = verified_stream(io.BytesIO(bad), DIGEST, "the shelf",
                             lambda: dropped.append(True), size=size)
    with pytest.raises(BlobCorrupt) as caught:
        read(stream)  # type: ignore[operator]
    actual = hashlib.sha256(bad).hexdigest()
    assert str(caught.value) == (
        f"blob {DIGEST} in the shelf is corrupt (its bytes hash to sha256:{actual}); it was "
        "removed\nhint: the build treats it as a cache miss; rebuild to store it again")
    assert dropped == [True]
    assert stream.read() == b""  # checked once; the caller already has the error
    stream.close()


def test_a_known_size_is_checked_at_its_last_byte() -> None:
    """A consumer that reads exactly the size it expects (tarfile) still gets the check."""
    bad = DATA[:-1] + b"!"
    source = io.BytesIO(bad)
    stream = verified_stream(source, DIGEST, "x", lambda: None, size=len(bad))
    remaining = len(bad)
    with pytest.raises(BlobCorrupt):
        while remaining:
            remaining -= len(stream.read(min(1000, remaining)))
    assert source.tell() == len(bad)


def test_the_async_reader_iterates_and_closes() -> None:
    source = io.BytesIO(DATA)

    async def go() -> list[bytes]:
        reader = StreamReader(DIGEST, verified_stream(source, DIGEST, "x", lambda: None),
                              offload=True)
        async with reader:
            return [chunk async for chunk in reader]

    chunks = asyncio.run(go())
    assert b"".join(chunks) == DATA and len(chunks) == 2
    assert source.closed


def test_usage_total() -> None:
    assert Usage(blob_bytes=3, blob_count=1, record_bytes=4, record_count=2).total_bytes == 7


def test_memory_backend_repr_and_injection() -> None:
    backend = MemoryBackend(clock=lambda: 5.0)
    backend.inject_blob(DIGEST, b"not it")
    backend.inject_record("sha256:" + HEX, b"junk")
    assert repr(backend) == "<MemoryBackend blobs=1 records=1>"
    assert asyncio.run(backend.get_record("sha256:" + HEX)) is None
    assert repr(backend) == "<MemoryBackend blobs=1 records=0>"
