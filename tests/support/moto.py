"""moto's S3 server (``moto_server`` from the venv, ``moto[server]`` in the test extra) on a
free 127.0.0.1 port: the S3 endpoint of the cache tests and the cache benchmarks.

``start_moto(log)`` returns once it answers HTTP (a ``SetupError`` otherwise),
``stop_moto`` ends it by PID, ``moto_server(log)`` is both as a context manager.
``ENVIRONMENT`` holds dummy credentials and switches off shared config files and instance
metadata, so boto3's standard chain finds them and never leaves loopback.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.busybox_image import SetupError
from support.registry import free_port

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
#: Variables that would point boto3 elsewhere: unset while the dummies are in place.
UNSET = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL")


@dataclass
class S3Endpoint:
    """A running moto server: ``url`` for ``endpoint_url``, ``client()`` a plain boto3
    client (the side door: make buckets, damage objects, look behind the backend)."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path
    _client: Any = None

    def client(self) -> Any:
        if self._client is None:
            import boto3  # noqa: PLC0415 -- only S3 users need it
            from botocore.config import Config  # noqa: PLC0415

            self._client = boto3.session.Session(
                aws_access_key_id=ENVIRONMENT["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=ENVIRONMENT["AWS_SECRET_ACCESS_KEY"],
            ).client("s3", endpoint_url=self.url, region_name=REGION,
                     config=Config(s3={"addressing_style": "path"}))
        return self._client

    def bucket(self) -> str:
        """A new, empty bucket."""
        name = f"dockyard-{uuid.uuid4().hex[:20]}"
        self.client().create_bucket(Bucket=name)
        return name


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=1).close()
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True


def stop_moto(endpoint: S3Endpoint) -> None:
    process = endpoint.process
    if process.poll() is not None:
        return
    os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()


def start_moto(log: Path) -> S3Endpoint:
    """moto_server on a free loopback port, answering."""
    binary = Path(sys.executable).with_name("moto_server")
    if not binary.exists():
        raise SetupError(f"{binary} is missing", hint="install the test extra (moto[server])")
    port = free_port()
    with open(log, "wb") as out:
        process = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(port)],
                                   stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    endpoint = S3Endpoint(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + READY_TIMEOUT
    while not _answers(endpoint.url):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_moto(endpoint)
            raise SetupError(f"moto_server did not answer on {endpoint.url}:\n"
                             f"{log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.05)
    return endpoint


@contextmanager
def moto_server(log: Path) -> Iterator[S3Endpoint]:
    """A moto server for the time of the block (stopped also when it fails)."""
    endpoint = start_moto(log)
    try:
        yield endpoint
    finally:
        stop_moto(endpoint)
