"""The ``dockyard`` command line: exit codes and messages, and what ``debug graph`` hands
to the frontend.  The frontend is replaced by a recording fake (it is tested on its own)."""

from __future__ import annotations

import io
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dockyard.cluster._cli import main
from dockyard.scheduler._errors import DockerfileError
from dockyard.scheduler._graph import BuildGraph, SourceOp, Vertex
from dockyard.scheduler._platform import Platform, default_platform
from dockyard.scheduler.dockerfile._ast import CheckWarning


@dataclass
class _Result:
    graph: BuildGraph
    warnings: tuple[CheckWarning, ...] = ()


class _FakeFrontend:
    """Records each ``build_graph`` call; returns a one-vertex graph, or raises ``error``."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.error: Exception | None = None
        self.warnings: tuple[CheckWarning, ...] = ()

    def build_graph(self, data: bytes, **kwargs: Any) -> _Result:
        self.calls.append({"data": data, **kwargs})
        if self.error is not None:
            raise self.error
        graph = BuildGraph()
        graph.add(Vertex(SourceOp("docker-image://docker.io/library/alpine:latest")))
        return _Result(graph, self.warnings)


@pytest.fixture
def frontend(monkeypatch: pytest.MonkeyPatch) -> _FakeFrontend:
    fake = _FakeFrontend()
    module = types.ModuleType("dockyard.scheduler.dockerfile._frontend")
    module.build_graph = fake.build_graph  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "dockyard.scheduler.dockerfile._frontend", module)
    return fake


@pytest.fixture
def context(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "Dockerfile").write_text("FROM alpine\n")
    (tmp_path / "other.Dockerfile").write_text("FROM busybox\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FROM_ENV", "env-value")
    monkeypatch.delenv("NOT_IN_ENV", raising=False)
    return tmp_path


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# argv -> exit code, exact stderr (cwd is a context holding a Dockerfile)
_CONTEXT_HINT = "hint: give a directory, '-' (stdin), a git URL or an http(s) URL of an archive\n"
USAGE = [
    ([], 1, "error: the following arguments are required: COMMAND\n"
            "hint: see 'dockyard --help'\n"),
    (["frobnicate"], 1, "error: argument COMMAND: invalid choice: 'frobnicate' (choose from "
                        "'debug', 'build', 'stop', 'serve', 'du', 'prune', 'node', 'ls', "
                        "'history', 'metrics')\n"
                        "hint: see 'dockyard --help'\n"),
    (["debug"], 1, "error: the following arguments are required: COMMAND\n"
                   "hint: see 'dockyard debug --help'\n"),
    (["debug", "graph"], 1, "error: the following arguments are required: CONTEXT\n"
                            "hint: see 'dockyard debug graph --help'\n"),
    # flags read as buildx (pflag) reads them: an unknown flag is named alone and exits
    # 125 (Docker's status for a flag error), a long flag is never abbreviated
    (["debug", "graph", "--bogus", "."], 125, "error: unknown flag: --bogus\n"
                                              "hint: see 'dockyard debug graph --help'\n"),
    (["build", "--bogus", "value", "."], 125, "error: unknown flag: --bogus\n"
                                              "hint: see 'dockyard build --help'\n"),
    (["build", "--bogus=value", "."], 125, "error: unknown flag: --bogus\n"
                                           "hint: see 'dockyard build --help'\n"),
    (["build", "--no-cach", "."], 125, "error: unknown flag: --no-cach\n"
                                       "hint: see 'dockyard build --help'\n"),
    (["build", "--meta", "m.json", "."], 125, "error: unknown flag: --meta\n"
                                              "hint: see 'dockyard build --help'\n"),
    (["build", "-Z", "."], 125, "error: unknown shorthand flag: 'Z' in -Z\n"
                                "hint: see 'dockyard build --help'\n"),
    (["--bogus", "build", "."], 125, "error: unknown flag: --bogus\n"
                                     "hint: see 'dockyard --help'\n"),
    (["build", ".", "--tag"], 125, "error: argument -t/--tag: expected one argument\n"
                                   "hint: see 'dockyard build --help'\n"),
    (["serve", "--port", "http"], 125, "error: argument --port: invalid int value: 'http'\n"
                                       "hint: see 'dockyard serve --help'\n"),
    (["prune", "--keep", "1GB"], 125, "error: unknown flag: --keep\n"
                                      "hint: see 'dockyard prune --help'\n"),
    (["node", "start", "--head", "--por", "1"], 125, "error: unknown flag: --por\n"
                                     "hint: see 'dockyard node start --help'\n"),
    # a command line without a flag error exits 1, as docker's and buildx's do
    (["build", ".", "extra"], 1, "error: unrecognized arguments: extra\n"
                                 "hint: see 'dockyard build --help'\n"),
    (["node", "start", "--head", "--address", "h:1"], 1,
     "error: argument --address: not allowed with argument --head\n"
     "hint: see 'dockyard node start --help'\n"),
    (["ls", "--format", "xml"], 1, "error: argument --format: invalid choice: 'xml' (choose "
                                   "from 'table', 'json')\nhint: see 'dockyard ls --help'\n"),
    (["debug", "graph", "missing-dir"], 1,
     "error: build context 'missing-dir' is not a directory\n" + _CONTEXT_HINT),
    (["debug", "graph", "Dockerfile"], 1,
     "error: build context 'Dockerfile' is not a directory\n" + _CONTEXT_HINT),
    (["debug", "graph", "-f", "nope", "."], 1,
     "error: cannot read Dockerfile 'nope': No such file or directory\n"),
    (["debug", "graph", "--platform", "linux/", "."], 1,
     "error: invalid platform 'linux/': component '' must match [A-Za-z0-9_.-]+\n"
     "hint: use os/arch[/variant], e.g. linux/amd64 or linux/arm64\n"),
    (["debug", "graph", "--platform", "plan10", "."], 1,
     "error: invalid platform 'plan10': unknown operating system or architecture\n"
     "hint: use os/arch[/variant], e.g. linux/amd64 or linux/arm64\n"),
    (["debug", "graph", "--platform", "linux/amd64,", "."], 1,
     "error: invalid platform list 'linux/amd64,': empty entry\n"),
    (["debug", "graph", "--build-arg", "=v", "."], 1,
     "error: invalid --build-arg '=v': the name is empty\n"),
]


@pytest.mark.parametrize(("argv", "code", "stderr"), USAGE)
def test_usage_errors(argv: list[str], code: int, stderr: str, context: Path,
                      frontend: _FakeFrontend, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(argv, capsys) == (code, "", stderr)
    assert frontend.calls == []


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(["--version"], capsys)
    assert (code, err) == (0, "")
    assert out.startswith("dockyard ")


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(["debug", "graph", "--help"], capsys)
    assert code == 0
    assert "usage: dockyard debug graph" in out


AMD64, ARM64 = Platform("linux", "amd64"), Platform("linux", "arm64")

# argv -> the keyword arguments build_graph must receive (only those listed are checked)
CALLS = [
    (["debug", "graph", "."],
     {"data": b"FROM alpine\n", "filename": "Dockerfile", "target": None,
      "platforms": [default_platform()], "build_args": {}, "ignore_patterns": []}),
    (["debug", "graph", "-f", "other.Dockerfile", "--target", "build", "."],
     {"data": b"FROM busybox\n", "filename": "other.Dockerfile", "target": "build"}),
    (["debug", "graph", "--platform", "linux/amd64,linux/aarch64", "."],
     {"platforms": [AMD64, ARM64]}),
    (["debug", "graph", "--platform", "linux/arm64", "--platform", "linux/amd64,linux/arm64",
      "."], {"platforms": [ARM64, AMD64]}),
    (["debug", "graph", "--build-arg", "A=1", "--build-arg", "B=", "--build-arg", "C=x=y",
      "--build-arg", "FROM_ENV", "--build-arg", "NOT_IN_ENV", "--build-arg", "A=2", "."],
     {"build_args": {"A": "2", "B": "", "C": "x=y", "FROM_ENV": "env-value"}}),
]


@pytest.mark.parametrize(("argv", "expected"), CALLS)
def test_debug_graph_calls_the_frontend(argv: list[str], expected: dict[str, Any],
                                        context: Path, frontend: _FakeFrontend,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(argv, capsys)
    assert (code, err) == (0, "")
    assert out.startswith('{"digest": "sha256:') and out.count("\n") == 1
    [call] = frontend.calls
    assert {key: call[key] for key in expected} == expected


def test_debug_graph_reads_stdin_and_ignore_file(context: Path, frontend: _FakeFrontend,
                                                 capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    (context / ".dockerignore").write_text("*.md\n!README.md\n")
    stdin = io.TextIOWrapper(io.BytesIO(b"FROM scratch\n"))
    monkeypatch.setattr(sys, "stdin", stdin)
    assert _run(["debug", "graph", "-f", "-", str(context)], capsys)[0] == 0
    [call] = frontend.calls
    assert (call["data"], call["filename"]) == (b"FROM scratch\n", "Dockerfile")
    assert call["ignore_patterns"] == ["*.md", "!README.md"]


def test_warnings_go_to_stderr(context: Path, frontend: _FakeFrontend,
                               capsys: pytest.CaptureFixture[str]) -> None:
    frontend.warnings = (CheckWarning("JSONArgsRecommended", "JSON arguments recommended",
                                      "Dockerfile", 3),)
    code, out, err = _run(["debug", "graph", "."], capsys)
    assert code == 0 and out
    assert err == "WARN: JSONArgsRecommended - JSON arguments recommended (Dockerfile:3)\n"


ERRORS = [
    (DockerfileError("unknown instruction: RUNN", line=2, source_line="RUNN x"), 1,
     "error: Dockerfile:2:1: unknown instruction: RUNN\n  2 | RUNN x\n    | ^\n"),
    (KeyboardInterrupt(), 130, "interrupted\n"),
]


@pytest.mark.parametrize(("error", "code", "stderr"), ERRORS)
def test_errors_from_the_frontend(error: Exception, code: int, stderr: str, context: Path,
                                  frontend: _FakeFrontend,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    frontend.error = error
    assert _run(["debug", "graph", "."], capsys) == (code, "", stderr)


def test_python_dash_m_runs_the_cli(tmp_path: Path) -> None:
    import subprocess

    missing = str(tmp_path / "missing")
    done = subprocess.run([sys.executable, "-m", "dockyard", "debug", "graph", missing],
                          capture_output=True, text=True, cwd=Path(__file__).parents[3],
                          timeout=60)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == f"error: build context {missing!r} is not a directory\n" + _CONTEXT_HINT
