"""End-to-end builds in one process (cluster/_local_build.py): real runc, real overlayfs,
a real registry holding the multi-arch busybox image, real exporters."""

from __future__ import annotations

import asyncio
import io
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
from engine_helpers import layer_bytes, oci_config, run_image
from support.progress import Recorder

from dockyard.cluster._local_build import LocalBuildOptions, LocalBuildResult, Output, build_local
from dockyard.scheduler._errors import ExecError, SolveError
from dockyard.scheduler._platform import parse_platform
from dockyard.workers._image import ImageArtifacts, IndexArtifacts

SECRET = b"s3cr3t-value"
DOCKERFILE = """\
FROM {base} AS build
ARG TARGETARCH
WORKDIR /src
COPY hello.txt .
RUN --mount=type=cache,target=/cache echo "$TARGETARCH" >> /cache/runs && \\
    cat hello.txt > out.txt && uname -m >> out.txt
RUN --mount=type=secret,id=token cat /run/secrets/token | wc -c > /src/token-size

FROM {base}
ENV GREETING=hi
COPY --from=build /src /app
RUN echo 'app:x:1000:1000:app:/home/app:/bin/sh' >> /etc/passwd
USER app
WORKDIR /app
RUN id -u > /tmp/uid
CMD ["sh", "-c", "echo $GREETING $(id -u); cat /app/out.txt /app/token-size"]
"""


def _options(root: Path, out: Path, arches: str = "amd64", **extra: Any
             ) -> LocalBuildOptions:
    out.mkdir(parents=True, exist_ok=True)
    platforms = tuple(parse_platform(f"linux/{arch}") for arch in arches.split(","))
    outputs = (Output("oci", out / "image.tar"), Output("local", out / "rootfs"))
    return LocalBuildOptions(root=root, platforms=platforms, secrets={"token": SECRET},
                             **({"outputs": outputs} | extra))


def _context(tmp_path: Path) -> Path:
    context = tmp_path / "context"
    context.mkdir(parents=True)
    (context / "hello.txt").write_text("hello world\n")
    (context / "ignored.txt").write_text("nope\n")
    (context / ".dockerignore").write_text("ignored.txt\n")
    return context


def _build(dockerfile: str, context: Path, options: LocalBuildOptions) -> LocalBuildResult:
    return asyncio.run(build_local(dockerfile.encode(), context, options))


def _digest(result: LocalBuildResult) -> str:
    exported = result.exported
    if isinstance(exported, ImageArtifacts):
        return exported.manifest_digest
    return exported.digest


@pytest.mark.parametrize("arch,machine", [("amd64", "x86_64"), ("arm64", "aarch64")])
def test_multistage_build_runs_and_rebuilds_from_cache(tmp_path: Path, busybox_image: Any,
                                                       arch: str, machine: str) -> None:
    root, context = tmp_path / "root", _context(tmp_path)
    dockerfile = DOCKERFILE.format(base=busybox_image.reference)
    first = _build(dockerfile, context, _options(root, tmp_path / "out1", arch))
    rootfs = tmp_path / "out1" / "rootfs"
    assert (rootfs / "app" / "out.txt").read_text() == f"hello world\n{machine}\n"
    assert not (rootfs / "run").exists()
    assert not (rootfs / "cache").exists()
    assert (rootfs / "tmp" / "uid").read_text() == "1000\n"
    assert all(SECRET not in blob for blob in layer_bytes(tmp_path / "out1" / "image.tar"))
    assert [p.name for p in (root / "cachemounts").iterdir()] == ["%2Fcache"]
    config = oci_config(tmp_path / "out1" / "image.tar")
    assert config["architecture"] == arch and config["config"]["User"] == "app"
    code, output = run_image(rootfs, config, tmp_path / "bundle")
    assert (code, output) == (0, f"hi 1000\nhello world\n{machine}\n12\n")

    again = Recorder()
    second = _build(dockerfile, context, _options(root, tmp_path / "out2", arch,
                                                  events=again))
    assert second.statistics.executed == 0 and again.started() == []
    assert _digest(second) == _digest(first)
    assert (tmp_path / "out2" / "image.tar").read_bytes() == \
        (tmp_path / "out1" / "image.tar").read_bytes()


