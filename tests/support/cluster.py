"""A real dockyard cluster on this machine, through the CLI, for tests and benchmarks.

``LocalCluster`` starts a Ray head with ``dockyard node start --head`` on 127.0.0.2, then
each further node with ``node start --address`` on 127.0.0.3, .4, ... (every node its own
loopback address and its own ``DOCKYARD_ROOT``, so nothing passes through a shared disk a
real cluster would not have; NOTES-ray.md), and ``dockyard serve --ray-address auto``
under the head's root on a free 127.0.0.1 port with a token.  A client builds with its
own root through ``--endpoint``.  ``close`` stops the endpoint (SIGTERM), each node
(``node stop``, never ``ray stop``) and then, by pid, anything of its roots still alive.

Roots are short directories in /tmp: Ray's session sockets must fit a unix socket path.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devkit.local_cluster import environment, root_processes
from support.busybox_image import SetupError
from support.registry import free_port

PROJECT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 180.0


@dataclass
class Node:
    """One node: its root, address and what it runs."""

    root: Path
    ip: str
    arch: str
    emulate: tuple[str, ...] = ()
    slots: int = 2

    @property
    def worker_root(self) -> str:
        return str(self.root)


def dockyard(root: Path, *argv: str, check: bool = True, timeout: float = START_TIMEOUT,
             extra: dict[str, str] | None = None, stdin: bytes | None = None,
             prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[bytes]:
    """``dockyard ARGV`` under ``root`` (``prefix``: e.g. ``unshare -m ...`` before it)."""
    result = subprocess.run([*prefix, sys.executable, "-m", "dockyard", *argv],
                            env=environment(root, extra), capture_output=True,
                            input=stdin, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"dockyard {' '.join(argv)} failed ({result.returncode}):\n"
                             f"{result.stderr.decode(errors='replace')}")
    return result


def placed(progress: str) -> dict[str, str]:
    """Vertex name -> the address of the node that ran it, from plain progress."""
    names: dict[str, str] = {}
    where: dict[str, str] = {}
    for line in progress.splitlines():
        match = re.match(r"#(\d+) (\[.*)$", line)
        if match and match.group(1) not in names:
            names[match.group(1)] = match.group(2)
        ran = re.match(r"#(\d+) running on \S+ at (\S+)", line)
        if ran:
            where[names.get(ran.group(1), ran.group(1))] = ran.group(2)
    return where


def context(tmp: Path, dockerfile: str, files: dict[str, str] | None = None) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "Dockerfile").write_text(dockerfile)
    for name, text in (files or {}).items():
        (tmp / name).write_text(text)
    return tmp


def containers(node: Node) -> list[str]:
    """The runc containers of ``node``'s root."""
    state = node.root / "run" / "runc"
    if not state.is_dir():
        return []
    done = subprocess.run(["runc", "--root", str(state), "list", "-q"], capture_output=True,
                          check=True, timeout=30)
    return done.stdout.decode().split()


