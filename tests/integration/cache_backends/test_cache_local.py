"""The local disk backend beyond the conformance suite: its on-disk layout, what a failed
or crashed writer leaves, renames over a corrupt blob, and two processes on one root."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import io
import multiprocessing
import os
import tarfile
import threading
import time
import traceback
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from _blobs import blob

from dockyard.cache_backends._local import STALE_TEMP, TEMP_PREFIX, LocalBackend
from dockyard.cache_backends._protocol import CHUNK, BlobCorrupt, BlobMissing
from dockyard.cache_backends._records import CacheRecord, LayerDescriptor, StateResult
from dockyard.scheduler._errors import CacheError
from dockyard.scheduler._graph import ImageConfig
from dockyard.scheduler._platform import Platform
from dockyard.workers._exporters import export_local, export_oci
from dockyard.workers._image import ImageArtifacts, build_image
from dockyard.workers._layers import write_layer


def key(n: int) -> str:
    return "sha256:" + hashlib.sha256(f"key {n}".encode()).hexdigest()


def record(n: int, *blobs: tuple[str, bytes]) -> CacheRecord:
    layers = tuple(LayerDescriptor(digest, len(data), digest) for digest, data in blobs)
    return CacheRecord(key(n), StateResult(layers), 1)


def temps(root: Path) -> list[str]:
    return sorted(os.listdir(root / "tmp"))


async def read_all(backend: LocalBackend, digest: str) -> bytes:
    async with await backend.open_blob(digest) as reader:
        return b"".join([chunk async for chunk in reader])


def test_layout_on_disk(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    digest, data = blob(100)
    rec = record(1, (digest, data))
    asyncio.run(backend.put_blob(digest, data))
    asyncio.run(backend.put_record(rec))
    blob_file = tmp_path / "cache/blobs/sha256" / digest.removeprefix("sha256:")
    record_file = tmp_path / "cache/records" / rec.key.removeprefix("sha256:")
    assert blob_file.read_bytes() == data
    assert record_file.read_bytes() == rec.to_bytes()
    assert {oct(p.stat().st_mode & 0o777) for p in (blob_file, record_file)} == {"0o644"}
    assert temps(tmp_path) == []
    other = LocalBackend(tmp_path)  # another process's view of the same root
    assert asyncio.run(other.get_record(rec.key)) == rec


def test_a_moved_file_is_renamed_not_copied(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "root")
    digest, data = blob(CHUNK * 2)
    source = tmp_path / "root/tmp/layer.tar.gz"
    source.write_bytes(data)
    inode = source.stat().st_ino
    asyncio.run(backend.put_blob(digest, source, move=True))
    path = backend.blob_source().blob_path(digest)
    assert path is not None and path.stat().st_ino == inode
    assert not source.exists()


class FailingStream(io.RawIOBase):
    """A producer that dies after its first chunk."""

    def __init__(self) -> None:
        self.calls = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        self.calls += 1
        if self.calls > 1:
            raise OSError(5, "Input/output error")
        return b"x" * CHUNK


def test_a_failing_source_leaves_nothing(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    digest = blob(1)[0]
    with pytest.raises(CacheError) as caught:
        asyncio.run(backend.put_blob(digest, FailingStream()))  # type: ignore[arg-type]
    assert caught.value.message == (f"cannot read the source of a blob for the local cache "
                                    f"({tmp_path}): Input/output error")
    assert temps(tmp_path) == []
    assert not asyncio.run(backend.has(digest))


def test_a_failing_async_source_leaves_nothing(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)

    async def chunks() -> AsyncIterator[bytes]:
        yield b"y" * (2 * CHUNK)
        raise RuntimeError("producer died")

    with pytest.raises(RuntimeError, match="producer died"):
        asyncio.run(backend.put_blob(blob(1)[0], chunks()))
    assert temps(tmp_path) == []


def test_prune_drops_stale_temporary_files_only(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    tmp = tmp_path / "tmp"
    old = time.time() - STALE_TEMP - 10
    for name in (f"{TEMP_PREFIX}blob-crashed", "snapshot-of-another-component"):
        (tmp / name).write_bytes(b"half")
        os.utime(tmp / name, (old, old))
    (tmp / f"{TEMP_PREFIX}blob-being-written").write_bytes(b"live")
    asyncio.run(backend.prune(older_than=1e9))
    assert temps(tmp_path) == [f"{TEMP_PREFIX}blob-being-written",
                               "snapshot-of-another-component"]


def test_strays_in_the_cache_directories_are_ignored(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    (tmp_path / "cache/blobs/sha256/README").write_text("not a blob")
    (tmp_path / "cache/records/notes.txt").write_text("not a record")
    assert asyncio.run(backend.usage()).total_bytes == 0
    asyncio.run(backend.prune())
    assert (tmp_path / "cache/blobs/sha256/README").exists()


def test_a_good_copy_renamed_over_a_corrupt_blob_survives_its_detection(
        tmp_path: Path) -> None:
    """A reader that opened the corrupt file removes it only if it is still that file."""
    backend = LocalBackend(tmp_path)
    digest, data = blob(CHUNK + 7)
    path = tmp_path / "cache/blobs/sha256" / digest.removeprefix("sha256:")
    path.write_bytes(b"rotten")
    stream = backend.blob_source().open_blob(digest)
    good = tmp_path / "tmp/good"
    good.write_bytes(data)
    os.replace(good, path)
    with pytest.raises(BlobCorrupt), stream:
        stream.read()
    assert path.read_bytes() == data
    assert asyncio.run(read_all(backend, digest)) == data


@pytest.mark.parametrize(("blocker", "message"), [
    ("cache", "local cache: cannot create the directory {root}/cache/blobs/sha256: "
              "Not a directory"),
    ("tmp", "local cache: cannot create the directory {root}/tmp: File exists"),
])
def test_an_unusable_root_is_a_cache_error(tmp_path: Path, blocker: str, message: str) -> None:
    (tmp_path / blocker).write_text("a file where a directory belongs")
    with pytest.raises(CacheError) as caught:
        LocalBackend(tmp_path)
    assert caught.value.message == message.format(root=tmp_path)
    assert caught.value.hint == "check the disk and DOCKYARD_ROOT"


def test_a_blob_that_vanishes_is_a_miss(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    digest, data = blob(10)
    asyncio.run(backend.put_blob(digest, data))
    (tmp_path / "cache/blobs/sha256" / digest.removeprefix("sha256:")).unlink()
    with pytest.raises(BlobMissing):
        asyncio.run(backend.open_blob(digest))
    assert backend.blob_source().blob_path(digest) is None


def test_a_record_waits_while_a_prune_holds_the_lock(tmp_path: Path) -> None:
    """put_record checks its blobs and publishes under the shared lock, so a prune (which
    holds it exclusively while it decides and deletes) never leaves it dangling."""
    backend = LocalBackend(tmp_path)
    digest, data = blob(10)
    asyncio.run(backend.put_blob(digest, data))
    fd = os.open(tmp_path / "cache/lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        writer = threading.Thread(
            target=lambda: asyncio.run(backend.put_record(record(1, (digest, data)))))
        writer.start()
        writer.join(0.3)
        assert writer.is_alive(), "put_record did not wait for the lock"
        assert asyncio.run(backend.get_record(key(1))) is None
    finally:
        os.close(fd)
    writer.join(10)
    assert asyncio.run(backend.get_record(key(1))) == record(1, (digest, data))


# --- two processes on one root -------------------------------------------------------------------

SHARED = [blob(size, seed) for seed, size in enumerate([3 * CHUNK + 1, CHUNK, 5, 0, 2 * CHUNK])]


async def _slowly(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), CHUNK // 4):
        await asyncio.sleep(0.001)
        yield data[start:start + CHUNK // 4]


async def _same_blobs(backend: LocalBackend, me: int, barrier: Any) -> None:
    """Both processes write the same blobs and records, each reads all of them back."""
    order = SHARED if me == 0 else SHARED[::-1]
    for n, (digest, data) in enumerate(order):
        await backend.put_blob(digest, _slowly(data))
        await backend.put_record(record(100 + n + 10 * me, (digest, data)))
    barrier.wait(60)
    for digest, data in SHARED:
        assert await read_all(backend, digest) == data
    for n in range(len(SHARED)):
        assert await backend.get_record(key(100 + n + 10 * (1 - me))) is not None


async def _read_as_published(backend: LocalBackend, me: int, count: int) -> None:
    """Process 0 publishes fresh blobs; process 1 reads each as soon as it exists: a
    reader never sees part of a blob (the verifying reader would raise)."""
    fresh = [blob(2 * CHUNK, 1000 + n) for n in range(count)]
    for digest, data in fresh:
        if me == 0:
            await backend.put_blob(digest, _slowly(data))
            continue
        deadline = time.monotonic() + 30
        while not await backend.has(digest):
            assert time.monotonic() < deadline, f"{digest} never appeared"
            await asyncio.sleep(0.001)
        assert await read_all(backend, digest) == data


async def _prune_while_writing(backend: LocalBackend, me: int, count: int) -> int:
    """Process 0 stores blob-then-record pairs while process 1 prunes everything, over and
    over: a record may be refused (its blob was pruned first), never left dangling."""
    refused = 0
    for n in range(count):
        if me == 1:
            await backend.prune()
            continue
        digest, data = blob(4096, 2000 + n)
        await backend.put_blob(digest, data)
        try:
            await backend.put_record(record(2000 + n, (digest, data)))
        except CacheError:
            refused += 1
    return refused


def _process(root: str, me: int, barrier: Any, failures: Any) -> None:
    """One of the two processes: the phases run in step (the barrier blocks the loop, on
    purpose: nothing else runs in it)."""
    async def main() -> None:
        backend = LocalBackend(Path(root))
        await _same_blobs(backend, me, barrier)
        barrier.wait(60)
        await _read_as_published(backend, me, 6)
        barrier.wait(60)
        await _prune_while_writing(backend, me, 60)

    barrier.wait(60)
    try:
        asyncio.run(main())
    except BaseException:
        failures.put(f"process {me}:\n{traceback.format_exc()}")
        raise


def test_two_processes_share_one_root(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    barrier, failures = context.Barrier(2), context.Queue()
    processes = [context.Process(target=_process, args=(str(tmp_path), me, barrier, failures))
                 for me in (0, 1)]
    for process in processes:
        process.start()
    try:
        for process in processes:
            process.join(120)
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join()
    errors = [failures.get(timeout=1) for _ in range(failures.qsize())]
    assert errors == []
    assert [process.exitcode for process in processes] == [0, 0]
    _assert_consistent(tmp_path)


def _assert_consistent(root: Path) -> None:
    """No temporary file left; every record's blobs are there and every blob verifies."""
    backend = LocalBackend(root)
    assert temps(root) == []

    async def check() -> None:
        for name in os.listdir(root / "cache/records"):
            rec = await backend.get_record(f"sha256:{name}")
            assert rec is not None
            for layer in rec.result.layers:
                assert await backend.has(layer.digest), f"{rec.key} names a pruned blob"
        for name in os.listdir(root / "cache/blobs/sha256"):
            await read_all(backend, f"sha256:{name}")

    asyncio.run(check())


