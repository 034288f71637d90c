"""The daemon's solve when its coordinator dies, with a FAKE coordinator (no Ray): a solve
that had sent nothing is submitted again to the restarted coordinator; one that had sent
events fails saying the coordinator was restarted; one whose coordinator does not come
back stops the embedded service, and the hint says the next build starts a new one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

import dockyard.cluster._daemon as daemon_module
from dockyard.cluster._daemon import Daemon
from dockyard.scheduler._errors import DockyardError, ServiceError, WorkerLost
from dockyard.scheduler._progress import VertexLog, event_to_wire

EVENT = event_to_wire(VertexLog("sha256:" + "1" * 64, 1, b"working\n"))


class Stream:
    def __init__(self, items: AsyncIterator[Any]) -> None:
        self._items = items

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._items

    def cancel(self) -> None:
        return None


class DyingCoordinator:
    """Its first ``deaths`` solves die after ``events`` events; ``pings`` fail while
    ``restarting`` (None: forever)."""

    def __init__(self, deaths: int, events: int = 0, restarting: int | None = 0) -> None:
        self.deaths = deaths
        self.events = events
        self.restarting = restarting
        self.solves = 0

    def stream(self, method: str, params: dict[str, Any]) -> Stream:
        self.solves += 1
        return Stream(self._solve(dies=self.solves <= self.deaths))

    async def _solve(self, dies: bool) -> AsyncIterator[dict[str, Any]]:
        for _ in range(self.events if dies else 1):
            yield {"event": EVENT}
        if dies:
            raise WorkerLost("the actor of coordinator.solve died or vanished")
        yield {"result": {"solve": self.solves}}

    async def call(self, method: str, *args: Any) -> Any:
        assert method == "ping"
        if self.restarting is None or self.restarting > 0:
            self.restarting = None if self.restarting is None else self.restarting - 1
            raise WorkerLost("the actor of coordinator.ping died or vanished")
        return {"pid": 1}


def solve(coordinator: DyingCoordinator) -> tuple[Any, list[Any], Daemon]:
    sent: list[Any] = []

    async def send(frame: Any) -> None:
        sent.append(frame)

    async def main() -> tuple[Any, Daemon]:
        daemon = Daemon(coordinator, 60.0, "unix:///nowhere")  # type: ignore[arg-type]
        try:
            return await daemon._solve_stream(1, {}, send), daemon
        except DockyardError as error:
            return error, daemon
    result, daemon = asyncio.run(main())
    return result, sent, daemon


def test_a_solve_whose_coordinator_died_before_it_sent_anything_is_submitted_again() -> None:
    coordinator = DyingCoordinator(deaths=1, restarting=2)
    result, sent, daemon = solve(coordinator)
    assert result == {"solve": 2} and coordinator.solves == 2
    assert len(sent) == 1 and not daemon.stopping.is_set()


def test_a_solve_whose_coordinator_died_after_its_events_fails_with_build_again() -> None:
    coordinator = DyingCoordinator(deaths=1, events=2)
    error, sent, daemon = solve(coordinator)
    assert isinstance(error, ServiceError) and coordinator.solves == 1 and len(sent) == 2
    assert (error.message, error.hint) == (
        "the coordinator of the dockyard service died while running this build; Ray "
        "restarted it", "build again")
    assert not daemon.stopping.is_set()


def test_a_coordinator_dying_twice_fails_the_solve_after_its_second_submission() -> None:
    coordinator = DyingCoordinator(deaths=2)
    error, _, _ = solve(coordinator)
    assert isinstance(error, ServiceError) and coordinator.solves == 2
    assert error.hint == "build again"


def test_a_coordinator_that_does_not_come_back_stops_the_service(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(daemon_module, "COORDINATOR_RESTART_TIMEOUT", 0.5)
    error, _, daemon = solve(DyingCoordinator(deaths=1, restarting=None))
    assert isinstance(error, ServiceError) and daemon.stopping.is_set()
    assert error.message.endswith("and it did not come back in 0s")
    assert error.hint == ("build again: this service is stopping, and the next build "
                          "starts a new one")
