"""End-to-end builds in one process (cluster/_local_build.py): real runc, real overlayfs,
a real registry holding the multi-arch busybox image, real exporters."""

from __future__ import annotations

import asyncio
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from cluster._local_build import LocalBuildOptions, LocalBuildResult, Output, build_local
from scheduler._platform import parse_platform
from workers._runtime import WorkerRuntime

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
USER app
WORKDIR /app
CMD ["sh", "-c", "echo $GREETING; cat /app/out.txt /app/token-size"]
"""


def _options(root: Path, out: Path, arch: str, **extra: Any) -> LocalBuildOptions:
    out.mkdir(parents=True, exist_ok=True)
    return LocalBuildOptions(root=root, platforms=(parse_platform(f"linux/{arch}"),),
                             secrets={"token": b"s3cr3t-value"},
                             outputs=(Output("oci", out / "image.tar"),
                                      Output("local", out / "rootfs")), **extra)


def _context(tmp_path: Path) -> Path:
    context = tmp_path / "context"
    context.mkdir()
    (context / "hello.txt").write_text("hello world\n")
    (context / "ignored.txt").write_text("nope\n")
    (context / ".dockerignore").write_text("ignored.txt\n")
    return context


def _build(dockerfile: str, context: Path, options: LocalBuildOptions) -> LocalBuildResult:
    return asyncio.run(build_local(dockerfile.encode(), context, options))


@pytest.mark.parametrize("arch,machine", [("amd64", "x86_64"), ("arm64", "aarch64")])
def test_multistage_build_and_rebuild(tmp_path: Path, busybox_image: Any, arch: str,
                                      machine: str) -> None:
    root, context = tmp_path / "root", _context(tmp_path)
    dockerfile = DOCKERFILE.format(base=busybox_image.reference)
    first = _build(dockerfile, context, _options(root, tmp_path / "out1", arch))
    rootfs = tmp_path / "out1" / "rootfs"
    assert (rootfs / "app" / "out.txt").read_text() == f"hello world\n{machine}\n"
    assert (rootfs / "app" / "token-size").read_text().strip() == "12"
    assert not (rootfs / "run" / "secrets").exists()
    assert (root / "cachemounts").iterdir()
    with tarfile.open(tmp_path / "out1" / "image.tar") as tar:
        names = tar.getnames()
    assert "index.json" in names and "oci-layout" in names
    second = _build(dockerfile, context, _options(root, tmp_path / "out2", arch))
    assert second.statistics.executed == 0
    assert second.exported.digest if hasattr(second.exported, "digest") else True
    assert first.metadata == second.metadata
