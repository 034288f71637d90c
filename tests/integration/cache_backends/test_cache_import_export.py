"""``--cache-to``/``--cache-from`` end to end, in process (cluster/_local_build.py's
``build_local``: real runc, overlayfs, registry, and moto's S3 server on loopback): two
"machines" are two DOCKYARD_ROOTs; the second, empty, gets every vertex from the first's
export, runs no RUN and produces the same image digest.  The last test takes the service's
path (coordinator and worker actor, in process, without Ray)."""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support.inproc_client import client_session
from support.progress import Recorder

from dockyard.cluster._build_options import BuildOptions, OutputSpec, parse_cache
from dockyard.cluster._coordinator import Coordinator
from dockyard.cluster._local_build import LocalBuildOptions, LocalBuildResult, Output, build_local
from dockyard.scheduler._errors import CacheError, ExecError
from dockyard.scheduler._platform import parse_platform
from dockyard.workers._actor import WorkerActor
from dockyard.workers._image import ImageArtifacts

DOCKERFILE = """\
FROM {base}
COPY hello.txt /app/
RUN cat /app/hello.txt > /app/copy && echo one > /app/one
RUN echo two > /app/two
"""


@dataclass
class Machine:
    """One DOCKYARD_ROOT and its outputs."""

    root: Path
    out: Path
    events: Recorder = field(default_factory=Recorder)


def _s3(endpoint: Any, bucket: str, **extra: str) -> str:
    fields = {"type": "s3", "bucket": bucket, "region": "us-east-1", "prefix": "ci/",
              "endpoint_url": endpoint.url, "use_path_style": "true", **extra}
    return ",".join(f"{key}={value}" for key, value in fields.items())


def _build(base: Any, context: Path, machine: Machine, *, cache_to: str = "",
           cache_from: str = "", dockerfile: str = DOCKERFILE, outputs: bool = True,
           epoch: int | None = None) -> LocalBuildResult:
    options = LocalBuildOptions(
        root=machine.root, platforms=(parse_platform("linux/amd64"),), epoch=epoch,
        outputs=(Output("oci", machine.out / "image.tar"),) if outputs else (),
        events=machine.events,
        cache_to=(parse_cache("--cache-to", cache_to),) if cache_to else (),
        cache_from=(parse_cache("--cache-from", cache_from),) if cache_from else ())
    text = dockerfile.format(base=base.reference)
    return asyncio.run(build_local(text.encode(), context, options))


def _digest(result: LocalBuildResult) -> str:
    assert isinstance(result.exported, ImageArtifacts)
    return result.exported.manifest_digest


def _keys(endpoint: Any, bucket: str, kind: str) -> list[str]:
    listed = endpoint.client().list_objects_v2(Bucket=bucket, Prefix=f"ci/{kind}/")
    return [item["Key"] for item in listed.get("Contents", [])]


def _local_blobs(machine: Machine) -> list[Path]:
    return [p for p in (machine.root / "cache").rglob("*") if p.is_file()
            and "blobs" in p.parts]


@pytest.fixture
def context(tmp_path: Path) -> Path:
    context = tmp_path / "context"
    context.mkdir()
    (context / "hello.txt").write_text("hello\n")
    return context


@pytest.fixture
def machines(tmp_path: Path) -> tuple[Machine, Machine]:
    made = []
    for name in ("one", "two"):
        (tmp_path / name / "out").mkdir(parents=True)
        made.append(Machine(tmp_path / name / "root", tmp_path / name / "out"))
    return made[0], made[1]


# (mode, records in the bucket after the first build: max every vertex, min the image's
# layer chain: FROM, COPY and both RUNs, not the context's)
MODES = [("max", 5), ("min", 4)]


