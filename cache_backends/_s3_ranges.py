"""A large S3 object received into a file by ranged parallel GETs and hashed on the way,
once, in order: what ``S3Backend.fetch_into`` writes into a local store's staging file.

Parts of ``part_size`` bytes come down on up to ``concurrency`` threads; each is written
at its offset (``os.pwrite``) as it arrives and kept in memory until the calling thread,
which walks the parts in order, has fed it to the hash.  So the bytes are written once and
hashed once, the hash runs while later parts are still on the wire, and the store never
reads the file back to check it.

``PartSlots`` bounds one backend's parts held at a time (in flight or waiting for the
hash), across every blob it fetches at once: memory stays under ``slots x part_size``.
A fetch takes a slot before it asks for a part and gives it back once that part is
hashed.  A fetch that holds slots never blocks on the semaphore (it hashes its oldest part
instead, which frees one), so fetches sharing the slots cannot wait on each other forever.
"""

from __future__ import annotations

import collections
import hashlib
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

from dockyard.cache_backends._s3_client import S3Objects

__all__ = ["PartSlots", "Turns", "receive_ranges"]


class Turns:
    """Large blobs come down one at a time, in the order their fetches were asked for
    (``ticket`` on the event loop, in the caller's order): all of a backend's parts go to
    the oldest blob, so blobs arrive in order, each as soon as it can, and an export that
    writes them in that order starts on the first while the others still come (boto3's
    ``download_file`` of one blob after another, parts in parallel, does the same).  Every
    ticket is ended once (``end`` is idempotent); a fetch that needs no turn ends its
    ticket at once, so small blobs never wait behind large ones."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._issued = 0  # the next ticket
        self._serving = 0  # the ticket whose turn it is (every older one has ended)
        self._ended: set[int] = set()  # ended tickets newer than _serving

    def ticket(self) -> int:
        with self._changed:
            self._issued += 1
            return self._issued - 1

    def wait(self, ticket: int) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._serving >= ticket)

    def end(self, ticket: int) -> None:
        with self._changed:
            if ticket < self._serving:
                return
            self._ended.add(ticket)
            while self._serving in self._ended:
                self._ended.discard(self._serving)
                self._serving += 1
            self._changed.notify_all()

    def __repr__(self) -> str:
        return f"<Turns serving={self._serving} issued={self._issued}>"


class PartSlots:
    """The parts one backend may hold at once (see the module docstring); ``.statistics()``
    gives the slots in use and the most ever used."""

    def __init__(self, slots: int) -> None:
        self.slots = max(1, slots)
        self._free = threading.Semaphore(self.slots)
        self._lock = threading.Lock()
        # slots taken now (0 <= used <= slots); and the highest it has been
        self._used = 0
        self._peak = 0

    def take(self, *, wait: bool) -> bool:
        if not self._free.acquire(blocking=wait):
            return False
        with self._lock:
            self._used += 1
            self._peak = max(self._peak, self._used)
        return True

    def give(self) -> None:
        with self._lock:
            self._used -= 1
        self._free.release()

    def statistics(self) -> dict[str, int]:
        with self._lock:
            return {"slots": self.slots, "used": self._used, "peak": self._peak}

    def __repr__(self) -> str:
        stats = self.statistics()
        return f"<PartSlots used={stats['used']}/{stats['slots']} peak={stats['peak']}>"


def receive_ranges(objects: S3Objects, key: str, size: int, file: BinaryIO,
                   slots: PartSlots) -> tuple[str, int]:
    """``key`` (``size`` bytes) into ``file`` at its offsets; (``sha256:`` digest, size)
    of the bytes received, hashed in order as they arrived."""
    part = max(1, objects.settings.part_size)
    starts = range(0, size, part)
    fd = file.fileno()

    def fetch(start: int) -> bytes:
        data = objects.get_range(key, start, min(part, size - start))
        os.pwrite(fd, data, start)  # a short pwrite raises on a regular file
        return data

    digest = hashlib.sha256()
    pending: collections.deque[Future[bytes]] = collections.deque()

    def hash_oldest() -> None:
        try:
            digest.update(pending.popleft().result())
        finally:
            slots.give()

    workers = min(len(starts), objects.settings.concurrency) or 1
    with ThreadPoolExecutor(workers, thread_name_prefix="dockyard-s3-part") as pool:
        try:
            for start in starts:
                while not slots.take(wait=not pending):
                    hash_oldest()
                pending.append(pool.submit(fetch, start))
            while pending:
                hash_oldest()
        except BaseException:
            for future in pending:
                future.cancel()
            while pending:  # what still runs ends before the staging file goes
                future = pending.popleft()
                if not future.cancelled():
                    future.exception()
                slots.give()
            raise
    return "sha256:" + digest.hexdigest(), size
