"""A dockyard cluster on this machine, started through the CLI as a user starts one.

``LocalCluster(base)`` runs each node with ``dockyard node start`` under its own root
(``base/<arch>``, or ``base/<arch>-<n>`` for a further node of the same arch) and its own
loopback address: the head on 127.0.0.2 (``--head``), the next nodes on 127.0.0.3, .4, ...
(``--address`` with the head's token file), so the nodes share no disk and no traffic
leaves loopback (docs/cluster.md, NOTES-ray.md).  ``start_endpoint`` runs ``dockyard serve
--ray-address auto`` under the head's root on a free 127.0.0.1 port with a token;
``build`` submits with ``dockyard build --endpoint URL --token-file F`` from a client root
of its own.

``close`` stops the endpoint (SIGTERM to its process group, then SIGKILL), each node
(``dockyard node stop``, never ``ray stop``), then by PID whatever still runs with one of
its roots in its environment, then ``dockyard stop`` cleans each root's scratch.
``clear`` does the same for what a killed earlier run under ``base`` left, so a run after
a crash starts clean.  The roots stay (their stores are the next run's cache).

Commands are echoed (``$ dockyard ...``) and their output goes to this process's stderr
(or ``stdout=``) unless captured.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devkit.busybox_image import SetupError
from devkit.registry import free_port

PROJECT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 180.0
STOP_TIMEOUT = 60.0
SERVING = b"dockyard serving on"


@dataclass
class Node:
    """One node: its root, loopback address and native arch."""

    root: Path
    ip: str
    arch: str


def environment(root: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a dockyard process under ``root``: nothing of Ray's or dockyard's
    inherited, and this checkout's code first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "DOCKYARD_"))}
    env.update(PYTHONPATH=str(PROJECT), DOCKYARD_ROOT=str(root))
    env.update(extra or {})
    return env


def root_processes(root: Path) -> set[int]:
    """Live processes (not zombies, not this one) whose environment names ``root``."""
    wanted = f"DOCKYARD_ROOT={root}".encode()
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z" and wanted in (entry / "environ").read_bytes().split(b"\0"):
                    found.add(int(entry.name))
    return found


def _kill_all(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@dataclass
class LocalCluster:
    """Nodes and an endpoint under ``base``; see the module docstring."""

    base: Path
    echo: Callable[[str], None] = field(default=lambda line: None)
    nodes: list[Node] = field(default_factory=list)
    url: str = ""
    address: str = ""  # the head's GCS address, HOST:PORT
    _serve: subprocess.Popen[bytes] | None = None

    @property
    def head(self) -> Node:
        return self.nodes[0]

    @property
    def token_file(self) -> Path:
        """The endpoint's client token (mode 0600), made once per base."""
        path = self.base / "endpoint.token"
        if not path.exists():
            path.write_text(secrets.token_hex(16) + "\n")
            path.chmod(0o600)
        return path

    @property
    def serve_log(self) -> Path:
        return self.base / "serve.log"

    def dockyard(self, root: Path, *argv: str, capture: bool = False, check: bool = True,
                 timeout: float = START_TIMEOUT, stdout: Any = None
                 ) -> subprocess.CompletedProcess[bytes]:
        """``dockyard ARGV`` under ``root``, echoed; its output captured, or passed to
        ``stdout`` (default: our stderr) and our stderr."""
        self.echo("$ dockyard " + " ".join(argv))
        output = subprocess.PIPE if capture else (stdout or sys.stderr)
        done = subprocess.run([sys.executable, "-m", "dockyard", *argv],
                              env=environment(root), stdout=output,
                              stderr=subprocess.PIPE if capture else None,
                              timeout=timeout, check=False)
        if check and done.returncode != 0:
            said = (done.stderr or b"").decode(errors="replace").strip()
            raise SetupError(f"dockyard {' '.join(argv[:2])} under {root} failed "
                             f"(exit status {done.returncode}){': ' + said if said else ''}",
                             hint="see its output above")
        return done

    # --- starting --------------------------------------------------------------------

    def start(self, *arches: str, slots: int = 2) -> LocalCluster:
        """The head (the first arch), the other nodes, then the endpoint."""
        for arch in arches:
            self.add_node(arch, slots=slots)
        self.start_endpoint()
        return self

    def add_node(self, arch: str, *, slots: int = 2, emulate: tuple[str, ...] = ()) -> Node:
        same = sum(node.arch == arch for node in self.nodes)
        node = Node(self.base / (arch if not same else f"{arch}-{same}"),
                    f"127.0.0.{2 + len(self.nodes)}", arch)
        node.root.mkdir(parents=True, exist_ok=True)
        argv = ["node", "start", "--node-ip", node.ip, "--arch", arch, "--slots", str(slots)]
        argv += ["--emulate", ",".join(emulate)] if emulate else []
        if not self.nodes:
            argv += ["--head"]
        else:
            argv += ["--address", self.address, "--token-file", str(self.ray_token)]
        self.nodes.append(node)
        self.dockyard(node.root, *argv)
        if not self.address:
            self.address = _address_of(node.root)
        return node

    @property
    def ray_token(self) -> Path:
        """The cluster's Ray token, which the head made in its root's Ray home."""
        return self.head.root / "run" / "home" / ".ray" / "auth_token"

    def start_endpoint(self) -> None:
        """``dockyard serve`` under the head's root, in its own session; returns once it
        says it serves."""
        port = free_port()
        argv = ["serve", "--host", "127.0.0.1", "--port", str(port), "--ray-address", "auto",
                "--token-file", str(self.token_file)]
        self.echo("$ dockyard " + " ".join(argv) + " &")
        with open(self.serve_log, "wb") as log:
            self._serve = subprocess.Popen([sys.executable, "-m", "dockyard", *argv],
                                           env=environment(self.head.root), stdout=log,
                                           stderr=subprocess.STDOUT, start_new_session=True)
        (self.base / "serve.pid").write_text(str(self._serve.pid))
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT
        while SERVING not in self.serve_log.read_bytes():
            if self._serve.poll() is not None or time.monotonic() > deadline:
                raise SetupError(f"dockyard serve did not start:\n{self.serve_tail()}")
            time.sleep(0.2)
        self.echo(f"endpoint {self.url} (pid {self._serve.pid}, log {self.serve_log})")

    def serve_tail(self, lines: int = 20) -> str:
        text = self.serve_log.read_text(errors="replace") if self.serve_log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    # --- using it --------------------------------------------------------------------

    def client(self, name: str = "client") -> Path:
        """A client's own root (nothing of a node's)."""
        root = self.base / name
        root.mkdir(parents=True, exist_ok=True)
        return root

    def build(self, client: Path, *argv: str, capture: bool = False, check: bool = True,
              timeout: float = 600.0) -> subprocess.CompletedProcess[bytes]:
        """``dockyard build --endpoint URL --token-file F ARGV`` from ``client``'s root."""
        return self.dockyard(client, "build", "--endpoint", self.url, "--token-file",
                             str(self.token_file), *argv, capture=capture, check=check,
                             timeout=timeout)

    # --- stopping --------------------------------------------------------------------

    def close(self) -> None:
        """Stop everything this cluster started (see the module docstring)."""
        self._stop_endpoint()
        roots = [node.root for node in self.nodes]
        for root in reversed(roots):
            with contextlib.suppress(Exception):
                self.dockyard(root, "node", "stop", check=False, timeout=STOP_TIMEOUT)
        self._finish(roots)
        self.nodes.clear()

    def clear(self) -> None:
        """Stop what an earlier run under ``base`` left running (a killed demo): its
        endpoint, its nodes, and any process of one of its roots (a client's too)."""
        nodes = sorted((path.parent.parent for path in self.base.glob("*/run/node.json")),
                       key=_head_last)
        roots = sorted(path for path in self.base.iterdir() if path.is_dir())
        stale = _stale_endpoint(self.base / "serve.pid")
        if stale is None and not nodes and not any(map(root_processes, roots)):
            return
        self.echo(f"stopping what an earlier run left under {self.base}")
        if stale is not None:
            _kill_all({stale})
        for root in nodes:
            self.dockyard(root, "node", "stop", check=False, timeout=STOP_TIMEOUT)
        self._finish(roots)

    def _stop_endpoint(self) -> None:
        serve, self._serve = self._serve, None
        if serve is None or serve.poll() is not None:
            return
        self.echo(f"stopping the endpoint (pid {serve.pid})")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(serve.pid, signal.SIGTERM)
        try:
            serve.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(serve.pid, signal.SIGKILL)
            serve.wait(5)
        (self.base / "serve.pid").unlink(missing_ok=True)

    def _finish(self, roots: list[Path]) -> None:
        """By PID, what still runs under ``roots``; then each root's scratch."""
        for root in roots:
            _kill_all(root_processes(root))
        for root in roots:
            self.dockyard(root, "stop", check=False, timeout=STOP_TIMEOUT, capture=True)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stale_endpoint(pid_file: Path) -> int | None:
    """The pid an earlier run's endpoint had, when that process still runs dockyard serve."""
    try:
        pid = int(pid_file.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        pid_file.unlink(missing_ok=True)
        return None
    return pid if b"serve" in cmdline and b"cluster" in cmdline else None


def _head_last(root: Path) -> tuple[bool, str]:
    """Stop order: the other nodes before the head (a node whose head is gone takes
    seconds more to stop)."""
    from dockyard.cluster._node import NodePaths, read_record
    from dockyard.scheduler._errors import DockyardError

    try:
        record = read_record(NodePaths(root))
    except DockyardError:  # unreadable: node stop will say so
        record = None
    return (record is not None and record.head, str(root))


def _address_of(root: Path) -> str:
    """The head's GCS address, from the ``node.json`` its ``node start`` wrote."""
    from dockyard.cluster._node import NodePaths, read_record

    record = read_record(NodePaths(root))
    if record is None:
        raise SetupError(f"dockyard node start --head wrote no node record under {root}")
    return record.address
