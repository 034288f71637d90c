"""The OCI runtime spec of a RUN: pure data in, a JSON-able dict out (tables)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dockyard.scheduler._errors import GraphError
from dockyard.scheduler._graph import ExecOp, Ulimit
from dockyard.workers._spec import (
    ALL_CAPS,
    DEFAULT_PATH,
    SANDBOX_CAPS,
    BindMount,
    HostDevice,
    ProcessSpec,
    Rlimit,
    SpecMount,
    TmpfsMount,
    build_spec,
    caps_from_mask,
    hosts_file,
    resolv_conf,
)
from dockyard.workers._users import ResolvedUser

ROOTFS = Path("/snap/merged")
ROOT = ResolvedUser()
APP = ResolvedUser(uid=1000, gid=1000, additional_gids=(50,), home="/home/app")


def spec(process: ProcessSpec, user: ResolvedUser = ROOT,
         mounts: tuple[SpecMount, ...] = ()) -> dict[str, Any]:
    return build_spec(process, user, ROOTFS, mounts, resolv_conf=Path("/b/resolv.conf"),
                      hosts=Path("/b/hosts"))


def dig(data: Any, path: str) -> Any:
    for key in path.split("."):
        data = data[int(key)] if isinstance(data, list) else data[key]
    return data


def mount_at(result: dict[str, Any], dest: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [m for m in result["mounts"] if m["destination"] == dest]
    assert len(found) == 1, dest
    return found[0]


SH = ("/bin/sh", "-c", "true")

# (id, process, user, path into the spec, expected value)
FIELDS: list[tuple[str, ProcessSpec, ResolvedUser, str, Any]] = [
    ("args", ProcessSpec(SH), ResolvedUser(), "process.args", list(SH)),
    ("root", ProcessSpec(SH), ResolvedUser(), "root.path", "/snap/merged"),
    ("terminal", ProcessSpec(SH), ResolvedUser(), "process.terminal", False),
    ("hostname default", ProcessSpec(SH), ResolvedUser(), "hostname", "buildkitsandbox"),
    ("hostname set", ProcessSpec(SH, hostname="box"), ResolvedUser(), "hostname", "box"),
    ("cwd default", ProcessSpec(SH), ResolvedUser(), "process.cwd", "/"),
    ("cwd relative", ProcessSpec(SH, cwd="app/src"), ResolvedUser(), "process.cwd",
     "/app/src"),
    ("env defaults", ProcessSpec(SH, env=("A=1",)), ResolvedUser(), "process.env",
     ["A=1", f"PATH={DEFAULT_PATH}", "HOME=/"]),
    ("env user home", ProcessSpec(SH), APP, "process.env",
     [f"PATH={DEFAULT_PATH}", "HOME=/home/app"]),
    ("env kept", ProcessSpec(SH, env=("PATH=/x", "HOME=/h", "EMPTY=")), APP, "process.env",
     ["PATH=/x", "HOME=/h", "EMPTY="]),
    ("user", ProcessSpec(SH), APP, "process.user",
     {"uid": 1000, "gid": 1000, "additionalGids": [50]}),
    ("new privileges allowed (BuildKit)", ProcessSpec(SH), ResolvedUser(),
     "process.noNewPrivileges", False),
    ("sandbox caps", ProcessSpec(SH), ResolvedUser(), "process.capabilities.bounding",
     list(SANDBOX_CAPS)),
    ("insecure caps", ProcessSpec(SH, security="insecure"), ResolvedUser(),
     "process.capabilities.effective", list(ALL_CAPS)),
    ("namespaces default", ProcessSpec(SH), ResolvedUser(), "linux.namespaces",
     [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]),
    ("namespaces host", ProcessSpec(SH, network="host"), ResolvedUser(), "linux.namespaces",
     [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]),
    ("namespaces none", ProcessSpec(SH, network="none"), ResolvedUser(), "linux.namespaces",
     [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
      {"type": "network"}]),
    ("masked", ProcessSpec(SH), ResolvedUser(), "linux.maskedPaths.2", "/proc/kcore"),
    ("readonly", ProcessSpec(SH), ResolvedUser(), "linux.readonlyPaths.3", "/proc/sys"),
    ("devices sandbox", ProcessSpec(SH), ResolvedUser(), "linux.resources.devices",
     [{"allow": False, "access": "rwm"}]),
    ("devices insecure", ProcessSpec(SH, security="insecure"), ResolvedUser(),
     "linux.resources.devices", [{"allow": True, "access": "rwm"}]),
    ("rlimits", ProcessSpec(SH, ulimits=(Rlimit("nofile", 1024, 2048),)), ResolvedUser(),
     "process.rlimits", [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 2048}]),
]


@pytest.mark.parametrize(("process", "user", "path", "expected"),
                         [c[1:] for c in FIELDS], ids=[c[0] for c in FIELDS])
def test_fields(process: ProcessSpec, user: ResolvedUser, path: str, expected: Any) -> None:
    assert dig(spec(process, user), path) == expected


def test_no_rlimits_no_masks_when_insecure_and_json_serialisable() -> None:
    result = spec(ProcessSpec(SH, security="insecure"))
    assert "rlimits" not in result["process"]
    assert "maskedPaths" not in result["linux"] and "readonlyPaths" not in result["linux"]
    assert "ro" not in mount_at(result, "/sys")["options"]
    assert json.loads(json.dumps(result)) == result


# (destination, type, source, options) of the system mounts, sandbox mode, in order
SYSTEM_MOUNTS = [
    ("/proc", "proc", "proc", ["nosuid", "noexec", "nodev"]),
    ("/dev", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
    ("/dev/pts", "devpts", "devpts", ["nosuid", "noexec", "newinstance", "ptmxmode=0666",
                                      "mode=0620", "gid=5"]),
    ("/dev/shm", "tmpfs", "shm", ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
    ("/dev/mqueue", "mqueue", "mqueue", ["nosuid", "noexec", "nodev"]),
    ("/sys", "sysfs", "sysfs", ["nosuid", "noexec", "nodev", "ro"]),
    ("/sys/fs/cgroup", "cgroup", "cgroup", ["nosuid", "noexec", "nodev", "relatime", "ro"]),
    ("/etc/resolv.conf", "bind", "/b/resolv.conf", ["rbind", "ro", "nosuid", "noexec",
                                                     "nodev"]),
    ("/etc/hosts", "bind", "/b/hosts", ["rbind", "ro", "nosuid", "noexec", "nodev"]),
]


def test_system_mounts_in_order_and_no_run_mount() -> None:
    result = spec(ProcessSpec(SH))
    got = [(m["destination"], m["type"], m["source"], m["options"]) for m in result["mounts"]]
    assert got == SYSTEM_MOUNTS


USER_MOUNTS: list[tuple[SpecMount, tuple[str, str, str, list[str]]]] = [
    (BindMount(Path("/cache/x"), "/root/.cache"),
     ("/root/.cache", "bind", "/cache/x", ["rbind", "ro"])),
    (BindMount(Path("/ctx"), "src", readonly=False), ("/src", "bind", "/ctx", ["rbind", "rw"])),
    (TmpfsMount("/tmp"), ("/tmp", "tmpfs", "tmpfs", ["nosuid", "nodev"])),
    (TmpfsMount("/scratch", size=1 << 20),
     ("/scratch", "tmpfs", "tmpfs", ["nosuid", "nodev", "size=1048576"])),
]


@pytest.mark.parametrize(("mount", "expected"), USER_MOUNTS)
def test_user_mounts_follow_the_system_ones(mount: SpecMount,
                                            expected: tuple[str, str, str, list[str]]) -> None:
    last = spec(ProcessSpec(SH), mounts=(mount,))["mounts"][-1]
    assert (last["destination"], last["type"], last["source"], last["options"]) == expected


ERRORS = [
    (ProcessSpec(()), "exec op has no command to execute (empty args)"),
    (ProcessSpec(SH, network="bridge"), "unknown network mode 'bridge'\n"
                                        "hint: use one of default, host, none"),
    (ProcessSpec(SH, security="privileged"), "unknown security mode 'privileged'\n"
                                             "hint: use one of sandbox, insecure"),
]


@pytest.mark.parametrize(("process", "message"), ERRORS)
def test_errors(process: ProcessSpec, message: str) -> None:
    with pytest.raises(GraphError) as caught:
        spec(process)
    assert str(caught.value) == message


def test_from_op_joins_proxy_env() -> None:
    op = ExecOp(args=SH, env=("A=1",), cwd="/w", user="app", network="none",
                security="insecure", hostname="h", proxy_env=("HTTP_PROXY=http://p",))
    assert ProcessSpec.from_op(op) == ProcessSpec(
        SH, env=("A=1", "HTTP_PROXY=http://p"), cwd="/w", user="app", hostname="h",
        network="none", security="insecure")


FALLBACK = ("nameserver 8.8.8.8\nnameserver 8.8.4.4\nnameserver 2001:4860:4860::8888\n"
            "nameserver 2001:4860:4860::8844\n")
RESOLV = [
    ("nameserver 10.0.0.2\nsearch lan\n", "default", "nameserver 10.0.0.2\nsearch lan\n"),
    ("nameserver 127.0.0.53\noptions edns0\n", "default", "options edns0\n" + FALLBACK),
    ("nameserver 127.0.0.53\nnameserver 1.1.1.1\n", "none", "nameserver 1.1.1.1\n"),
    ("nameserver ::1\n", "none", FALLBACK),
    ("", "default", FALLBACK),
    ("nameserver 127.0.0.53\n", "host", "nameserver 127.0.0.53\n"),
    ("search lan\n", "host", "search lan\n" + FALLBACK),
]


@pytest.mark.parametrize(("host", "network", "expected"), RESOLV)
def test_resolv_conf(host: str, network: str, expected: str) -> None:
    assert resolv_conf(host, network) == expected


def test_hosts_file() -> None:
    assert hosts_file("buildkitsandbox") == (
        "127.0.0.1\tlocalhost buildkitsandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n")


CAP_MASKS = [
    (0, frozenset()),
    (0b101, frozenset({"CAP_CHOWN", "CAP_DAC_READ_SEARCH"})),
    (1 << 21 | 1 << 24 | 1 << 40,  # bit numbers of linux/capability.h
     frozenset({"CAP_SYS_ADMIN", "CAP_SYS_RESOURCE", "CAP_CHECKPOINT_RESTORE"})),
    (0x000001fffeffffff, frozenset(ALL_CAPS) - {"CAP_SYS_RESOURCE"}),
]


@pytest.mark.parametrize(("mask", "names"), CAP_MASKS)
def test_caps_from_mask(mask: int, names: frozenset[str]) -> None:
    assert caps_from_mask(mask) == names


def test_host_caps_limit_what_is_granted() -> None:
    host = frozenset(ALL_CAPS) - {"CAP_SYS_RESOURCE", "CAP_KILL"}
    result = build_spec(ProcessSpec(SH, security="insecure"), ROOT, ROOTFS, (),
                        resolv_conf=Path("/r"), hosts=Path("/h"), host_caps=host)
    assert result["process"]["capabilities"]["permitted"] == [
        cap for cap in ALL_CAPS if cap in host]
    sandbox = build_spec(ProcessSpec(SH), ROOT, ROOTFS, (), resolv_conf=Path("/r"),
                         hosts=Path("/h"), host_caps=host)
    assert "CAP_KILL" not in sandbox["process"]["capabilities"]["bounding"]


FUSE = HostDevice("/dev/fuse", "c", 10, 229, 0o600)


def test_host_devices_only_for_an_insecure_run() -> None:
    def devices(security: str) -> Any:
        return build_spec(ProcessSpec(SH, security=security), ROOT, ROOTFS, (),
                          resolv_conf=Path("/r"), hosts=Path("/h"),
                          host_devices=(FUSE,))["linux"].get("devices")
    assert devices("insecure") == [{"path": "/dev/fuse", "type": "c", "major": 10,
                                    "minor": 229, "fileMode": 0o600, "uid": 0, "gid": 0}]
    assert devices("sandbox") is None


def test_shm_size_and_ulimits_of_the_build() -> None:
    result = spec(ProcessSpec(SH, shm_size=1 << 27,
                              ulimits=(Rlimit("nofile", 1062, 1062), Rlimit("core", 0, -1))))
    assert f"size={(1 << 27) // 1024}k" in mount_at(result, "/dev/shm")["options"]
    assert result["process"]["rlimits"] == [
        {"type": "RLIMIT_NOFILE", "soft": 1062, "hard": 1062},
        {"type": "RLIMIT_CORE", "soft": 0, "hard": (1 << 64) - 1}]
    assert "size=65536k" in mount_at(spec(ProcessSpec(SH)), "/dev/shm")["options"]


def test_process_of_an_op_with_ulimits() -> None:
    op = ExecOp(("true",), ulimits=(Ulimit("nofile", 1, 2),), shm_size=4096)
    assert ProcessSpec.from_op(op).ulimits == (Rlimit("nofile", 1, 2),)
    assert ProcessSpec.from_op(op).shm_size == 4096


def test_unknown_ulimit_is_refused() -> None:
    with pytest.raises(GraphError, match="unknown ulimit 'files'"):
        spec(ProcessSpec(SH, ulimits=(Rlimit("files", 1, 1),)))
