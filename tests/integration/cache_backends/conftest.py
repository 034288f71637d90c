"""A real S3 HTTP endpoint for the S3 cache backend's tests: moto's server mode
(``moto_server`` from the venv, ``moto[server]`` in the test extra) on a free 127.0.0.1
port, once per session, ready when it answers HTTP, stopped by PID.

The session's environment gets dummy credentials (and no shared config, no instance
metadata lookups), so boto3's standard chain finds them and never leaves loopback.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

READY_TIMEOUT = 20.0
REGION = "us-east-1"
ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "dockyard-test",
    "AWS_SECRET_ACCESS_KEY": "dockyard-test-secret",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


@dataclass
class S3Endpoint:
    """A running moto server: ``url`` for ``endpoint_url``, ``client()`` a plain boto3
    client (the tests' side door: make buckets, damage objects, look behind the backend)."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path
    _client: Any = None

    def client(self) -> Any:
        if self._client is None:
            self._client = boto3.session.Session().client(
                "s3", endpoint_url=self.url, region_name=REGION,
                config=Config(s3={"addressing_style": "path"}))
        return self._client

    def bucket(self) -> str:
        """A new, empty bucket."""
        name = f"dockyard-{uuid.uuid4().hex[:20]}"
        self.client().create_bucket(Bucket=name)
        return name


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=1).close()
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()


def start_moto(log: Path) -> S3Endpoint:
    """moto_server on a free loopback port, ready; a failure (never a skip) otherwise."""
    binary = Path(sys.executable).with_name("moto_server")
    if not binary.exists():
        pytest.fail(f"{binary} is missing: install the test extra (moto[server])")
    port = free_port()
    with open(log, "wb") as out:
        process = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(port)],
                                   stdout=out, stderr=subprocess.STDOUT)
    endpoint = S3Endpoint(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + READY_TIMEOUT
    while not _answers(endpoint.url):
        if process.poll() is not None or time.monotonic() > deadline:
            _stop(process)
            pytest.fail(f"moto_server did not answer on {endpoint.url}:\n"
                        f"{log.read_text()[-2000:]}")
        time.sleep(0.05)
    return endpoint


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    """One moto server for the session, with dummy credentials in the environment."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in ENVIRONMENT.items():
            patch.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
            patch.delenv(name, raising=False)
        endpoint = start_moto(tmp_path_factory.mktemp("moto") / "moto.log")
        try:
            yield endpoint
        finally:
            _stop(endpoint.process)
