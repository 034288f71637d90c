"""The cache benchmarks' S3 world: a moto server, a request-counting proxy, boto3's baseline.

- ``moto_server(log)``: ``moto_server`` from the venv on a free 127.0.0.1 port, ready when
  it answers HTTP, stopped by PID on the way out (also on failure or Ctrl-C).
- ``counting_proxy(upstream)``: a loopback reverse proxy in front of it that counts every
  request (method, path) before forwarding it; dockyard's ``endpoint_url`` points at it
  when a case counts requests, never when a case is timed.
- ``download_blobs``: what a user's script would do to fetch the same bytes: plain boto3
  ``download_file`` of each blob object, one after the other.

Credentials are dummies (``ENVIRONMENT``) and nothing leaves loopback.
"""

from __future__ import annotations

import http.client
import http.server
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from support import moto as support_moto  # tests/support, on sys.path via benchmarks/__init__
from support.moto import ENVIRONMENT, REGION

__all__ = ["ENVIRONMENT", "CountingProxy", "classify", "counting_proxy", "download_blobs",
           "moto_server", "s3_client", "blob_keys", "REGION"]

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
               "proxy-connection", "content-length"}


@contextmanager
def moto_server(log: Path) -> Iterator[str]:
    """A moto S3 server on loopback (tests/support/moto.py); its URL. Stopped by PID on
    exit."""
    with support_moto.moto_server(log) as endpoint:  # a SetupError (a DockyardError) if not
        yield endpoint.url


def s3_client(url: str) -> Any:
    """A plain boto3 client on ``url`` (path-style addressing, as moto wants)."""
    session = boto3.session.Session(aws_access_key_id=ENVIRONMENT["AWS_ACCESS_KEY_ID"],
                                    aws_secret_access_key=ENVIRONMENT["AWS_SECRET_ACCESS_KEY"],
                                    region_name=REGION)
    return session.client("s3", endpoint_url=url,
                          config=Config(s3={"addressing_style": "path"}))


def classify(method: str, path: str) -> str:
    """``GET blob``, ``HEAD record``, ``GET list``...: what one S3 request was about.

    ``path`` is the request target (path-style: ``/bucket/key?query``)."""
    target = urlsplit(path)
    parts = target.path.lstrip("/").split("/", 1)
    key = parts[1] if len(parts) == 2 else ""
    if not key:
        return f"{method} {'list' if 'list-type' in target.query or method == 'GET' else 'bucket'}"
    if "/blobs/" in f"/{key}":
        return f"{method} blob"
    if "/records/" in f"/{key}":
        return f"{method} record"
    return f"{method} other"


@dataclass
class CountingProxy:
    """A loopback reverse proxy to ``upstream``; ``requests`` holds (method, path) seen."""

    upstream: str
    url: str = ""
    requests: list[tuple[str, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()

    def record(self, method: str, path: str) -> None:
        with self._lock:
            self.requests.append((method, path))

    def summary(self) -> dict[str, int]:
        """Requests by kind (``classify``), most frequent first."""
        with self._lock:
            counts = Counter(classify(method, path) for method, path in self.requests)
        return dict(counts.most_common())


def _handler(proxy: CountingProxy) -> type[http.server.BaseHTTPRequestHandler]:
    upstream = urlsplit(proxy.upstream)

    class Forward(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            del format, args

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                return _read_chunked(self.rfile)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _forward(self) -> None:
            proxy.record(self.command, self.path)
            body = self._body()
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            connection = http.client.HTTPConnection(upstream.hostname or "127.0.0.1",
                                                    upstream.port, timeout=120)
            try:
                connection.request(self.command, self.path, body=body, headers=headers)
                answer = connection.getresponse()
                payload = answer.read()
            finally:
                connection.close()
            self.send_response(answer.status, answer.reason)
            for key, value in answer.getheaders():
                if key.lower() not in _HOP_BY_HOP:
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

    return Forward


def _read_chunked(stream: Any) -> bytes:
    parts: list[bytes] = []
    while True:
        size = int(stream.readline().split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while stream.readline().strip():
                pass  # trailers
            return b"".join(parts)
        parts.append(stream.read(size))
        stream.readline()


@contextmanager
def counting_proxy(upstream: str) -> Iterator[CountingProxy]:
    """A ``CountingProxy`` serving on a free loopback port until the block ends."""
    proxy = CountingProxy(upstream)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(proxy))
    server.daemon_threads = True
    proxy.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="bench-s3-proxy", daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def blob_keys(client: Any, bucket: str, prefix: str) -> list[tuple[str, int]]:
    """Every blob object (key, size) under ``prefix``blobs/."""
    keys: list[tuple[str, int]] = []
    for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=f"{prefix}blobs/"):
        keys += [(item["Key"], int(item["Size"])) for item in page.get("Contents", ())]
    return keys


def download_blobs(client: Any, bucket: str, keys: Sequence[tuple[str, int]], dest: Path
                   ) -> float:
    """Plain ``download_file`` of each key into ``dest``, one after the other; seconds."""
    dest.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    for number, (key, _) in enumerate(keys):
        client.download_file(bucket, key, str(dest / f"blob-{number}"))
    return time.perf_counter() - began
