"""``--label`` checked against Docker 20.10's BuildKit: the labels of the image it writes
for the same Dockerfile and flags are the labels dockyard's frontend gives (``build_graph``
then ``with_labels``, what the coordinator runs).  Each row: a Dockerfile (``FROM scratch``
only: the oracle has no registry), the ``--label`` values, the ``--target``."""

from __future__ import annotations

import json

import pytest
from _buildkit import PrivateDockerd

from dockyard.cluster._build_options import parse_labels
from dockyard.scheduler.dockerfile._frontend import build_graph, with_labels

ROWS = [
    ("over-label", "FROM scratch\nLABEL a=dockerfile c=3\nCOPY f /f\n",
     ["a=cli", "b=2", "novalue", "eq=x=y"], None),
    ("target-stage", "FROM scratch AS one\nLABEL s=one\nCOPY f /f\n"
                     "FROM one AS two\nLABEL s=two t=2\n", ["s=cli"], "one"),
    ("inherited", "FROM scratch AS base\nLABEL from=base\nCOPY f /f\n"
                  "FROM base\nLABEL own=1\n", ["from=cli"], None),
    ("no-label-flag", "FROM scratch\nLABEL only=dockerfile\nCOPY f /f\n", [], None),
]


@pytest.mark.oracle
@pytest.mark.parametrize(("dockerfile", "labels", "target"), [row[1:] for row in ROWS],
                         ids=[row[0] for row in ROWS])
def test_labels_as_buildkit_sets_them(buildkit: PrivateDockerd, dockerfile: str,
                                      labels: list[str], target: str | None) -> None:
    context = buildkit.new_context_dir()
    (context / "Dockerfile").write_text(dockerfile)
    (context / "f").write_text("f\n")
    iidfile = context.parent / "iid"
    argv = ["build", "--network=host", "--progress=plain", f"--iidfile={iidfile}",
            *[f"--label={label}" for label in labels],
            *([f"--target={target}"] if target else []), str(context)]
    done = buildkit.docker(*argv)
    assert done.returncode == 0, done.stderr
    inspected = buildkit.docker("image", "inspect", "--format", "{{json .Config.Labels}}",
                                iidfile.read_text().strip())
    theirs = json.loads(inspected.stdout) or {}
    graph = with_labels(build_graph(dockerfile.encode(), target=target).graph,
                        parse_labels(labels))
    assert dict(graph.results[0].config.labels) == theirs
