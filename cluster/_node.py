"""``dockyard node start|stop``: one Ray node per ``DOCKYARD_ROOT``, and its worker actor.

``start_node(settings, root)``

1. refuses when ``<root>/run/node.json`` names a node whose processes still run (or the
   root's embedded service runs: both would share the root's Ray directory);
2. checks that every emulated arch runs (QEMU binfmt: a probe binary of that arch);
3. puts the cluster's token in the root's Ray home (``<root>/run/home/.ray/auth_token``,
   mode 0600): a head makes one, a joining node copies the head's (``--token-file``,
   ``RAY_AUTH_TOKEN_PATH`` or ``RAY_AUTH_TOKEN``); Ray's processes read it from there, so
   the token is in no process's environment or arguments;
4. runs the venv's ``ray start`` in a new session (its processes detach from it; they all
   keep that session id, and so do the workers their raylet starts later);
5. connects as a driver, finds its own node (the live node whose raylet socket is under
   this root's Ray directory), creates the node's worker actor (``RayRuntime.create_worker``),
   asks it for ``info`` and disconnects;
6. records what it started in ``node.json`` (``NodeRecord``).

``stop_node(root)`` stops exactly those processes: the recorded ones and the members of the
recorded session whose environment names this root, each checked by its start time (a
reused pid is never signalled); SIGTERM, then SIGKILL after a grace period.  Never
``ray stop``, which kills every Ray process of the machine.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import platform
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dockyard
from dockyard.scheduler._errors import ServiceError, UsageError

from ._ray import ARCHES, RAY_SYSTEM_CONFIG, ray_environment, ray_temp_dir, worker_name
from ._service import Proc, RunPaths, alive, daemon_running, try_flock

__all__ = [
    "NODE_RECORD_VERSION", "NodePaths", "NodeRecord", "NodeSettings", "StartedNode",
    "detect_arch", "health_config", "node_processes", "ray_start_argv", "read_record",
    "start_node", "stop_node",
]

NODE_RECORD_VERSION = 1  # the "v" of node.json
MIN_OBJECT_STORE = 78_643_200  # Ray refuses less
NODE_ACTORS = 1  # dockyard's actors a node starts: its worker (see ray_start_argv)
DEFAULT_OBJECT_STORE = 100 * 1024 * 1024  # small: several nodes may share one machine
DEFAULT_HEALTH_CHECK_MS = 500  # fast failure detection on loopback; see health_config
_MACHINES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
_PROBE_DEFAULT = "/var/cache/dockyard/busybox-{arch}/bin/busybox"
_START_TIMEOUT = 120.0  # seconds for ``ray start``
_STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL
_EXCEPTION = re.compile(r"^[\w.]+(Error|Exception): ")  # the last line of a traceback


# --- settings ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """What ``dockyard node start`` was asked for, checked (``from_args`` raises
    ``UsageError`` for anything that cannot be used)."""

    head: bool  # start a new cluster (else join ``address``)
    address: str | None  # HOST:PORT of the head's GCS (joining only)
    arch: str  # the node's native arch
    emulate: tuple[str, ...]  # arches it runs through QEMU binfmt (never ``arch``)
    slots: int  # vertices the worker runs at once (>= 1); the value of each arch resource
    node_ip: str | None  # the node's address; None: Ray detects it
    port: int  # the head's GCS port (0: a free one)
    object_store_bytes: int  # the node's object store (>= MIN_OBJECT_STORE)
    token_file: Path | None = None  # a joining node's copy of the head's token
    # the worker's garbage collector (workers/_gc_policy.py GcSettings as a map; None:
    # its defaults)
    gc: dict[str, Any] | None = None

    @property
    def arches(self) -> list[str]:
        return [self.arch, *self.emulate]

    @classmethod
    def from_args(cls, head: bool, address: str | None, arch: str | None, emulate: str | None,
                  slots: int | None, node_ip: str | None, port: int | None,
                  object_store: int | None, token_file: str | None = None,
                  gc: dict[str, Any] | None = None) -> NodeSettings:
        if head == (address is not None):
            raise UsageError("give exactly one of --head (start a cluster) and --address "
                             "HOST:PORT (join one)")
        if port is not None and not head:
            raise UsageError("--port is the head's port: use it with --head")
        native = _arch(arch) if arch else detect_arch()
        return cls(head=head, address=_address(address) if address else None, arch=native,
                   emulate=_emulated(emulate or "", native), slots=_slots(slots),
                   node_ip=_node_ip(node_ip) if node_ip else None, port=_port(port or 0),
                   object_store_bytes=_object_store(object_store),
                   token_file=Path(token_file) if token_file else None, gc=gc)


def detect_arch(machine: str | None = None) -> str:
    """The dockyard arch of this machine (``platform.machine()``)."""
    machine = machine if machine is not None else platform.machine()
    try:
        return _MACHINES[machine.lower()]
    except KeyError:
        raise UsageError(f"dockyard runs on amd64 and arm64, not on {machine!r}",
                         hint="give the node's arch with --arch") from None


def _arch(text: str) -> str:
    if text not in ARCHES:
        raise UsageError(f"unknown arch {text!r}: use one of {', '.join(ARCHES)}")
    return text


def _emulated(text: str, native: str) -> tuple[str, ...]:
    found: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item or item in found:
            continue
        if _arch(item) == native:
            raise UsageError(f"--emulate {item}: {item} is this node's native arch")
        found.append(item)
    return tuple(found)


def _slots(value: int | None) -> int:
    slots = value if value is not None else (os.cpu_count() or 1)
    if slots < 1:
        raise UsageError(f"--slots {slots}: a node runs at least one vertex at a time")
    return slots


def _node_ip(text: str) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise UsageError(f"--node-ip {text!r} is not an IP address") from None
    if str(address) in ("127.0.0.1", "::1"):
        raise UsageError(f"--node-ip {text}: Ray replaces it with the machine's address",
                         hint="on one machine give each node its own loopback address: "
                              "127.0.0.2, 127.0.0.3, ...")
    return str(address)


def _port(port: int) -> int:
    if not 0 <= port <= 65535:
        raise UsageError(f"--port {port} is not a TCP port (0-65535; 0: a free one)")
    return port


def _address(text: str) -> str:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise UsageError(f"--address {text!r}: expected HOST:PORT (the head's address, "
                         "printed by 'dockyard node start --head')")
    return text


def _object_store(value: int | None) -> int:
    size = value if value is not None else DEFAULT_OBJECT_STORE
    if size < MIN_OBJECT_STORE:
        raise UsageError(f"--object-store-memory {size}: Ray needs at least "
                         f"{MIN_OBJECT_STORE} bytes")
    return size


def health_config(environ: Mapping[str, str] = os.environ) -> dict[str, int]:
    """The head's health checks: a node is declared dead after two missed checks of
    ``DOCKYARD_HEALTH_CHECK_MS`` (default 500 ms: right on loopback, too eager for a real
    network; raise it there, e.g. 3000)."""
    text = environ.get("DOCKYARD_HEALTH_CHECK_MS", str(DEFAULT_HEALTH_CHECK_MS))
    if not text.isdigit() or int(text) < 100:
        raise UsageError(f"DOCKYARD_HEALTH_CHECK_MS={text!r}: expected milliseconds >= 100")
    period = int(text)
    return {"health_check_period_ms": period, "health_check_timeout_ms": period,
            "health_check_failure_threshold": 2, "health_check_initial_delay_ms": 0}


# --- node.json --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodePaths:
    """The files of a root's node, under ``<root>/run``."""

    root: Path

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def record(self) -> Path:
        return self.run / "node.json"

    @property
    def lock(self) -> Path:
        return self.run / "node.lock"

    @property
    def log(self) -> Path:
        return self.run / "node.log"

    @property
    def token(self) -> Path:
        """Ray's default token path under the root's HOME (``ray_environment``)."""
        return self.run / "home" / ".ray" / "auth_token"


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """What ``node start`` started under a root (``node.json``, version 1)."""

    address: str  # the cluster's GCS address, HOST:PORT
    node_id: str  # the Ray node id (hex)
    node_ip: str  # the node's address
    head: bool  # whether this node is the cluster's head
    session: int  # the session id of the node's processes (``ray start``'s pid)
    session_dir: str  # the node's Ray session directory
    arches: list[str]  # native first, then emulated
    slots: int
    processes: list[Proc] = field(default_factory=list)  # (pid, start time) at start

    @property
    def worker(self) -> str:
        return worker_name(self.node_id)

    def to_json(self) -> str:
        return json.dumps({"v": NODE_RECORD_VERSION, **asdict(self)}, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, where: Path) -> NodeRecord:
        """Parse ``text`` (the contents of ``where``); a bad file is a ``ServiceError``."""
        try:
            data = json.loads(text)
            if data.pop("v") != NODE_RECORD_VERSION:
                raise ValueError("unknown version")
            data["processes"] = [(int(pid), str(start)) for pid, start in data["processes"]]
            record = cls(**data)
            _check_record(record)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ServiceError(f"{where} is not a dockyard node record ({exc})",
                               hint="if no node runs under this root, remove the file") from None
        return record


