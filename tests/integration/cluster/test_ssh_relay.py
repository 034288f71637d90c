"""The ssh agent relay without runc: a worker's relay socket (workers/_ssh_relay.py)
whose asks are answered by the client's ``SshRelay`` (cluster/_ssh_agent.py) one at a
time, in order, as the blocking client answers them, in front of a real ``ssh-agent``
holding an ``ssh-keygen`` key; the real ``ssh-add`` lists and uses the key through it."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from dockyard.cluster._build_options import SshSpec
from dockyard.cluster._ssh_agent import READ_WAIT, SshAgents, SshRelay
from dockyard.cluster._wire import Ask, answer
from dockyard.scheduler._errors import ServiceError
from dockyard.workers._session_channel import answer_error
from dockyard.workers._ssh_relay import ChannelSshAgents


class SerialClient:
    """Answers asks as the blocking client does: one at a time, in arrival order."""

    def __init__(self, relay: SshRelay) -> None:
        self._handlers = relay.handlers()
        self._lock = asyncio.Lock()
        self.asked: list[str] = []

    async def ask(self, what: str, params: dict[str, Any]) -> Any:
        async with self._lock:
            self.asked.append(what)
            reply = await asyncio.to_thread(answer, Ask(1, len(self.asked), what, params),
                                            self._handlers)
        if reply.error is not None:
            raise answer_error(reply.error, reply.message, reply.hint)
        return reply.result


@pytest.fixture()
def key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    if shutil.which("ssh-agent") is None:
        pytest.fail("needs Debian's openssh-client (ssh-agent, ssh-add, ssh-keygen)")
    sockets = tmp_path / "s"
    sockets.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(sockets))  # short agent socket paths
    path = tmp_path / "relayed"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "relayed-key",
                    "-f", str(path)], check=True, stdin=subprocess.DEVNULL)
    return path


async def _ssh_add(socket: Path, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "ssh-add", *args, env={**os.environ, "SSH_AUTH_SOCK": str(socket)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


async def _through_relay(key: Path, scratch: Path) -> tuple[list[tuple[int, str]], Any]:
    with SshAgents([SshSpec("git", (str(key),))]) as sockets:
        relay = SshRelay(sockets)
        client = SerialClient(relay)
        agents = ChannelSshAgents(client, ["git"])
        async with agents.listening("git", scratch, os.getuid(), os.getgid(), 0o600) as sock:
            assert sock.is_socket() and sock.stat().st_mode & 0o777 == 0o600
            results = list(await asyncio.gather(
                _ssh_add(sock, "-l"), _ssh_add(sock, "-T", f"{key}.pub"),
                _ssh_add(sock, "-L")))
        assert not sock.parent.exists()
        return results, (relay, client, agents)


def test_ssh_add_lists_and_signs_through_the_relay(key: Path, tmp_path: Path) -> None:
    results, (relay, client, agents) = asyncio.run(_through_relay(key, tmp_path))
    (listed_code, listed), (test_code, tested), (pub_code, pub) = results
    assert listed_code == 0 and "relayed-key (ED25519)" in listed, listed
    assert test_code == 0, tested
    assert pub_code == 0 and pub.split()[1] == key.with_suffix(".pub").read_text().split()[1]
    assert agents.connections == relay.opened >= 3
    assert repr(relay).endswith("open=0>")  # every connection closed by ssh.close
    assert set(client.asked) == {"ssh.open", "ssh.write", "ssh.read", "ssh.close"}
    # reads only while an answer is due: about one per request, no idle polling
    assert client.asked.count("ssh.read") <= 2 * client.asked.count("ssh.write")


def test_a_read_with_nothing_to_say_does_not_hold_the_client(key: Path) -> None:
    with SshAgents([SshSpec("default", (str(key),))]) as sockets:
        relay = SshRelay(sockets)
        conn = relay.open({"id": "default"})
        started = time.monotonic()
        assert relay.read({"conn": conn}) == b""  # the agent speaks only when asked
        assert time.monotonic() - started < READ_WAIT + 0.5
        relay.close()


BAD_ASKS = [
    ("ssh.open", {"id": "other"}, "this build was given no ssh agent 'other'\n"
                                  "hint: pass it with --ssh other"),
    ("ssh.write", {"conn": 9, "data": b"x"}, "no open ssh agent connection 9"),
    ("ssh.read", {"conn": "1"}, "an ssh ask without a connection number"),
    ("ssh.write", {"conn": 1, "data": "text"}, "an ssh.write without bytes"),
]


@pytest.mark.parametrize(("what", "params", "message"), BAD_ASKS,
                         ids=[f"{w}-{m[:12]}" for w, _, m in BAD_ASKS])
def test_only_the_given_ids_and_open_connections_are_served(
        what: str, params: dict[str, Any], message: str) -> None:
    relay = SshRelay({"default": "/nonexistent/agent.sock"})
    reply = answer(Ask(1, 1, what, params), relay.handlers())
    assert reply.error == "ServiceError"
    assert str(ServiceError(reply.message, hint=reply.hint)) == message
