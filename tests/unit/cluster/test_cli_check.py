"""``dockyard build --check`` with the real frontend: exit codes, what goes to stdout (the
findings as buildx prints them) and stderr (notices, errors), and ``build`` without
``--check`` refusing to pretend it built anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from dockyard.cluster._cli import main

FULL_OUTPUT = """\
Check complete, 2 warnings have been found!

WARNING: FromAsCasing - https://docs.docker.com/go/dockerfile/rule/from-as-casing/
'as' and 'FROM' keywords' casing do not match
Dockerfile:1
--------------------
   1 | >>> FROM alpine as base
   2 |     RUN a \\
   3 |         b
--------------------

WARNING: JSONArgsRecommended - https://docs.docker.com/go/dockerfile/rule/json-args-recommended/
JSON arguments recommended for CMD to prevent unintended behavior related to OS signals
Dockerfile:4
--------------------
   2 |     RUN a \\
   3 |         b
   4 | >>> CMD echo hi
   5 |     COPY <<EOF /x
   6 |     hi
--------------------
"""

MULTI_LINE = """\
WARNING: LegacyKeyValueFormat - https://docs.docker.com/go/dockerfile/rule/legacy-key-value-format/
"ENV key=value" should be used instead of legacy "ENV key value" format
Dockerfile:2
--------------------
   1 |     FROM alpine
   2 | >>> ENV A \\
   3 | >>>     b
   4 |     {blank}
--------------------
""".format(blank="")

# (id, Dockerfile, extra arguments, exit status, text in stdout, text in stderr)
CASES: list[tuple[str, str, list[str], int, str, str]] = [
    ("clean", "FROM alpine\nCMD [\"sh\"]\n", [], 0, "Check complete, no warnings found.\n",
     ""),
    ("warnings-exit-0", "FROM alpine as base\nRUN a \\\n    b\nCMD echo hi\n"
     "COPY <<EOF /x\nhi\nEOF\nENTRYPOINT [\"a\"]\n", [], 0, FULL_OUTPUT, ""),
    ("range-of-a-continued-instruction", "FROM alpine\nENV A \\\n    b\n", [], 0, MULTI_LINE,
     ""),
    ("error-true-exit-1", "# check=error=true\nFROM alpine\nMAINTAINER me\n", [], 1,
     "WARNING: MaintainerDeprecated",
     "error: Dockerfile:3:1: lint violation found for rules: MaintainerDeprecated\n"
     "  3 | MAINTAINER me\n    | ^\n"),
    ("error-true-but-clean", "# check=error=true\nFROM alpine\n", [], 0,
     "Check complete, no warnings found.\n", ""),
    ("skip-from-build-arg", "FROM alpine\nMAINTAINER me\n",
     ["--build-arg", "BUILDKIT_DOCKERFILE_CHECK=skip=all"], 0,
     "Check complete, no warnings found.\n", ""),
    ("dockerfile-error-exit-1", "FROM alpine\nRUNN x\n", [], 1, "",
     "error: Dockerfile:2:1: unknown instruction: RUNN (did you mean RUN?)\n"
     "  2 | RUNN x\n    | ^\n"),
    ("bad-check-build-arg", "FROM alpine\n", ["--build-arg", "BUILDKIT_DOCKERFILE_CHECK=x"],
     1, "", "error: failed to parse build-arg:BUILDKIT_DOCKERFILE_CHECK: invalid check "
     'option "x"\n'),
    ("unconsumed-build-arg-notice", "FROM alpine\n", ["--build-arg", "NOPE=1"], 0,
     "Check complete, no warnings found.\n",
     "WARN: One or more build-args [NOPE] were not consumed\n"),
    ("target-limits-dispatch-rules", "FROM alpine AS a\nCMD x\nFROM alpine AS b\n",
     ["--target", "b"], 0, "Check complete, no warnings found.\n", ""),
    ("no-target-lints-every-stage", "FROM alpine AS a\nCMD x\nFROM alpine AS b\n", [], 0,
     "WARNING: JSONArgsRecommended", ""),
    ("file-option", "FROM alpine\n", ["-f", "other.Dockerfile"], 0,
     "other.Dockerfile:2\n", ""),
    ("bad-flag-refused-with-check-too", "FROM alpine\n", ["--ulimit", "nofile=abc"], 1, "",
     "error: invalid --ulimit 'nofile=abc': limits are integers\n"),
]


@pytest.mark.parametrize(("dockerfile", "extra", "status", "stdout", "stderr"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_build_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                     capsys: pytest.CaptureFixture[str], dockerfile: str, extra: list[str],
                     status: int, stdout: str, stderr: str) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "Dockerfile").write_text(dockerfile)
    (tmp_path / "other.Dockerfile").write_text("FROM alpine\nMAINTAINER me\n")
    code = main(["build", "--check", *extra, "."])
    out, err = capsys.readouterr()
    assert code == status
    assert stdout in out if stdout else out == ""
    assert err == stderr if stderr.startswith("error") or not stderr else stderr in err


def test_build_with_a_bad_flag_starts_no_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Flags are checked before anything starts: a bad one is a usage error, and the local
    service (whose state would live under DOCKYARD_ROOT) is never started."""
    root = tmp_path / "root"
    monkeypatch.setenv("DOCKYARD_ROOT", str(root))
    (tmp_path / "Dockerfile").write_text("FROM alpine\n")
    code = main(["build", "--progress=bogus", str(tmp_path)])
    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    assert err == ("error: invalid --progress 'bogus': unknown progress mode\n"
                   "hint: use one of auto, plain, tty, rawjson, quiet\n")
    assert not root.exists()


def test_build_check_reads_a_lowercase_dockerfile(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """``dockyard build --check DIR`` finds ``dockerfile`` when ``Dockerfile`` is missing,
    and names it in its findings (BuildKit's testDockerfileLowercase)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dockerfile").write_text("FROM alpine\nMAINTAINER me\n")
    code = main(["build", "--check", "."])
    out, _ = capsys.readouterr()
    assert code == 0
    assert "dockerfile:2" in out