def test_multi_platform_build_gives_an_index_and_per_platform_dirs(
        tmp_path: Path, busybox_image: Any) -> None:
    dockerfile = f"FROM {busybox_image.reference}\nRUN uname -m > /arch\n"
    result = _build(dockerfile, _context(tmp_path),
                    _options(tmp_path / "root", tmp_path / "out", "amd64,arm64"))
    assert isinstance(result.exported, IndexArtifacts)
    local = tmp_path / "out" / "rootfs"
    assert (local / "linux_amd64" / "arch").read_text() == "x86_64\n"
    assert (local / "linux_arm64" / "arch").read_text() == "aarch64\n"


def test_a_one_line_change_reruns_only_what_reads_it(tmp_path: Path,
                                                     busybox_image: Any) -> None:
    context, root = _context(tmp_path), tmp_path / "root"
    (context / "b.txt").write_text("one\n")
    dockerfile = (f"FROM {busybox_image.reference}\nCOPY hello.txt /a/\nRUN cat /a/hello.txt "
                  "> /a/copy\nCOPY b.txt /b/\nRUN cat /b/b.txt > /b/copy\n")
    _build(dockerfile, context, _options(root, tmp_path / "out1"))
    (context / "b.txt").write_text("two\n")
    events = Recorder()
    _build(dockerfile, context, _options(root, tmp_path / "out2", events=events))
    assert sorted(events.started()) == ["[4/5] COPY b.txt /b/",
                                        "[5/5] RUN cat /b/b.txt > /b/copy",
                                        "[internal] load build context"]
    assert (tmp_path / "out2" / "rootfs" / "b" / "copy").read_text() == "two\n"


def test_a_failing_run_reports_exit_code_and_output_tail(tmp_path: Path,
                                                         busybox_image: Any) -> None:
    lines = "; ".join(f"echo line{i}" for i in range(30))
    dockerfile = f"FROM {busybox_image.reference}\nRUN {lines}; exit 3\n"
    with pytest.raises(ExecError) as caught:
        _build(dockerfile, _context(tmp_path), _options(tmp_path / "root", tmp_path / "o"))
    error = caught.value
    assert error.exit_code == 3
    tail = error.output_tail.splitlines()
    assert tail[-1] == "line29" and "line0" not in tail
    assert error.vertex == f"[2/2] RUN {lines}; exit 3"
    assert "did not complete successfully: exit code: 3" in str(error)
    assert not _mounts_under(tmp_path)


def test_cancelling_a_build_leaves_no_mount_and_no_container(tmp_path: Path,
                                                             busybox_image: Any) -> None:
    root = tmp_path / "root"
    dockerfile = (f"FROM {busybox_image.reference}\n"
                  "RUN --mount=type=cache,target=/c --mount=type=tmpfs,target=/t sleep 60\n")
    events = Recorder()

    async def cancel_while_running() -> None:
        task = asyncio.create_task(build_local(
            dockerfile.encode(), _context(tmp_path), _options(root, tmp_path / "o",
                                                              events=events)))
        while not any("sleep" in name for name in events.started()):
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        assert _mounts_under(tmp_path)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(asyncio.wait_for(cancel_while_running(), 60))
    assert not _mounts_under(tmp_path)
    assert list((root / "run" / "runc").iterdir()) == []
    assert list((root / "run" / "bundles").iterdir()) == []
    assert list((root / "snapshots" / "work").iterdir()) == []


def _mounts_under(path: Path) -> list[str]:
    with open("/proc/mounts") as mounts:
        return [line for line in mounts if f" {path}" in line]


