"""A fault-injecting HTTP proxy on loopback between boto3 and the S3 endpoint (moto), for
the S3 cache's fault tests (test_cache_s3.py, test_cache_faults.py).

Faults are taken from a queue, one per request, every ``every``-th request (1: each
request, until the queue is empty; then requests pass through):

- ``503``: a SlowDown reply, the request is not forwarded;
- ``drop``: the connection closed unanswered, the request is not forwarded;
- ``stall``: no answer for ``stall_for`` seconds, then the connection is closed (the
  request is not forwarded: the client's read timeout must fire);
- ``cut``: a GET's body broken off halfway (waits in the queue for a GET);
- ``hang``: a GET's body stops halfway and stays silent for ``stall_for`` seconds.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAULTS = ("503", "drop", "stall", "cut", "hang")
_BODY_FAULTS = ("cut", "hang")
_SLOWDOWN = (b"<Error><Code>SlowDown</Code><Message>Reduce your request rate.</Message>"
             b"</Error>")


class FaultyProxy:
    """See the module docstring; ``seen`` counts requests, ``met`` the faults injected."""

    def __init__(self, upstream: str, stall_for: float = 5.0) -> None:
        self.upstream = upstream.removeprefix("http://")
        self.faults: list[str] = []
        self.every = 1
        self.stall_for = stall_for
        self.seen = 0
        self.met: list[str] = []
        self.lock = threading.Lock()
        self.closing = threading.Event()
        self.server = _Server(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def schedule(self, faults: list[str], every: int = 1) -> None:
        with self.lock:
            self.faults = list(faults)
            self.every = every
            self.seen = 0

    def next_fault(self, method: str) -> str:
        with self.lock:
            self.seen += 1
            if not self.faults or self.seen % self.every:
                return ""
            fault = self.faults[0]
            if fault in _BODY_FAULTS and method != "GET":
                return ""  # body faults wait for a GET
            self.faults.pop(0)
            self.met.append(fault)
            return fault


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up on a stalled request: expected here, not news


def _handler(proxy: FaultyProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _any(self) -> None:
            fault = proxy.next_fault(self.command)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if fault == "stall":
                proxy.closing.wait(proxy.stall_for)
                fault = "drop"
            if fault == "drop":
                self._hang_up()
            elif fault == "503":
                self._reply(503, {"Content-Type": "application/xml"}, _SLOWDOWN)
            else:
                self._forward(body, fault)

        def _hang_up(self) -> None:
            with contextlib.suppress(OSError):  # the client may have given up first
                self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True

        def _forward(self, body: bytes, fault: str) -> None:
            connection = http.client.HTTPConnection(proxy.upstream, timeout=30)
            try:
                connection.request(self.command, self.path, body, dict(self.headers))
                response = connection.getresponse()
                data = response.read()
                drop = {"transfer-encoding", "connection"}
                if self.command != "HEAD":
                    drop.add("content-length")
                headers = {k: v for k, v in response.getheaders() if k.lower() not in drop}
            finally:
                connection.close()
            self._reply(response.status, headers, data, fault)

        def _reply(self, status: int, headers: dict[str, str], data: bytes,
                   fault: str = "") -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if "Content-Length" not in headers:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if fault in _BODY_FAULTS:  # the promised length, half the bytes, then trouble
                self.wfile.write(data[:len(data) // 2])
                self.wfile.flush()
                if fault == "hang":
                    proxy.closing.wait(proxy.stall_for)
                self._hang_up()
            elif self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

    return Handler


@contextmanager
def running_proxy(upstream: str, stall_for: float = 5.0) -> Iterator[FaultyProxy]:
    """A ``FaultyProxy`` serving in a thread; stopped (stalls released) on exit."""
    proxy = FaultyProxy(upstream, stall_for)
    thread = threading.Thread(target=proxy.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.closing.set()
        proxy.server.shutdown()
        proxy.server.server_close()
        thread.join(10)
