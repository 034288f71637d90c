"""Settings shared by the whole test suite.

- Hypothesis: under CI (``CI=true``) property tests are derandomized and have no deadline, so
  a slow or busy CI machine gives the same verdict as a developer's; locally they keep
  Hypothesis' defaults (random, 200 ms deadline) to keep finding new cases.
- ``-m "not oracle"`` deselects the tests that start a private dockerd (tests/oracle).
- Ctrl-C: a runner started in the background without job control (``make test &`` in a
  script) ignores SIGINT, and an ignored signal stays ignored across exec, so every
  ``dockyard build`` the tests start would too and the Ctrl-C tests could not pass.  The
  suite takes Python's own handler back: its children then start with the default.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") == "true" else "dev")
# A long hunt for the fuzz tests:
#   pytest tests/unit/dockerfile/test_fuzz.py --hypothesis-profile=long
settings.register_profile("long", max_examples=5000, deadline=None, print_blob=True)

if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


# --- A busybox root filesystem, the base of the engine's integration tests ---------------

#: Debian's static busybox binaries (make setup provides both; see docs/development.md).
BUSYBOX = {
    "amd64": Path("/bin/busybox"),
    "arm64": Path(os.environ.get("DOCKYARD_BUSYBOX_ARM64",
                                 "/var/cache/dockyard/busybox-arm64/bin/busybox")),
}
_PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n" \
          "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
_GROUP = "root:x:0:\napp:x:1000:\nstaff:x:50:app\nnogroup:x:65534:\n"


def write_busybox_rootfs(dest: Path, arch: str = "amd64") -> Path:
    """A minimal busybox root filesystem at ``dest``: /bin/busybox with a symlink per applet,
    /etc/passwd and /etc/group (root, app 1000, nobody), /tmp, /root, /home/app."""
    binary = BUSYBOX[arch]
    if not binary.exists():
        pytest.fail(f"{binary} is missing: run 'make setup'")
    applets = subprocess.run([str(BUSYBOX["amd64"]), "--list"], check=True,
                             capture_output=True, text=True).stdout.split()
    (dest / "bin").mkdir(parents=True, exist_ok=True)
    (dest / "bin" / "busybox").write_bytes(binary.read_bytes())
    (dest / "bin" / "busybox").chmod(0o755)
    for applet in applets:
        if applet != "busybox":
            (dest / "bin" / applet).symlink_to("busybox")
    (dest / "etc").mkdir(exist_ok=True)
    (dest / "etc" / "passwd").write_text(_PASSWD)
    (dest / "etc" / "group").write_text(_GROUP)
    for sub, mode in (("tmp", 0o1777), ("root", 0o700), ("home/app", 0o755)):
        (dest / sub).mkdir(parents=True, exist_ok=True)
        (dest / sub).chmod(mode)
    return dest


@pytest.fixture
def busybox_rootfs(tmp_path: Path) -> Callable[[str], Path]:
    """A factory: ``busybox_rootfs("arm64")`` -> a fresh rootfs directory for that arch."""
    def make(arch: str = "amd64") -> Path:
        return write_busybox_rootfs(tmp_path / f"rootfs-{arch}", arch)
    return make
