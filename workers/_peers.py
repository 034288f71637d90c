"""Blobs another worker of the cluster holds, fetched straight from it.

DESIGN.md: layers move between nodes through the shared cache when the cluster has one,
and directly from the worker that holds them when it does not.  The coordinator knows
where every blob is; when it sends a vertex to a worker that lacks an input layer, it
names the worker that holds it (by actor name, plain data).  ``PeerBlobs`` is that worker
as a blob source with ``CacheBackend.fetch_into``'s contract, so the runtime's remote-blob
machinery (``WorkerRuntime.add_remote_blobs``/``ensure_blobs``) fetches from a peer as it
fetches from S3: into a staging file of the local store, hashed once, published only when
the digest matches.  A peer that died, or no longer holds the blob, is ``BlobMissing``
(the solver then rebuilds the step that made it); bytes that do not match are
``BlobCorrupt``.

The peer side is ``WorkerActor.read_blob(digest)``: a stream of chunks of at most
``CHUNK_BYTES`` (Ray's object store carries them), then nothing.  Ray is imported lazily
and only here (STYLE.md habit 9: the one wrapper of the outside system on this side).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from dockyard.cache_backends._protocol import BlobCorrupt, BlobMissing, BlobSink

__all__ = ["CHUNK_BYTES", "FirstOf", "PeerBlobs", "peer_handle"]

_log = logging.getLogger(__name__)

CHUNK_BYTES = 4 * 1024 * 1024  # one object-store object per chunk of a streamed blob
_NAMESPACE = "dockyard"  # dockyard.cluster._ray.NAMESPACE (workers do not import cluster)


def peer_handle(name: str) -> Any:
    """The Ray handle of the worker actor named ``name``; ``BlobMissing`` when it is gone."""
    import ray  # noqa: PLC0415 -- only a worker in a Ray cluster fetches from peers

    try:
        return ray.get_actor(name, namespace=_NAMESPACE)
    except ValueError:
        raise BlobMissing(f"the worker {name} that held the blob is gone",
                          hint="the step that made it is rebuilt") from None


class PeerBlobs:
    """The blobs of the worker actor ``name`` (``handle``: its Ray handle, looked up by
    name when not given)."""

    def __init__(self, name: str, handle: Any = None, *, build_id: str | None = None) -> None:
        self.name = name  # the peer's actor name, for messages
        self.build_id = build_id  # the build the blobs are for (the peer's caches of it)
        self.where = f"worker {name}"
        self._handle = handle  # its Ray actor handle, once looked up

    def __repr__(self) -> str:
        return f"<PeerBlobs {self.name}>"

    async def fetch_into(self, digest: str, sink: BlobSink) -> int:
        """Copy the peer's blob ``digest`` into ``sink``: its size."""
        staged = await asyncio.to_thread(sink.stage_blob, digest)
        try:
            began = time.perf_counter()
            await self._receive(digest, staged.file)
            received = time.perf_counter()
            actual, _ = await asyncio.to_thread(staged.seal)
            if actual != digest:
                raise BlobCorrupt(f"blob {digest} from {self.where} has digest {actual}",
                                  hint="the step that made it is rebuilt")
            checked = time.perf_counter()
            size = await asyncio.to_thread(staged.publish)
            _log.info("blob %s from %s: received in %.3f s, checked in %.3f s, published "
                      "in %.3f s", digest, self.where, received - began, checked - received,
                      time.perf_counter() - checked)
            return size
        finally:
            await asyncio.to_thread(staged.discard)

    async def _receive(self, digest: str, file: Any) -> None:
        import ray.exceptions as rex  # noqa: PLC0415

        if self._handle is None:
            self._handle = await asyncio.to_thread(peer_handle, self.name)
        stream = self._handle.read_blob.options(num_returns="streaming").remote(
            digest, self.build_id)
        received = False
        try:
            async for ref in stream:
                chunk = await ref
                if chunk is None:  # the peer does not hold it (any more)
                    break
                received = True
                await asyncio.to_thread(file.write, chunk)
            else:
                return
        except rex.RayError as exc:
            raise BlobMissing(f"blob {digest} could not be read from {self.where}: "
                              f"{type(exc).__name__}",
                              hint="the step that made it is rebuilt") from None
        what = "stopped sending" if received else "does not hold"
        raise BlobMissing(f"{self.where} {what} blob {digest}",
                          hint="the step that made it is rebuilt")


class FirstOf:
    """Blob sources tried in order (``fetch_into``): a build's shared caches first, then
    the peer that holds the blob -- DESIGN.md: through the shared cache when the cluster
    has one, straight from the worker that holds them when it does not (or when the cache
    does not hold the blob yet: its upload runs beside the build)."""

    def __init__(self, parts: Sequence[Any]) -> None:
        self.parts = tuple(parts)  # each has ``fetch_into`` and ``where``
        self.where = " or ".join(str(getattr(p, "where", p)) for p in self.parts)

    def __repr__(self) -> str:
        return f"<FirstOf {self.where}>"

    async def fetch_into(self, digest: str, sink: BlobSink) -> int:
        failure: BlobMissing | BlobCorrupt | None = None
        for part in self.parts:
            try:
                size: int = await part.fetch_into(digest, sink)
                return size
            except (BlobMissing, BlobCorrupt) as err:
                failure = err
        raise failure or BlobMissing(f"no source holds blob {digest}")
