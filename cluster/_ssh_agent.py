"""``--ssh ID=PATH[,PATH...]``: the agent sockets a build is served, on the client.

A path is either an agent socket (forwarded as it is; one per id) or a private key file,
as buildx accepts.  The key files of one id are loaded into one ephemeral agent
(Debian's openssh-client: ``ssh-agent -D -a SOCKET``, then ``ssh-add``) whose socket is
served instead; ``SshAgents`` kills every agent it started and removes its socket
directory when the build ends, however it ends (success, failure, Ctrl-C).

A passphrase-protected key is refused before any agent starts (``UsageError``): the
client never prompts, as buildx does not.

``SshRelay(sockets)`` answers the workers' ``ssh.*`` asks (workers/_ssh_relay.py): it
connects to the agent socket of an id it was given (``ssh.open``), passes bytes to it
(``ssh.write``), hands back what the agent said within ``READ_WAIT`` (``ssh.read``: the
client answers one ask at a time, so a read never blocks the others for long) and closes
the connection (``ssh.close``; every connection when the build ends).  The request
carries the ids only, never a path of the client.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket as socket_module
import stat
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from dockyard.scheduler._errors import ServiceError, UsageError

from ._build_options import SshSpec

__all__ = ["AGENT_START_TIMEOUT", "READ_WAIT", "EphemeralAgent", "SshAgents", "SshRelay",
           "classify_paths"]

AGENT_START_TIMEOUT = 10.0  # seconds for ssh-agent's socket to appear
READ_WAIT = 0.2  # seconds an ssh.read waits for the agent before answering b""
MAX_CONNECTIONS = 64  # agent connections open at once, per build
_READ_MAX = 256 * 1024  # bytes one ssh.read hands back at most
_TOOL_HINT = "install Debian's openssh-client (ssh-agent, ssh-add, ssh-keygen)"


def classify_paths(spec: SshSpec) -> tuple[str | None, tuple[str, ...]]:
    """``(socket, ())`` when ``spec`` names one agent socket, ``(None, keys)`` when it
    names key files; ``UsageError`` for a missing path, two sockets or a mixture."""
    sockets: list[str] = []
    keys: list[str] = []
    for path in spec.paths:
        try:
            mode = os.stat(path).st_mode
        except OSError as exc:
            raise UsageError(f"invalid --ssh {spec.id}: cannot read {path!r}: "
                             f"{exc.strerror or exc}",
                             hint="give an agent socket or a private key file") from None
        (sockets if stat.S_ISSOCK(mode) else keys).append(path)
    if len(sockets) > 1:
        raise UsageError(f"invalid --ssh {spec.id}: only one agent socket is allowed per id "
                         f"({', '.join(sockets)})")
    if sockets and keys:
        raise UsageError(f"invalid --ssh {spec.id}: both an agent socket and key files "
                         f"given", hint="give either one socket or key files")
    return (sockets[0], ()) if sockets else (None, tuple(keys))


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise UsageError(f"--ssh with key files needs {name!r}, which is not installed",
                         hint=_TOOL_HINT)
    return found


def _quiet_env(extra: Mapping[str, str] = {}) -> dict[str, str]:
    """An environment in which the ssh tools never ask for a passphrase."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "SSH_ASKPASS")}
    return env | {"SSH_ASKPASS_REQUIRE": "never", **extra}


