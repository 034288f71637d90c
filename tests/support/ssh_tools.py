"""The host's ssh tools for test images and keys: ``copy_ssh_add`` puts the host's
``ssh-add`` and the shared libraries it loads (``ldd``) under ``<context>/tools/`` at
their own paths, so ``COPY tools/ /`` gives the busybox image a real agent client;
``make_key`` makes a passphrase-less ed25519 key with ``ssh-keygen``."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from support.busybox_image import need_tool


def copy_ssh_add(context: Path) -> None:
    binary = need_tool("ssh-add")
    done = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True)
    paths = [binary] + [word for line in done.stdout.splitlines()
                        for word in line.split() if word.startswith("/")]
    for path in paths:
        target = context / "tools" / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)  # the file a symlink names, as the loader opens it
        target.chmod(0o755)


def make_key(path: Path, comment: str) -> Path:
    subprocess.run([need_tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", comment,
                    "-f", str(path)], check=True, stdin=subprocess.DEVNULL)
    return path
