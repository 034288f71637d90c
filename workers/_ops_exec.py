"""An exec op (RUN), executed: the root as an overlay of the input chain with a fresh upper
dir, the op's mounts prepared, the process run through runc, its output streamed as
events, and the upper dir turned into a layer.

Mounts, as BuildKit makes them:

- bind: an input state (its overlay, read-only unless ``readonly`` is off, in which case
  writes go to a throw-away upper dir) at ``selector``;
- cache: ``<root>/cachemounts/<id>``, kept across builds, never in a layer; ``locked``
  lets one RUN at a time use it, ``private`` gives a RUN that finds it busy a fresh
  directory of its own, ``shared`` lets everyone in;
- tmpfs; secret (a file on a tmpfs outside every layer, or an environment variable);
  ssh (the session's agent socket).

The directories and files runc creates for mount points (/proc, /dev, /sys,
/etc/resolv.conf, /etc/hosts, every mount target and missing parents) are removed from
the new state after the run unless the RUN filled them, as BuildKit's stub cleaner does.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from cache_backends._records import StateResult
from scheduler._errors import ExecError, SolveError
from scheduler._graph import ExecMount, ExecOp, Vertex
from scheduler._progress import EventSink, VertexLog

from ._ops_runc import run_container
from ._runtime import RuntimeBackend
from ._spec import BindMount, ProcessSpec, SpecMount, TmpfsMount, build_spec, hosts_file
from ._spec import resolv_conf as make_resolv_conf
from ._users import ResolvedUser, path_in_root, resolve_user

__all__ = ["run_exec"]

_SYSTEM_TARGETS = ("/proc", "/dev", "/sys", "/etc/resolv.conf", "/etc/hosts")
_TAIL_LINES = 10
_SHM = Path("/dev/shm")


async def run_exec(backend: RuntimeBackend, vertex: Vertex, op: ExecOp,
                   inputs: Sequence[StateResult], events: EventSink) -> StateResult:
    runtime = backend.runtime
    root = _root_mount(op)
    base = inputs[root.input].layers if root.input is not None else ()
    config = inputs[root.input].image_config if root.input is not None else None
    async with AsyncExitStack() as stack:
        rootfs = await stack.enter_async_context(
            runtime.snapshots.mount(await runtime.lower_dirs(base), writable=True))
        scratch = _scratch_dir(runtime.tmp)
        stack.callback(shutil.rmtree, scratch, True)
        prepared = _Prepared([], [])
        for mount in op.mounts:
            if mount.dest != "/":
                await _prepare(backend, mount, inputs, stack, scratch, prepared)
        user = await asyncio.to_thread(resolve_user, rootfs.path, op.user)
        stubs = _missing(rootfs.path, [*_SYSTEM_TARGETS, *(m.dest for m in prepared.mounts)])
        await asyncio.to_thread(_ensure_cwd, rootfs.path, op.cwd, user)
        process = dataclasses.replace(ProcessSpec.from_op(op),
                                      env=(*op.env, *op.proxy_env, *prepared.env))
        spec = build_spec(process, user, rootfs.path, prepared.mounts,
                          **_network_files(scratch, process))
        tail = _Tail()
        code = await run_container(scratch, spec, state_root=runtime.runc_state,
                                   output=_streamer(vertex, events, tail))
        await asyncio.to_thread(_remove_stubs, rootfs.path, stubs)
        if code != 0:
            raise _failed(op, code, tail)
        assert rootfs.upper is not None  # a writable mount has one
        layer = await runtime.store_upper(rootfs.upper, backend.session.epoch)
    return StateResult(layers=base if layer is None else (*base, layer),
                       image_config=config)


def _root_mount(op: ExecOp) -> ExecMount:
    for mount in op.mounts:
        if mount.dest == "/":
            return mount
    return ExecMount(dest="/", output=True)


@dataclasses.dataclass
class _Prepared:
    """What the op's mounts add to the container: spec mounts and environment entries."""

    mounts: list[SpecMount]
    env: list[str]


def _scratch_dir(fallback: Path) -> Path:
    """A private directory on a tmpfs when there is one (secrets and the bundle never touch
    a disk), else under the runtime's tmp."""
    base = _SHM if _SHM.is_dir() else fallback
    path = Path(tempfile.mkdtemp(prefix="dockyard-run-", dir=base))
    path.chmod(0o700)
    return path


async def _prepare(backend: RuntimeBackend, mount: ExecMount, inputs: Sequence[StateResult],
                   stack: AsyncExitStack, scratch: Path, out: _Prepared) -> None:
    if mount.type == "bind":
        out.mounts.append(await _bind(backend, mount, inputs, stack, scratch))
    elif mount.type == "cache":
        path = await stack.enter_async_context(_cache_dir(backend, mount))
        out.mounts.append(BindMount(path, mount.dest, readonly=mount.readonly))
    elif mount.type == "tmpfs":
        out.mounts.append(TmpfsMount(mount.dest, mount.size))
    elif mount.type == "secret":
        _secret(backend, mount, scratch, out)
    elif mount.type == "ssh":
        _ssh(backend, mount, out)
    else:
        raise SolveError(f"unknown mount type {mount.type!r} at {mount.dest}")


async def _bind(backend: RuntimeBackend, mount: ExecMount, inputs: Sequence[StateResult],
                stack: AsyncExitStack, scratch: Path) -> BindMount:
    runtime = backend.runtime
    if mount.input is None:
        empty = scratch / f"empty-{len(os.listdir(scratch))}"
        empty.mkdir()
        return BindMount(empty, mount.dest, readonly=mount.readonly)
    lowers = await runtime.lower_dirs(inputs[mount.input].layers)
    state = await stack.enter_async_context(
        runtime.snapshots.mount(lowers, writable=not mount.readonly))
    source = path_in_root(state.path, mount.selector) if mount.selector else state.path
    if not os.path.lexists(source):
        raise SolveError(f'mount source "{mount.selector}" for {mount.dest}: not found')
    return BindMount(source, mount.dest, readonly=mount.readonly)


