"""Entitlements (scheduler/_entitlements.py): ``--allow`` values, and the check that a RUN
using the host network or insecure mode was granted it, as BuildKit's solver checks."""

from __future__ import annotations

import pytest

from dockyard.scheduler._entitlements import check_entitlements, parse_entitlements
from dockyard.scheduler._errors import UsageError
from dockyard.scheduler._graph import BuildGraph
from dockyard.scheduler._platform import Platform
from dockyard.scheduler.dockerfile import build_graph

AMD64 = Platform("linux", "amd64")


def _graph(run: str) -> BuildGraph:
    return build_graph(f"FROM scratch\n{run}\n".encode(), platforms=[AMD64]).graph


@pytest.mark.parametrize(("values", "expected"), [
    ([], ()),
    (["network.host"], ("network.host",)),
    (["security.insecure, network.host", "network.host"], ("security.insecure",
                                                           "network.host")),
])
def test_parse(values: list[str], expected: tuple[str, ...]) -> None:
    assert parse_entitlements(values) == expected


@pytest.mark.parametrize("value", ["device", "network.none", "", "network.host,"])
def test_parse_refuses_unknown(value: str) -> None:
    with pytest.raises(UsageError, match="unknown entitlement"):
        parse_entitlements([value])


CHECKS = [
    ("RUN --network=host true", (), "network.host"),
    ("RUN --security=insecure true", ("network.host",), "security.insecure"),
    ("RUN --network=host --security=insecure true", ("security.insecure",), "network.host"),
    ("RUN --network=host true", ("network.host",), None),
    ("RUN --network=none --security=sandbox true", (), None),
    ("RUN true", (), None),
]


@pytest.mark.parametrize(("run", "allowed", "missing"), CHECKS)
def test_check(run: str, allowed: tuple[str, ...], missing: str | None) -> None:
    graph = _graph(run)
    if missing is None:
        check_entitlements(graph, allowed)
        return
    with pytest.raises(UsageError) as caught:
        check_entitlements(graph, allowed)
    assert caught.value.message == (f"Dockerfile:2:1 [1/1] {run}: "
                                    f"entitlement {missing} is not allowed")
    assert caught.value.hint == f"pass --allow {missing} to grant it to this build"
