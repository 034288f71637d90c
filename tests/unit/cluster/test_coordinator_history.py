"""The coordinator's build records with FAKE workers (no Ray, no runc): a record is on
disk before the build's last item reaches its client, names the worker of each executed
vertex, and a failed and a cancelled build are kept with their status."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from test_coordinator import FakeWorker, items_of, request

from dockyard.cluster._coordinator import Coordinator
from dockyard.cluster._history import HistoryStore, Retention, history_settings


def _coordinator(worker: FakeWorker, root: Path) -> Coordinator:
    return Coordinator(worker, history=history_settings(root, Retention()))


def test_the_record_is_kept_before_the_build_ends(tmp_path: Path) -> None:
    worker = FakeWorker()

    async def build() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        coordinator = _coordinator(worker, tmp_path)
        seen: list[dict[str, Any]] = []
        async for item in coordinator.solve(request()):
            if "result" in item:  # the client has its result: the record is on disk
                seen = HistoryStore(tmp_path / "history").records()
        return seen, await coordinator.history({"op": "ls"})
    [record], listed = asyncio.run(build())
    assert record["status"] == "completed" and listed[0]["id"] == record["id"]
    runs = [v for v in record["vertices"] if "RUN make" in v["name"]]
    assert len(runs) == 2 and all(v["node"] == "worker" and not v["cached"] for v in runs)


def test_a_failed_and_a_cancelled_build_are_kept(tmp_path: Path) -> None:
    async def builds() -> list[dict[str, Any]]:
        coordinator = _coordinator(FakeWorker(fail="RUN make install"), tmp_path)
        failed = await items_of(coordinator, request())
        assert "failure" in failed[-1]
        blocked = FakeWorker(block="RUN make")
        coordinator = _coordinator(blocked, tmp_path)
        task = asyncio.create_task(items_of(coordinator, request(no_cache=True)))
        await asyncio.wait_for(blocked.started.wait(), 5)
        running = await coordinator.history({"op": "ls"})
        assert running[0]["status"] == "running"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return HistoryStore(tmp_path / "history").records()
    cancelled, failed = asyncio.run(builds())
    assert cancelled["status"] == "canceled" and cancelled["completed"] is not None
    assert failed["status"] == "error" and "exited with code 2" in failed["error"]
    step = next(v for v in failed["vertices"] if v["name"].endswith("RUN make install"))
    assert step["error"] and step["node"] == "worker"


def test_a_coordinator_without_records_says_so() -> None:
    from dockyard.scheduler._errors import UsageError

    with pytest.raises(UsageError, match="keeps no build records"):
        asyncio.run(Coordinator(FakeWorker()).history({"op": "ls"}))
