"""A blob source for an export that starts while the blobs it needs still come down.

``ArrivingBlobs(source, fetches)`` wraps the local cache's blob source for an exporter
running in a thread: before it opens a blob, it waits for that blob's fetch (a task of
``WorkerRuntime.start_fetches``, on the event loop) and raises its error if it failed.  A
blob no fetch brings is opened at once.  So the tar's first layers are written while later
ones are still in flight, in the order the tar needs them (the fetches start in that order).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO

from dockyard.cache_backends._local import LocalBlobSource

__all__ = ["ArrivingBlobs"]


def _setter(done: threading.Event) -> Callable[[asyncio.Future[None]], None]:
    return lambda _: done.set()


class ArrivingBlobs:
    """A ``BlobSource`` (with ``open_checked`` and ``blob_path``) over ``source`` that
    waits for each blob's fetch first.  Made on the event loop; read from a thread."""

    def __init__(self, source: LocalBlobSource,
                 fetches: Mapping[str, asyncio.Future[None]]) -> None:
        self._source = source
        # digest -> (set once its fetch is done, that fetch); read-only after __init__
        self._fetches: dict[str, tuple[threading.Event, asyncio.Future[None]]] = {}
        for digest, fetch in fetches.items():
            done = threading.Event()
            fetch.add_done_callback(_setter(done))
            self._fetches[digest] = (done, fetch)

    def arrived(self, digest: str) -> None:
        """Block until ``digest`` is in the local cache (or raise what its fetch raised)."""
        entry = self._fetches.get(digest)
        if entry is None:
            return
        done, fetch = entry
        done.wait()
        if fetch.cancelled():
            raise asyncio.CancelledError(f"the fetch of {digest} was cancelled")
        error = fetch.exception()
        if error is not None:
            raise error

    def open_blob(self, digest: str) -> BinaryIO:
        self.arrived(digest)
        return self._source.open_blob(digest)

    def open_checked(self, digest: str) -> BinaryIO | None:
        self.arrived(digest)
        return self._source.open_checked(digest)

    def blob_path(self, digest: str) -> Path | None:
        self.arrived(digest)
        return self._source.blob_path(digest)

    def __repr__(self) -> str:
        waiting = sum(not done.is_set() for done, _ in self._fetches.values())
        return f"<ArrivingBlobs {self._source!r} waiting={waiting}/{len(self._fetches)}>"
