"""The host's device nodes, for ``RUN --security=insecure``: BuildKit gives such a RUN every
device of the host (containerd's ``WithHostDevices``), so ``/dev/fuse`` or
``/dev/loop-control`` exist in it as on a privileged container.  The walk follows
containerd's: the char and block devices under /dev, not in pts/, shm/, fd/, mqueue/ or
the container managers' private directories, and not /dev/console; symlinks are skipped.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ._spec import HostDevice

__all__ = ["host_devices"]

_SKIPPED_DIRS = frozenset({"pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"})


def host_devices(root: Path = Path("/dev")) -> tuple[HostDevice, ...]:
    """Every device node under ``root``, by path (unreadable directories passed over)."""
    found: list[HostDevice] = []
    try:
        entries = sorted(os.scandir(root), key=lambda entry: entry.name)
    except OSError:
        return ()
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            if entry.name not in _SKIPPED_DIRS:
                found += host_devices(Path(entry.path))
        elif entry.name != "console":
            device = _device(entry)
            if device is not None:
                found.append(device)
    return tuple(found)


def _device(entry: os.DirEntry[str]) -> HostDevice | None:
    try:
        info = entry.stat(follow_symlinks=False)
    except OSError:
        return None
    if stat.S_ISCHR(info.st_mode):
        kind = "c"
    elif stat.S_ISBLK(info.st_mode):
        kind = "b"
    else:
        return None
    return HostDevice(path=entry.path, type=kind, major=os.major(info.st_rdev),
                      minor=os.minor(info.st_rdev), mode=stat.S_IMODE(info.st_mode),
                      uid=info.st_uid, gid=info.st_gid)
