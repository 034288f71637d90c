"""The runc executor against real runc, real overlayfs and a busybox rootfs."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from workers_helpers import aio, mounts_under

from dockyard.scheduler._errors import ExecError
from dockyard.workers._executor import ExecMountSpec, Executor, SecretFile, SshSocket
from dockyard.workers._snapshots import SnapshotStore
from dockyard.workers._spec import DEFAULT_PATH, BindMount, ProcessSpec, TmpfsMount

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 and os.environ.get("CI") != "true",
    reason="runc and overlayfs need root (under CI=true this is a failure)")

Inspect = Callable[[Path, Path], None]


@dataclass
class Outcome:
    code: int
    out: bytes = b""
    err: bytes = b""
    lines: list[bytes] = field(default_factory=list)


@dataclass
class Sandbox:
    """A root with a snapshot store and an executor, and a busybox rootfs as the layer."""

    root: Path
    base: Path
    store: SnapshotStore
    executor: Executor

    async def run(self, process: ProcessSpec, mounts: tuple[ExecMountSpec, ...] = (), *,
                  stdin: bytes | None = None, inspect: Inspect | None = None) -> Outcome:
        outcome = Outcome(code=-1)

        def on_out(line: bytes) -> None:
            outcome.out += line
            outcome.lines.append(line)

        def on_err(line: bytes) -> None:
            outcome.err += line

        async with self.store.mount([self.base], writable=True) as state:
            assert state.upper is not None
            outcome.code = await self.executor.run(process, state.path, mounts,
                                                   stdout=on_out, stderr=on_err, stdin=stdin)
            if inspect is not None:
                inspect(state.path, state.upper)
        return outcome

    def assert_clean(self) -> None:
        assert mounts_under(self.root) == []
        assert list(self.executor.bundles.iterdir()) == []
        assert runc_list(self.executor) == []
        assert self.executor.statistics().running == 0


def runc_list(executor: Executor) -> list[str]:
    done = subprocess.run(["runc", "--root", str(executor.runc_root), "list", "-q"],
                          capture_output=True, text=True, check=True)
    return done.stdout.split()


@pytest.fixture
def sandbox(tmp_path: Path, busybox_rootfs: Callable[[str], Path]) -> Sandbox:
    root = tmp_path / "root"
    return Sandbox(root, busybox_rootfs("amd64"), SnapshotStore(root), Executor(root))


def sh(script: str, **kwargs: Any) -> ProcessSpec:
    return ProcessSpec(args=("/bin/sh", "-c", script), **kwargs)


HOST_IFACES = sorted(line.split(":")[0].strip()
                     for line in Path("/proc/net/dev").read_text().splitlines()[2:])
IFACES = "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | tr '\\n' ' '"

# (id, process, exit code, stdout)
CASES: list[tuple[str, ProcessSpec, int, str]] = [
    ("exit code", sh("exit 3"), 3, ""),
    ("true", ProcessSpec(args=("true",)), 0, ""),
    ("output", sh("echo one; echo two"), 0, "one\ntwo\n"),
    ("env", sh("echo $FOO; echo $PATH; echo $HOME", env=("FOO=bar baz",)), 0,
     f"bar baz\n{DEFAULT_PATH}\n/root\n"),
    ("env kept", sh("echo $PATH $HOME", env=("PATH=/bin", "HOME=/h")), 0, "/bin /h\n"),
    ("user by name", sh("id; echo $HOME", user="app"), 0,  # the kernel sorts the groups
     "uid=1000(app) gid=1000(app) groups=50(staff),1000(app)\n/home/app\n"),
    ("user and group by name", sh("id -u; id -g", user="app:staff"), 0, "1000\n50\n"),
    ("numeric user", sh("id -u; id -g; echo $HOME", user="1000"), 0,  # its passwd entry's
     "1000\n1000\n/home/app\n"),
    ("unknown numeric user", sh("id -u; id -g; echo $HOME", user="4321:99"), 0,
     "4321\n99\n/\n"),
    ("cwd created 0755 root", sh("pwd; stat -c '%u:%g %a' .", cwd="/work/dir", user="app"),
     0, "/work/dir\n0:0 755\n"),
    ("hostname", sh("hostname; cat /etc/hostname 2>/dev/null; grep -c buildkitsandbox "
                    "/etc/hosts"), 0, "buildkitsandbox\n1\n"),
    ("hostname set", sh("hostname", hostname="box"), 0, "box\n"),
    ("network none", sh(IFACES, network="none"), 0, "lo "),
    ("network none link", sh("ip -o link | cut -d: -f2 | tr -d ' '", network="none"), 0,
     "lo\n"),
    ("network host", sh(IFACES, network="host"), 0, " ".join(HOST_IFACES) + " "),
    ("system mounts", sh("echo x > /dev/null && echo null; [ -d /dev/shm ] && echo shm; "
                         "[ -c /dev/zero ] && echo zero; grep -q ' /sys sysfs ro' "
                         "/proc/mounts && echo sys-ro; [ -d /dev/pts ] && echo pts; "
                         "[ -d /dev/mqueue ] && echo mqueue; echo $$"), 0,
     "null\nshm\nzero\nsys-ro\npts\nmqueue\n1\n"),
    ("sys writable when insecure", sh("grep -c ' /sys sysfs rw' /proc/mounts",
                                      security="insecure"), 0, "1\n"),
    ("sandbox caps", sh("grep CapEff /proc/self/status"), 0, "CapEff:\t00000000a80425fb\n"),
]


@pytest.mark.parametrize(("process", "code", "stdout"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
@aio
async def test_run(sandbox: Sandbox, process: ProcessSpec, code: int, stdout: str) -> None:
    outcome = await sandbox.run(process)
    assert (outcome.code, outcome.out.decode(), outcome.err) == (code, stdout, b"")
    sandbox.assert_clean()


@aio
async def test_stderr_stdin_and_line_callbacks(sandbox: Sandbox) -> None:
    outcome = await sandbox.run(sh("cat; echo err >&2; printf 'a\\nb\\nno-newline'"),
                                stdin=b"in\n")
    assert outcome.lines == [b"in\n", b"a\n", b"b\n", b"no-newline"]
    assert outcome.err == b"err\n"


@aio
async def test_long_output_without_newlines_is_passed_on_whole(sandbox: Sandbox) -> None:
    outcome = await sandbox.run(sh("head -c 300000 /dev/zero | tr '\\0' x"))
    assert outcome.out == b"x" * 300000
    assert max(len(line) for line in outcome.lines) <= 64 * 1024 * 2


@aio
async def test_write_lands_in_upper_and_delete_is_a_whiteout(sandbox: Sandbox) -> None:
    def inspect(merged: Path, upper: Path) -> None:
        assert (upper / "new" / "file").read_text() == "hello\n"
        whiteout = os.lstat(upper / "etc" / "group")
        assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
        assert not (upper / "etc" / "hosts").exists()
        assert not (upper / "etc" / "resolv.conf").exists()

    outcome = await sandbox.run(sh("mkdir /new && echo hello > /new/file && rm /etc/group"),
                                inspect=inspect)
    assert outcome.code == 0
    assert (sandbox.base / "etc" / "group").exists()


@aio
async def test_secret_visible_in_the_run_and_absent_afterwards(sandbox: Sandbox) -> None:
    secrets = (SecretFile("/run/secrets/token", b"s3cr3t"),
               SecretFile("/etc/app.key", b"key", mode=0o440, uid=1000, gid=50))

    def inspect(merged: Path, upper: Path) -> None:
        found = [p for p in upper.rglob("*")]
        assert not any(p.name in ("token", "app.key", "secrets") for p in found), found
        assert not (upper / "run").exists()
        assert b"s3cr3t" not in b"".join(p.read_bytes() for p in found if p.is_file())

    outcome = await sandbox.run(
        sh("cat /run/secrets/token; echo; stat -c '%a %u:%g' /run/secrets/token /etc/app.key;"
           " echo x > /run/secrets/token || echo read-only"),
        secrets, inspect=inspect)
    assert outcome.out.decode() == "s3cr3t\n400 0:0\n440 1000:50\nread-only\n"
    assert "s3cr3t" not in repr(secrets)
    sandbox.assert_clean()


@aio
async def test_secret_readable_by_its_owner_only(sandbox: Sandbox) -> None:
    mounts = (SecretFile("/s/mine", b"ok", uid=1000), SecretFile("/s/root", b"no"))
    outcome = await sandbox.run(sh("cat /s/mine; cat /s/root", user="app"), mounts)
    assert (outcome.code, outcome.out) == (1, b"ok")
    assert b"Permission denied" in outcome.err


@aio
async def test_tmpfs_and_bind_mounts(sandbox: Sandbox, tmp_path: Path) -> None:
    ro, rw = tmp_path / "ro", tmp_path / "rw"
    ro.mkdir()
    rw.mkdir()
    (ro / "data").write_text("from host\n")
    mounts: tuple[ExecMountSpec, ...] = (
        TmpfsMount("/scratch", size=1 << 20), BindMount(ro, "/ro"),
        BindMount(rw, "/cache", readonly=False))
    script = ("grep ' /scratch ' /proc/mounts | cut -d' ' -f3; echo t > /scratch/t; "
              "cat /ro/data; touch /ro/x 2>/dev/null || echo ro; echo w > /cache/out")

    def inspect(merged: Path, upper: Path) -> None:
        assert sorted(p.name for p in upper.iterdir()) == ["dev", "etc", "proc", "sys"]

    outcome = await sandbox.run(sh(script), mounts, inspect=inspect)
    assert outcome.out == b"tmpfs\nfrom host\nro\n"
    assert (rw / "out").read_text() == "w\n"
    sandbox.assert_clean()


@aio
async def test_ssh_socket_is_bound(sandbox: Sandbox, tmp_path: Path) -> None:
    import socket
    path = tmp_path / "agent.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    try:
        outcome = await sandbox.run(sh("[ -S /run/buildkit/ssh_agent.0 ] && echo socket"),
                                    (SshSocket("/run/buildkit/ssh_agent.0", path),))
    finally:
        server.close()
    assert outcome.out == b"socket\n"


@aio
async def test_failure_raises_exec_error_with_the_last_lines(sandbox: Sandbox) -> None:
    sandbox.executor.tail_lines = 3
    async with sandbox.store.mount([sandbox.base], writable=True) as state:
        with pytest.raises(ExecError) as caught:
            await sandbox.executor.run_checked(
                sh("for i in 1 2 3 4 5; do echo line $i; done; echo oops >&2; exit 2"),
                state.path)
    assert caught.value.exit_code == 2
    assert caught.value.message == ('process "/bin/sh -c for i in 1 2 3 4 5; do echo line $i;'
                                    ' done; echo oops >&2; exit 2" did not complete '
                                    'successfully: exit code: 2')
    tail = caught.value.output_tail.splitlines()   # two pipes: their order may interleave
    assert len(tail) == 3 and "line 5" in tail
    assert set(tail) <= {"line 3", "line 4", "line 5", "oops"}
    sandbox.assert_clean()


@aio
async def test_missing_command_is_runc_failure(sandbox: Sandbox) -> None:
    async with sandbox.store.mount([sandbox.base], writable=True) as state:
        with pytest.raises(ExecError, match='runc could not run the process in container '
                                            'dockyard-[0-9a-f]{16}: .*"nosuch"'):
            await sandbox.executor.run(ProcessSpec(args=("nosuch",)), state.path)
    sandbox.assert_clean()


@aio
async def test_unknown_user_names_the_file(sandbox: Sandbox) -> None:
    async with sandbox.store.mount([sandbox.base], writable=True) as state:
        with pytest.raises(ExecError, match="unable to find user ghost: no matching entries "
                                            "in /etc/passwd"):
            await sandbox.executor.run(sh("true", user="ghost"), state.path)
    sandbox.assert_clean()


@aio
async def test_cwd_that_is_a_file_is_an_exec_error(sandbox: Sandbox) -> None:
    async with sandbox.store.mount([sandbox.base], writable=True) as state:
        with pytest.raises(ExecError, match=r'cannot prepare the container for "/bin/sh -c '
                                            r'true": Not a directory \(/etc/passwd/x\)\n'):
            await sandbox.executor.run(sh("true", cwd="/etc/passwd/x"), state.path)
    sandbox.assert_clean()


@aio
async def test_cancel_kills_and_cleans_everything(sandbox: Sandbox) -> None:
    mounts = (SecretFile("/run/secrets/s", b"x"),)
    async with sandbox.store.mount([sandbox.base], writable=True) as state:
        started: list[bytes] = []
        marker = f"dockyard-cancel-{uuid.uuid4().hex}"  # ours alone among the machine's processes
        task = asyncio.create_task(sandbox.executor.run(
            sh(f"echo started; sleep 60; : {marker}"), state.path, mounts,
            stdout=started.append))
        async with asyncio.timeout(10):
            while not started:
                await asyncio.sleep(0.02)
        assert len(runc_list(sandbox.executor)) == 1
        assert len(mounts_under(sandbox.root)) == 2      # the overlay and the secrets tmpfs
        loop = asyncio.get_running_loop()
        begin = loop.time()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert loop.time() - begin < 3
        assert runc_list(sandbox.executor) == []
        assert len(mounts_under(sandbox.root)) == 1      # only the test's own overlay
        assert not (state.upper / "run").exists() if state.upper else False
        assert marker not in subprocess.run(["ps", "-eo", "args"], capture_output=True,
                                            text=True).stdout
    sandbox.assert_clean()
    assert sandbox.executor.statistics().cancelled == 1


@aio
async def test_runc_killed_by_a_signal_is_named_and_its_container_removed(
        sandbox: Sandbox) -> None:
    async with sandbox.store.mount([sandbox.base], writable=True) as state:
        started: list[bytes] = []
        task = asyncio.create_task(sandbox.executor.run(sh("echo started; sleep 60"),
                                                        state.path, stdout=started.append))
        async with asyncio.timeout(10):
            while not started:
                await asyncio.sleep(0.02)
        [container] = runc_list(sandbox.executor)
        [runc] = [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
                  if pid != os.getpid()
                  and _argv(pid)[-2:] == [str(sandbox.executor.bundles / container),
                                          container]]
        os.kill(runc, 9)
        with pytest.raises(ExecError) as caught:
            await task
    assert caught.value.message == (f"runc was killed by signal 9 while it ran container "
                                    f"{container}: the process did not finish")
    assert caught.value.hint is not None and "build again" in caught.value.hint
    sandbox.assert_clean()


def _argv(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().split("\0")[:-1]
    except OSError:
        return []


@aio
async def test_cancel_right_after_start_leaves_nothing(sandbox: Sandbox) -> None:
    async with sandbox.store.mount([sandbox.base], writable=True) as state:
        for delay in (0, 0.01, 0.05, 0.1):
            task = asyncio.create_task(sandbox.executor.run(sh("sleep 60"), state.path))
            await asyncio.sleep(delay)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert runc_list(sandbox.executor) == []
    sandbox.assert_clean()


@aio
async def test_parallel_runs_get_their_own_containers(sandbox: Sandbox) -> None:
    outcomes = await asyncio.gather(*(sandbox.run(sh(f"echo {i}")) for i in range(4)))
    assert [o.out for o in outcomes] == [b"0\n", b"1\n", b"2\n", b"3\n"]
    assert sandbox.executor.statistics().runs_total == 4
    assert "total=4" in repr(sandbox.executor)
    sandbox.assert_clean()


@aio
async def test_arm64_through_qemu(tmp_path: Path, busybox_rootfs: Callable[[str], Path]) -> None:
    root = tmp_path / "root"
    arm = Sandbox(root, busybox_rootfs("arm64"), SnapshotStore(root), Executor(root))
    outcome = await arm.run(sh("uname -m; echo hi > /tmp/f", user="app:staff"))
    assert (outcome.code, outcome.out) == (0, b"aarch64\n")
    arm.assert_clean()
