"""``--cache-to type=s3`` with the client's credentials (buildx forwards the client's
``AWS_*``): the embedded service (its own DOCKYARD_ROOT, the CLI in a subprocess) runs
with no credentials at all, and the client that builds has them in its environment.
The worker asks for them over the build's session channel (``cache.credentials``) when
it opens the build's S3 backend; they never travel in the request, and their values are
in no file under the root (logs, Ray's session files, records, the store)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.leaks import files_containing
from support.moto import REGION

PROJECT = Path(__file__).resolve().parents[3]
KEY_ID = "AKIAFORWARDED7C2E91"
SECRET_KEY = "forwarded-secret-d41f9a0b77e3"
TOKEN = "forwarded-session-token-5be0c2"
#: The service's environment: no credentials, and no chain that could find some.
NO_CREDENTIALS = {"AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": os.devnull,
                  "AWS_SHARED_CREDENTIALS_FILE": os.devnull}


def _environment(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return base | NO_CREDENTIALS | extra


def _cli(root: Path, env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    environ = env | {"DOCKYARD_ROOT": str(root), "PYTHONPATH": str(PROJECT)}
    return subprocess.run([sys.executable, "-m", "dockyard", *argv], env=environ,
                          capture_output=True, text=True, timeout=240, check=False)


@pytest.fixture
def root(s3_endpoint: Any) -> Iterator[Path]:
    made = Path(tempfile.mkdtemp(prefix="dycred-", dir="/tmp"))
    try:
        yield made / "root"
    finally:
        _cli(made / "root", _environment(), "stop")
        shutil.rmtree(made, ignore_errors=True)


@pytest.fixture
def context(tmp_path: Path, busybox_image: Any) -> Path:
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(f"FROM {busybox_image.reference}\n"
                                        "RUN echo cached-remotely > /f\n")
    return context


def test_the_clients_credentials_serve_its_build_only(
        s3_endpoint: Any, root: Path, context: Path) -> None:
    bucket = s3_endpoint.bucket()
    cache = (f"type=s3,bucket={bucket},prefix=ci/,endpoint_url={s3_endpoint.url},"
             f"use_path_style=true,mode=max")
    build = ("build", "--progress=plain", "--no-cache", "--platform=linux/amd64",
             "--cache-to", cache, str(context))
    # the service starts without credentials, and a client without any fails to export
    without = _cli(root, _environment(), *build)
    assert without.returncode != 0, without.stderr
    assert "credentials" in without.stderr.lower(), without.stderr
    assert s3_endpoint.client().list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0

    forwarded = _cli(root, _environment(AWS_ACCESS_KEY_ID=KEY_ID,
                                        AWS_SECRET_ACCESS_KEY=SECRET_KEY,
                                        AWS_SESSION_TOKEN=TOKEN, AWS_REGION=REGION), *build)
    assert forwarded.returncode == 0, forwarded.stderr
    listed = s3_endpoint.client().list_objects_v2(Bucket=bucket, Prefix="ci/records/")
    assert listed.get("KeyCount", 0) >= 2  # mode=max: the image and the RUN
    needles = [KEY_ID.encode(), SECRET_KEY.encode(), TOKEN.encode()]
    assert not any(needle in (forwarded.stderr + forwarded.stdout).encode()
                   for needle in needles)
    assert files_containing(root, needles) == []
