"""workers/_output_send.py: an output streamed to the client as the exporter writes it.

A fake session ``send`` records each ask and answers it later (as the client does, in
order), so the tests see what the client would: the writes in order and whole, never more
than ``WINDOW`` unanswered, the exporter's thread held back by the window, and a refused
write stopping the exporter with an error."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest

from dockyard.scheduler._errors import ExportError
from dockyard.workers._output_send import (
    CHUNK_BYTES,
    WINDOW,
    ChannelWriter,
    close_output,
    send_file,
)


class Client:
    """Answers every ask after a short while, in order; ``refuse_at`` fails that write."""

    def __init__(self, refuse_at: int | None = None) -> None:
        self.asks: list[tuple[str, dict[str, Any]]] = []
        self.unanswered = 0
        self.most_unanswered = 0
        self.refuse_at = refuse_at
        self.received = bytearray()

    async def send(self, what: str, params: dict[str, Any]) -> asyncio.Future[Any]:
        self.asks.append((what, params))
        self.unanswered += 1
        self.most_unanswered = max(self.most_unanswered, self.unanswered)
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.001, self._answer, answer, what, params)
        return answer

    def _answer(self, answer: asyncio.Future[Any], what: str, params: dict[str, Any]) -> None:
        self.unanswered -= 1
        if what == "output.write":
            if params["offset"] != len(self.received) or params["offset"] == self.refuse_at:
                answer.set_exception(ExportError(f"a write at {params['offset']} refused"))
                return
            self.received += params["data"]
        answer.set_result(None)


def payload(size: int) -> bytes:
    return random.Random(size).randbytes(size)


async def stream(client: Client, data: bytes, piece: int) -> int:
    writer = ChannelWriter(client.send, 3, asyncio.get_running_loop())
    pumping = asyncio.ensure_future(writer.pump())

    def export() -> None:  # the exporter's thread, writing as tarfile-sized pieces
        for start in range(0, len(data), piece):
            writer.write(data[start:start + piece])
        writer.flush()

    try:
        await asyncio.to_thread(export)
        return await writer.finish(pumping)
    finally:
        pumping.cancel()


@pytest.mark.parametrize("size", [0, 10, CHUNK_BYTES, 3 * CHUNK_BYTES + 5, 9 * CHUNK_BYTES])
def test_written_bytes_reach_the_client_in_order_within_the_window(size: int) -> None:
    client, data = Client(), payload(size)
    assert asyncio.run(stream(client, data, 1 << 20 | 7)) == size
    assert bytes(client.received) == data
    assert all(what == "output.write" and params["index"] == 3
               and len(params["data"]) <= CHUNK_BYTES for what, params in client.asks)
    assert client.most_unanswered <= WINDOW
    if size >= 6 * CHUNK_BYTES:
        assert client.most_unanswered > 1  # writes overlap: not one ask at a time


def test_a_refused_write_stops_the_exporter() -> None:
    client = Client(refuse_at=CHUNK_BYTES)
    with pytest.raises(ExportError) as caught:
        asyncio.run(stream(client, payload(12 * CHUNK_BYTES), CHUNK_BYTES))
    assert "refused" in str(caught.value)
    assert len(client.asks) < 12  # it did not go on to the end


def test_send_file_then_close(tmp_path: Path) -> None:
    client, data = Client(), payload(5 * CHUNK_BYTES + 1)
    (tmp_path / "out.tar").write_bytes(data)

    async def main() -> int:
        return await send_file(client.send, 0, tmp_path / "out.tar")

    assert asyncio.run(main()) == len(data)
    assert bytes(client.received) == data
    assert client.asks[-1] == ("output.close", {"index": 0})
    assert client.most_unanswered <= WINDOW


def test_close_output_asks_once() -> None:
    client = Client()

    async def main() -> None:
        await close_output(client.send, 2)

    asyncio.run(main())
    assert client.asks == [("output.close", {"index": 2})]
