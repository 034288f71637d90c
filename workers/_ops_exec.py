"""An exec op (RUN), executed: the root as an overlay of the input chain with a fresh upper
dir, the op's mounts prepared, the process run through runc, its output streamed as
events, and the upper dir turned into a layer.

Mounts, as BuildKit makes them:

- bind: an input state (its overlay, read-only unless ``readonly`` is off, in which case
  writes go to a throw-away upper dir) at ``selector``;
- cache: ``<root>/cachemounts/<id>``, kept across builds, never in a layer; ``locked``
  lets one RUN at a time use it, ``private`` gives a RUN that finds it busy a fresh
  directory of its own, ``shared`` lets everyone in;
- tmpfs; secret (a file on the executor's private tmpfs, outside every layer, or an
  environment variable); ssh (the session's agent socket).

The executor (workers/_executor.py) resolves the user, creates the working directory and
removes the mount-point stubs runc leaves, so they never reach the layer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from urllib.parse import quote

from cache_backends._records import StateResult
from scheduler._errors import SolveError
from scheduler._graph import ExecMount, ExecOp, Vertex
from scheduler._progress import EventSink, VertexLog

from ._executor import ExecMountSpec, SecretFile, SshSocket
from ._runtime import RuntimeBackend
from ._spec import BindMount, ProcessSpec, TmpfsMount
from ._users import path_in_root

__all__ = ["run_exec"]


async def run_exec(backend: RuntimeBackend, vertex: Vertex, op: ExecOp,
                   inputs: Sequence[StateResult], events: EventSink) -> StateResult:
    runtime = backend.runtime
    root = _root_mount(op)
    base = inputs[root.input].layers if root.input is not None else ()
    config = inputs[root.input].image_config if root.input is not None else None
    async with AsyncExitStack() as stack:
        rootfs = await stack.enter_async_context(
            runtime.snapshots.mount(await runtime.lower_dirs(base), writable=True))
        prepared = _Prepared([], [])
        for mount in op.mounts:
            if mount.dest != "/":
                await _prepare(backend, mount, inputs, stack, prepared)
        process = ProcessSpec.from_op(op)
        process = dataclasses.replace(process, env=(*process.env, *prepared.env))
        await runtime.executor.run_checked(process, rootfs.path, prepared.mounts,
                                           stdout=_streamer(vertex, events, 1),
                                           stderr=_streamer(vertex, events, 2))
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

    mounts: list[ExecMountSpec]
    env: list[str]


async def _prepare(backend: RuntimeBackend, mount: ExecMount, inputs: Sequence[StateResult],
                   stack: AsyncExitStack, out: _Prepared) -> None:
    if mount.type == "bind":
        out.mounts.append(await _bind(backend, mount, inputs, stack))
    elif mount.type == "cache":
        path = await stack.enter_async_context(_cache_dir(backend, mount))
        out.mounts.append(BindMount(path, mount.dest, readonly=mount.readonly))
    elif mount.type == "tmpfs":
        out.mounts.append(TmpfsMount(mount.dest, mount.size))
    elif mount.type == "secret":
        _secret(backend, mount, out)
    elif mount.type == "ssh":
        _ssh(backend, mount, out)
    else:
        raise SolveError(f"unknown mount type {mount.type!r} at {mount.dest}")


async def _bind(backend: RuntimeBackend, mount: ExecMount, inputs: Sequence[StateResult],
                stack: AsyncExitStack) -> BindMount:
    runtime = backend.runtime
    layers = inputs[mount.input].layers if mount.input is not None else ()
    lowers = await runtime.lower_dirs(layers)
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


def _secret(backend: RuntimeBackend, mount: ExecMount, out: _Prepared) -> None:
    value = backend.session.secrets.get(mount.secret_id)
    if value is None:
        if mount.required:
            raise SolveError(f"secret {mount.secret_id} not found",
                             hint=f"pass it with --secret id={mount.secret_id},src=FILE")
        return
    if mount.env_name:
        out.env.append(f"{mount.env_name}={value.decode('utf-8', 'replace')}")
        return
    out.mounts.append(SecretFile(mount.dest, value, 0o400 if mount.mode is None else mount.mode,
                                 mount.uid or 0, mount.gid or 0))


def _ssh(backend: RuntimeBackend, mount: ExecMount, out: _Prepared) -> None:
    socket = backend.session.ssh.get(mount.ssh_id or "default")
    if socket is None:
        if mount.required:
            raise SolveError(f"no ssh agent socket with id {mount.ssh_id!r} in the session",
                             hint="pass it with --ssh default or --ssh ID=SOCKET")
        return
    out.mounts.append(SshSocket(mount.dest, socket))


# --- output --------------------------------------------------------------------------


def _streamer(vertex: Vertex, events: EventSink, stream: int) -> Callable[[bytes], None]:
    def output(data: bytes) -> None:
        events.emit(VertexLog(vertex.digest, stream, data))
    return output
