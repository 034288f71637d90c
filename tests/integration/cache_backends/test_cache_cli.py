"""Issue 4's "done when", as a user runs it: ``dockyard build --cache-to type=s3,...`` on
one machine, the same build on a second, empty machine with ``--cache-from type=s3,...``.

Each machine is its own DOCKYARD_ROOT with its own embedded service (started by its first
build, stopped at the end), the CLI in a subprocess, the S3 endpoint moto's server on
loopback (the ``s3_endpoint`` fixture: its dummy credentials are in the environment the CLI
and its service inherit, boto3's standard chain finds them there)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.progress import plain_blocks

PROJECT = Path(__file__).resolve().parents[3]

DOCKERFILE = """\
FROM {base}
COPY hello.txt /app/
RUN cat /app/hello.txt > /app/copy && echo one > /app/one
RUN echo two > /app/two
"""


@dataclass
class Machine:
    """One DOCKYARD_ROOT, where its outputs go, and how to run the CLI against it."""

    root: Path
    out: Path

    def run(self, *argv: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        environ = {**os.environ, "DOCKYARD_ROOT": str(self.root), "PYTHONPATH": str(PROJECT)}
        return subprocess.run([sys.executable, "-m", "dockyard", *argv], env=environ,
                              capture_output=True, text=True, timeout=timeout, check=False)

    def build(self, context: Path, *flags: str) -> str:
        """The build's plain progress; the image in ``out/image.tar``, metadata in
        ``out/meta.json``."""
        done = self.run("build", "--progress=plain", "--platform=linux/amd64",
                        "-o", f"type=oci,dest={self.out}/image.tar",
                        "--metadata-file", f"{self.out}/meta.json", *flags, str(context))
        assert done.returncode == 0, done.stderr
        return done.stderr

    def digest(self) -> str:
        meta = json.loads((self.out / "meta.json").read_text())
        return str(meta["containerimage.digest"])


@pytest.fixture
def machines(s3_endpoint: Any) -> Iterator[tuple[Machine, Machine]]:
    made = []
    for name in ("one", "two"):
        root = Path(tempfile.mkdtemp(prefix=f"dyc-{name}-", dir="/tmp"))
        (root / "out").mkdir()
        made.append(Machine(root / "root", root / "out"))
    try:
        yield made[0], made[1]
    finally:
        for machine in made:
            machine.run("stop", timeout=90)
            shutil.rmtree(machine.root.parent, ignore_errors=True)


@pytest.fixture
def context(tmp_path: Path, busybox_image: Any) -> Path:
    context = tmp_path / "context"
    context.mkdir()
    (context / "hello.txt").write_text("hello\n")
    (context / "Dockerfile").write_text(DOCKERFILE.format(base=busybox_image.reference))
    return context


def _s3(endpoint: Any, bucket: str, **extra: str) -> str:
    fields = {"type": "s3", "bucket": bucket, "region": "us-east-1", "prefix": "ci/",
              "endpoint_url": endpoint.url, "use_path_style": "true", **extra}
    return ",".join(f"{key}={value}" for key, value in fields.items())


def _runs(progress: str) -> dict[str, str]:
    """Each RUN step's block: its name -> its last line (``CACHED``, ``DONE 0.3s``)."""
    return {lines[0]: lines[-1] for lines in plain_blocks(progress).values()
            if " RUN " in lines[0]}


def test_the_second_empty_machine_runs_no_run_and_builds_the_same_image(
        s3_endpoint: Any, machines: tuple[Machine, Machine], context: Path) -> None:
    first, second = machines
    bucket = s3_endpoint.bucket()
    built = first.build(context, "--cache-to", _s3(s3_endpoint, bucket, mode="max"))
    assert [last for last in _runs(built).values() if last.startswith("DONE")], built
    listed = s3_endpoint.client().list_objects_v2(Bucket=bucket, Prefix="ci/records/")
    assert listed.get("KeyCount", 0) >= 4  # mode=max: every vertex

    again = second.build(context, "--cache-from", _s3(s3_endpoint, bucket))
    runs = _runs(again)
    assert len(runs) == 2 and set(runs.values()) == {"CACHED"}, again
    assert "warning" not in again.lower(), again
    assert second.digest() == first.digest()
    assert (second.out / "image.tar").read_bytes() == (first.out / "image.tar").read_bytes()


def _layers(oci_tar: Path) -> list[str]:
    """The layer digests of the one image in an OCI layout tar."""
    with tarfile.open(oci_tar) as layout:
        def blob(digest: str) -> Any:
            member = layout.extractfile(f"blobs/sha256/{digest.removeprefix('sha256:')}")
            assert member is not None
            return json.load(member)
        index = json.load(layout.extractfile("index.json"))  # type: ignore[arg-type]
        manifest = blob(index["manifests"][0]["digest"])
        return [str(layer["digest"]) for layer in manifest["layers"]]


def test_a_corrupt_top_layer_in_the_bucket_rebuilds_only_its_step(
        s3_endpoint: Any, machines: tuple[Machine, Machine], context: Path) -> None:
    """(missing blobs, and lost layers under a new step, are covered in-process by
    test_cache_import_export.py; this is the coordinator's export path)"""
    first, second = machines
    bucket = s3_endpoint.bucket()
    epoch = ("--build-arg", "SOURCE_DATE_EPOCH=1700000000")  # a rebuilt layer is the same
    first.build(context, *epoch, "--cache-to", _s3(s3_endpoint, bucket, mode="max"))
    top = _layers(first.out / "image.tar")[-1]
    key = f"ci/blobs/sha256/{top.removeprefix('sha256:')}"
    s3_endpoint.client().put_object(Bucket=bucket, Key=key, Body=b"not the layer")

    # the OCI output needs every layer: the lost one is found at export, rebuilt, exported
    again = second.build(context, *epoch, "--cache-from", _s3(s3_endpoint, bucket))
    runs = _runs(again)
    assert sorted(last.split()[0] for last in runs.values()) == ["CACHED", "DONE"], again
    assert second.digest() == first.digest()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens there once the socket is closed


def test_an_unreachable_cache_from_is_one_warning_and_the_build_goes_on(
        s3_endpoint: Any, machines: tuple[Machine, Machine], context: Path) -> None:
    first, _ = machines
    dead_port = _closed_port()
    dead = f"type=s3,bucket=nowhere,region=us-east-1,endpoint_url=" \
           f"http://127.0.0.1:{dead_port},use_path_style=true"
    progress = first.build(context, "--cache-from", dead)
    warnings = [line for line in progress.splitlines() if "warning" in line.lower()]
    assert len(warnings) == 1, progress
    assert warnings[0].startswith("WARNING: cache import from"), progress
    assert f"{dead_port}" in warnings[0]
    assert [last for last in _runs(progress).values() if last.startswith("DONE")]
