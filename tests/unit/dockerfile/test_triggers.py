"""ONBUILD triggers (dockyard.scheduler.dockerfile._convert._triggers), heredocs and positions.

Semantics from BuildKit: instructions/parse.go parseOnBuild stores the trigger as the text
after ONBUILD with each heredoc appended as "\\n" + body + delimiter; dockerfile2llb
convert.go initOnBuildTriggers re-parses each stored trigger (one instruction or "onbuild
trigger should be a single expression") and resets its location to the FROM that runs it.
BuildKit's own integration test testOnBuildHeredoc builds FROM an image whose trigger is
``ONBUILD RUN <<EOF`` and expects the body to run.
"""

from __future__ import annotations

from typing import Any

import pytest

from dockyard.scheduler._errors import DockerfileError
from dockyard.scheduler._graph import ExecOp, FileOp, ImageConfig, Mkfile
from dockyard.scheduler._platform import Platform
from dockyard.scheduler.dockerfile._convert._model import BaseImage
from dockyard.scheduler.dockerfile._frontend import FrontendResult, build_graph

AMD64 = Platform("linux", "amd64")

# Image name -> the OnBuild list of its config, for FROM <name> through the resolver.
IMAGE_TRIGGERS: dict[str, tuple[str, ...]] = {
    "hd-run": ("RUN <<EOF\necho from image\nEOF",),
    "hd-copy": ("COPY <<EOT /etc/motd\nhello\nEOT",),
    "unterminated": ("RUN <<EOF",),
    "two": ("RUN a\nRUN b",),
    "empty": ("",),
    "comment-only": ("# nothing",),
    "unknown": ("FOO x",),
    "bad-flag": ("RUN --nope x",),
    "workdir-var": ("WORKDIR $nope",),
}


def _resolver(ref: str, platform: Platform) -> BaseImage | None:
    name = ref.removeprefix("docker.io/library/").split(":")[0]
    if name not in IMAGE_TRIGGERS:
        return None
    return BaseImage(config=ImageConfig(env=("PATH=/bin",), on_build=IMAGE_TRIGGERS[name]))


def _build(dockerfile: str) -> FrontendResult:
    return build_graph(dockerfile.encode(), platforms=[AMD64], build_platform=AMD64,
                       image_resolver=_resolver)


def _steps(result: FrontendResult) -> list[tuple[str, Any]]:
    """Each exec's name and shell script, each inline file's name and data, in order."""
    steps: list[tuple[str, Any]] = []
    for vertex in result.graph.vertices.values():
        if isinstance(vertex.op, ExecOp):
            steps.append((vertex.name, vertex.op.args[-1]))
        elif isinstance(vertex.op, FileOp):
            data = [a.data for a in vertex.op.actions if isinstance(a, Mkfile)]
            if data:
                steps.append((vertex.name, data))
    return steps


# (id, Dockerfile, the steps of the graph)
HEREDOC_TRIGGERS: list[tuple[str, str, list[tuple[str, Any]]]] = [
    ("run", "FROM busybox AS base\nONBUILD RUN <<EOF\necho \"hello world\" >> /dest\nEOF\n"
     "FROM base\n",
     [("[stage-1 1/1] ONBUILD RUN <<EOF (echo \"hello world\" >> /dest)",
       "echo \"hello world\" >> /dest\n")]),
    ("run-chomp", "FROM busybox AS base\nONBUILD RUN <<-EOF\n\techo a\n\t\techo b\n\tEOF\n"
     "FROM base\n",
     [("[stage-1 1/1] ONBUILD RUN <<-EOF (echo a...)", "echo a\necho b\n")]),
    ("run-quoted", "FROM busybox AS base\nONBUILD RUN <<'EOF'\necho $HOME\nEOF\nFROM base\n",
     [("[stage-1 1/1] ONBUILD RUN <<'EOF' (echo $HOME)", "echo $HOME\n")]),
    ("run-two-docs", "FROM busybox AS base\nONBUILD RUN cat <<A <<B\na1\nA\nb1\nB\n"
     "FROM base\n",
     [("[stage-1 1/1] ONBUILD RUN cat <<A <<B", "cat <<A <<B\na1\nA\nb1\nB")]),
    ("run-then-own", "FROM busybox AS base\nONBUILD RUN <<EOF\nfirst\nEOF\n"
     "ONBUILD RUN second\nFROM base\nRUN third\n",
     [("[stage-1 1/3] ONBUILD RUN <<EOF (first)", "first\n"),
      ("[stage-1 2/3] ONBUILD RUN second", "second"),
      ("[stage-1 3/3] RUN third", "third")]),
    ("copy", "FROM busybox AS base\nONBUILD COPY <<EOT /etc/motd\nhello\nEOT\nFROM base\n",
     [("[internal] preparing inline document", ["hello\n"])]),
    ("body-looks-like-instructions", "FROM busybox AS base\nONBUILD RUN <<EOF\nFROM x\n"
     "# c\n\nRUN y \\\nEOF\nFROM base\n",
     [("[stage-1 1/1] ONBUILD RUN <<EOF (FROM x...)", "FROM x\n# c\n\nRUN y \\\n")]),
    ("from-image", "FROM hd-run\n",
     [("[2/2] ONBUILD RUN <<EOF (echo from image)", "echo from image\n")]),
    ("copy-from-image", "FROM hd-copy\n",
     [("[internal] preparing inline document", ["hello\n"])]),
]