@pytest.mark.parametrize("mode,records", MODES)
def test_second_machine_runs_no_run_and_builds_the_same_image(
        s3_endpoint: Any, busybox_image: Any, context: Path,
        machines: tuple[Machine, Machine], mode: str, records: int) -> None:
    first, second = machines
    bucket = s3_endpoint.bucket()
    built = _build(busybox_image, context, first,
                   cache_to=_s3(s3_endpoint, bucket, mode=mode))
    assert built.statistics.executed > 0
    assert len(_keys(s3_endpoint, bucket, "records")) == records
    again = _build(busybox_image, context, second, cache_from=_s3(s3_endpoint, bucket))
    assert again.statistics.executed == 0 and second.events.started() == []
    assert _digest(again) == _digest(built)
    assert (second.out / "image.tar").read_bytes() == (first.out / "image.tar").read_bytes()
    assert second.events.warnings() == []


def test_local_cache_dest_and_src_round_trip(busybox_image: Any, context: Path,
                                             machines: tuple[Machine, Machine],
                                             tmp_path: Path) -> None:
    first, second = machines
    store = tmp_path / "exported-cache"
    built = _build(busybox_image, context, first, cache_to=f"type=local,dest={store}")
    again = _build(busybox_image, context, second, cache_from=f"type=local,src={store}")
    assert again.statistics.executed == 0 and second.events.started() == []
    assert _digest(again) == _digest(built)


def test_blobs_are_fetched_only_when_something_needs_them(
        s3_endpoint: Any, busybox_image: Any, context: Path,
        machines: tuple[Machine, Machine]) -> None:
    first, second = machines
    bucket = s3_endpoint.bucket()
    _build(busybox_image, context, first, cache_to=_s3(s3_endpoint, bucket, mode="max"))
    cache_from = _s3(s3_endpoint, bucket)
    cached = _build(busybox_image, context, second, cache_from=cache_from, outputs=False)
    assert cached.statistics.executed == 0 and _local_blobs(second) == []
    grown = DOCKERFILE + "RUN cat /app/one /app/two > /app/three\n"
    extended = _build(busybox_image, context, second, cache_from=cache_from,
                      dockerfile=grown, outputs=False)
    assert extended.statistics.executed == 1
    assert second.events.started() == ["[5/5] RUN cat /app/one /app/two > /app/three"]
    assert _local_blobs(second) != []


def test_a_failed_build_keeps_what_it_finished(s3_endpoint: Any, busybox_image: Any,
                                               context: Path,
                                               machines: tuple[Machine, Machine]) -> None:
    first, second = machines
    bucket = s3_endpoint.bucket()
    failing = DOCKERFILE + "RUN exit 3\n"
    with pytest.raises(ExecError):
        _build(busybox_image, context, first, dockerfile=failing,
               cache_to=_s3(s3_endpoint, bucket, mode="max"))
    assert len(_keys(s3_endpoint, bucket, "records")) == 5  # all but the failed RUN
    again = _build(busybox_image, context, second, cache_from=_s3(s3_endpoint, bucket))
    assert again.statistics.executed == 0


def _layer(result: LocalBuildResult, from_top: int) -> str:
    """The blob of the image's ``from_top``-th layer counted from its last (1: the last
    RUN's, 2: the RUN below it), as the image and the bucket hold it (gzip; the local
    records name the uncompressed layers)."""
    assert isinstance(result.exported, ImageArtifacts)
    return result.exported.layers[-from_top].digest


def _damage(endpoint: Any, bucket: str, digest: str, how: str) -> None:
    key = f"ci/blobs/sha256/{digest.removeprefix('sha256:')}"
    if how == "missing":
        endpoint.client().delete_object(Bucket=bucket, Key=key)
    else:
        endpoint.client().put_object(Bucket=bucket, Key=key, Body=b"not the layer")


def _stored_digest(endpoint: Any, bucket: str, digest: str) -> str:
    """The digest of the bytes the bucket holds under ``digest``'s name."""
    key = f"ci/blobs/sha256/{digest.removeprefix('sha256:')}"
    body = endpoint.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    return "sha256:" + hashlib.sha256(body).hexdigest()