def _run(argv: Sequence[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """``argv`` with no terminal (its own session, stdin from /dev/null): never prompts."""
    return subprocess.run(list(argv), env=dict(env), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, start_new_session=True,
                          timeout=30, check=False)


def check_key(ident: str, path: str, copy: Path) -> None:
    """``UsageError`` unless ``path`` (read from its private ``copy``) is a private key
    usable without a passphrase."""
    done = _run([_tool("ssh-keygen"), "-y", "-P", "", "-f", str(copy)], _quiet_env())
    if done.returncode == 0:
        return
    if "passphrase" in done.stderr:
        raise UsageError(f"invalid --ssh {ident}: the key {path!r} is protected by a "
                         f"passphrase, which dockyard cannot ask for",
                         hint="load it into your ssh-agent (ssh-add) and pass --ssh "
                              f"{ident}=$SSH_AUTH_SOCK")
    raise UsageError(f"invalid --ssh {ident}: {path!r} is neither an agent socket nor a "
                     f"private key",
                     hint="give an agent socket or an OpenSSH/PEM private key file")


class EphemeralAgent:
    """One ``ssh-agent`` holding ``keys``, listening on a socket in a private directory;
    ``close`` kills it and removes the directory (idempotent)."""

    def __init__(self, ident: str, keys: Sequence[str]) -> None:
        self.ident = ident
        self.directory = Path(tempfile.mkdtemp(prefix="dockyard-ssh-"))
        self.socket = self.directory / "agent.sock"
        self._process: subprocess.Popen[bytes] | None = None
        try:
            self._start(keys)
        except BaseException:
            self.close()
            raise

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _start(self, keys: Sequence[str]) -> None:
        copies = [self._private_copy(index, key) for index, key in enumerate(keys)]
        for key, copy in zip(keys, copies, strict=True):
            check_key(self.ident, key, copy)
        agent, add = _tool("ssh-agent"), _tool("ssh-add")
        self._process = subprocess.Popen(
            [agent, "-D", "-a", str(self.socket)], env=_quiet_env(),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True)
        self._wait_for_socket()
        done = _run([add, "-q", *map(str, copies)],
                    _quiet_env({"SSH_AUTH_SOCK": str(self.socket)}))
        for copy in copies:
            copy.unlink()
        if done.returncode != 0:
            raise UsageError(f"invalid --ssh {self.ident}: ssh-add could not load "
                             f"{', '.join(keys)}: {done.stderr.strip() or 'failed'}")

    def _private_copy(self, index: int, key: str) -> Path:
        """``key`` copied to a 0600 file of the private directory (ssh-add refuses keys
        others may read; buildx does not ask that of the user)."""
        copy = self.directory / f"key-{index}"
        try:
            data = Path(key).read_bytes()
            fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
        except OSError as exc:
            raise UsageError(f"invalid --ssh {self.ident}: cannot read {key!r}: "
                             f"{exc.strerror or exc}") from None
        return copy

    def _wait_for_socket(self) -> None:
        deadline = time.monotonic() + AGENT_START_TIMEOUT
        while not self.socket.is_socket():
            process = self._process
            if process is not None and process.poll() is not None:
                error = process.stderr.read().decode(errors="replace") if process.stderr \
                    else ""
                raise UsageError(f"--ssh {self.ident}: ssh-agent exited with "
                                 f"{process.returncode}: {error.strip()}", hint=_TOOL_HINT)
            if time.monotonic() > deadline:
                raise UsageError(f"--ssh {self.ident}: ssh-agent did not listen on "
                                 f"{str(self.socket)!r} within {AGENT_START_TIMEOUT:g}s")
            time.sleep(0.01)

    def close(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stderr is not None:
                process.stderr.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __repr__(self) -> str:
        return f"<EphemeralAgent {self.ident} pid={self.pid} {self.socket}>"


class SshAgents:
    """The ``--ssh`` sockets of one build, by id: a context manager whose value maps each
    id to the socket to serve (the given one, or an ephemeral agent's)."""

    def __init__(self, specs: Sequence[SshSpec]) -> None:
        self._specs = tuple(specs)
        self.agents: list[EphemeralAgent] = []

    def __enter__(self) -> dict[str, str]:
        sockets: dict[str, str] = {}
        try:
            for spec in self._specs:
                socket, keys = classify_paths(spec)
                if socket is None:
                    self.agents.append(EphemeralAgent(spec.id, keys))
                    socket = str(self.agents[-1].socket)
                sockets[spec.id] = socket
        except BaseException:
            self.close()
            raise
        return sockets

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        agents, self.agents = self.agents, []
        for agent in agents:
            agent.close()


class SshRelay:
    """The client's end of the ssh agent relay: ``handlers()`` answer the ``ssh.*`` asks
    for the agent ``sockets`` by id; ``close`` closes every connection (idempotent)."""

    def __init__(self, sockets: Mapping[str, str]) -> None:
        self._sockets = dict(sockets)  # id -> the agent socket to serve (a client path)
        self._open: dict[int, socket_module.socket] = {}  # conn -> its agent connection
        self._next = 1  # the number of the next connection
        self.opened = 0  # connections made, all time

    def __repr__(self) -> str:
        return f"<SshRelay ids={sorted(self._sockets)} open={len(self._open)}>"

    def handlers(self) -> dict[str, Any]:
        return {"ssh.open": self.open, "ssh.write": self.write, "ssh.read": self.read,
                "ssh.close": self.close_connection}

    def open(self, params: dict[str, Any]) -> int:
        ident = str(params.get("id"))
        path = self._sockets.get(ident)
        if path is None:
            raise ServiceError(f"this build was given no ssh agent {ident!r}",
                               hint=f"pass it with --ssh {ident}")
        if len(self._open) >= MAX_CONNECTIONS:
            raise ServiceError(f"more than {MAX_CONNECTIONS} ssh agent connections open")
        sock = socket_module.socket(socket_module.AF_UNIX, socket_module.SOCK_STREAM)
        try:
            sock.connect(path)
        except OSError as exc:
            sock.close()
            raise ServiceError(f"cannot connect to the ssh agent {ident!r}: "
                               f"{exc.strerror or exc}",
                               hint="is the agent still running?") from None
        conn, self._next = self._next, self._next + 1
        self._open[conn] = sock
        self.opened += 1
        return conn

    def write(self, params: dict[str, Any]) -> None:
        data = params.get("data")
        if not isinstance(data, bytes):
            raise ServiceError("an ssh.write without bytes")
        try:
            self._connection(params).sendall(data)
        except OSError as exc:
            raise ServiceError(f"the ssh agent connection failed: {exc}") from None

    def read(self, params: dict[str, Any]) -> bytes | None:
        """What the agent sent within ``READ_WAIT`` (b"" if nothing), None at its end."""
        sock = self._connection(params)
        readable, _, _ = select.select([sock], [], [], READ_WAIT)
        if not readable:
            return b""
        try:
            data = sock.recv(_READ_MAX)
        except OSError:
            return None
        return data or None

    def close_connection(self, params: dict[str, Any]) -> None:
        sock = self._open.pop(self._number(params), None)
        if sock is not None:
            sock.close()

    def close(self) -> None:
        connections, self._open = self._open, {}
        for sock in connections.values():
            sock.close()

    def _number(self, params: dict[str, Any]) -> int:
        conn = params.get("conn")
        if not isinstance(conn, int) or isinstance(conn, bool):
            raise ServiceError("an ssh ask without a connection number")
        return conn

    def _connection(self, params: dict[str, Any]) -> socket_module.socket:
        sock = self._open.get(self._number(params))
        if sock is None:
            raise ServiceError(f"no open ssh agent connection {params.get('conn')!r}")
        return sock
