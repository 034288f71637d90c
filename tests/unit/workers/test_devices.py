"""``host_devices``: the walk over /dev that gives an insecure RUN the host's device nodes,
checked on a made-up /dev (mknod needs root, as the workers run)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from dockyard.workers._devices import host_devices
from dockyard.workers._spec import HostDevice

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")


def _node(path: Path, kind: int, major: int, minor: int, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(path, kind | mode, os.makedev(major, minor))
    path.chmod(mode)  # past the umask


def test_walk(tmp_path: Path) -> None:
    _node(tmp_path / "fuse", stat.S_IFCHR, 10, 229)
    _node(tmp_path / "loop0", stat.S_IFBLK, 7, 0, 0o660)
    _node(tmp_path / "net" / "tun", stat.S_IFCHR, 10, 200, 0o666)
    _node(tmp_path / "pts" / "0", stat.S_IFCHR, 136, 0)        # the container's own
    _node(tmp_path / "console", stat.S_IFCHR, 5, 1)            # never the host's console
    (tmp_path / "stdin").symlink_to("/proc/self/fd/0")        # links are skipped
    (tmp_path / "regular").write_text("not a device")
    os.chown(tmp_path / "loop0", 0, 6)
    assert host_devices(tmp_path) == (
        HostDevice(str(tmp_path / "fuse"), "c", 10, 229, 0o600),
        HostDevice(str(tmp_path / "loop0"), "b", 7, 0, 0o660, 0, 6),
        HostDevice(str(tmp_path / "net" / "tun"), "c", 10, 200, 0o666),
    )


def test_missing_root_is_empty(tmp_path: Path) -> None:
    assert host_devices(tmp_path / "nope") == ()
