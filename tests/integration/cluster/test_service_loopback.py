"""The embedded service listens on loopback only: every TCP socket its processes (the
daemon, Ray's GCS, raylet and workers, the actors) listen on, and every UDP socket they
bound, is on 127.0.0.1 (or ::1), never on every interface or the machine's address
(cluster/_ray.py starts its Ray with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0; NOTES-ray.md)."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devkit.local_cluster import environment
from devkit.root_state import listening_sockets, service_processes

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 and os.environ.get("CI") != "true",
    reason="runc and overlayfs need root (under CI=true this is a failure)")


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="dyl-", dir="/tmp"))
    try:
        yield path
    finally:
        _dockyard(path, "stop")
        shutil.rmtree(path, ignore_errors=True)


def _dockyard(root: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dockyard", *argv], env=environment(root),
                          cwd=root, capture_output=True, text=True, timeout=180, check=False)


def _loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def test_every_socket_of_the_embedded_service_is_on_loopback(root: Path,
                                                             busybox_image: Any) -> None:
    (root / "ctx").mkdir()
    (root / "ctx" / "Dockerfile").write_text(f"FROM {busybox_image.reference}\nRUN true\n")
    done = _dockyard(root, "build", "--progress=plain", str(root / "ctx"))
    assert done.returncode == 0, done.stderr
    service = service_processes(root)
    assert service is not None and service.worker and service.coordinator

    sockets = listening_sockets({service.daemon, *service.tree})
    listeners = {pid for protocol, _, _, pid in sockets if protocol.startswith("tcp")}
    # Ray's GCS and raylet and the actors' own servers are all there: the list is real.
    assert {service.worker, service.coordinator} <= listeners, sockets
    assert len(listeners) >= 4, sockets
    wide = [s for s in sockets if not _loopback(s[1])]
    assert wide == [], f"sockets not on loopback: {wide}"
