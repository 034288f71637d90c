"""A cancelled build stops its frontend: ``run_frontend`` runs the synchronous frontend in
a thread, which cannot be cancelled, so the frontend checks at every step whether its build
was, and ``run_frontend`` returns (re-raising the cancellation) only once that thread has
left the frontend.  Before, the await ended at once and the thread went on converting the
Dockerfile, for minutes, with nobody waiting for it."""

from __future__ import annotations

import asyncio
import sys
import time
import traceback

import pytest

from dockyard.cluster._local_build import FrontendRequest, run_frontend
from dockyard.scheduler._platform import Platform, parse_platform
from dockyard.scheduler.dockerfile import BaseImage, build_graph
from dockyard.scheduler.dockerfile._interrupt import checkpoint, interruptible

# Legal and slow: 50,000 ENV lines converted for 4 platforms, twice each (a minute or so).
SLOW = ("FROM scratch\n" + "".join(f"ENV V{i}={i}\n" for i in range(50_000))).encode()
PLATFORMS = tuple(parse_platform(p) for p in
                  ("linux/amd64", "linux/arm64", "linux/arm/v7", "linux/s390x"))


def in_frontend() -> list[int]:
    """The threads now running ``build_graph``."""
    return [ident for ident, frame in sys._current_frames().items()
            if any(f.f_code is build_graph.__code__ for f, _ in traceback.walk_stack(frame))]


async def never(ref: str, platform: Platform) -> BaseImage:
    await asyncio.Event().wait()  # a base-image question that is never answered
    raise AssertionError("unreachable")


async def cancel_while_running(dockerfile: bytes, request: FrontendRequest) -> float:
    """Start the frontend, cancel it once its thread is in it; the seconds the cancelled
    call took to end.  Asserts the thread has left the frontend when it did."""
    task = asyncio.ensure_future(run_frontend(dockerfile, request, [], never))
    began = time.monotonic()
    while not in_frontend():
        assert time.monotonic() - began < 30 and not task.done()
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)
    task.cancel()
    cancelled = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert in_frontend() == []
    return time.monotonic() - cancelled


@pytest.mark.timeout(60)
def test_a_cancelled_frontend_stops_mid_conversion() -> None:
    took = asyncio.run(cancel_while_running(SLOW, FrontendRequest(platforms=PLATFORMS)))
    assert took < 10  # one step of the frontend, however loaded the machine


@pytest.mark.timeout(60)
def test_a_cancelled_frontend_gives_up_its_base_image_question() -> None:
    dockerfile = b"FROM example.invalid/base\nRUN true\n"
    took = asyncio.run(cancel_while_running(dockerfile, FrontendRequest()))
    assert took < 10


def test_checkpoints_call_the_scope_and_nothing_outside_one() -> None:
    calls: list[int] = []
    checkpoint()  # no scope: nothing happens
    with interruptible(lambda: calls.append(1)):
        checkpoint()
        with interruptible(None):
            checkpoint()
        checkpoint()
    checkpoint()
    assert calls == [1, 1]


@pytest.mark.parametrize("dockerfile", [
    SLOW,  # conversion: every instruction and word
    b"# c\n" * 100_000 + b"FROM scratch\n",  # parsing: every line
])
def test_an_interrupt_stops_the_frontend_where_it_is(dockerfile: bytes) -> None:
    """The interrupt raises through the frontend unchanged, early in the work."""
    seen = 0

    def interrupt() -> None:
        nonlocal seen
        seen += 1
        if seen == 1000:
            raise asyncio.CancelledError("stop")

    with pytest.raises(asyncio.CancelledError):
        build_graph(dockerfile, interrupt=interrupt)
    assert seen == 1000