EPOCH = 1_700_000_000  # reproducible layers: a rebuilt one has the digest of the lost one
MIDDLE_RUN = "RUN cat /app/hello.txt > /app/copy && echo one > /app/one"
GROWN = DOCKERFILE + "RUN cat /app/one /app/two > /app/three\n"
TOP_RUN = "RUN echo two > /app/two"
NEW_RUN = "[5/5] RUN cat /app/one /app/two > /app/three"
# (case, the lost layers counted from the image's top, how they are lost, the second
#  machine's Dockerfile (GROWN: a new step on top unpacks the layers; else the output
#  needs them), the steps the second machine runs)
LOST = [
    ("top-corrupt-at-export", (1,), "corrupt", DOCKERFILE, [f"[4/4] {TOP_RUN}"]),
    ("top-missing-at-export", (1,), "missing", DOCKERFILE, [f"[4/4] {TOP_RUN}"]),
    ("middle-corrupt-at-export", (2,), "corrupt", DOCKERFILE, [f"[3/4] {MIDDLE_RUN}"]),
    ("top-and-middle-corrupt-at-export", (1, 2), "corrupt", DOCKERFILE,
     [f"[3/4] {MIDDLE_RUN}", f"[4/4] {TOP_RUN}"]),
    ("middle-missing-under-a-new-step", (2,), "missing", GROWN,
     [f"[3/5] {MIDDLE_RUN}", NEW_RUN]),
    ("top-corrupt-under-a-new-step", (1,), "corrupt", GROWN, [f"[4/5] {TOP_RUN}", NEW_RUN]),
    ("top-and-middle-missing-under-a-new-step", (1, 2), "missing", GROWN,
     [f"[3/5] {MIDDLE_RUN}", f"[4/5] {TOP_RUN}", NEW_RUN]),
]


@pytest.mark.parametrize(("from_top", "how", "dockerfile", "runs"),
                         [case[1:] for case in LOST], ids=[case[0] for case in LOST])
def test_a_lost_blob_is_a_miss_that_rebuilds_its_step_and_repairs_the_bucket(
        s3_endpoint: Any, busybox_image: Any, context: Path,
        machines: tuple[Machine, Machine], from_top: tuple[int, ...], how: str,
        dockerfile: str, runs: list[str]) -> None:
    first, second = machines
    bucket = s3_endpoint.bucket()
    cache, export = _s3(s3_endpoint, bucket), _s3(s3_endpoint, bucket, mode="max")
    built = _build(busybox_image, context, first, cache_to=export, epoch=EPOCH)
    lost = [_layer(built, index) for index in from_top]
    for digest in lost:
        _damage(s3_endpoint, bucket, digest, how)
    again = _build(busybox_image, context, second, cache_from=cache, cache_to=export,
                   dockerfile=dockerfile, epoch=EPOCH)
    assert sorted(second.events.started()) == sorted(runs)
    assert second.events.warnings() == []
    for digest in lost:  # repaired by the export
        assert _stored_digest(s3_endpoint, bucket, digest) == digest
    if dockerfile == DOCKERFILE:
        assert _digest(again) == _digest(built)
    third = Machine(second.root.parent / "third", second.out)
    repaired = _build(busybox_image, context, third, cache_from=cache,
                      dockerfile=dockerfile, epoch=EPOCH)
    assert repaired.statistics.executed == 0 and _digest(repaired) == _digest(again)


MISSING = "dockyard-no-such-bucket"
WHERE = f"the S3 cache (s3://{MISSING}/ci/)"
NO_BUCKET = "(NoSuchBucket) when calling the {} operation (reached max retries: 0): " \
    "The specified bucket does not exist"
# (flag, extra attributes, CacheError or the warning: its start and end)
UNUSABLE = [
    ("--cache-to", {"mode": "max", "ignore-error": "true"}, None,
     f"cache export to {WHERE} failed: S3 cache: cannot upload ",
     NO_BUCKET.format("PutObject")),
    ("--cache-to", {"mode": "max"}, CacheError,
     f"cache export to {WHERE} failed: S3 cache: cannot upload ",
     NO_BUCKET.format("PutObject")),
    ("--cache-from", {}, None,
     f"cache import from {WHERE} failed, reading it as misses for this build: ",
     NO_BUCKET.format("GetObject")),
]