def test_a_copy_of_a_missing_path_fails_before_anything_runs(tmp_path: Path,
                                                             busybox_image: Any) -> None:
    events = Recorder()
    dockerfile = f"FROM {busybox_image.reference}\nRUN echo hi\nCOPY missing.txt /d/\n"
    with pytest.raises(SolveError) as caught:
        _build(dockerfile, _context(tmp_path), _options(tmp_path / "root", tmp_path / "o",
                                                        events=events))
    assert caught.value.message == '"/missing.txt": not found'
    assert caught.value.vertex == "[3/3] COPY missing.txt /d/"
    assert events.started() == []


def test_source_date_epoch_makes_two_machines_agree(tmp_path: Path,
                                                    busybox_image: Any) -> None:
    dockerfile = (f"FROM {busybox_image.reference}\nCOPY hello.txt /\n"
                  "RUN mkdir /made && echo made > /made/file\n")
    digests = []
    for machine in ("one", "two"):
        options = _options(tmp_path / machine, tmp_path / f"out-{machine}",
                           build_args={"SOURCE_DATE_EPOCH": "1000"})
        result = _build(dockerfile, _context(tmp_path / machine), options)
        config = oci_config(tmp_path / f"out-{machine}" / "image.tar")
        assert config["created"] == "1970-01-01T00:16:40Z"
        digests.append(_digest(result))
    assert digests[0] == digests[1]


def test_a_pushed_image_is_a_base_whose_env_reaches_run(tmp_path: Path,
                                                        busybox_image: Any) -> None:
    name = f"{busybox_image.domain}/engine/base:env"
    base = (f"FROM {busybox_image.reference}\nENV FOO=from-base\nWORKDIR /w\n"
            "CMD [\"cat\", \"/w/foo\"]\n")
    _build(base, _context(tmp_path / "a"),
           _options(tmp_path / "root", tmp_path / "o1",
                    outputs=(Output("image", name=name, push=True),)))
    child = f"FROM {name}\nRUN echo $FOO > foo\n"
    _build(child, _context(tmp_path / "b"), _options(tmp_path / "root2", tmp_path / "o2"))
    assert (tmp_path / "o2" / "rootfs" / "w" / "foo").read_text() == "from-base\n"
    config = oci_config(tmp_path / "o2" / "image.tar")["config"]
    assert "FOO=from-base" in config["Env"] and config["Cmd"] == ["cat", "/w/foo"]
    assert config["WorkingDir"] == "/w"


def _bomb_context(tmp_path: Path) -> Path:
    """A context with a small archive and a gzip bomb: 4 MiB, then 64 MiB of zeros."""
    context = tmp_path / "context"
    context.mkdir(parents=True)
    with tarfile.open(context / "ok.tar", "w") as tar:
        info = tarfile.TarInfo("ok")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"ok"))
    with tarfile.open(context / "bomb.tar.gz", "w:gz") as tar:
        for name, size in (("first", 4 << 20), ("zeros", 64 << 20)):
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(bytes(size)))
    return context


