"""``CacheBackend.fetch_into``: a blob copied from each backend into a real local store
(``LocalBackend``, the sink a worker restores into), and ``WorkerRuntime.ensure_blobs``
fetching several blobs at once from a real S3 endpoint (moto, conftest.py).

Pinned: a good blob arrives whole and verified; a corrupt one raises ``BlobCorrupt``, is
dropped from the source backend, never appears in the sink, and leaves no staging file;
an absent one is ``BlobMissing``.  ``ensure_blobs``: every blob it can fetch arrives, and
one ``BlobLost`` names all those it could not, however many ran at once.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
from pathlib import Path
from typing import Any

import pytest
from _blobs import blob, run
from test_cache_conformance import HARNESSES, Clock, Harness

from dockyard.cache_backends._local import TEMP_PREFIX, LocalBackend
from dockyard.cache_backends._memory import MemoryBackend
from dockyard.cache_backends._protocol import BlobCorrupt, BlobMissing
from dockyard.cache_backends._records import LayerDescriptor
from dockyard.cache_backends._registry import BACKENDS
from dockyard.cache_backends._s3 import S3Backend
from dockyard.scheduler._errors import BlobLost
from dockyard.workers._remote_cache import RemoteCache, RemoteRecords
from dockyard.workers._runtime import REMOTE_FETCHES, WorkerRuntime, build_remotes

MB = 1 << 20


def staging_files(sink: LocalBackend) -> list[str]:
    return sorted(name for name in os.listdir(sink.root / "tmp")
                  if name.startswith(TEMP_PREFIX))


@pytest.fixture(params=sorted(BACKENDS))
def source(request: pytest.FixtureRequest, tmp_path: Path) -> Harness:
    """Each backend, as the conformance suite makes it (test_cache_conformance.py)."""
    return HARNESSES[request.param](tmp_path, Clock(), request)


def stored(sink: LocalBackend, digest: str) -> bytes | None:
    path = sink.root / "cache" / "blobs" / "sha256" / digest.removeprefix("sha256:")
    return path.read_bytes() if path.exists() else None


# (case, size, damage): the S3 harness's threshold is its default 16 MiB, so 20 MiB
# comes down in ranged parallel GETs and the others in one streamed GET.
FETCHES = [
    ("small", 1000, False),
    ("several chunks", 3 * MB + 7, False),
    ("ranged", 20 * MB, False),
    ("small corrupt", 1000, True),
    ("ranged corrupt", 20 * MB, True),
]


@pytest.mark.parametrize(("size", "damage"), [f[1:] for f in FETCHES],
                         ids=[f[0] for f in FETCHES])
def test_fetch_into_a_local_store(source: Harness, tmp_path: Path, size: int,
                                  damage: bool) -> None:
    digest, data = blob(size, size)
    run(source.backend.put_blob(digest, data))
    if damage:
        source.corrupt_blob(digest, data[:-1] + bytes([data[-1] ^ 1]))
    sink = LocalBackend(tmp_path / "sink")
    if damage:
        with pytest.raises(BlobCorrupt) as caught:
            run(source.backend.fetch_into(digest, sink))
        assert caught.value.message.startswith(f"blob {digest} in {source.where} is "
                                               "corrupt")
        assert not run(source.backend.has(digest))  # dropped where it was damaged
        assert stored(sink, digest) is None
    else:
        assert run(source.backend.fetch_into(digest, sink)) == size
        assert stored(sink, digest) == data
    assert staging_files(sink) == []
    assert source.leftovers() == []


def test_fetch_into_of_an_absent_blob_is_a_miss(source: Harness, tmp_path: Path) -> None:
    digest, _ = blob(10, 1)
    sink = LocalBackend(tmp_path / "sink")
    with pytest.raises(BlobMissing):
        run(source.backend.fetch_into(digest, sink))
    assert staging_files(sink) == []


# --- the runtime: several blobs at once --------------------------------------------------------


def _layers(blobs: list[tuple[str, bytes]]) -> list[LayerDescriptor]:
    return [LayerDescriptor(digest, len(data), digest) for digest, data in blobs]


def _remote(s3_endpoint: Any, tmp: Path) -> S3Backend:
    return S3Backend(s3_endpoint.bucket(), "restore/", region="us-east-1",
                     endpoint_url=s3_endpoint.url, use_path_style=True, retry_for=5.0,
                     multipart_threshold=5 * MB, part_size=5 * MB, tmp_dir=tmp)


def _bad_key(digest: str) -> str:
    return f"restore/blobs/sha256/{digest.removeprefix('sha256:')}"


def test_ensure_blobs_fetches_all_it_can_and_names_every_lost_one(
        s3_endpoint: Any, tmp_path: Path) -> None:
    """More blobs than run at once, small and ranged; one corrupt, one absent: the other
    blobs are all in the local cache afterwards, one BlobLost names the two, the corrupt
    object is gone from the bucket and no staging file is left."""
    remote = _remote(s3_endpoint, tmp_path)
    blobs = [blob(6 * MB if n % 2 else 1000 + n, 100 + n) for n in range(REMOTE_FETCHES + 3)]
    for digest, data in blobs:
        run(remote.put_blob(digest, data))
    corrupt, absent = blobs[1], blob(500, 99)
    bucket = remote.where.split("//", 1)[1].split("/", 1)[0]
    s3_endpoint.client().put_object(Bucket=bucket, Key=_bad_key(corrupt[0]),
                                    Body=corrupt[1][::-1])
    runtime = WorkerRuntime(tmp_path / "root")
    layers = _layers([*blobs, absent])
    runtime.add_remote_blobs(layers, remote)
    with pytest.raises(BlobLost) as caught:
        run(runtime.ensure_blobs(layers))
    assert sorted(caught.value.digests) == sorted([corrupt[0], absent[0]])
    assert caught.value.message.startswith("2 layers of cached results are no longer usable")
    for digest, data in blobs:
        assert stored(runtime.cache, digest) == (None if digest == corrupt[0] else data)
    assert not run(remote.has(corrupt[0]))
    assert staging_files(runtime.cache) == []
    assert sorted(runtime.lost) == sorted([corrupt[0], absent[0]])
    with pytest.raises(BlobLost) as again:  # lost ones are not asked again...
        run(runtime.ensure_blobs(layers))
    assert sorted(again.value.digests) == sorted([corrupt[0], absent[0]])
    run(runtime.aclose())


def test_ensure_blobs_runs_a_bounded_number_of_fetches_at_once(
        s3_endpoint: Any, tmp_path: Path) -> None:
    """The fetches overlap (more than one in flight) and never exceed REMOTE_FETCHES;
    the same digest asked twice at once is fetched once."""
    remote = _remote(s3_endpoint, tmp_path)
    blobs = [blob(2000 + n, 200 + n) for n in range(REMOTE_FETCHES * 2)]
    for digest, data in blobs:
        run(remote.put_blob(digest, data))
    flying, peak, calls = 0, 0, []
    real = remote.fetch_into

    async def counted(digest: str, sink: Any) -> int:
        nonlocal flying, peak
        flying += 1
        peak = max(peak, flying)
        calls.append(digest)
        try:
            await asyncio.sleep(0.05)
            return await real(digest, sink)
        finally:
            flying -= 1

    remote.fetch_into = counted  # type: ignore[method-assign]
    runtime = WorkerRuntime(tmp_path / "root")
    layers = _layers(blobs)
    runtime.add_remote_blobs(layers, remote)

    async def twice() -> None:
        await asyncio.gather(runtime.ensure_blobs(layers), runtime.ensure_blobs(layers))

    run(twice())
    assert 1 < peak <= REMOTE_FETCHES
    assert sorted(calls) == sorted(digest for digest, _ in blobs)
    for digest, data in blobs:
        assert stored(runtime.cache, digest) == data
    run(runtime.aclose())


def test_fetches_started_in_the_background_settle_into_one_blob_lost(
        s3_endpoint: Any, tmp_path: Path) -> None:
    """``start_fetches``: a task per blob to fetch (each usable on its own as soon as it
    ends), and ``settle`` raises one BlobLost for the absent ones after all ended."""
    remote = _remote(s3_endpoint, tmp_path)
    blobs = [blob(6 * MB, 300), blob(1000, 301)]
    for digest, data in blobs:
        run(remote.put_blob(digest, data))
    absent = blob(500, 302)
    runtime = WorkerRuntime(tmp_path / "root")
    layers = _layers([*blobs, absent])
    runtime.add_remote_blobs(layers, remote)

    async def go() -> None:
        fetches = runtime.start_fetches(layers)
        assert list(fetches) == [digest for digest, _ in [*blobs, absent]]
        await fetches[blobs[0][0]]
        assert stored(runtime.cache, blobs[0][0]) == blobs[0][1]
        with pytest.raises(BlobLost) as caught:
            await runtime.settle(fetches)
        assert caught.value.digests == (absent[0],)

    run(go())
    assert stored(runtime.cache, blobs[1][0]) == blobs[1][1]
    assert staging_files(runtime.cache) == []
    run(runtime.aclose())


def test_a_builds_remote_caches_serve_no_build_after_it(tmp_path: Path) -> None:
    """The blobs a build's --cache-from backend was to serve are forgotten when that
    build's records close (its backend may hold the build client's credentials); another
    build's stay."""
    runtime = WorkerRuntime(tmp_path / "root")
    ended, other = MemoryBackend(), MemoryBackend()
    mine, theirs = _layers([blob(10, 400), blob(10, 401)]), _layers([blob(10, 402)])
    runtime.add_remote_blobs(mine, ended)
    runtime.add_remote_blobs(theirs, other)
    run(RemoteRecords(runtime, imports=[RemoteCache(ended)]).aclose())
    assert runtime.remote_blobs == {theirs[0].digest: other}
    run(runtime.aclose())