@pytest.mark.parametrize("flag,extra,error,start,end", UNUSABLE)
def test_an_unusable_cache_is_one_warning_or_a_pinned_error(
        s3_endpoint: Any, busybox_image: Any, context: Path,
        machines: tuple[Machine, Machine], flag: str, extra: dict[str, str],
        error: type[Exception] | None, start: str, end: str) -> None:
    first, _ = machines
    value = _s3(s3_endpoint, MISSING, **extra)
    to, source = (value, "") if flag == "--cache-to" else ("", value)
    if error is not None:
        with pytest.raises(error) as caught:
            _build(busybox_image, context, first, cache_to=to, cache_from=source)
        text = str(caught.value).splitlines()[0]
    else:
        built = _build(busybox_image, context, first, cache_to=to, cache_from=source)
        assert built.statistics.executed > 0
        [text] = first.events.warnings()
    assert text.startswith(start) and text.endswith(end), text


# --- the service's path: coordinator and worker actor, in process -----------------------


class InProcessWorker:
    """A ``WorkerHandle`` over a ``WorkerActor`` in this process.  The record calls carry
    the open build's id, as the coordinator's ``WorkerRecords`` must once wired (the
    actor then consults that build's remote caches)."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor
        self.build_id: str | None = None

    async def call(self, method: str, *args: Any) -> Any:
        if method == "open_session":
            self.build_id = args[0]
        if method in ("get_record", "put_record") and len(args) == 1:  # no build id yet
            args = (*args, self.build_id)
        return await getattr(self.actor, method)(*args)

    def stream(self, method: str, *args: Any) -> Any:
        return _Stream(getattr(self.actor, method)(*args))


@dataclass
class _Stream:
    items: Any

    def __aiter__(self) -> Any:
        return self.items

    def cancel(self) -> None:
        return None


def _service_build(base: Any, context: Path, machine: Machine, push: str = "",
                   dockerfile: str = DOCKERFILE, epoch: int | None = None,
                   **caches: str) -> dict[str, Any]:
    pushes = (OutputSpec("image", None, (push,), True),) if push else ()
    options = BuildOptions(
        context=str(context), platforms=("linux/amd64",), epoch=epoch,
        outputs=pushes or (OutputSpec("oci", str(machine.out / "image.tar")),),
        cache_to=tuple(parse_cache("--cache-to", v) for v in caches.get("to", "").split()),
        cache_from=tuple(parse_cache("--cache-from", v)
                         for v in caches.get("source", "").split()))
    session, channel = client_session(options, context, machine.out / "client-root")
    request = {"options": options.to_wire(), "session": session,
               "dockerfile": dockerfile.format(base=base.reference).encode()}

    async def main() -> dict[str, Any]:
        actor = WorkerActor(str(machine.root), ["amd64"])
        actor.sessions.channels = lambda part: channel
        coordinator = Coordinator(InProcessWorker(actor), ["amd64"])
        items = [item async for item in coordinator.solve(request)]
        assert "result" in items[-1], items[-1]
        result: dict[str, Any] = items[-1]["result"]
        return result
    return asyncio.run(main())


def test_through_the_worker_actor(s3_endpoint: Any, busybox_image: Any, context: Path,
                                  machines: tuple[Machine, Machine]) -> None:
    first, second = machines
    bucket = s3_endpoint.bucket()
    built = _service_build(busybox_image, context, first,
                           to=_s3(s3_endpoint, bucket, mode="max"))
    assert built["statistics"]["executed"] > 0
    assert len(_keys(s3_endpoint, bucket, "records")) == 5
    name = f"{busybox_image.domain}/cached/app:1"
    again = _service_build(busybox_image, context, second, push=name,
                           source=_s3(s3_endpoint, bucket))
    assert again["statistics"]["executed"] == 0
    digest = built["metadata"]["containerimage.digest"]
    assert again["metadata"]["containerimage.digest"] == digest
    assert again["pushed"] == [f"{name}@{digest}"]  # its layers fetched for the push only


def test_a_lost_blob_under_a_new_step_is_rebuilt_through_the_worker_actor(
        s3_endpoint: Any, busybox_image: Any, context: Path,
        machines: tuple[Machine, Machine]) -> None:
    """The worker's BlobLost crosses to the coordinator's solver, which rebuilds the
    layer's step there and retries."""
    first, second = machines
    bucket = s3_endpoint.bucket()
    built = _build(busybox_image, context, first, epoch=EPOCH,
                   cache_to=_s3(s3_endpoint, bucket, mode="max"))
    lost = _layer(built, 2)
    _damage(s3_endpoint, bucket, lost, "corrupt")
    again = _service_build(busybox_image, context, second, dockerfile=GROWN, epoch=EPOCH,
                           source=_s3(s3_endpoint, bucket),
                           to=_s3(s3_endpoint, bucket, mode="max"))
    assert again["statistics"]["executed"] == 2  # the middle RUN and the new one
    assert _stored_digest(s3_endpoint, bucket, lost) == lost


