"""The OCI runtime spec (config.json) for one RUN, as BuildKit's runc executor makes it.

Pure data in, a JSON-able dict out: no I/O here (the executor prepares the files the spec
names).  The defaults follow BuildKit (executor/oci/spec.go, spec_linux.go) on top of
containerd's default Unix spec:

- hostname ``buildkitsandbox``; namespaces mount, pid, ipc, uts, plus a fresh (empty, only
  loopback) network namespace for ``--network=none``; ``default``/``host`` share the host's.
- /proc, /dev (tmpfs; runc creates the standard devices), /dev/pts, /dev/shm, /dev/mqueue,
  /sys read-only, /sys/fs/cgroup read-only, /etc/resolv.conf and /etc/hosts bound read-only;
  no /run mount (BuildKit removes containerd's).
- sandbox: containerd's default capability set, masked and read-only /proc paths;
  insecure: every capability, nothing masked, /sys and cgroupfs writable, all devices
  allowed and the host's device nodes created (the executor lists them).
- like BuildKit, new privileges stay allowed (setuid binaries work in a RUN) and rlimits are
  inherited unless given; cgroups are left to runc's defaults unless the build names a
  ``--cgroup-parent``: then the RUN's cgroup is ``/PARENT/buildkit/<container id>``
  (BuildKit's GenerateSpec).  ``--add-host`` entries follow /etc/hosts' defaults.
  BuildKit's default seccomp profile (Docker's) is not applied yet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from dockyard.scheduler._errors import GraphError
from dockyard.scheduler._graph import ULIMIT_NAMES, ExecOp

from ._users import ResolvedUser

__all__ = [
    "DEFAULT_HOSTNAME", "DEFAULT_PATH", "BindMount", "HostDevice", "ProcessSpec", "Rlimit",
    "SpecMount",
    "TmpfsMount", "build_spec", "caps_from_mask", "environment", "hosts_file", "resolv_conf",
]

DEFAULT_HOSTNAME = "buildkitsandbox"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
OCI_VERSION = "1.0.2"

#: containerd's defaultUnixCaps, which BuildKit's sandbox mode keeps.
SANDBOX_CAPS = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)
#: Every capability runc 1.1 knows (``--security=insecure``), in bit order
#: (linux/capability.h), so a name's index is its bit number.
ALL_CAPS = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)
MASKED_PATHS = (
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
    "/sys/devices/virtual/powercap", "/proc/scsi",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

_NETWORKS = ("default", "host", "none")
_SECURITY = ("sandbox", "insecure")


@dataclass(frozen=True, slots=True)
class Rlimit:
    """One ``--ulimit``: ``kind`` as in ``nofile`` (becomes ``RLIMIT_NOFILE``)."""

    kind: str
    soft: int
    hard: int


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    """What to run: the process part of an ``ExecOp`` (mounts are resolved separately).

    ``env`` is ``KEY=value`` strings; ``user`` is ``user[:group]`` (names or ids);
    ``network`` is ``default``/``host`` (the host's) or ``none``; ``security`` is
    ``sandbox`` or ``insecure``; ``hostname`` empty means ``buildkitsandbox``."""

    args: tuple[str, ...]
    env: tuple[str, ...] = ()
    cwd: str = "/"
    user: str = ""
    hostname: str = ""
    network: str = "default"
    security: str = "sandbox"
    ulimits: tuple[Rlimit, ...] = ()
    shm_size: int = 0
    extra_hosts: tuple[tuple[str, str], ...] = ()  # (name, ip) lines added to /etc/hosts
    cgroup_parent: str = ""  # the cgroup the RUN's cgroup is made under ("": runc's own)

    @classmethod
    def from_op(cls, op: ExecOp) -> ProcessSpec:
        """The process of a graph ``ExecOp``; its proxy build args join the environment."""
        return cls(args=op.args, env=op.env + op.proxy_env, cwd=op.cwd, user=op.user,
                   hostname=op.hostname, network=op.network, security=op.security,
                   ulimits=tuple(Rlimit(u.name, u.soft, u.hard) for u in op.ulimits),
                   shm_size=op.shm_size, extra_hosts=op.extra_hosts,
                   cgroup_parent=op.cgroup_parent)

    @property
    def effective_hostname(self) -> str:
        return self.hostname or DEFAULT_HOSTNAME

    @property
    def effective_cwd(self) -> str:
        return str(PurePosixPath("/", self.cwd))


@dataclass(frozen=True, slots=True)
class BindMount:
    """A host path bound at ``dest`` (read-only by default, as BuildKit's bind mounts)."""

    source: Path
    dest: str
    readonly: bool = True


@dataclass(frozen=True, slots=True)
class TmpfsMount:
    """A fresh tmpfs at ``dest``; ``size`` in bytes (None: the kernel's default)."""

    dest: str
    size: int | None = None


SpecMount = BindMount | TmpfsMount


@dataclass(frozen=True, slots=True)
class HostDevice:
    """A device node of the host (``type`` ``c`` or ``b``), given to an insecure RUN."""

    path: str
    type: str
    major: int
    minor: int
    mode: int
    uid: int = 0
    gid: int = 0


def build_spec(process: ProcessSpec, user: ResolvedUser, rootfs: Path,
               mounts: Sequence[SpecMount], *, resolv_conf: Path, hosts: Path,
               host_caps: frozenset[str] | None = None,
               host_devices: Sequence[HostDevice] = (), container_id: str = ""
               ) -> dict[str, Any]:
    """The runtime spec for ``process`` as ``user`` over ``rootfs`` with extra ``mounts``.

    ``host_caps`` (the executor's bounding set) limits the capabilities granted: runc
    refuses to grant one its caller lacks (e.g. in a container without CAP_SYS_RESOURCE).
    ``host_devices`` are created in an insecure RUN's /dev (a sandboxed one gets none).
    ``container_id`` names the RUN's cgroup under its ``cgroup_parent``."""
    _check(process)
    insecure = process.security == "insecure"
    caps = [cap for cap in (ALL_CAPS if insecure else SANDBOX_CAPS)
            if host_caps is None or cap in host_caps]
    return {
        "ociVersion": OCI_VERSION,
        "process": _process(process, user, caps),
        "root": {"path": str(rootfs), "readonly": False},
        "hostname": process.effective_hostname,
        "mounts": _system_mounts(insecure, process.shm_size) + _file_mounts(resolv_conf, hosts)
        + [_user_mount(m) for m in mounts],
        "linux": _linux(process, insecure, host_devices if insecure else ())
        | _cgroups_path(process, container_id),
    }


def _cgroups_path(process: ProcessSpec, container_id: str) -> dict[str, Any]:
    if not process.cgroup_parent:
        return {}
    if not container_id:
        raise GraphError("a RUN with a cgroup parent needs its container id")
    return {"cgroupsPath": str(PurePosixPath("/", process.cgroup_parent, "buildkit",
                                             container_id))}


def _check(process: ProcessSpec) -> None:
    if not process.args:
        raise GraphError("exec op has no command to execute (empty args)")
    if process.network not in _NETWORKS:
        raise GraphError(f"unknown network mode {process.network!r}",
                        hint=f"use one of {', '.join(_NETWORKS)}")
    unknown = [r.kind for r in process.ulimits if r.kind not in ULIMIT_NAMES]
    if unknown:
        raise GraphError(f"unknown ulimit {unknown[0]!r}",
                         hint=f"use one of {', '.join(ULIMIT_NAMES)}")
    if process.security not in _SECURITY:
        raise GraphError(f"unknown security mode {process.security!r}",
                        hint=f"use one of {', '.join(_SECURITY)}")


def _process(process: ProcessSpec, user: ResolvedUser, caps: list[str]) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "terminal": False,
        "user": {"uid": user.uid, "gid": user.gid,
                 "additionalGids": list(user.additional_gids)},
        "args": list(process.args),
        "env": environment(process.env, user),
        "cwd": process.effective_cwd,
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        "noNewPrivileges": False,
    }
    if process.ulimits:
        spec["rlimits"] = [{"type": f"RLIMIT_{r.kind.upper()}", "soft": _rlim(r.soft),
                            "hard": _rlim(r.hard)} for r in process.ulimits]
    return spec


def _rlim(limit: int) -> int:
    """-1 (unlimited) as the kernel's RLIM_INFINITY."""
    return (1 << 64) - 1 if limit == -1 else limit


def caps_from_mask(mask: int) -> frozenset[str]:
    """Capability names of a bit mask as /proc/<pid>/status shows (CapBnd, hex)."""
    return frozenset(name for bit, name in enumerate(ALL_CAPS) if mask >> bit & 1)


def environment(env: Sequence[str], user: ResolvedUser) -> list[str]:
    """``env`` plus ``PATH`` (the default) and ``HOME`` (the user's) when they are unset."""
    names = {item.partition("=")[0] for item in env}
    result = list(env)
    if "PATH" not in names:
        result.append(f"PATH={DEFAULT_PATH}")
    if "HOME" not in names:
        result.append(f"HOME={user.home or '/'}")
    return result


def _system_mounts(insecure: bool, shm_size: int = 0) -> list[dict[str, Any]]:
    """/proc, /dev and the rest; /dev/shm is ``shm_size`` bytes (0: 64 MiB), in KiB as
    BuildKit's WithShmSize writes it."""
    sys_ro = [] if insecure else ["ro"]
    shm = f"size={shm_size // 1024}k" if shm_size else "size=65536k"
    return [
        _mount("/proc", "proc", "proc", ["nosuid", "noexec", "nodev"]),
        _mount("/dev", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755",
                                          "size=65536k"]),
        _mount("/dev/pts", "devpts", "devpts", ["nosuid", "noexec", "newinstance",
                                                "ptmxmode=0666", "mode=0620", "gid=5"]),
        _mount("/dev/shm", "tmpfs", "shm", ["nosuid", "noexec", "nodev", "mode=1777", shm]),
        _mount("/dev/mqueue", "mqueue", "mqueue", ["nosuid", "noexec", "nodev"]),
        _mount("/sys", "sysfs", "sysfs", ["nosuid", "noexec", "nodev", *sys_ro]),
        _mount("/sys/fs/cgroup", "cgroup", "cgroup", ["nosuid", "noexec", "nodev",
                                                      "relatime", *sys_ro]),
    ]