def test_two_open_builds_never_fetch_through_each_others_caches(tmp_path: Path) -> None:
    """While two builds are open on one worker, each call sees its own build's remote
    blobs (``build_remotes``): a digest build A's cache serves is not fetched for build B
    through A's backend (it may hold A's client's credentials), even though both know it;
    B fetches it through its own, and the runtime's own map stays empty."""
    runtime = WorkerRuntime(tmp_path / "root")
    data = blob(10, 403)
    [layer] = _layers([data])
    a_cache, b_cache = MemoryBackend(), MemoryBackend()
    run(a_cache.put_blob(layer.digest, data[1]))
    a_map: dict[str, Any] = {}
    b_map: dict[str, Any] = {}

    async def as_build(remotes: dict[str, Any], work: Any) -> Any:
        context = contextvars.copy_context()
        context.run(build_remotes, remotes)
        return await asyncio.create_task(work(), context=context)

    async def go() -> None:
        await as_build(a_map, lambda: _register(runtime, [layer], a_cache))
        await as_build(b_map, lambda: runtime.ensure_blobs([layer]))  # B knows no cache
        assert stored(runtime.cache, layer.digest) is None  # A's was not asked for B
        await as_build(b_map, lambda: _register(runtime, [layer], b_cache))
        with pytest.raises(BlobLost):  # B's own cache lacks it: A's is still not asked
            await as_build(b_map, lambda: runtime.ensure_blobs([layer]))
        assert stored(runtime.cache, layer.digest) is None
        await as_build(a_map, lambda: runtime.ensure_blobs([layer]))  # A's call: A's cache

    run(go())
    assert stored(runtime.cache, layer.digest) == data[1]
    assert set(a_map) == {layer.digest} and runtime.remote_blobs == {}
    run(runtime.aclose())


async def _register(runtime: WorkerRuntime, layers: list[LayerDescriptor], cache: Any) -> None:
    runtime.add_remote_blobs(layers, cache)