def _broken_local_records(machine: Machine) -> list[str]:
    """The local records that name a blob the local store lacks (the store's invariant)."""
    from dockyard.cache_backends._records import CacheRecord  # noqa: PLC0415
    cache = machine.root / "cache"
    broken = []
    for path in (cache / "records").iterdir():
        record = CacheRecord.from_bytes(path.read_bytes())
        for layer in record.result.layers:
            if not (cache / "blobs" / "sha256" / layer.digest.removeprefix("sha256:")).is_file():
                broken.append(f"{record.key} names {layer.digest}")
    return broken


# (case, whether the --cache-from restore writes an OCI output (fetching every blob the
#  image names), the RUN steps a later build of the same thing on that root runs without
#  --cache-from: none when the imported records were kept, both when nothing was fetched)
KEPT = [
    ("oci-output-restore-is-kept", True, []),
    ("no-output-restore-stays-remote", False,
     ["[3/4] " + MIDDLE_RUN, "[4/4] " + TOP_RUN]),
]


@pytest.mark.parametrize(("outputs", "runs"), [case[1:] for case in KEPT],
                         ids=[case[0] for case in KEPT])
def test_imported_records_are_kept_locally_once_their_blobs_are(
        s3_endpoint: Any, busybox_image: Any, context: Path,
        machines: tuple[Machine, Machine], outputs: bool, runs: list[str]) -> None:
    first, second = machines
    bucket = s3_endpoint.bucket()
    built = _build(busybox_image, context, first, epoch=EPOCH,
                   cache_to=_s3(s3_endpoint, bucket, mode="max"))
    restored = _build(busybox_image, context, second, epoch=EPOCH, outputs=outputs,
                      cache_from=_s3(s3_endpoint, bucket))
    assert restored.statistics.executed == 0
    assert _broken_local_records(second) == []
    later = Machine(second.root, second.out)  # the same root, its own events
    again = _build(busybox_image, context, later, epoch=EPOCH)
    assert sorted(step for step in later.events.started() if "] RUN " in step) == runs
    assert _digest(again) == _digest(built)
    assert _broken_local_records(second) == []


@dataclass
class _Via:
    url: str


def test_a_mode_max_export_heads_and_uploads_each_blob_once(
        s3_endpoint: Any, busybox_image: Any, context: Path,
        machines: tuple[Machine, Machine]) -> None:
    """A chain's records share their lower layers; each blob costs one HEAD and one PUT
    (cold bucket), each record one PUT -- not a HEAD per layer per record."""
    from benchmarks._s3 import counting_proxy  # noqa: PLC0415 -- the benchmark's counter
    first, _ = machines
    bucket = s3_endpoint.bucket()
    with counting_proxy(s3_endpoint.url) as proxy:
        _build(busybox_image, context, first,
               cache_to=_s3(_Via(proxy.url), bucket, mode="max"))
        requests = proxy.summary()
        repeated = [seen for seen, times in Counter(proxy.requests).items() if times > 1]
    blobs = len(_keys(s3_endpoint, bucket, "blobs"))
    assert blobs >= 4  # busybox, the COPY, two RUNs
    assert requests == {"HEAD blob": blobs, "PUT blob": blobs, "PUT record": 5}
    assert repeated == []
