"""Run one process in a container with runc: the one boundary between dockyard and runc.

``Executor(root).run(process, rootfs, mounts, ...)`` writes a bundle under
``<root>/run/bundles/<id>`` (config.json, resolv.conf, hosts, a tmpfs for secrets), runs
``runc --root <root>/run/runc run --bundle <bundle> <id>`` as an asyncio subprocess,
streams its output line by line to callbacks (keeping the last lines for ``ExecError``) and
returns the exit code.  Every run gets a unique container id.

Whatever happens -- success, failure, cancellation -- the container is killed and deleted,
the secrets tmpfs unmounted, the bundle removed, and the mount-point stubs runc created in
the rootfs (an /etc/hosts that was not there, a secret's directory) removed again, as
BuildKit's ``MountStubsCleaner`` does: they must not reach a layer.  Clean-up runs shielded
and the cancellation is re-raised after it.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import secrets
import shutil
import stat
import subprocess
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from dockyard.scheduler._errors import ExecError, SolveError

from ._devices import host_devices
from ._snapshots import finish_shielded, unmount
from ._spec import (
    BindMount,
    ProcessSpec,
    SpecMount,
    TmpfsMount,
    build_spec,
    caps_from_mask,
    hosts_file,
)
from ._spec import resolv_conf as make_resolv_conf
from ._users import path_in_root, resolve_user

__all__ = ["ExecMountSpec", "Executor", "ExecutorStatistics", "OutputCallback", "SecretFile",
           "SshSocket"]

OutputCallback = Callable[[bytes], None]

_MAX_LINE = 64 * 1024        # a longer "line" is passed on in pieces
_KILL_GRACE = 5.0            # seconds to wait for runc after SIGKILL of the container
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 2, 4, 8
_HOST_RESOLV = Path("/etc/resolv.conf")


_CGROUP_ROOT = Path("/sys/fs/cgroup")


def check_cgroups(parent: str, root: Path = _CGROUP_ROOT) -> None:
    """Refuse a ``--cgroup-parent`` this machine cannot honour: runc (as this process)
    must be able to create cgroups, i.e. the cgroup hierarchy (v2's one directory, or
    every v1 controller) must be writable here."""
    if (root / "cgroup.controllers").exists():
        writable = os.access(root, os.W_OK)
    else:
        try:
            controllers = [d for d in root.iterdir() if (d / "cgroup.procs").exists()]
        except OSError:
            controllers = []
        writable = bool(controllers) and all(os.access(d, os.W_OK) for d in controllers)
    if not writable:
        raise SolveError(f"--cgroup-parent {parent}: this worker cannot create cgroups "
                         f"({root} is not writable to it)",
                         hint="build without --cgroup-parent, or run the worker as root "
                              "with a writable cgroup filesystem")


@dataclass(frozen=True, slots=True)
class SecretFile:
    """A secret's bytes, visible at ``dest`` for one run from a private tmpfs (read-only,
    ``mode``/``uid``/``gid`` as BuildKit's defaults).  ``data`` never appears in a repr."""

    dest: str
    data: bytes = field(repr=False)
    mode: int = 0o400
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True, slots=True)
class SshSocket:
    """The client's ssh agent socket (a host path) bound at ``dest``."""

    dest: str
    socket: Path


ExecMountSpec = BindMount | TmpfsMount | SecretFile | SshSocket


@dataclass(frozen=True, slots=True)
class ExecutorStatistics:
    running: int      # containers started and not yet cleaned up
    runs_total: int   # runs started since creation
    cancelled: int    # runs ended by cancellation


@dataclass(slots=True)
class _Run:
    """One run's state, filled in as it is prepared, so clean-up undoes exactly that."""

    id: str
    bundle: Path
    rootfs: Path
    stubs: list[Path] = field(default_factory=list)    # created mount points, to remove
    secrets_mounted: bool = False                       # bundle/secrets is a tmpfs
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=20))


