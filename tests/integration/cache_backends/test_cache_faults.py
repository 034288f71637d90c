"""The S3 cache under faults, at build level (cluster/_local_build.py's ``build_local``:
real runc, overlayfs, registry, and moto's S3 server on loopback):

- an unreachable cache (a closed loopback port) costs a build seconds, not the retry
  budget: ``--cache-from`` is misses and one warning; ``--cache-to`` with ignore-error one
  warning, without it a ``CacheError`` naming the endpoint at the build's end;
- a fault-injecting proxy between boto3 and moto (503 SlowDown, dropped connections,
  stalls, bodies cut or hung mid-way): one machine exports ``mode=max`` through it, a second
  with an empty store imports through it, runs no RUN and builds the same image digest;
- two builds exporting the same keys to one bucket at once both succeed;

and afterwards the bucket is whole: every blob hashes to its name, every record parses and
names blobs that exist, no multipart upload is left open.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from _fault_proxy import FaultyProxy, running_proxy
from support.progress import Recorder

from dockyard.cache_backends import _s3_client
from dockyard.cache_backends._records import CacheRecord
from dockyard.cluster._build_options import parse_cache
from dockyard.cluster._local_build import LocalBuildOptions, LocalBuildResult, Output, build_local
from dockyard.scheduler._errors import CacheError
from dockyard.scheduler._platform import parse_platform
from dockyard.workers._image import ImageArtifacts

# the big layer (18 MB of noise from the context, above the 16 MiB multipart threshold)
# goes up in parts and comes down in ranged GETs
DOCKERFILE = """\
FROM {base}
COPY noise.bin /app/
RUN cat /app/noise.bin | wc -c > /app/size
RUN echo two > /app/two
"""
SMALL = """\
FROM {base}
COPY hello.txt /app/
RUN echo one > /app/one
RUN echo two > /app/two
"""
#: The records a mode=max export of DOCKERFILE writes (one per vertex).
RECORDS = 5
#: Seconds a build against an unreachable cache may take: far below the 60 s retry budget.
FAST = 30.0


@dataclass
class Machine:
    """One DOCKYARD_ROOT and its output."""

    root: Path
    events: Recorder = field(default_factory=Recorder)

    def options(self, cache_to: str = "", cache_from: str = "") -> LocalBuildOptions:
        return LocalBuildOptions(
            root=self.root, platforms=(parse_platform("linux/amd64"),),
            outputs=(Output("oci", self.root.parent / f"{self.root.name}.tar"),),
            events=self.events,
            cache_to=(parse_cache("--cache-to", cache_to),) if cache_to else (),
            cache_from=(parse_cache("--cache-from", cache_from),) if cache_from else ())


def s3(url: str, bucket: str, **extra: str) -> str:
    fields = {"type": "s3", "bucket": bucket, "region": "us-east-1", "prefix": "ci/",
              "endpoint_url": url, "use_path_style": "true", **extra}
    return ",".join(f"{key}={value}" for key, value in fields.items())


def build(base: Any, context: Path, machine: Machine, dockerfile: str = DOCKERFILE,
          **caches: str) -> LocalBuildResult:
    text = dockerfile.format(base=base.reference).encode()
    return asyncio.run(build_local(text, context, machine.options(**caches)))


def digest_of(result: LocalBuildResult) -> str:
    assert isinstance(result.exported, ImageArtifacts)
    return result.exported.manifest_digest


def assert_whole(endpoint: Any, bucket: str) -> tuple[int, int]:
    """Every object of the bucket is whole (see the module docstring); (blobs, records)."""
    client = endpoint.client()
    listed = client.list_objects_v2(Bucket=bucket).get("Contents", [])
    keys = {item["Key"] for item in listed}
    blobs = records = 0
    for key in sorted(keys):
        data = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        if key.startswith("ci/blobs/sha256/"):
            assert hashlib.sha256(data).hexdigest() == key.rsplit("/", 1)[1], key
            blobs += 1
            continue
        assert key.startswith("ci/records/"), key
        record = CacheRecord.from_bytes(data)
        assert record.key == "sha256:" + key.rsplit("/", 1)[1]
        for layer in record.result.layers:
            assert f"ci/blobs/sha256/{layer.digest.removeprefix('sha256:')}" in keys, key
        records += 1
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    return blobs, records


def etags(endpoint: Any, bucket: str) -> list[str]:
    listed = endpoint.client().list_objects_v2(Bucket=bucket).get("Contents", [])
    return [str(item["ETag"]) for item in listed]


@pytest.fixture
def context(tmp_path: Path) -> Path:
    context = tmp_path / "context"
    context.mkdir()
    (context / "hello.txt").write_text("hello\n")
    (context / "noise.bin").write_bytes(random.Random(4).randbytes(18 << 20))
    return context


@pytest.fixture
def machines(tmp_path: Path) -> tuple[Machine, Machine]:
    return Machine(tmp_path / "one"), Machine(tmp_path / "two")


@pytest.fixture
def proxy(s3_endpoint: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultyProxy]:
    """The faulty proxy; stalls outlast the (shortened) read timeout of the builds."""
    monkeypatch.setattr(_s3_client, "READ_TIMEOUT", 1.0)
    with running_proxy(s3_endpoint.url, stall_for=4.0) as faulty:
        yield faulty


# --- an unreachable cache ------------------------------------------------------------------

# (name, flag, extra attributes, the endpoint: "closed" a closed port, "silent" one that
# accepts and never answers, the build fails, the warning or error: its start)
UNREACHABLE = [
    ("from closed", "--cache-from", {}, "closed", False,
     "cache import from the S3 cache (s3://{bucket}/ci/) failed, reading it as "
     "misses for this build: S3 cache: cannot read s3://{bucket}/ci/records/"),
    ("from silent", "--cache-from", {}, "silent", False,
     "cache import from the S3 cache (s3://{bucket}/ci/) failed, reading it as "
     "misses for this build: S3 cache: cannot read s3://{bucket}/ci/records/"),
    ("to closed, ignore-error", "--cache-to", {"mode": "max", "ignore-error": "true"},
     "closed", False,
     "cache export to the S3 cache (s3://{bucket}/ci/) failed: S3 cache: cannot "
     "look up s3://{bucket}/ci/blobs/sha256/"),
    ("to closed", "--cache-to", {"mode": "max"}, "closed", True,
     "cache export to the S3 cache (s3://{bucket}/ci/) failed: S3 cache: cannot look up "
     "s3://{bucket}/ci/blobs/sha256/"),
]
CAUSES = {"closed": "Could not connect to the endpoint URL", "silent": "Read timeout on "
          "endpoint URL"}


@pytest.mark.parametrize("flag,extra,kind,fails,start", [u[1:] for u in UNREACHABLE],
                         ids=[u[0] for u in UNREACHABLE])
def test_an_unreachable_cache_costs_seconds_and_one_warning_or_a_pinned_error(
        s3_endpoint: Any, busybox_image: Any, context: Path,
        machines: tuple[Machine, Machine], flag: str, extra: dict[str, str], kind: str,
        fails: bool, start: str) -> None:
    machine, _ = machines  # s3_endpoint: for its credentials, not its address
    bucket = "dockyard-unreachable"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        if kind == "silent":
            sock.listen(64)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        value = s3(url, bucket, **extra)
        caches = {"cache_to": value} if flag == "--cache-to" else {"cache_from": value}
        began = time.monotonic()
        if fails:
            with pytest.raises(CacheError) as caught:
                build(busybox_image, context, machine, SMALL, **caches)
            text = caught.value.message
        else:
            built = build(busybox_image, context, machine, SMALL, **caches)
            assert built.statistics.executed > 0
            [text] = machine.events.warnings()
        assert time.monotonic() - began < FAST
    assert text.startswith(start.format(bucket=bucket)), text
    assert f"cannot reach {url}: {CAUSES[kind]}" in text


# --- a faulty cache --------------------------------------------------------------------------

EXPORT_FAULTS = ["503", "drop", "stall", "503", "drop", "503", "stall", "drop"]
IMPORT_FAULTS = ["cut", "503", "hang", "drop"]


def test_builds_through_a_faulty_proxy_succeed_and_leave_the_bucket_whole(
        s3_endpoint: Any, busybox_image: Any, context: Path,
        machines: tuple[Machine, Machine], proxy: FaultyProxy) -> None:
    first, second = machines
    bucket = s3_endpoint.bucket()
    proxy.schedule(EXPORT_FAULTS, every=3)
    built = build(busybox_image, context, first, cache_to=s3(proxy.url, bucket, mode="max"))
    assert built.statistics.executed > 0 and first.events.warnings() == []
    assert proxy.met == EXPORT_FAULTS
    whole = assert_whole(s3_endpoint, bucket)
    assert whole[1] == RECORDS
    assert any(etag.endswith('-3"') for etag in etags(s3_endpoint, bucket))  # multipart

    proxy.met.clear()
    proxy.schedule(IMPORT_FAULTS, every=2)
    again = build(busybox_image, context, second, cache_from=s3(proxy.url, bucket))
    assert again.statistics.executed == 0 and second.events.started() == []
    assert second.events.warnings() == []
    assert proxy.met == IMPORT_FAULTS, proxy.seen
    assert digest_of(again) == digest_of(built)
    assert assert_whole(s3_endpoint, bucket) == whole


# --- concurrent exports ---------------------------------------------------------------------


def test_two_builds_exporting_the_same_keys_at_once(
        s3_endpoint: Any, busybox_image: Any, context: Path,
        machines: tuple[Machine, Machine]) -> None:
    bucket = s3_endpoint.bucket()
    export = s3(s3_endpoint.url, bucket, mode="max")
    text = DOCKERFILE.format(base=busybox_image.reference).encode()

    async def both() -> list[LocalBuildResult]:
        return list(await asyncio.gather(*(
            build_local(text, context, machine.options(cache_to=export))
            for machine in machines)))

    results = asyncio.run(both())
    assert all(result.statistics.executed > 0 for result in results)
    assert all(machine.events.warnings() == [] for machine in machines)
    assert assert_whole(s3_endpoint, bucket)[1] == RECORDS
    # each key holds one of the two builds' records (the last written): a third machine
    # gets every step from them
    third = Machine(machines[0].root.parent / "three")
    again = build(busybox_image, context, third, cache_from=s3(s3_endpoint.url, bucket))
    assert again.statistics.executed == 0 and third.events.started() == []
