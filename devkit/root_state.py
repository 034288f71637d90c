"""What a ``DOCKYARD_ROOT`` holds, as the fault-injection and load runs check it (and the
tests that use them): the embedded service's processes, what a run may leave behind, and
whether the local cache is consistent.

- ``service_processes(root)``: the daemon and its ``ray::WorkerActor`` and
  ``ray::Coordinator`` processes (pids), found from ``<root>/run/dockyard.pid``;
  ``runc_processes(root)``: the ``runc`` processes working on the root's runc state.
- ``leftovers(root)``: one line per thing a finished or killed run must not leave once the
  service is idle or stopped: a container in ``<root>/run/runc`` (``runc list``), a mount
  below the root (``/proc/self/mountinfo``), an entry of the scratch places the janitor
  cleans (bundles, overlay work dirs, staging dirs, temp files: ``leftover_entries``), a
  process with the root in its environment that is not the live service.
- ``listening_sockets(pids)``: the TCP sockets those processes listen on and the UDP
  sockets they bound (``/proc/net/{tcp,tcp6,udp,udp6}``, matched by inode).
- ``cache_problems(root)``: every blob of ``<root>/cache/blobs/sha256`` hashes to its name,
  and every record of ``<root>/cache/records`` decodes and names blobs that exist.

Nothing here changes the root.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from devkit.local_cluster import root_processes
from dockyard.cache_backends._records import CacheRecord
from dockyard.cluster._service import RunPaths, process_tree
from dockyard.workers._janitor import leftover_entries, parse_mountinfo

__all__ = ["ServiceProcesses", "cache_problems", "containers", "leftovers",
           "listening_sockets", "mounts_below", "rss_bytes", "runc_processes",
           "service_processes"]

_ACTORS = {"worker": b"ray::WorkerActor", "coordinator": b"ray::Coordinator"}


def _cmdline(pid: int) -> bytes:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    return b""


@dataclass(frozen=True)
class ServiceProcesses:
    """The live embedded service of a root: its daemon, and the actors' processes (None
    while one is not running, e.g. being restarted by Ray)."""

    daemon: int
    worker: int | None
    coordinator: int | None
    tree: frozenset[int]  # the daemon's descendants (Ray's processes included)


def service_processes(root: Path) -> ServiceProcesses | None:
    """The root's service, or None when no daemon has written its pid."""
    try:
        daemon = int(RunPaths(root).pid.read_text())
    except (OSError, ValueError):
        return None
    tree = frozenset(pid for pid, _ in process_tree(daemon))
    found: dict[str, int | None] = dict.fromkeys(_ACTORS)
    for pid in sorted(tree):
        line = _cmdline(pid)
        for role, prefix in _ACTORS.items():
            if line.startswith(prefix):
                found[role] = pid
    return ServiceProcesses(daemon, found["worker"], found["coordinator"], tree)


def runc_processes(root: Path) -> list[int]:
    """The ``runc ... run`` processes of the root's RUNs (``runc --root <root>/run/runc``)
    running now."""
    state = str(root / "run" / "runc").encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            argv = _cmdline(int(entry.name)).split(b"\0")
            if argv[0].endswith(b"runc") and state in argv and b"run" in argv:
                found.append(int(entry.name))
    return found


def containers(root: Path) -> list[str]:
    """``id status`` of each container in the root's runc state."""
    state = root / "run" / "runc"
    if not state.is_dir():
        return []
    done = subprocess.run(["runc", "--root", str(state), "list", "-f", "json"],
                          capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        return [f"(runc list of {state} failed: {done.stderr.strip()})"]
    return [f"{c['id']} {c['status']}" for c in json.loads(done.stdout or "null") or []]


def mounts_below(root: Path) -> list[str]:
    """The mount points below ``root`` (symlinks resolved, as mountinfo names them)."""
    real = os.path.realpath(root) + "/"
    text = Path("/proc/self/mountinfo").read_text()
    return [m.mountpoint for m in parse_mountinfo(text) if m.mountpoint.startswith(real)]


def leftovers(root: Path, *, service_may_run: bool = True) -> list[str]:
    """What runs left under ``root`` (see the module docstring), one line each; the live
    service's own processes are not leftovers when ``service_may_run``."""
    found = [f"container {line}" for line in containers(root)]
    found += [f"mount {path}" for path in mounts_below(root)]
    found += [f"scratch {path}" for path in leftover_entries(root)]
    live: set[int] = set()
    service = service_processes(root) if service_may_run else None
    if service is not None:
        live = {service.daemon, *service.tree}
    for pid in sorted(root_processes(root) - live):
        command = _cmdline(pid).replace(b"\0", b" ").decode(errors="replace").strip()
        found.append(f"process {pid} {command[:120]}")
    return found


def cache_problems(root: Path) -> list[str]:
    """What is wrong with the root's local cache (see the module docstring)."""
    blobs = root / "cache" / "blobs" / "sha256"
    problems = []
    names: set[str] = set()
    for path in sorted(blobs.iterdir()) if blobs.is_dir() else []:
        names.add(path.name)
        digest = hashlib.sha256()
        with open(path, "rb") as blob:
            while chunk := blob.read(1 << 20):
                digest.update(chunk)
        if digest.hexdigest() != path.name:
            problems.append(f"blob {path} hashes to sha256:{digest.hexdigest()}")
    records = root / "cache" / "records"
    for path in sorted(records.iterdir()) if records.is_dir() else []:
        try:
            record = CacheRecord.from_bytes(path.read_bytes())
        except Exception as exc:  # any decoding failure is the finding
            problems.append(f"record {path} does not decode: {exc}")
            continue
        for layer in record.result.layers:
            if layer.digest.removeprefix("sha256:") not in names:
                problems.append(f"record {path} names the missing blob {layer.digest}")
    return problems


def rss_bytes(pids: set[int] | frozenset[int]) -> int:
    """The summed resident set size of ``pids`` (those still running)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
            total += pages * os.sysconf("SC_PAGE_SIZE")
    return total


def _socket_inodes(pid: int) -> set[str]:
    found = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    found.add(target[8:-1])
    return found


def _address(hex_address: str) -> tuple[str, int]:
    """``0100007F:1F90`` or a 32-digit IPv6 form of /proc/net/* as (address, port)."""
    import ipaddress  # noqa: PLC0415 -- only this function needs it

    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    # /proc/net prints each 32-bit word in host (little-endian) order
    ordered = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(ordered)), int(port, 16)


def listening_sockets(pids: set[int] | frozenset[int]) -> list[tuple[str, str, int, int]]:
    """``(protocol, address, port, pid)`` of every TCP socket the processes listen on
    (state LISTEN) and every UDP socket they bound."""
    owners = {inode: pid for pid in pids for inode in _socket_inodes(pid)}
    found = []
    for protocol in ("tcp", "tcp6", "udp", "udp6"):
        with contextlib.suppress(OSError):
            lines = Path(f"/proc/net/{protocol}").read_text().splitlines()[1:]
            for line in lines:
                fields = line.split()
                listening = fields[3] == "0A" if protocol.startswith("tcp") else True
                if listening and fields[9] in owners:
                    address, port = _address(fields[1])
                    found.append((protocol, address, port, owners[fields[9]]))
    return found