@asynccontextmanager
async def _cache_dir(backend: RuntimeBackend, mount: ExecMount) -> AsyncIterator[Path]:
    runtime = backend.runtime
    name = quote(mount.cache_id or mount.dest, safe="").replace(".", "%2E")
    path = runtime.cachemounts / name
    lock = runtime.mount_locks.setdefault(name, asyncio.Lock())
    if mount.sharing == "private" and lock.locked():
        private = Path(tempfile.mkdtemp(prefix="private-", dir=runtime.tmp))
        _init_cache_dir(private, mount)
        try:
            yield private
        finally:
            shutil.rmtree(private, ignore_errors=True)
        return
    if not path.is_dir():
        path.mkdir(parents=True)
        _init_cache_dir(path, mount)
    if mount.sharing == "shared":
        yield path
        return
    async with lock:
        yield path


def _init_cache_dir(path: Path, mount: ExecMount) -> None:
    os.chmod(path, 0o755 if mount.mode is None else mount.mode)
    os.chown(path, mount.uid or 0, mount.gid or 0)


def _secret(backend: RuntimeBackend, mount: ExecMount, scratch: Path, out: _Prepared) -> None:
    value = backend.session.secrets.get(mount.secret_id)
    if value is None:
        if mount.required:
            raise SolveError(f"secret {mount.secret_id} not found",
                             hint=f"pass it with --secret id={mount.secret_id},src=FILE")
        return
    if mount.env_name:
        out.env.append(f"{mount.env_name}={value.decode('utf-8', 'replace')}")
        return
    secrets = scratch / "secrets"
    secrets.mkdir(mode=0o711, exist_ok=True)
    path = secrets / str(len(os.listdir(secrets)))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as stream:
        stream.write(value)
    os.chmod(path, 0o400 if mount.mode is None else mount.mode)
    os.chown(path, mount.uid or 0, mount.gid or 0)
    out.mounts.append(BindMount(path, mount.dest, readonly=True))


def _ssh(backend: RuntimeBackend, mount: ExecMount, out: _Prepared) -> None:
    socket = backend.session.ssh.get(mount.ssh_id or "default")
    if socket is None:
        if mount.required:
            raise SolveError(f"no ssh agent socket with id {mount.ssh_id!r} in the session",
                             hint="pass it with --ssh default or --ssh ID=SOCKET")
        return
    out.mounts.append(BindMount(socket, mount.dest, readonly=False))


# --- the container's files -----------------------------------------------------------


def _network_files(scratch: Path, process: ProcessSpec) -> dict[str, Path]:
    try:
        host = Path("/etc/resolv.conf").read_text()
    except OSError:
        host = ""
    resolv = scratch / "resolv.conf"
    resolv.write_text(make_resolv_conf(host, process.network))
    hosts = scratch / "hosts"
    hosts.write_text(hosts_file(process.effective_hostname))
    return {"resolv_conf": resolv, "hosts": hosts}


def _ensure_cwd(root: Path, cwd: str, user: ResolvedUser) -> None:
    """The working directory, created (owned by the RUN's user) when missing."""
    path = path_in_root(root, cwd)
    if not path.exists():
        path.mkdir(mode=0o755, parents=True)
        os.chown(path, user.uid, user.gid)


def _missing(root: Path, targets: Sequence[str]) -> list[Path]:
    """For each target, its first path component missing from ``root`` (runc will create
    it and what lies under it)."""
    stubs: list[Path] = []
    for target in targets:
        current = PurePosixPath("/")
        for part in PurePosixPath("/", target).parts[1:]:
            current = current / part
            path = path_in_root(root, str(current))
            if not os.path.lexists(path):
                stubs.append(path)
                break
    return list(dict.fromkeys(stubs))


def _remove_stubs(root: Path, stubs: Sequence[Path]) -> None:
    for stub in stubs:
        if os.path.lexists(stub) and _is_stub(stub):
            if stub.is_dir() and not stub.is_symlink():
                shutil.rmtree(stub)
            else:
                stub.unlink()


def _is_stub(path: Path) -> bool:
    """An empty file, or a directory holding only stubs."""
    info = path.lstat()
    if path.is_symlink():
        return False
    if path.is_dir():
        return all(_is_stub(child) for child in path.iterdir())
    return info.st_size == 0


# --- output --------------------------------------------------------------------------


class _Tail:
    """The last bytes of a process' output, for the error message."""

    def __init__(self) -> None:
        self._chunks: collections.deque[bytes] = collections.deque(maxlen=64)

    def add(self, data: bytes) -> None:
        self._chunks.append(data)

    def lines(self) -> str:
        text = b"".join(self._chunks).decode("utf-8", "replace")
        return "\n".join(text.rstrip("\n").split("\n")[-_TAIL_LINES:])


def _streamer(vertex: Vertex, events: EventSink, tail: _Tail) -> Callable[[int, bytes], None]:
    def output(stream: int, data: bytes) -> None:
        tail.add(data)
        events.emit(VertexLog(vertex.digest, stream, data))
    return output


def _failed(op: ExecOp, code: int, tail: _Tail) -> ExecError:
    shown = " ".join(op.args)
    output = tail.lines()
    message = f'process "{shown}" did not complete successfully: exit code: {code}'
    if output:
        message += "\n" + output
    return ExecError(message, exit_code=code, output_tail=output,
                     hint="the command failed inside the build container; its last "
                          "output lines are shown above")
