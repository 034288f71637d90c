"""Debian's ``docker-registry`` (distribution 2.8) on a free 127.0.0.1 port.

``start_registry(root)`` writes its config under ``root`` (storage in ``root/storage``, log
in ``root/registry.log``), starts it and returns once ``GET /v2/`` answers; ``stop_registry``
ends it by PID.  ``loopback_registry(root)`` is both, as a context manager that stops the
registry even when its body fails.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devkit.busybox_image import SetupError, need_tool

READY_TIMEOUT = 15.0


@dataclass
class RunningRegistry:
    """A registry process: ``domain`` is ``127.0.0.1:<port>``, ``url`` its base URL."""

    port: int
    root: Path
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def domain(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.domain}"


def free_port(preferred: int = 0) -> int:
    """``preferred`` when 127.0.0.1 has it free, else any free port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # as Go's listeners do: a port whose last connections are in TIME_WAIT is free
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", preferred))
        except OSError:
            sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def registry_config(root: Path, port: int, auth: dict[str, Any] | None) -> str:
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(root / "storage")},
                    "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": uuid.uuid4().hex},
    }
    if auth is not None:
        config["auth"] = auth
    return json.dumps(config)  # JSON is YAML


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(f"{url}/v2/", timeout=1).close()
    except urllib.error.HTTPError:
        return True  # 401: up, and asking for auth
    except OSError:
        return False
    return True


def _wait_ready(reg: RunningRegistry) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if reg.process.poll() is not None:
            raise SetupError(f"docker-registry exited ({reg.process.returncode}):\n"
                             f"{reg.log.read_text()[-2000:]}")
        if _answers(reg.url):
            return
        time.sleep(0.05)
    raise SetupError(f"docker-registry did not answer on {reg.url} within {READY_TIMEOUT}s",
                     hint=f"see its log {reg.log}")


def start_registry(root: Path, auth: dict[str, Any] | None = None,
                   port: int = 0) -> RunningRegistry:
    """A registry serving from ``root`` (an existing directory), ready to use, on ``port``
    when it is free, else on any free port."""
    binary = need_tool("docker-registry")
    port = free_port(port)
    (root / "config.yml").write_text(registry_config(root, port, auth))
    log = root / "registry.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([binary, "serve", str(root / "config.yml")],
                                   stdout=out, stderr=subprocess.STDOUT)
    reg = RunningRegistry(port, root, process, log)
    try:
        _wait_ready(reg)
    except BaseException:
        stop_registry(reg)
        raise
    return reg


def stop_registry(reg: RunningRegistry) -> None:
    """SIGTERM by PID, SIGKILL after 10 s; nothing when it has already exited."""
    if reg.process.poll() is not None:
        return
    os.kill(reg.process.pid, signal.SIGTERM)
    try:
        reg.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.kill(reg.process.pid, signal.SIGKILL)
        reg.process.wait()


@contextmanager
def loopback_registry(root: Path, auth: dict[str, Any] | None = None, port: int = 0
                      ) -> Iterator[RunningRegistry]:
    reg = start_registry(root, auth, port)
    try:
        yield reg
    finally:
        stop_registry(reg)