@pytest.mark.parametrize(("dockerfile", "steps"), [c[1:] for c in HEREDOC_TRIGGERS],
                         ids=[c[0] for c in HEREDOC_TRIGGERS])
def test_heredoc_triggers_keep_their_body(dockerfile: str, steps: list[tuple[str, Any]]
                                          ) -> None:
    got = _steps(_build(dockerfile))
    assert got[:len(steps)] == steps
    assert len(got) in (len(steps), len(steps) + 1)  # + the stage's own last RUN, if any


@pytest.mark.parametrize("dockerfile", [c[1] for c in HEREDOC_TRIGGERS[:7]],
                         ids=[c[0] for c in HEREDOC_TRIGGERS[:7]])
def test_trigger_text_round_trips_through_an_image_config(dockerfile: str) -> None:
    """Building FROM the stage and FROM an image whose OnBuild holds the stage's stored
    triggers runs the same scripts: the stored text carries the heredoc bodies."""
    base_stage = dockerfile.split("FROM base\n")[0]
    stored = _build(base_stage).graph.results[-1].config.on_build
    assert stored and all("\n" in text for text in stored if "<<" in text)
    IMAGE_TRIGGERS["round-trip"] = stored
    try:
        via_image = _steps(_build("FROM round-trip\n" + dockerfile.split("FROM base\n")[1]))
    finally:
        del IMAGE_TRIGGERS["round-trip"]
    via_stage = _steps(_build(dockerfile))
    assert [script for _, script in via_image] == [script for _, script in via_stage]


HINT = "the error is in the base's ONBUILD trigger "

# (id, Dockerfile, location, message, hint): every trigger error points at the FROM line
TRIGGER_ERRORS: list[tuple[str, str, str, str, str | None]] = [
    ("unterminated", "FROM busybox\nRUN a\nFROM unterminated\n", "Dockerfile:3:1",
     "unterminated heredoc", HINT + '"RUN <<EOF"'),
    ("two-instructions", "FROM busybox\nFROM two\n", "Dockerfile:2:1",
     "onbuild trigger should be a single expression", HINT + '"RUN a"'),
    ("empty", "FROM empty\n", "Dockerfile:1:1", "file with no instructions", HINT + '""'),
    ("comment-only", "FROM comment-only\n", "Dockerfile:1:1", "file with no instructions",
     HINT + '"# nothing"'),
    ("unknown", "FROM busybox\n\n  from unknown AS x\n", "Dockerfile:3:3",
     "unknown instruction: FOO (did you mean FROM?)", HINT + '"FOO x"'),
    ("bad-flag", "FROM bad-flag\n", "Dockerfile:1:1", "unknown flag: --nope",
     HINT + '"RUN --nope x"'),
    # raised later, by the converter, about a trigger command: still at the FROM
    ("convert-expansion", "FROM busybox AS base\nRUN a\nONBUILD WORKDIR ${x:?boom}\n"
     "FROM base\n", "Dockerfile:4:1", 'failed to process "${x:?boom}": x: boom', None),
    ("convert-heredoc-chmod", "FROM busybox AS base\nRUN a\nONBUILD COPY --chmod=999 <<EOF /x\n"
     "hi\nEOF\nFROM base\n", "Dockerfile:6:1",
     "invalid chmod parameter: '999'. it should be octal string and between 0 and 07777",
     HINT + '"COPY --chmod=999 <<EOF /x"'),
    ("convert-cycle", "FROM busybox AS base\nRUN a\nONBUILD COPY --from=second /a /b\n"
     "FROM base AS second\n", "Dockerfile:4:1",
     "circular dependency detected on stage: second", None),
]


@pytest.mark.parametrize(("dockerfile", "location", "message", "hint"),
                         [c[1:] for c in TRIGGER_ERRORS], ids=[c[0] for c in TRIGGER_ERRORS])
def test_trigger_errors_point_at_the_from(dockerfile: str, location: str, message: str,
                                          hint: str | None) -> None:
    with pytest.raises(DockerfileError) as caught:
        _build(dockerfile)
    error = caught.value
    assert (error.location, error.message, error.hint) == (location, message, hint)
    source = dockerfile.split("\n")[error.line - 1]
    assert error.source_line == source and "FROM" in source.upper()


# (id, Dockerfile, warnings as (rule, line)): findings about triggers sit on the FROM
TRIGGER_WARNINGS: list[tuple[str, str, list[tuple[str, int]]]] = [
    ("undefined-var", "FROM busybox AS base\nRUN a\nRUN b\nONBUILD WORKDIR /$nope\n"
     "FROM base\n", [("UndefinedVar", 5)]),
    ("relative-workdir", "FROM busybox AS base\nRUN a\nONBUILD WORKDIR rel\n\nFROM base\n",
     [("WorkdirRelativePath", 5)]),
    ("from-image", "FROM busybox\nRUN a\nFROM workdir-var\n",
     [("UndefinedVar", 3), ("WorkdirRelativePath", 3)]),
]


@pytest.mark.parametrize(("dockerfile", "warnings"), [c[1:] for c in TRIGGER_WARNINGS],
                         ids=[c[0] for c in TRIGGER_WARNINGS])
def test_trigger_findings_point_at_the_from(dockerfile: str,
                                            warnings: list[tuple[str, int]]) -> None:
    result = _build(dockerfile)
    assert sorted((w.rule, w.line) for w in result.warnings) == warnings
