"""An exec op (RUN), executed: the root as an overlay of the input chain with a fresh upper
dir, the op's mounts prepared, the process run through runc, its output streamed as
events, and the upper dir turned into a layer.

Mounts, as BuildKit makes them:

- bind: an input state (its overlay, read-only unless ``readonly`` is off, in which case
  writes go to a throw-away upper dir) at ``selector``;
- cache: ``<root>/cachemounts/<id>``, kept across builds, never in a layer.  Seeded
  ``from`` a state, it is ``<id>@<state>`` (one cache per id and state, as BuildKit keys
  it), created as a copy of that state the first time, and ``source`` picks the
  directory mounted.  Sharing holds an flock on the directory, so worker processes on
  one root agree: ``locked`` lets one RUN at a time use it, ``private`` gives a RUN that
  finds it busy a fresh (seeded) directory of its own, removed after the RUN, ``shared``
  (the default) lets every shared user in;
- tmpfs; secret (a file on the executor's private tmpfs, outside every layer, or an
  environment variable); ssh (a socket of the worker's own, with the mount's owner and
  mode, forwarding to the session's agent socket or relaying to the client's agent over
  the session channel, workers/_ssh_relay.py).

The executor (workers/_executor.py) resolves the user, creates the working directory and
removes the mount-point stubs runc leaves, so they never reach the layer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from urllib.parse import quote

from dockyard.cache_backends._records import LayerDescriptor, StateResult
from dockyard.scheduler._errors import SolveError
from dockyard.scheduler._graph import ExecMount, ExecOp, Vertex
from dockyard.scheduler._progress import EventSink, VertexLog

from ._executor import ExecMountSpec, SecretFile, SshSocket
from ._runtime import RuntimeBackend
from ._spec import BindMount, ProcessSpec, TmpfsMount
from ._ssh_relay import forwarding
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
        layer = await runtime.store_upper(rootfs, backend.session.epoch)
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
        path = await stack.enter_async_context(_cache_dir(backend, mount, inputs))
        out.mounts.append(BindMount(path, mount.dest, readonly=mount.readonly))
    elif mount.type == "tmpfs":
        out.mounts.append(TmpfsMount(mount.dest, mount.size))
    elif mount.type == "secret":
        await _secret(backend, mount, out)
    elif mount.type == "ssh":
        await _ssh(backend, mount, stack, out)
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
async def _cache_dir(backend: RuntimeBackend, mount: ExecMount,
                     inputs: Sequence[StateResult]) -> AsyncIterator[Path]:
    seed = inputs[mount.input].layers if mount.input is not None else ()
    path = backend.runtime.cachemounts / _cache_name(mount, seed)
    held = await _held_cache_dir(backend, path, mount, seed)
    if held is not None:
        try:
            yield _selected(path, mount, seed)
        finally:
            os.close(held)
        return
    private = Path(tempfile.mkdtemp(prefix="private-", dir=backend.runtime.tmp))
    try:
        await _fill_cache_dir(backend, private, mount, seed)
        yield _selected(private, mount, seed)
    finally:
        await asyncio.to_thread(shutil.rmtree, private, True)


async def _held_cache_dir(backend: RuntimeBackend, path: Path, mount: ExecMount,
                          seed: Sequence[LayerDescriptor]) -> int | None:
    """``path`` made if missing and locked for this RUN (``_lock_cache_dir``), marked used
    now (the garbage collector's LRU order, workers/_gc.py).  The collector removes a
    cache directory only under an exclusive lock of its own, renamed away first: a lock
    won on a directory no longer at ``path`` is dropped and taken again on a new one."""
    while True:
        if not path.is_dir():
            await _create_cache_dir(backend, path, mount, seed)
        try:
            held = await _lock_cache_dir(path, mount.sharing or "shared")
        except FileNotFoundError:
            continue  # removed between the check and the lock
        if held is None:
            return None
        try:
            same = os.path.samestat(os.fstat(held), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            with contextlib.suppress(OSError):
                os.utime(path)
            return held
        os.close(held)


def _cache_name(mount: ExecMount, seed: Sequence[LayerDescriptor]) -> str:
    """The directory of a cache id; one seeded ``from`` a state is its own cache per
    state, as BuildKit keys it (``id:ref``).  ``quote`` never leaves a ``.`` or ``@``,
    so ``name@state`` never meets a plain id's name."""
    name = quote(mount.cache_id or mount.dest, safe="").replace(".", "%2E")
    if not seed:
        return name
    state = [layer.diff_id for layer in seed]
    if _owned_subdir(mount, seed):  # BuildKit's state is then from + mkdir /cache
        state.append(f"/cache {mount.mode} {mount.uid} {mount.gid}")
    chain = hashlib.sha256("\n".join(state).encode())
    return f"{name}@{chain.hexdigest()[:32]}"


async def _create_cache_dir(backend: RuntimeBackend, path: Path, mount: ExecMount,
                            seed: Sequence[LayerDescriptor]) -> None:
    """Make ``path``, seeded, atomically: filled in scratch space and renamed into place
    under an exclusive lock on the cache-mount folder (one creator on this root)."""
    creating = await _lock_dir(path.parent, fcntl.LOCK_EX)
    assert creating is not None  # a waiting lock returns only once held
    try:
        if path.is_dir():
            return
        staging = Path(tempfile.mkdtemp(prefix="cachemount-", dir=backend.runtime.tmp))
        try:
            await _fill_cache_dir(backend, staging, mount, seed)
            os.rename(staging, path)
        finally:
            await asyncio.to_thread(shutil.rmtree, staging, True)
    finally:
        os.close(creating)


async def _fill_cache_dir(backend: RuntimeBackend, target: Path, mount: ExecMount,
                          seed: Sequence[LayerDescriptor]) -> None:
    """A new cache directory's content: empty (owner and mode from the mount), or a copy
    of the ``from`` state (and, with no ``source`` but an owner or mode, its ``/cache``
    made with them, as BuildKit's converter does)."""
    if not seed:
        _init_cache_dir(target, mount)
        return
    runtime = backend.runtime
    async with runtime.snapshots.mount(await runtime.lower_dirs(seed)) as state:
        await _copy_tree(state.path, target)
    if _owned_subdir(mount, seed):
        (target / "cache").mkdir(exist_ok=True)
        _init_cache_dir(target / "cache", mount)


def _owned_subdir(mount: ExecMount, seed: Sequence[LayerDescriptor]) -> bool:
    return bool(seed) and not mount.selector and (
        mount.mode is not None or mount.uid is not None or mount.gid is not None)


async def _copy_tree(source: Path, target: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        "cp", "-a", "--", f"{source}/.", str(target),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, error = await process.communicate()
    if process.returncode != 0:
        raise SolveError(f"seeding the cache mount {target.name} failed: "
                         f"{error.decode(errors='replace').strip()}",
                         hint="check free space under DOCKYARD_ROOT")


def _selected(path: Path, mount: ExecMount, seed: Sequence[LayerDescriptor]) -> Path:
    """The directory mounted: the cache's ``source`` (made when missing)."""
    selector = "/cache" if _owned_subdir(mount, seed) else mount.selector
    if not selector:
        return path
    chosen = path_in_root(path, selector)
    if not chosen.is_dir():
        try:
            chosen.mkdir(parents=True)
        except OSError as err:
            raise SolveError(f'cache mount source "{selector}" for {mount.dest}: '
                             f"{err.strerror}", hint="source must name a directory") from None
    return chosen


async def _lock_cache_dir(path: Path, sharing: str) -> int | None:
    """Hold ``path`` for one RUN (an flock on the directory, so every worker process on
    this root agrees): ``shared`` with other shared users, ``locked`` alone (waiting),
    ``private`` alone or not at all (None: busy, use a fresh directory)."""
    if sharing == "private":
        return await _lock_dir(path, fcntl.LOCK_EX, wait=False)
    if sharing == "locked":
        return await _lock_dir(path, fcntl.LOCK_EX)
    if sharing == "shared":
        return await _lock_dir(path, fcntl.LOCK_SH)
    raise SolveError(f"invalid cache sharing {sharing!r} for {path.name}",
                     hint="use sharing=shared, private or locked")


async def _lock_dir(path: Path, kind: int, *, wait: bool = True) -> int | None:
    """An open descriptor of ``path`` holding an flock of ``kind``; polled, so a cancelled
    build stops waiting at once."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        while True:
            try:
                fcntl.flock(fd, kind | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if not wait:
                    os.close(fd)
                    return None
            await asyncio.sleep(_LOCK_POLL)
    except BaseException:
        os.close(fd)
        raise


_LOCK_POLL = 0.05


def _init_cache_dir(path: Path, mount: ExecMount) -> None:
    os.chmod(path, 0o755 if mount.mode is None else mount.mode)
    os.chown(path, mount.uid or 0, mount.gid or 0)


async def _secret(backend: RuntimeBackend, mount: ExecMount, out: _Prepared) -> None:
    value = await backend.session.secrets.secret(mount.secret_id)
    if value is None:
        if mount.required:
            raise SolveError(f"secret {mount.secret_id}: not found",
                             hint=f"pass it with --secret id={mount.secret_id},src=FILE")
        return
    if mount.env_name:
        out.env.append(f"{mount.env_name}={value.decode('utf-8', 'replace')}")
        return
    out.mounts.append(SecretFile(mount.dest, value, 0o400 if mount.mode is None else mount.mode,
                                 mount.uid or 0, mount.gid or 0))


async def _ssh(backend: RuntimeBackend, mount: ExecMount, stack: AsyncExitStack,
               out: _Prepared) -> None:
    """The agent socket of the mount's id, owned and moded as the mount asks, for the time
    of the RUN: forwarding to a host socket of an in-process build, else relaying to the
    client's agent (workers/_ssh_relay.py)."""
    ident = mount.ssh_id or "default"
    host = backend.session.ssh.get(ident)
    agents = backend.session.ssh_agents
    owner = (backend.runtime.tmp, mount.uid or 0, mount.gid or 0,
             0o600 if mount.mode is None else mount.mode)
    socket = None
    if host is not None:
        socket = await stack.enter_async_context(forwarding(host, *owner))
    elif agents is not None and ident in agents.ids:
        socket = await stack.enter_async_context(agents.listening(ident, *owner))
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