# --- the exporters read the cache through the blocking adapter ----------------------------------


def _cached_image(tmp_path: Path) -> tuple[LocalBackend, ImageArtifacts]:
    """A one-layer image whose layer was written into ``<root>/tmp`` and moved into the
    cache, as a worker does."""
    backend = LocalBackend(tmp_path / "root")
    upper = tmp_path / "upper"
    (upper / "etc").mkdir(parents=True)
    (upper / "etc/motd").write_text("cached\n")
    spool = tmp_path / "root/tmp/layer"
    with open(spool, "wb") as out:
        layer = write_layer(upper, out)
    asyncio.run(backend.put_blob(layer.digest, spool, move=True))
    image = build_image(None, ImageConfig(), (layer,), Platform("linux", "amd64"),
                        created=0, epoch=None)
    return backend, image


def test_exporters_read_layers_from_the_cache(tmp_path: Path) -> None:
    backend, image = _cached_image(tmp_path)
    source = backend.blob_source()
    export_local(image, source, tmp_path / "out")
    assert (tmp_path / "out/etc/motd").read_text() == "cached\n"
    export_oci(image, source, tmp_path / "image.tar")
    layer = image.layers[0]
    with tarfile.open(tmp_path / "image.tar") as tar:
        member = tar.extractfile(f"blobs/sha256/{layer.digest.removeprefix('sha256:')}")
        assert member is not None
        assert hashlib.sha256(member.read()).hexdigest() == layer.digest.removeprefix("sha256:")


def test_an_export_over_a_corrupt_cached_layer_fails_and_drops_it(tmp_path: Path) -> None:
    backend, image = _cached_image(tmp_path)
    layer = image.layers[0]
    path = backend.blob_source().blob_path(layer.digest)
    assert path is not None
    path.write_bytes(path.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(BlobCorrupt):
        export_oci(image, backend.blob_source(), tmp_path / "image.tar")
    assert not (tmp_path / "image.tar").exists()
    assert not asyncio.run(backend.has(layer.digest))