def wait_for(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def start_build(cluster: LocalCluster, client: Path, *argv: str) -> subprocess.Popen[bytes]:
    env = environment(client, {"DOCKYARD_ENDPOINT": cluster.url,
                               "DOCKYARD_TOKEN": cluster.token})
    return subprocess.Popen([sys.executable, "-m", "dockyard", "build", *argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@dataclass
class LocalCluster:
    """A head, worker nodes and an endpoint; see the module docstring."""

    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="dyc-")))
    nodes: list[Node] = field(default_factory=list)
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    url: str = ""
    address: str = ""  # the head's GCS address
    #: more environment for the nodes and the endpoint (the cluster's own credentials)
    env: dict[str, str] = field(default_factory=dict)
    _serve: subprocess.Popen[bytes] | None = None
    _next_ip: int = 2

    @property
    def head(self) -> Node:
        return self.nodes[0]

    @property
    def token_file(self) -> Path:
        path = self.base / "token"
        if not path.exists():
            path.write_text(self.token + "\n")
            path.chmod(0o600)
        return path

    def start(self, *nodes: tuple[str, tuple[str, ...], int]) -> LocalCluster:
        """The head (the first of ``nodes``: (arch, emulated arches, slots)), the other
        nodes, then the endpoint."""
        first, *rest = nodes
        self.add_node(*first, head=True)
        for node in rest:
            self.add_node(*node)
        self.start_endpoint()
        return self

    def add_node(self, arch: str, emulate: tuple[str, ...] = (), slots: int = 2, *,
                 head: bool = False) -> Node:
        ip = f"127.0.0.{self._next_ip}"
        self._next_ip += 1
        node = Node(self.base / f"n{len(self.nodes)}", ip, arch, emulate, slots)
        node.root.mkdir()
        argv = ["node", "start", "--node-ip", ip, "--arch", arch, "--slots", str(slots)]
        if emulate:
            argv += ["--emulate", ",".join(emulate)]
        if head:
            argv += ["--head"]
        else:
            token = self.head.root / "run" / "home" / ".ray" / "auth_token"
            argv += ["--address", self.address, "--token-file", str(token)]
        self.nodes.append(node)
        done = dockyard(node.root, *argv, extra=self.env)
        if head:
            self.address = _address_of(done.stdout.decode() + done.stderr.decode(), node)
        return node

    def start_endpoint(self, *argv: str) -> None:
        """``dockyard serve --ray-address auto`` with the token, and ``argv``."""
        port = free_port()
        log = open(self.base / "serve.log", "wb")  # noqa: SIM115 -- lives with the process
        self._serve = subprocess.Popen(
            [sys.executable, "-m", "dockyard", "serve", "--host", "127.0.0.1", "--port",
             str(port), "--ray-address", "auto", "--token-file", str(self.token_file),
             *argv],
            env=environment(self.head.root, self.env), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT
        while b"dockyard serving on" not in (self.base / "serve.log").read_bytes():
            if self._serve.poll() is not None or time.monotonic() > deadline:
                raise SetupError(f"dockyard serve did not start:\n{self.serve_log()}")
            time.sleep(0.2)

    def serve_log(self) -> str:
        return (self.base / "serve.log").read_text(errors="replace")

    def client(self, name: str = "client") -> Path:
        """A client's own root (nothing of a node's)."""
        root = self.base / name
        root.mkdir(exist_ok=True)
        return root

    def build(self, client: Path, *argv: str, check: bool = True, timeout: float = 300.0,
              prefix: tuple[str, ...] = (), extra: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess[bytes]:
        """``dockyard build --endpoint URL ARGV`` from ``client``'s root."""
        env = {"DOCKYARD_ENDPOINT": self.url, "DOCKYARD_TOKEN": self.token} | (extra or {})
        return dockyard(client, "build", *argv, check=check, timeout=timeout, extra=env,
                        prefix=prefix)

    def statistics(self) -> dict[str, Any]:
        """The endpoint's ``statistics`` call (the coordinator's counts among them)."""
        from dockyard.cluster._service import connect_endpoint
        from dockyard.cluster._wire import parse_endpoint

        with connect_endpoint(parse_endpoint(self.url, self.token)) as client:
            stats: dict[str, Any] = client.call("statistics")
        return stats

    def stop_node(self, node: Node) -> None:
        dockyard(node.root, "node", "stop", timeout=60)

    def close(self) -> None:
        """Stop everything this cluster started; remove its roots."""
        if self._serve is not None and self._serve.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._serve.pid, signal.SIGTERM)
            try:
                self._serve.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._serve.pid, signal.SIGKILL)
                self._serve.wait(5)
        for node in reversed(self.nodes):
            with contextlib.suppress(Exception):
                dockyard(node.root, "node", "stop", check=False, timeout=60)
        for node in self.nodes:
            for pid in root_processes(node.root):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for node in self.nodes:
            dockyard(node.root, "stop", check=False, timeout=60)
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _address_of(output: str, node: Node) -> str:
    """The head's GCS address, from what ``node start --head`` printed (or its node.json)."""
    from dockyard.cluster._node import NodePaths, read_record

    record = read_record(NodePaths(node.root))
    if record is None:
        raise SetupError(f"node start --head printed no address:\n{output}")
    return record.address
