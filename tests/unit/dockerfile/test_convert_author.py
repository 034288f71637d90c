"""MAINTAINER -> the image config's ``author`` (and a history entry), as BuildKit's
dispatchMaintainer does; the author travels with the config like any other field: a stage
built on another stage, or on a resolved base image, inherits it; the last MAINTAINER wins.
"""

from __future__ import annotations

from typing import Any

import pytest

from dockyard.scheduler._graph import BuildGraph, ImageConfig
from dockyard.scheduler._platform import Platform
from dockyard.scheduler.dockerfile._convert._model import BaseImage
from dockyard.scheduler.dockerfile._frontend import build_graph

AMD64 = Platform("linux", "amd64")


def _resolver(ref: str, platform: Platform) -> BaseImage | None:
    if ref.startswith("docker.io/library/authored"):
        return BaseImage(digest="sha256:" + "b" * 64,
                         config=ImageConfig(env=(), author="Base <base@example.com>"))
    return None


# (id, Dockerfile, build_graph options, expected author, expected history of the result)
CASES: list[tuple[str, str, dict[str, Any], str, list[tuple[str, bool]]]] = [
    ("none", "FROM scratch\nLABEL a=b\n", {}, "", [("LABEL a=b", False)]),
    ("set", "FROM scratch\nMAINTAINER Jane <jane@example.com>\n", {},
     "Jane <jane@example.com>", [("MAINTAINER Jane <jane@example.com>", False)]),
    ("case-insensitive keyword", "FROM scratch\nmaintainer me\n", {}, "me",
     [("MAINTAINER me", False)]),
    ("last wins", "FROM scratch\nMAINTAINER first\nMAINTAINER second\n", {}, "second",
     [("MAINTAINER first", False), ("MAINTAINER second", False)]),
    ("not expanded", "FROM scratch\nARG WHO=x\nMAINTAINER $WHO\n", {}, "$WHO",
     [("ARG WHO=x", False), ("MAINTAINER $WHO", False)]),
    ("inherited from a stage", "FROM scratch AS base\nMAINTAINER me\nFROM base\nLABEL a=b\n",
     {}, "me", [("MAINTAINER me", False), ("LABEL a=b", False)]),
    ("not leaking into an unrelated stage",
     "FROM scratch AS one\nMAINTAINER me\nFROM scratch\nLABEL a=b\n", {}, "",
     [("LABEL a=b", False)]),
    ("from a resolved base image", "FROM authored\nLABEL a=b\n",
     {"image_resolver": _resolver}, "Base <base@example.com>", [("LABEL a=b", False)]),
    ("overriding the base image's", "FROM authored\nMAINTAINER me\n",
     {"image_resolver": _resolver}, "me", [("MAINTAINER me", False)]),
]


def _history(graph: BuildGraph) -> list[tuple[str, bool]]:
    return [(h.created_by, not h.empty_layer) for h in graph.results[-1].config.history]


@pytest.mark.parametrize(("dockerfile", "options", "author", "history"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_author(dockerfile: str, options: dict[str, Any], author: str,
                history: list[tuple[str, bool]]) -> None:
    result = build_graph(dockerfile.encode(), platforms=[AMD64], build_platform=AMD64,
                         **options)
    assert result.graph.results[-1].config.author == author
    assert _history(result.graph) == history


def test_author_survives_the_wire() -> None:
    graph = build_graph(b"FROM scratch\nMAINTAINER me\n", platforms=[AMD64],
                        build_platform=AMD64).graph
    assert BuildGraph.from_msgpack(graph.to_msgpack()).results[-1].config.author == "me"