def _file_mounts(resolv: Path, hosts: Path) -> list[dict[str, Any]]:
    options = ["rbind", "ro", "nosuid", "noexec", "nodev"]
    return [_mount("/etc/resolv.conf", "bind", str(resolv), options),
            _mount("/etc/hosts", "bind", str(hosts), options)]


def _user_mount(mount: SpecMount) -> dict[str, Any]:
    dest = str(PurePosixPath("/", mount.dest))
    if isinstance(mount, TmpfsMount):
        size = [] if mount.size is None else [f"size={mount.size}"]
        return _mount(dest, "tmpfs", "tmpfs", ["nosuid", "nodev", *size])
    return _mount(dest, "bind", str(mount.source),
                  ["rbind", "ro" if mount.readonly else "rw"])


def _mount(dest: str, kind: str, source: str, options: list[str]) -> dict[str, Any]:
    return {"destination": dest, "type": kind, "source": source, "options": options}


def _linux(process: ProcessSpec, insecure: bool, devices: Sequence[HostDevice]
           ) -> dict[str, Any]:
    kinds = ["pid", "ipc", "uts", "mount"]
    if process.network == "none":
        kinds.append("network")
    linux: dict[str, Any] = {
        "namespaces": [{"type": kind} for kind in kinds],
        "resources": {"devices": [{"allow": insecure, "access": "rwm"}]},
    }
    if devices:
        linux["devices"] = [{"path": d.path, "type": d.type, "major": d.major,
                             "minor": d.minor, "fileMode": d.mode, "uid": d.uid,
                             "gid": d.gid} for d in devices]
    if not insecure:
        linux["maskedPaths"] = list(MASKED_PATHS)
        linux["readonlyPaths"] = list(READONLY_PATHS)
    return linux