def _check_record(record: NodeRecord) -> None:
    checks = (isinstance(record.address, str), isinstance(record.node_id, str),
              isinstance(record.node_ip, str), isinstance(record.session, int),
              isinstance(record.slots, int), isinstance(record.arches, list))
    if not all(checks):
        raise ValueError("a field has the wrong type")


def read_record(paths: NodePaths) -> NodeRecord | None:
    """The root's node record, or None when there is none."""
    try:
        text = paths.record.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ServiceError(f"cannot read {paths.record}: {exc.strerror or exc}") from None
    return NodeRecord.from_json(text, paths.record)


def _write_record(paths: NodePaths, record: NodeRecord) -> None:
    partial = paths.record.with_suffix(".json.partial")
    partial.write_text(record.to_json())
    partial.replace(paths.record)


# --- processes ---------------------------------------------------------------------------


def _fields(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _of_root(pid: int, root: Path) -> bool:
    """Whether process ``pid`` runs with ``DOCKYARD_ROOT=root`` in its environment."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"DOCKYARD_ROOT={root}".encode() in environ.split(b"\0")


def node_processes(session: int, root: Path) -> set[Proc]:
    """The live processes of session ``session`` started for ``root``."""
    found: set[Proc] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = _fields(int(entry.name))
            if int(fields[3]) == session and fields[0] not in ("Z", "X") \
                    and _of_root(int(entry.name), root):
                found.add((int(entry.name), fields[19]))
    return found


def _signal(processes: set[Proc], signum: int) -> None:
    for process in processes:
        if alive(process):
            with contextlib.suppress(OSError):
                os.kill(process[0], signum)


def _terminate(processes: set[Proc], grace: float = _STOP_GRACE) -> set[Proc]:
    """SIGTERM ``processes``, SIGKILL those alive after ``grace`` seconds; those that were
    still alive at the SIGKILL."""
    _signal(processes, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(p) for p in processes):
        time.sleep(0.1)
    stubborn = {p for p in processes if alive(p)}
    _signal(stubborn, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(alive(p) for p in stubborn):
        time.sleep(0.05)
    return stubborn


def _is_raylet(process: Proc) -> bool:
    try:
        argv0 = Path(f"/proc/{process[0]}/cmdline").read_bytes().split(b"\0")[0]
    except OSError:
        return False
    return argv0.endswith(b"/raylet")


def _stop_processes(processes: set[Proc], grace: float) -> set[Proc]:
    """Stop a node's processes: its raylet first (it drains its workers and tells the GCS
    the node leaves; a head's GCS, signalled before, would wait for its raylet), then the
    rest (Ray's autoscaler monitor ignores SIGTERM: a short grace)."""
    raylets = {p for p in processes if _is_raylet(p)}
    stubborn = _terminate(raylets, grace)
    return stubborn | _terminate(processes - raylets, min(grace, 2.0))


def _running(record: NodeRecord, root: Path) -> set[Proc]:
    recorded = {p for p in record.processes if alive(p)}
    return recorded | node_processes(record.session, root)


# --- ray start -------------------------------------------------------------------------


def _ray_script() -> str:
    script = Path(sys.executable).parent / "ray"
    if script.exists():
        return str(script)
    raise ServiceError(f"Ray's 'ray' command is not beside {sys.executable}",
                       hint="install dockyard's dependencies in this interpreter's venv")


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
    return port


def ray_start_argv(settings: NodeSettings, temp_dir: Path, ports: Sequence[int],
                   health: Mapping[str, int], ray: str = "ray") -> list[str]:
    """The ``ray start`` command of a node; ``ports``: two free ports (the dashboard's and
    the dashboard agent's, whose defaults would clash between nodes of one machine).

    Only what a node uses (issue 10): ``--num-cpus`` is Ray's "CPU" resource, which no
    dockyard actor asks for, and Ray starts that many Python workers with the raylet and
    keeps as many idle: one, the node's worker actor (a coordinator placed on the node
    starts its own).  No log monitor (it forwards workers' output to drivers; the
    endpoint attaches without it) and no autoscaler monitor on a head (fixed nodes)."""
    resources = {f"arch:{arch}": settings.slots for arch in settings.arches}
    argv = [ray, "start", f"--num-cpus={NODE_ACTORS}",
            f"--resources={json.dumps(resources, sort_keys=True)}",
            f"--object-store-memory={settings.object_store_bytes}",
            f"--temp-dir={temp_dir}", f"--dashboard-agent-listen-port={ports[1]}",
            "--include-log-monitor=false",
            "--disable-usage-stats", "--log-style=record", "--log-color=false"]
    if settings.node_ip:
        argv.append(f"--node-ip-address={settings.node_ip}")
    if settings.head:
        return [*argv, "--head", f"--port={settings.port}", "--include-dashboard=false",
                "--no-monitor",
                f"--dashboard-port={ports[0]}",
                f"--system-config={json.dumps(RAY_SYSTEM_CONFIG | dict(health), sort_keys=True)}"]
    return [*argv, f"--address={settings.address}"]


#: The directory holding the ``dockyard`` package (site-packages, or a source tree), put
#: on PYTHONPATH of the processes started here; not the package's own folder, which would
#: make ``scheduler`` a top-level name again (PyPI has another ``scheduler``).
_PROJECT = Path(dockyard.__file__).parent.parent


def _node_environment(root: Path, base: Mapping[str, str]) -> dict[str, str]:
    """The environment of a node's Ray processes: the root's (``ray_environment``), the
    project importable (the worker actor's code), and no token in it (they read it from
    the root's Ray home)."""
    env = ray_environment(root, base)
    env.pop("RAY_AUTH_TOKEN", None)
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PROJECT), base.get("PYTHONPATH"))
                                        if p)
    return env


