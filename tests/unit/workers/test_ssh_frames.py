"""``FrameCounter``: complete ssh-agent messages (4-byte big-endian length, then the
body) counted across arbitrary chunking, as the relay sees a stream."""

from __future__ import annotations

import pytest

from dockyard.workers._ssh_relay import FrameCounter


def _msg(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


CASES = [
    ("nothing", [], 0),
    ("one whole", [_msg(b"\x0b")], 1),
    ("two in one chunk", [_msg(b"\x0b") + _msg(b"\x0d" + b"x" * 300)], 2),
    ("split length", [b"\x00\x00", b"\x00\x01", b"\x0b"], 1),
    ("split body", [_msg(b"abcdef")[:6], _msg(b"abcdef")[6:]], 1),
    ("byte by byte", [bytes([b]) for b in _msg(b"hello") + _msg(b"!")], 2),
    ("incomplete", [_msg(b"abcdef")[:-1]], 0),
    ("empty body", [_msg(b"")], 1),
]


@pytest.mark.parametrize(("chunks", "complete"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_frames_counted(chunks: list[bytes], complete: int) -> None:
    counter = FrameCounter()
    for chunk in chunks:
        counter.feed(chunk)
    assert counter.complete == complete