class Executor:
    """runc behind one method; a fake with the same ``run`` serves unit tests."""

    def __init__(self, root: Path, *, runc: str = "runc", tail_lines: int = 20) -> None:
        self.runc = runc
        self.runc_root = root / "run" / "runc"
        self.bundles = root / "run" / "bundles"
        self.tail_lines = tail_lines
        # Ids of runs between start and end of clean-up.
        self._running: set[str] = set()
        # Counters, only growing.
        self._runs_total = 0
        self._cancelled = 0
        self.runc_root.mkdir(parents=True, exist_ok=True)
        self.bundles.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        stats = self.statistics()
        return (f"<Executor {self.runc_root} running={stats.running} "
                f"total={stats.runs_total} cancelled={stats.cancelled}>")

    def statistics(self) -> ExecutorStatistics:
        return ExecutorStatistics(running=len(self._running), runs_total=self._runs_total,
                                  cancelled=self._cancelled)

    async def run(self, process: ProcessSpec, rootfs: Path,
                  mounts: Sequence[ExecMountSpec] = (), *,
                  stdout: OutputCallback | None = None, stderr: OutputCallback | None = None,
                  stdin: bytes | None = None) -> int:
        """Run ``process`` over ``rootfs`` (a mounted state) and return its exit code.

        Output reaches the callbacks line by line (each with its newline)."""
        return (await self._run(process, rootfs, mounts, stdout, stderr, stdin)).exit_code

    async def run_checked(self, process: ProcessSpec, rootfs: Path,
                          mounts: Sequence[ExecMountSpec] = (), *,
                          stdout: OutputCallback | None = None,
                          stderr: OutputCallback | None = None,
                          stdin: bytes | None = None) -> None:
        """``run``, raising ``ExecError`` (exit code, last lines of output) on non-zero."""
        result = await self._run(process, rootfs, mounts, stdout, stderr, stdin)
        if result.exit_code != 0:
            raise ExecError(f"process {_shown(process.args)} did not complete successfully: "
                            f"exit code: {result.exit_code}", exit_code=result.exit_code,
                            output_tail=result.tail)

    async def _run(self, process: ProcessSpec, rootfs: Path, mounts: Sequence[ExecMountSpec],
                   stdout: OutputCallback | None, stderr: OutputCallback | None,
                   stdin: bytes | None) -> _Result:
        run = _Run(id=f"dockyard-{secrets.token_hex(8)}", bundle=Path(), rootfs=rootfs,
                   tail=deque(maxlen=self.tail_lines))
        run.bundle = self.bundles / run.id
        self._running.add(run.id)
        self._runs_total += 1
        try:
            await finish_shielded(asyncio.to_thread(self._prepare_or_fail, run, process,
                                                    mounts))
            code = await self._execute(run, stdout, stderr, stdin)
            return _Result(code, "".join(run.tail))
        except asyncio.CancelledError:
            self._cancelled += 1
            raise
        finally:
            await finish_shielded(self._clean_up(run))
            self._running.discard(run.id)

    # --- preparing the bundle (blocking; in a thread) -----------------------------------

    def _prepare_or_fail(self, run: _Run, process: ProcessSpec,
                         mounts: Sequence[ExecMountSpec]) -> None:
        try:
            self._prepare(run, process, mounts)
        except OSError as err:
            where = _in_image(run.rootfs, str(err.filename or run.bundle))
            raise ExecError(f"cannot prepare the container for {_shown(process.args)}: "
                            f"{err.strerror or err} ({where})", exit_code=-1,
                            hint="check the working directory and the mount destinations "
                                 "are directories in the image") from err

    def _prepare(self, run: _Run, process: ProcessSpec,
                 mounts: Sequence[ExecMountSpec]) -> None:
        run.bundle.mkdir(parents=True)
        user = resolve_user(run.rootfs, process.user)
        _make_cwd(run.rootfs, process.effective_cwd)
        dests = ["/etc/resolv.conf", "/etc/hosts", *(m.dest for m in mounts)]
        run.stubs = _missing_mount_points(run.rootfs, dests)
        spec_mounts = self._materialize(run, mounts)
        resolv, hosts = run.bundle / "resolv.conf", run.bundle / "hosts"
        resolv.write_text(make_resolv_conf(_read_host_resolv(), process.network))
        hosts.write_text(hosts_file(process.effective_hostname, process.extra_hosts))
        devices = host_devices() if process.security == "insecure" else ()
        if process.cgroup_parent:
            check_cgroups(process.cgroup_parent)
        spec = build_spec(process, user, run.rootfs, spec_mounts, resolv_conf=resolv,
                          hosts=hosts, host_caps=_host_caps(), host_devices=devices,
                          container_id=run.id)
        (run.bundle / "config.json").write_text(json.dumps(spec, indent=1))

    def _materialize(self, run: _Run, mounts: Sequence[ExecMountSpec]) -> list[SpecMount]:
        """Secrets become files on a private tmpfs; ssh sockets and the rest are mounts."""
        result: list[SpecMount] = []
        for index, mount in enumerate(mounts):
            if isinstance(mount, SecretFile):
                result.append(BindMount(self._secret(run, index, mount), mount.dest))
            elif isinstance(mount, SshSocket):
                result.append(BindMount(mount.socket, mount.dest, readonly=False))
            else:
                result.append(mount)
        return result

    def _secret(self, run: _Run, index: int, secret: SecretFile) -> Path:
        directory = run.bundle / "secrets"
        if not run.secrets_mounted:
            directory.mkdir(mode=0o700)
            _mount_tmpfs(directory)
            run.secrets_mounted = True
        path = directory / str(index)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secret.data)
            os.fchown(fd, secret.uid, secret.gid)
            os.fchmod(fd, secret.mode)
        finally:
            os.close(fd)
        return path

    # --- running runc --------------------------------------------------------------------

    def _runc(self, *args: str) -> list[str]:
        return [self.runc, "--root", str(self.runc_root), *args]

    async def _execute(self, run: _Run, stdout: OutputCallback | None,
                       stderr: OutputCallback | None, stdin: bytes | None) -> int:
        log = run.bundle / "runc.log"
        argv = self._runc("--log", str(log), "--log-format", "json", "run", "--bundle",
                          str(run.bundle), run.id)
        proc = await _spawn(argv, stdin is not None)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(_pump(proc.stdout, stdout, run.tail))
                group.create_task(_pump(proc.stderr, stderr, run.tail))
                if stdin is not None:
                    group.create_task(_feed(proc.stdin, stdin))
            code = await proc.wait()
        except BaseException:
            await finish_shielded(self._kill(run, proc))
            raise
        _raise_runc_failure(run, log, code)
        return code

    async def _kill(self, run: _Run, proc: asyncio.subprocess.Process) -> None:
        """Kill the container (``runc kill`` until runc has gone), else runc itself."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _KILL_GRACE
        while proc.returncode is None and loop.time() < deadline:
            await _quiet(self._runc("kill", run.id, "KILL"))
            try:
                async with asyncio.timeout(0.1):
                    await proc.wait()
            except TimeoutError:
                continue
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    async def _clean_up(self, run: _Run) -> None:
        if (self.runc_root / run.id).exists():
            await _quiet(self._runc("delete", "-f", run.id))
        await asyncio.to_thread(_remove_files, run)


@dataclass(frozen=True, slots=True)
class _Result:
    exit_code: int
    tail: str


def _in_image(rootfs: Path, path: str) -> str:
    """``path`` as the image names it when it lies in ``rootfs``, else as is."""
    inside = Path(path)
    if inside.is_relative_to(rootfs):
        return "/" + str(inside.relative_to(rootfs)).removeprefix(".")
    return path


def _shown(args: Sequence[str]) -> str:
    """The command as BuildKit quotes it in its error: the argv joined by spaces."""
    return '"' + " ".join(args) + '"'


async def _spawn(argv: list[str], with_stdin: bool) -> asyncio.subprocess.Process:
    stdin = subprocess.PIPE if with_stdin else subprocess.DEVNULL
    try:
        return await asyncio.create_subprocess_exec(
            *argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True)
    except OSError as err:
        raise ExecError(f"cannot start {argv[0]}: {err.strerror}", exit_code=-1,
                        hint="install runc (Debian: apt-get install runc)") from err


async def _quiet(argv: list[str]) -> None:
    """Run a runc housekeeping command; its failure (nothing to kill) is expected."""
    try:
        proc = await asyncio.create_subprocess_exec(*argv, stdin=subprocess.DEVNULL,
                                                    stdout=subprocess.DEVNULL,
                                                    stderr=subprocess.DEVNULL)
    except OSError:
        return
    await proc.wait()


async def _pump(stream: asyncio.StreamReader | None, callback: OutputCallback | None,
                tail: deque[str]) -> None:
    """Pass ``stream`` on line by line; keep the last lines (decoded) in ``tail``."""
    if stream is None:
        return
    pending = b""
    while chunk := await stream.read(_MAX_LINE):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            _emit(line + b"\n", callback, tail)
        if len(pending) >= _MAX_LINE:
            _emit(pending, callback, tail)
            pending = b""
    if pending:
        _emit(pending, callback, tail)


def _emit(line: bytes, callback: OutputCallback | None, tail: deque[str]) -> None:
    tail.append(line.decode("utf-8", errors="replace"))
    if callback is not None:
        callback(line)


async def _feed(stream: asyncio.StreamWriter | None, data: bytes) -> None:
    if stream is None:
        return
    try:
        stream.write(data)
        await stream.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the process did not read all of its input: its choice
    finally:
        stream.close()


def _raise_runc_failure(run: _Run, log: Path, code: int) -> None:
    """runc killed by a signal, or a non-zero exit with an error in runc's own log: runc
    failed, not the process."""
    if code == 0:
        return
    if code < 0:  # runc itself died by a signal: the process's own status was never known
        raise ExecError(f"runc was killed by signal {-code} while it ran container "
                        f"{run.id}: the process did not finish", exit_code=code,
                        output_tail="".join(run.tail),
                        hint="something outside dockyard killed runc (the OOM killer, a "
                             "user); the container was removed: build again")
    errors = _runc_log_errors(log)
    if errors:
        raise ExecError(f"runc could not run the process in container {run.id}: "
                        f"{errors[-1]}", exit_code=code, output_tail="".join(run.tail),
                        hint="check the command exists in the image and the mounts' "
                             "sources exist")


def _runc_log_errors(log: Path) -> list[str]:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return []
    found = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "fatal"):
            found.append(str(entry.get("msg", "")))
    return found


# --- files in the rootfs and the bundle ------------------------------------------------


def _make_cwd(rootfs: Path, cwd: str) -> None:
    """Create the working directory if missing: 0755, owned by root, as BuildKit."""
    parts = PurePosixPath(cwd).parts[1:]
    for depth in range(1, len(parts) + 1):
        path = path_in_root(rootfs, "/".join(parts[:depth]))
        if not path.exists():
            path.mkdir()
            path.chmod(0o755)


def _missing_mount_points(rootfs: Path, dests: Sequence[str]) -> list[Path]:
    """For each mount destination missing from ``rootfs`` (symlinks resolved inside it),
    the paths runc will create for it: the destination and its missing parents."""
    stubs: list[Path] = []
    for dest in dests:
        if PurePosixPath("/", dest) == PurePosixPath("/"):
            continue
        path = path_in_root(rootfs, dest)
        while path != rootfs and not os.path.lexists(path):
            stubs.append(path)
            path = path.parent
    return stubs


def _remove_stubs(stubs: Sequence[Path]) -> None:
    """Remove the created mount points that are still empty (an empty directory or an empty
    file), deepest first, keeping the parent directory's timestamps (reproducible)."""
    for path in sorted(set(stubs), key=lambda p: len(p.parts), reverse=True):
        try:
            info = os.lstat(path)
            if stat.S_ISDIR(info.st_mode) and any(path.iterdir()):
                continue
            if not stat.S_ISDIR(info.st_mode) and info.st_size != 0:
                continue
            parent = os.stat(path.parent)
            if stat.S_ISDIR(info.st_mode):
                path.rmdir()
            else:
                path.unlink()
            os.utime(path.parent, ns=(parent.st_atime_ns, parent.st_mtime_ns))
        except OSError:
            continue  # gone already, or not removable: it stays


def _remove_files(run: _Run) -> None:
    _remove_stubs(run.stubs)
    if run.secrets_mounted:
        unmount(run.bundle / "secrets", missing_ok=True)
        run.secrets_mounted = False
    shutil.rmtree(run.bundle, ignore_errors=True)


def _host_caps() -> frozenset[str] | None:
    """This process' capability bounding set (None when it cannot be read)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapBnd:"):
                return caps_from_mask(int(line.split()[1], 16))
    except (OSError, ValueError, IndexError):
        return None
    return None


def _read_host_resolv() -> str:
    try:
        return _HOST_RESOLV.read_text(errors="replace")
    except OSError:
        return ""


_libc = ctypes.CDLL(None, use_errno=True)


def _mount_tmpfs(target: Path) -> None:
    flags = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
    if _libc.mount(b"tmpfs", os.fsencode(target), b"tmpfs", flags,
                   b"mode=0700,size=16m") != 0:
        code = ctypes.get_errno()
        raise ExecError(f"cannot mount a tmpfs for secrets at {target}: "
                        f"{os.strerror(code)}", exit_code=-1,
                        hint="the executor must run as root")
