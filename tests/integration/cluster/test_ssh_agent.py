"""``--ssh ID=KEYFILE``: real ssh-keygen keys loaded into a real ephemeral ssh-agent
(cluster/_ssh_agent.py), listed through its socket by ``ssh-add -l``, served to a RUN
``--mount=type=ssh`` under runc, and killed (socket directory removed) when the build
ends, also when it fails; a passphrase-protected key is refused with a pinned error."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dockyard.cluster._build_options import SshSpec
from dockyard.cluster._local_build import LocalBuildOptions, Output, build_local
from dockyard.cluster._ssh_agent import SshAgents
from dockyard.scheduler._errors import UsageError
from dockyard.scheduler._platform import parse_platform

TOOLS = ("ssh-agent", "ssh-add", "ssh-keygen")


@pytest.fixture(autouse=True)
def _private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Agents' socket directories under the test's tmp dir, so leftovers are visible."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"needs Debian's openssh-client (missing: {', '.join(missing)})")
    sockets = tmp_path / "s"  # short: a unix socket path has at most 107 bytes
    sockets.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(sockets))
    yield sockets


def _key(directory: Path, name: str, passphrase: str = "", mode: int = 0o600) -> Path:
    path = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", name,
                    "-f", str(path)], check=True, stdin=subprocess.DEVNULL)
    path.chmod(mode)
    return path


def _listed(socket: str) -> str:
    done = subprocess.run(["ssh-add", "-l"], env={**os.environ, "SSH_AUTH_SOCK": socket},
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _agent_processes(marker: Path) -> list[int]:
    """PIDs of processes whose command line names ``marker`` (our agents' directories)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(marker).encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_keys_of_one_id_share_one_agent_which_ends_with_the_build(
        tmp_path: Path, _private_tmp: Path) -> None:
    first = _key(tmp_path, "first")
    second = _key(tmp_path, "second", mode=0o644)  # ssh-add alone would refuse it
    agents = SshAgents([SshSpec("git", (str(first), str(second)))])
    with agents as sockets:
        listed = _listed(sockets["git"])
        assert sorted(line.split()[2] for line in listed.splitlines()) == ["first", "second"]
        assert len(agents.agents) == 1 and _agent_processes(_private_tmp)
        assert not list(Path(sockets["git"]).parent.glob("key-*"))  # no key copy left
    assert not _agent_processes(_private_tmp)
    assert list(_private_tmp.iterdir()) == []


def test_a_socket_is_served_as_it_is(tmp_path: Path, _private_tmp: Path) -> None:
    with SshAgents([SshSpec("k", (str(_key(tmp_path, "k")),))]) as outer:
        with SshAgents([SshSpec("default", (outer["k"],))]) as inner:
            assert inner == {"default": outer["k"]}
        assert "k" in _listed(outer["k"])  # the inner one did not kill it


def test_the_agent_is_killed_when_the_build_fails(tmp_path: Path, _private_tmp: Path) -> None:
    with pytest.raises(KeyboardInterrupt), SshAgents(
            [SshSpec("default", (str(_key(tmp_path, "k")),))]):
        assert _agent_processes(_private_tmp)
        raise KeyboardInterrupt
    assert not _agent_processes(_private_tmp)
    assert list(_private_tmp.iterdir()) == []


def _bad_specs(tmp_path: Path) -> list[tuple[SshSpec, str]]:
    locked = _key(tmp_path, "locked", passphrase="secret phrase")
    plain = _key(tmp_path, "plain")
    junk = tmp_path / "junk"
    junk.write_text("not a key\n")
    return [
        (SshSpec("git", (str(plain), str(locked))),
         f"invalid --ssh git: the key '{locked}' is protected by a passphrase, which "
         f"dockyard cannot ask for\nhint: load it into your ssh-agent (ssh-add) and pass "
         f"--ssh git=$SSH_AUTH_SOCK"),
        (SshSpec("default", (str(junk),)),
         f"invalid --ssh default: '{junk}' is neither an agent socket nor a private key"
         f"\nhint: give an agent socket or an OpenSSH/PEM private key file"),
        (SshSpec("default", (str(tmp_path / "missing"),)),
         f"invalid --ssh default: cannot read '{tmp_path / 'missing'}': No such file or "
         f"directory\nhint: give an agent socket or a private key file"),
    ]


def test_bad_keys_are_refused_and_leave_nothing(tmp_path: Path, _private_tmp: Path) -> None:
    for spec, message in _bad_specs(tmp_path):
        with pytest.raises(UsageError) as caught, SshAgents([spec]):
            pass
        assert str(caught.value) == message
    assert not _agent_processes(_private_tmp)
    assert list(_private_tmp.iterdir()) == []


def test_a_key_agent_is_mounted_into_run(tmp_path: Path, _private_tmp: Path,
                                         busybox_image: Any) -> None:
    """The container sees, at the ssh mount, a socket of the worker's own forwarding to the
    agent (as BuildKit's proxy socket: never the agent's own inode, which a RUN could
    chmod), while the agent lists the key."""
    context = tmp_path / "context"
    context.mkdir()
    dockerfile = (f"FROM {busybox_image.reference}\n"
                  "RUN --mount=type=ssh,id=git,required=true "
                  "stat -c '%F %i' /run/buildkit/ssh_agent.0 > /seen\n")
    out = tmp_path / "out"
    with SshAgents([SshSpec("git", (str(_key(tmp_path, "deploy")),))]) as sockets:
        options = LocalBuildOptions(root=tmp_path / "root",
                                    platforms=(parse_platform("linux/amd64"),),
                                    ssh={k: Path(v) for k, v in sockets.items()},
                                    outputs=(Output("local", out),))
        asyncio.run(build_local(dockerfile.encode(), context, options))
        inode = os.stat(sockets["git"]).st_ino
        assert "deploy" in _listed(sockets["git"])
    kind, seen_inode = (out / "seen").read_text().split()
    assert (kind, seen_inode != str(inode)) == ("socket", True)
    assert not _agent_processes(_private_tmp)
