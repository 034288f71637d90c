"""The S3 backend's write path (cache_backends/_s3.py ``_Bucket``) over a fake bucket that
counts requests (no network): exporting a chain of records -- record ``i`` names blobs
``0..i``, as a ``mode=max`` export of a chain of RUN steps does -- HEADs each blob at most
once and uploads it at most once, marks a stale blob once, and still refuses a record
whose blob it found gone."""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from datetime import UTC, datetime
from typing import IO, Any

import pytest

from dockyard.cache_backends._protocol import Counters
from dockyard.cache_backends._records import CacheRecord, LayerDescriptor, StateResult
from dockyard.cache_backends._s3 import _Bucket
from dockyard.cache_backends._s3_client import Head, S3Settings
from dockyard.scheduler._errors import CacheError

NOW = 1_000_000.0
TOUCH_AFTER = 3600.0
BLOBS = [f"layer {index}".encode() for index in range(4)]
DIGESTS = ["sha256:" + hashlib.sha256(blob).hexdigest() for blob in BLOBS]


class FakeObjects:
    """The calls of ``S3Objects`` the write path makes, on a dict, each one counted."""

    def __init__(self, stored: dict[str, float]) -> None:
        self.settings = S3Settings(bucket="b", concurrency=4)
        self.bucket = "b"
        self.used = dict(stored)  # key -> its use mark
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _count(self, call: str) -> None:
        with self._lock:
            self.calls[call] += 1

    def head(self, key: str) -> Head | None:
        self._count("HEAD")
        used = self.used.get(key)
        return None if used is None else Head(size=7, etag="e", used=used,
                                              modified=datetime.now(UTC))

    def upload(self, key: str, source: IO[bytes], used: float) -> None:
        self._count("PUT blob")
        self.used[key] = used

    def put(self, key: str, data: bytes, used: float) -> None:
        self._count("PUT record")

    def touch(self, key: str, used: float) -> str | None:
        self._count("COPY")
        if key not in self.used:
            return None
        self.used[key] = used
        return "e2"


def _key(index: int) -> str:
    return f"ci/blobs/sha256/{DIGESTS[index].removeprefix('sha256:')}"


def _bucket(stored: dict[str, float]) -> tuple[_Bucket, FakeObjects]:
    objects = FakeObjects(stored)
    bucket = _Bucket(objects, "ci/", lambda: NOW, TOUCH_AFTER, None,  # type: ignore[arg-type]
                     Counters())
    return bucket, objects


def _record(top: int) -> CacheRecord:
    layers = tuple(LayerDescriptor(DIGESTS[index], len(BLOBS[index]), DIGESTS[index])
                   for index in range(top + 1))
    return CacheRecord("sha256:" + f"{top:064x}", StateResult(layers), created=0)


def _export_chain(bucket: _Bucket) -> None:
    """What a ``mode=max`` export does for each record: its blobs, then the record."""
    for top in range(len(BLOBS)):
        for index in range(top + 1):
            bucket.put_blob(DIGESTS[index], BLOBS[index], move=False)
        bucket.put_record(_record(top))


# (case, the blobs the bucket holds before and their use marks' age in seconds, the
#  requests a 4-record chain's export makes; before: 20 HEADs for 4 blobs)
CHAINS: list[tuple[str, dict[int, float], dict[str, int]]] = [
    ("cold", {}, {"HEAD": 4, "PUT blob": 4, "PUT record": 4}),
    ("warm, marks fresh", {i: 60.0 for i in range(4)}, {"HEAD": 4, "PUT record": 4}),
    ("warm, marks stale: each marked once", {i: 2 * TOUCH_AFTER for i in range(4)},
     {"HEAD": 4, "COPY": 4, "PUT record": 4}),
    ("half there", {0: 60.0, 1: 60.0}, {"HEAD": 4, "PUT blob": 2, "PUT record": 4}),
]


@pytest.mark.parametrize(("stored", "requests"), [case[1:] for case in CHAINS],
                         ids=[case[0] for case in CHAINS])
def test_a_chain_export_heads_and_uploads_each_blob_at_most_once(
        stored: dict[int, float], requests: dict[str, int]) -> None:
    bucket, objects = _bucket({_key(i): NOW - age for i, age in stored.items()})
    _export_chain(bucket)
    assert dict(objects.calls) == requests


def test_a_blob_confirmed_by_has_many_is_not_headed_again() -> None:
    bucket, objects = _bucket({_key(i): NOW for i in range(4)})
    assert set(bucket.looked_up(DIGESTS)) == set(DIGESTS)
    _export_chain(bucket)
    assert dict(objects.calls) == {"HEAD": 4, "PUT record": 4}


def _gone_at_mark(bucket: _Bucket, objects: FakeObjects) -> None:
    bucket.confirmed(DIGESTS[:1])  # seen, with a stale mark
    del objects.used[_key(0)]  # pruned meanwhile


def _dropped(bucket: _Bucket, objects: FakeObjects) -> None:
    bucket.confirmed(DIGESTS[:1])
    del objects.used[_key(0)]
    bucket.forget(_key(0))  # what dropping a corrupt blob does


MISSING = (f"cannot store the cache record {_record(0).key} in the S3 cache (s3://b/ci/): "
           f"it names blobs the cache does not hold: {DIGESTS[0]}")
# (case, what happens to blob 0 after this instance saw it, the requests then made)
GONE: list[tuple[str, Any, dict[str, int]]] = [
    ("stale mark finds it gone", _gone_at_mark, {"HEAD": 1, "COPY": 1}),
    ("forgotten when dropped", _dropped, {"HEAD": 2}),
]


@pytest.mark.parametrize(("lose", "requests"), [case[1:] for case in GONE],
                         ids=[case[0] for case in GONE])
def test_a_record_naming_a_blob_found_gone_is_refused(lose: Any,
                                                      requests: dict[str, int]) -> None:
    bucket, objects = _bucket({_key(0): NOW - 2 * TOUCH_AFTER})
    lose(bucket, objects)
    with pytest.raises(CacheError) as caught:
        bucket.put_record(_record(0))
    assert caught.value.message == MISSING
    assert dict(objects.calls) == requests