def _token_source(settings: NodeSettings, environ: Mapping[str, str]) -> bytes | None:
    """The head's token a joining node was given, or None."""
    path = settings.token_file or (Path(environ["RAY_AUTH_TOKEN_PATH"])
                                   if environ.get("RAY_AUTH_TOKEN_PATH") else None)
    if path is not None:
        try:
            return path.read_bytes().strip()
        except OSError as exc:
            raise UsageError(f"cannot read the cluster's token {path}: "
                             f"{exc.strerror or exc}") from None
    token = environ.get("RAY_AUTH_TOKEN", "").strip()
    return token.encode() if token else None


def _place_token(settings: NodeSettings, paths: NodePaths,
                 environ: Mapping[str, str]) -> None:
    """Put the cluster's token at ``paths.token`` (0600)."""
    given = _token_source(settings, environ)
    if given is None and not settings.head:
        raise UsageError(f"joining {settings.address} needs the cluster's token",
                         hint="give the head's token file with --token-file (the head "
                              "printed it), or set RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN")
    if given is None and paths.token.exists():
        return  # a head restarted under its root keeps its token: its nodes still join
    paths.token.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(paths.token, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(given if given is not None else secrets.token_hex(32).encode())
    paths.token.chmod(0o600)


def _check_emulation(arch: str, environ: Mapping[str, str]) -> None:
    """Refuse ``arch`` unless a binary of that arch runs here (QEMU binfmt)."""
    probe = Path(environ.get(f"DOCKYARD_BUSYBOX_{arch.upper()}",
                             _PROBE_DEFAULT.format(arch=arch)))
    hint = ("install qemu-user-static and binfmt-support (then 'update-binfmts --enable'), "
            f"or set DOCKYARD_BUSYBOX_{arch.upper()} to a static {arch} busybox to test with")
    if not probe.is_file():
        raise UsageError(f"cannot check that {arch} binaries run here: {probe} is missing",
                         hint=hint)
    try:
        result = subprocess.run([str(probe), "true"], capture_output=True, timeout=30,
                                check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UsageError(f"--emulate {arch}: {probe} does not run here ({exc})",
                         hint=hint) from None
    if result.returncode != 0:
        raise UsageError(f"--emulate {arch}: {probe} exited with status {result.returncode}",
                         hint=hint)


def _start_failure(path: Path, lines: int = 12) -> str:
    """Why ``ray start`` failed, from its log ``path``: the exception it ended with, else
    the last ``lines`` lines of this run."""
    try:
        text = path.read_text(errors="replace").rsplit("\n--- ", 1)[-1]
    except OSError:
        return "(no log)"
    run = text.splitlines()[1:]
    errors = [line for line in run if _EXCEPTION.match(line)]
    return errors[-1] if errors else "\n".join(run[-lines:])


def _ray_start(settings: NodeSettings, paths: NodePaths, env: Mapping[str, str],
               health: Mapping[str, int]) -> int:
    """Run ``ray start`` in a new session; the session id (its pid)."""
    temp = ray_temp_dir(paths.root)
    temp.mkdir(parents=True, exist_ok=True)
    host = settings.node_ip or "127.0.0.1"
    argv = ray_start_argv(settings, temp, (_free_port(host), _free_port(host)),
                          health, ray=_ray_script())
    with open(paths.log, "ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(argv)}\n".encode())
        log.flush()
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, env=dict(env),
                                   cwd=paths.run, start_new_session=True)
    try:
        status = process.wait(timeout=_START_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        status = process.wait()
    if status != 0:
        _stop_processes(node_processes(process.pid, paths.root), grace=2.0)
        raise ServiceError(f"'ray start' failed (status {status}): "
                           f"{_start_failure(paths.log)}",
                           hint=f"the whole log is {paths.log}")
    return process.pid


# --- start and stop -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartedNode:
    """What ``start_node`` reports."""

    record: NodeRecord
    info: dict[str, Any]  # the worker's ``info()``
    token: Path  # where the cluster's token is


def _refuse_running(paths: NodePaths) -> None:
    if daemon_running(RunPaths(paths.root)):
        raise ServiceError(f"the embedded dockyard service runs under {paths.root}",
                           hint="stop it ('dockyard stop') or use another DOCKYARD_ROOT")
    record = read_record(paths)
    if record is None:
        return
    if _running(record, paths.root):
        raise ServiceError(f"a dockyard node already runs under {paths.root}: "
                           f"{record.worker} at {record.node_ip} (cluster {record.address})",
                           hint="stop it first with 'dockyard node stop'")
    paths.record.unlink(missing_ok=True)  # it died without 'node stop'


def start_node(settings: NodeSettings, root: Path,
               environ: Mapping[str, str] = os.environ) -> StartedNode:
    """Start a Ray node under ``root`` and its worker actor (see the module doc)."""
    paths = NodePaths(root)
    health = health_config(environ)
    try:
        paths.run.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ServiceError(f"cannot create {paths.run}: {exc.strerror or exc}",
                           hint="set DOCKYARD_ROOT to a writable directory") from None
    with try_flock(paths.lock) as mine:
        if not mine:
            raise ServiceError(f"another 'dockyard node start' runs under {root}")
        _refuse_running(paths)
        if settings.address:
            from ._node_ls import check_reachable

            check_reachable(settings.address)
        for arch in settings.emulate:
            _check_emulation(arch, environ)
        _place_token(settings, paths, environ)
        env = _node_environment(root, environ)
        session = _ray_start(settings, paths, env, health)
        try:
            return _finish_start(settings, paths, env, session)
        except BaseException:  # Ctrl-C included: leave nothing running
            _stop_processes(node_processes(session, root), grace=2.0)
            raise


def _finish_start(settings: NodeSettings, paths: NodePaths, env: Mapping[str, str],
                  session: int) -> StartedNode:
    from ._node_ls import connected, own_node, ping_worker

    temp = ray_temp_dir(paths.root)
    address = settings.address or _head_address(temp)
    with connected(address, settings.node_ip, env) as runtime:
        node = own_node(temp, settings.node_ip)
        ref = runtime.create_worker(paths.root, settings.arches, [settings.arch],
                                    settings.slots, node["NodeID"], settings.gc)
        info = ping_worker(ref)
    session_dir = str(Path(node["RayletSocketName"]).parent.parent)
    record = NodeRecord(address=address, node_id=node["NodeID"],
                        node_ip=node["NodeManagerAddress"], head=settings.head,
                        session=session, session_dir=session_dir, arches=settings.arches,
                        slots=settings.slots,
                        processes=sorted(node_processes(session, paths.root)))
    _write_record(paths, record)
    return StartedNode(record, info, paths.token)


def _head_address(temp: Path) -> str:
    """The GCS address a head wrote (``ray_current_cluster`` in its Ray directory)."""
    try:
        return (temp / "ray_current_cluster").read_text().strip()
    except OSError as exc:
        raise ServiceError(f"the head started but left no address in {temp}: "
                           f"{exc.strerror or exc}") from None


def stop_node(root: Path, grace: float = _STOP_GRACE) -> NodeRecord | None:
    """Stop the node started under ``root``; its record, or None when none ran."""
    paths = NodePaths(root)
    with try_flock(paths.lock) if paths.run.is_dir() else contextlib.nullcontext(True) as mine:
        if not mine:
            raise ServiceError(f"a 'dockyard node start' is running under {root}",
                               hint="wait for it to finish, then stop the node")
        record = read_record(paths)
        if record is None:
            return None
        stubborn = _stop_processes(_running(record, root), grace)
        if any(alive(p) for p in stubborn):
            raise ServiceError(f"processes of the node under {root} survived SIGKILL: "
                               f"{sorted(p[0] for p in stubborn if alive(p))}")
        paths.record.unlink(missing_ok=True)
    return record
