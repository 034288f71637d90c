"""Log lines (workers/_logs.py): JSON objects with the build and vertex ids when the stream
is no terminal, plain text on one; the ids from the context or from a line's ``extra``."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import pty
from collections.abc import Iterator

import pytest

from dockyard.workers._logs import PACKAGES, configure_logging, log_context, set_log_ids

BUILD = "0f" * 16
VERTEX = "sha256:" + "ab" * 32


@pytest.fixture
def restored() -> Iterator[None]:
    """The package loggers as they were (configure_logging changes them for the process)."""
    saved = {name: (list(logging.getLogger(name).handlers), logging.getLogger(name).level,
                    logging.getLogger(name).propagate) for name in PACKAGES}
    for name in PACKAGES:
        logging.getLogger(name).handlers.clear()
    yield
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_the_build_and_vertex_ids(restored: None) -> None:
    stream = io.StringIO()
    configure_logging(stream)
    log = logging.getLogger("dockyard.workers._runtime")
    log.info("outside any build")
    with log_context(build=BUILD):
        log.info("fetched blob %s (%d bytes)", "sha256:1", 12)
        with log_context(vertex=VERTEX):
            log.warning("slow step")
    log.info("named by the line", extra={"build": "b2", "vertex": "v2"})
    logging.getLogger("dockyard.cluster.daemon").debug("below INFO: not written")
    try:
        raise ValueError("broken")
    except ValueError:
        logging.getLogger("dockyard.cluster.coordinator").exception("a failure")
    lines = _lines(stream)
    assert [{k: v for k, v in line.items() if k not in ("time", "pid", "error")}
            for line in lines] == [
        {"level": "info", "logger": "dockyard.workers._runtime", "message": "outside any build"},
        {"level": "info", "logger": "dockyard.workers._runtime", "build": BUILD,
         "message": "fetched blob sha256:1 (12 bytes)"},
        {"level": "warning", "logger": "dockyard.workers._runtime", "message": "slow step",
         "build": BUILD, "vertex": VERTEX},
        {"level": "info", "logger": "dockyard.workers._runtime", "message": "named by the line",
         "build": "b2", "vertex": "v2"},
        {"level": "error", "logger": "dockyard.cluster.coordinator", "message": "a failure"},
    ]
    assert all(line["pid"] == os.getpid() for line in lines)
    assert str(lines[0]["time"]).endswith("Z") and "T" in str(lines[0]["time"])
    assert "ValueError: broken" in str(lines[-1]["error"])


def test_a_tasks_ids_stay_in_that_task(restored: None) -> None:
    stream = io.StringIO()
    configure_logging(stream)
    log = logging.getLogger("dockyard.cluster.coordinator")

    async def build(number: int) -> None:
        set_log_ids(build=f"build-{number}")
        await asyncio.sleep(0)
        log.info("step of %d", number)

    async def main() -> None:
        await asyncio.gather(build(1), build(2))
        log.info("after")
    asyncio.run(main())
    found = {line["message"]: line.get("build") for line in _lines(stream)}
    assert found == {"step of 1": "build-1", "step of 2": "build-2", "after": None}


def test_a_terminal_gets_plain_text(restored: None) -> None:
    main, other = pty.openpty()
    try:
        with open(other, "w", closefd=False) as terminal:
            configure_logging(terminal)
            configure_logging(io.StringIO())  # a second set-up changes nothing
            with log_context(build=BUILD, vertex=VERTEX):
                logging.getLogger("dockyard.cluster.endpoint").info("coordinator up")
            terminal.flush()
        text = os.read(main, 4096).decode()
    finally:
        os.close(main)
        os.close(other)
    assert text.rstrip().endswith(
        f"INFO dockyard.cluster.endpoint: coordinator up build={BUILD} vertex={VERTEX}"), text
    assert not text.lstrip().startswith("{")
