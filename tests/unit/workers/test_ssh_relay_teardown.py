"""The end of a RUN closes every agent connection the client opened for it.

The RUN's end cancels the relay of each container connection (workers/_ssh_relay.py
``_serving``) just as the container hangs up, so the relay is often still asking the
client to open or close.  A fake client gates one ask: its turn (to reach the client, or
for its answer to come back) comes only once the RUN's socket is being torn down, as
when the one-at-a-time client is busy with other asks.  Whatever was gated, the client
holds no open connection once ``listening`` has returned."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from dockyard.workers._ssh_relay import ChannelSshAgents


class GatedClient:
    """The client's agent connections behind the ``SshAsker`` protocol; the ``gated`` ask
    waits for ``turn`` before it reaches the client (``where="send"``) or before its
    answer comes back (``where="answer"``)."""

    def __init__(self, gated: str, where: str) -> None:
        self._gated = gated
        self._where = where
        self.open: set[int] = set()  # connections open on the client now
        self.opened = 0  # connections the client opened, all time
        self.waiting = asyncio.Event()  # set once the gated ask waits for its turn
        self.turn = asyncio.Event()  # set: the gated ask goes on

    async def ask(self, what: str, params: dict[str, Any]) -> Any:
        gated = what == self._gated
        if gated and self._where == "send":
            await self._wait_turn()
        result = self._answer(what, params)
        if gated and self._where == "answer":
            await self._wait_turn()
        return result

    async def _wait_turn(self) -> None:
        self.waiting.set()
        await self.turn.wait()

    def _answer(self, what: str, params: dict[str, Any]) -> int | None:
        if what == "ssh.open":
            self.opened += 1
            self.open.add(self.opened)
            return self.opened
        if what == "ssh.close":
            self.open.discard(params["conn"])
            return None
        raise AssertionError(f"unexpected ask {what}")


CASES = [
    ("close waits to be sent", "ssh.close", "send"),
    ("close sent, answer not back", "ssh.close", "answer"),
    ("open sent, answer not back", "ssh.open", "answer"),
]


async def _run_ends_during(client: GatedClient, scratch: Path) -> None:
    agents = ChannelSshAgents(client, ["default"])
    async with agents.listening("default", scratch, os.getuid(), os.getgid(), 0o600) as sock:
        _, writer = await asyncio.open_unix_connection(str(sock))
        writer.close()  # the container's client hangs up as its process exits
        async with asyncio.timeout(5):
            await client.waiting.wait()
        # The gated ask's turn comes only after the teardown below has begun: it runs
        # without yielding until it has cancelled the relay, and this callback runs after.
        asyncio.get_running_loop().call_soon(client.turn.set)


@pytest.mark.parametrize(("gated", "where"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_the_runs_end_leaves_no_client_connection_open(
        gated: str, where: str, tmp_path: Path) -> None:
    client = GatedClient(gated, where)
    asyncio.run(_run_ends_during(client, tmp_path))
    assert client.opened == 1
    assert client.open == set()