# --- /etc/resolv.conf and /etc/hosts ---------------------------------------------------

_FALLBACK_DNS = ("8.8.8.8", "8.8.4.4", "2001:4860:4860::8888", "2001:4860:4860::8844")


def resolv_conf(host_text: str, network: str) -> str:
    """The RUN's /etc/resolv.conf from the host's, as BuildKit's ``GetResolvConf``.

    With host networking the host's file is used as is when it names a nameserver.  Else
    loopback nameservers (unreachable from another namespace) are dropped, and when none is
    left Google's public resolvers are used."""
    servers = _nameservers(host_text)
    if network == "host" and servers:
        return host_text
    kept = [line for line in host_text.splitlines()
            if not _is_loopback_nameserver(line)]
    if not any(_nameservers(line) for line in kept):
        kept += [f"nameserver {address}" for address in _FALLBACK_DNS]
    return "\n".join(kept) + "\n"


def _nameservers(text: str) -> list[str]:
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            found.append(fields[1])
    return found


def _is_loopback_nameserver(line: str) -> bool:
    servers = _nameservers(line)
    return bool(servers) and (servers[0].startswith("127.") or servers[0] == "::1")


def hosts_file(hostname: str, extra_hosts: Sequence[tuple[str, str]] = ()) -> str:
    """BuildKit's generated /etc/hosts: loopback names and the sandbox's hostname, then
    one ``IP<tab>NAME`` line per ``--add-host`` entry, in order."""
    return (f"127.0.0.1\tlocalhost {hostname}\n"
            "::1\tlocalhost ip6-localhost ip6-loopback\n"
            + "".join(f"{ip}\t{name}\n" for name, ip in extra_hosts))
