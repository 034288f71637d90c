"""``/readyz``'s decision (cluster/_probes.py ``readiness``) and ``--ready-arch``'s parsing,
as tables; the real endpoint answering them is tests/integration/cluster/test_probes.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import test_utils, web

from dockyard.cluster._cli import build_parser
from dockyard.cluster._endpoint import serve_settings
from dockyard.cluster._probes import HEALTH_PATH, READY_PATH, Probes, parse_ready_arches, readiness
from dockyard.scheduler._errors import UsageError, WorkerLost

AMD = {"name": "w1", "node_ip": "10.0.0.1", "arches": ["amd64", "arm64"], "native": ["amd64"]}
ARM = {"name": "w2", "node_ip": "10.0.0.2", "arches": ["arm64"], "native": ["arm64"]}

READINESS: list[tuple[list[dict[str, Any]], tuple[str, ...], int, dict[str, Any]]] = [
    ([], (), False, {"workers": {}, "required": "any", "missing": ["a worker of any arch"]}),
    ([AMD], (), True, {"workers": {"amd64": 1}, "required": "any"}),
    ([ARM], ("amd64",), False, {"workers": {"arm64": 1}, "required": ["amd64"],
                                "missing": ["amd64"]}),
    # an amd64 worker emulating arm64 is no arm64 worker
    ([AMD, AMD], ("amd64", "arm64"), False, {"workers": {"amd64": 2},
                                             "required": ["amd64", "arm64"],
                                             "missing": ["arm64"]}),
    ([AMD, ARM], ("amd64", "arm64"), True, {"workers": {"amd64": 1, "arm64": 1},
                                            "required": ["amd64", "arm64"]}),
]


@pytest.mark.parametrize(("workers", "required", "ready", "body"), READINESS)
def test_readiness(workers: list[dict[str, Any]], required: tuple[str, ...], ready: bool,
                   body: dict[str, Any]) -> None:
    answer = readiness(workers, required)
    assert answer == (ready, {"ready": ready, **body})
    assert "10.0.0" not in repr(answer) and "w1" not in repr(answer)


@pytest.mark.parametrize(("text", "arches"), [
    (None, ()), ("", ()), ("amd64", ("amd64",)), (" arm64 , amd64,arm64", ("arm64", "amd64")),
])
def test_ready_arches(text: str | None, arches: tuple[str, ...]) -> None:
    assert parse_ready_arches(text) == arches


def test_ready_arch_flag_and_its_refusal() -> None:
    parse = build_parser().parse_args
    assert serve_settings(parse(["serve", "--ready-arch", "amd64,arm64"])).ready_arches == (
        "amd64", "arm64")
    with pytest.raises(UsageError, match=r"invalid --ready-arch 's390x': use amd64, arm64"):
        serve_settings(parse(["serve", "--ready-arch", "amd64,s390x"]))


class _Coordinator:
    """A coordinator's ``workers`` call: these workers, or this failure."""

    def __init__(self, workers: list[dict[str, Any]] | Exception) -> None:
        self.answer = workers

    async def call(self, method: str) -> list[dict[str, Any]]:
        assert method == "workers"
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


async def _get(probes: Probes, path: str) -> tuple[int, dict[str, Any]]:
    app = web.Application()
    probes.routes(app)
    async with test_utils.TestClient(test_utils.TestServer(app)) as client:
        answer = await client.get(path)
        body: dict[str, Any] = await answer.json()
        return answer.status, body


def test_probe_answers_over_http() -> None:
    async def run() -> None:
        stopping = asyncio.Event()
        ready = Probes(_Coordinator([ARM]), ("arm64",), stopping)
        assert await _get(ready, HEALTH_PATH) == (200, {"status": "ok"})
        assert (await _get(ready, READY_PATH))[0] == 200
        lost = Probes(_Coordinator(WorkerLost("the coordinator's node died")), (), stopping)
        assert await _get(lost, READY_PATH) == (
            503, {"ready": False, "error": "the coordinator did not answer"})
        stopping.set()
        assert await _get(ready, HEALTH_PATH) == (503, {"status": "stopping"})
        assert await _get(ready, READY_PATH) == (503, {"ready": False, "error": "stopping"})

    asyncio.run(run())