def test_an_add_over_its_limit_names_its_line_and_leaves_no_partial_layer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DOCKYARD_ADD_MAX stops the bomb after its first entry was written: the error names
    the ADD, its line and the entry; the half-extracted state is neither a layer nor a cache
    record (a build with the limit raised extracts it whole, the other ADD from cache)."""
    root, context = tmp_path / "root", _bomb_context(tmp_path)
    dockerfile = "FROM scratch\nADD ok.tar /a/\nADD bomb.tar.gz /b/\n"
    monkeypatch.setenv("DOCKYARD_ADD_MAX", "16MB")
    with pytest.raises(SolveError) as caught:
        _build(dockerfile, context, _options(root, tmp_path / "o1"))
    error = caught.value
    assert (error.vertex, error.location) == ("[2/2] ADD bomb.tar.gz /b/", "Dockerfile:3:1")
    assert error.message == ("ADD /bomb.tar.gz: archive entry 'zeros' (64MiB) would expand "
                             "the ADD to 68MiB, past its limit of 16MiB")
    assert not _mounts_under(tmp_path)
    assert list((root / "snapshots" / "work").iterdir()) == []
    records = set((root / "cache" / "records").iterdir())
    assert not _blobs_holding(root, "b/first")  # the entry written before the refusal

    monkeypatch.setenv("DOCKYARD_ADD_MAX", "off")
    events = Recorder()
    _build(dockerfile, context, _options(root, tmp_path / "o2", events=events))
    assert events.started() == ["[2/2] ADD bomb.tar.gz /b/"]
    rootfs = tmp_path / "o2" / "rootfs"
    assert (rootfs / "b" / "zeros").stat().st_size == 64 << 20
    assert (rootfs / "a" / "ok").read_text() == "ok"
    # the ADD's layer, and the gzip of it its image output made (a record names each);
    # the records: the ADD's, and the gzip variants of both layers (the first build
    # failed before its output, so it compressed none)
    assert len(_blobs_holding(root, "b/first")) == 2
    assert len(set((root / "cache" / "records").iterdir()) - records) == 3


def _blobs_holding(root: Path, name: str) -> list[Path]:
    """The layer blobs of the local cache with an entry ``name``."""
    found = []
    for blob in (root / "cache" / "blobs" / "sha256").iterdir():
        try:
            with tarfile.open(blob) as tar:
                if name in tar.getnames():
                    found.append(blob)
        except tarfile.TarError:  # a config or manifest
            continue
    return found


def test_a_sparse_archive_is_refused_at_its_add_line(tmp_path: Path) -> None:
    """The issue's archive, made by GNU tar: a ~120-byte .tar.gz holding a 2 GiB sparse
    file.  BuildKit: "unhandled tar header type 83"; dockyard says the same, with the ADD,
    its line and the archive, and writes none of the 2 GiB."""
    sparse, context = tmp_path / "sparse", tmp_path / "context"
    sparse.mkdir()
    context.mkdir()
    with open(sparse / "big", "wb") as big:
        big.truncate(2 << 30)
    subprocess.run(["tar", "--sparse", "--format=gnu", "-C", str(sparse), "-czf",
                    str(context / "big.tar.gz"), "big"], check=True)
    assert (context / "big.tar.gz").stat().st_size < 129
    with pytest.raises(SolveError) as caught:
        _build("FROM scratch\nADD big.tar.gz /dst/\n", context,
               _options(tmp_path / "root", tmp_path / "o"))
    assert str(caught.value).splitlines()[0] == (
        "Dockerfile:2:1 [1/1] ADD big.tar.gz /dst/: ADD /big.tar.gz: archive entry 'big': "
        "unhandled tar header type 83")


def test_two_failing_parallel_stages_end_on_the_same_error_every_time(
        tmp_path: Path, busybox_image: Any) -> None:
    """Stages ``a`` and ``b`` both fail at once: every build ends on ``a``'s error, the
    first failure in graph order (BuildKit's is whichever fails first in time)."""
    base = busybox_image.reference
    dockerfile = (f"FROM {base} AS a\nRUN exit 3\nFROM {base} AS b\nRUN exit 4\n"
                  f"FROM {base}\nCOPY --from=a /etc/hostname /a\n"
                  "COPY --from=b /etc/hostname /b\n")
    ended: list[tuple[str, int]] = []
    for attempt in range(12):
        with pytest.raises(ExecError) as caught:
            _build(dockerfile, _context(tmp_path / str(attempt)),
                   _options(tmp_path / "root", tmp_path / "o"))
        ended.append((caught.value.vertex, caught.value.exit_code))
    assert ended == [("[a 2/2] RUN exit 3", 3)] * 12
