"""What ``dockyard build`` prints while it builds, as a user reads it: the real CLI against
the embedded service (one per module), and for ``--progress=plain`` the same Dockerfile
built by BuildKit (the oracle's private Docker 20.10 daemon) compared line shape by line
shape: the same vertices in the same order, each with the same lines, ids, sizes, digests
and timings aside.

Where 20.10's printer differs from current buildx, the comparison follows buildx, and
the differences are listed in ``_buildkit_20_10_as_buildx``: 20.10 prints a vertex's
digest under its name and calls both client exporters ``exporting to client``.  A FROM
ends ``DONE`` or ``CACHED`` in BuildKit as its cache state has it: either is a FROM that
needed nothing fetched.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.solve_status import read_stream

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "oracle"))
from _buildkit import DOCKER, DOCKERD, PrivateDockerd, make_oracle_root  # noqa: E402

PROJECT = Path(__file__).resolve().parents[3]


@dataclass
class Cli:
    """A root and a work directory, and how to run the CLI there."""

    root: Path
    work: Path
    busybox: str

    def build(self, context: Path, *argv: str, env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess[str]:
        environ = {**os.environ, "DOCKYARD_ROOT": str(self.root), "PYTHONPATH": str(PROJECT)}
        environ.pop("BUILDKIT_PROGRESS", None)
        return subprocess.run([sys.executable, "-m", "dockyard", "build", *argv, str(context)],
                              cwd=self.work, env=environ | (env or {}), capture_output=True,
                              text=True, timeout=180, check=False)

    def stop(self) -> None:
        environ = {**os.environ, "DOCKYARD_ROOT": str(self.root), "PYTHONPATH": str(PROJECT)}
        subprocess.run([sys.executable, "-m", "dockyard", "stop"], env=environ,
                       capture_output=True, timeout=90, check=False)


@pytest.fixture(scope="module")
def cli(busybox_image: Any) -> Iterator[Cli]:
    found = Cli(Path(tempfile.mkdtemp(prefix="dyprog-", dir="/tmp")),
                Path(tempfile.mkdtemp(prefix="dyprog-work-")), busybox_image.reference)
    try:
        yield found
    finally:
        found.stop()
        shutil.rmtree(found.root, ignore_errors=True)
        shutil.rmtree(found.work, ignore_errors=True)


@pytest.fixture(scope="module")
def oracle() -> Iterator[PrivateDockerd]:
    """The oracle's dockerd with a busybox image; skipped as the oracle tests are when
    dockerd is absent (a failure under CI=true)."""
    for path in (DOCKERD, DOCKER):
        if not path.exists():
            if os.environ.get("CI") == "true":
                pytest.fail(f"{path} is missing under CI (make setup installs docker.io)")
            pytest.skip(f"{path} is not installed (make setup installs docker.io)")
    daemon = PrivateDockerd(make_oracle_root())
    daemon.start()
    try:
        daemon.tag_busybox("busybox:latest")
        yield daemon
    finally:
        daemon.stop()


def _context(parent: Path, name: str, dockerfile: str, image: str) -> Path:
    context = parent / name
    context.mkdir(parents=True)
    (context / "Dockerfile").write_text(dockerfile.replace("IMAGE", image))
    (context / "file.txt").write_text(f"{name}: from the context\n")
    (context / ".dockerignore").write_text("*.tmp\n")
    return context


# --- line shapes -----------------------------------------------------------------------

_LINE_SHAPES = [  # (pattern, replacement), in order, on each line after "#N "
    (re.compile(r"sha256:[0-9a-f]{64}"), "sha256:D"),
    (re.compile(r"^\d+\.\d+ "), "LOG "),  # an output line's offset
    (re.compile(r"^(DONE|CACHED) [\d.]+s$"), r"\1"),
    (re.compile(r"^ERROR: .*"), "ERROR"),  # the error's text: compared by the tests
    (re.compile(r"\b\d+(\.\d+)?[kMGT]?B\b"), "N"),  # a size
    (re.compile(r" [\d.]+s done$"), " done"),  # a status's time
    (re.compile(r"(FROM|load metadata for|naming to) \S+"), r"\1 IMAGE"),
]


def _shape(text: str) -> str:
    for pattern, replacement in _LINE_SHAPES:
        text = pattern.sub(replacement, text)
    return text


Shape = list[tuple[str, list[str]]]


def line_shapes(progress: str) -> Shape:
    """Each vertex of plain output, in the order it is first shown (BuildKit numbers a
    vertex when it first hears of it, which may be before it shows it): its name and its
    lines (its blocks joined, ``#N ...`` left out), each as ``_shape`` has it."""
    vertices: dict[int, tuple[str, list[str]]] = {}
    for block in progress.split("\n\n"):
        lines = [line for line in block.splitlines() if re.match(r"#\d+ ", line)]
        if not lines:
            continue
        number = int(lines[0][1:].split(" ", 1)[0])
        name, body = vertices.setdefault(number, (_shape(lines[0].split(" ", 1)[1]), []))
        body.extend(_shape(line.split(" ", 1)[1]) for line in lines[1:]
                    if line.split(" ", 1)[1] != "...")
    shapes = [(name, _from_ended(name, _finished(body))) for name, body in vertices.values()]
    return _context_after_from(shapes)


def _context_after_from(shapes: Shape) -> Shape:
    """The build context's vertex right after the first FROM: both load at once, and a
    printer shows first whichever reports first."""
    context = [shape for shape in shapes if shape[0] == "[internal] load build context"]
    rest = [shape for shape in shapes if shape[0] != "[internal] load build context"]
    at = next((i + 1 for i, (name, _) in enumerate(rest) if " FROM IMAGE" in name), len(rest))
    return rest[:at] + context + rest[at:]


def _finished(body: list[str]) -> list[str]:
    """``body`` without a sub-step's interim lines (``sending tarball`` before ``sending
    tarball done``): a printer shows one when it switches blocks mid-step, as timing has
    it."""
    def step(line: str) -> str:
        return re.sub(r"( N)+$", "", line.removesuffix(" done"))
    return [line for at, line in enumerate(body)
            if line.endswith(" done") or not any(
                later.endswith(" done") and step(later) == step(line) for later in body[at:])]


def _from_ended(name: str, body: list[str]) -> list[str]:
    """A FROM's DONE or CACHED as one (see the module doc), once: BuildKit may report a
    base image's vertex twice, done then cached, when two of the build's steps load it."""
    if " FROM IMAGE" not in name:
        return body
    ended = ["DONE or CACHED" if line in ("DONE", "CACHED") else line for line in body]
    return [line for at, line in enumerate(ended) if at == 0 or line != ended[at - 1]]


def _buildkit_20_10_as_buildx(progress: str) -> Shape:
    """20.10's plain output as current buildx prints it: no digest line under a vertex's
    name; ``exporting to client`` named by what it sends."""
    fixed = []
    without_digests = re.sub(r"(?m)^#\d+ sha256:[0-9a-f]{64}\n", "", progress)
    for name, body in line_shapes(without_digests):
        if name == "exporting to client":
            name += " tarball" if "sending tarball done" in body else " directory"
        fixed.append((name, body))
    return fixed


def _oracle_build(oracle: PrivateDockerd, context: Path, *argv: str
                  ) -> subprocess.CompletedProcess[str]:
    return oracle.docker("build", "--network=host", "--progress=plain", *argv, str(context))


SMALL = """\
FROM IMAGE
COPY file.txt /file.txt
RUN cat /file.txt
"""


@pytest.mark.oracle
@pytest.mark.parametrize(("case", "dockerfile", "output"), [
    ("tarball", SMALL, "type=tar,dest={out}"),
    ("directory", SMALL + "ENV MARK=directory\n", "type=local,dest={out}"),
    ("image", SMALL + "ENV MARK=image\n", "type=image,name=example/progress:1"),
    ("failing", "FROM IMAGE\nRUN echo last-words && exit 3\n", "type=tar,dest={out}"),
])
def test_plain_reads_as_buildkits(cli: Cli, oracle: PrivateDockerd, tmp_path: Path, case: str,
                                  dockerfile: str, output: str) -> None:
    ours = cli.build(_context(tmp_path / "ours", case, dockerfile, cli.busybox),
                     "--progress=plain", "-o", output.format(out=tmp_path / "ours.tar"))
    theirs_argv = (["-t", "example/progress:1"] if "image" in output else
                   ["-o", output.format(out=tmp_path / "theirs.tar")])
    theirs = _oracle_build(oracle, _context(tmp_path / "theirs", case, dockerfile, "busybox"),
                           *theirs_argv)
    assert ours.returncode == theirs.returncode, (ours.stderr, theirs.stderr)
    assert line_shapes(ours.stderr) == _buildkit_20_10_as_buildx(theirs.stderr), (
        f"ours:\n{ours.stderr}\nBuildKit's:\n{theirs.stderr}")
    if case == "failing":
        assert "------\n > [2/2] RUN echo last-words && exit 3:\nlast-words\n------\n" \
            in ours.stderr
        assert ours.stderr.splitlines()[-1] == (
            "ERROR: failed to solve: Dockerfile:2:1 [2/2] RUN echo last-words && exit 3: "
            'process "/bin/sh -c echo last-words && exit 3" did not complete successfully: '
            "exit code: 3")


LINTED = "from IMAGE as Base\nRUN echo linted\n"
WARNED = ["ConsistentInstructionCasing: Command 'from' should match the case of the command "
          "majority (uppercase) (line 1)",
          "StageNameCasing: Stage name 'Base' should be lowercase (line 1)"]


def test_build_checks_show_in_the_definition_and_after_the_build(cli: Cli, tmp_path: Path
                                                                  ) -> None:
    context = _context(tmp_path, "linted", LINTED, cli.busybox)
    done = cli.build(context, "--progress=plain")
    assert done.returncode == 0, done.stderr
    first = done.stderr.split("\n\n", 1)[0].splitlines()
    assert first[0] == "#1 [internal] load build definition from Dockerfile"
    assert first[2:] == [*(f"#1 WARN: {short}" for short in WARNED), first[-1]]
    assert first[-1].startswith("#1 DONE ")
    assert done.stderr.endswith("\n 2 warnings found (use docker --debug to expand):\n"
                                + "".join(f" - {short}\n" for short in WARNED))
    quiet = cli.build(context, "--progress=quiet")
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr  # as buildx


def test_rawjson_is_buildkits_stream(cli: Cli, tmp_path: Path) -> None:
    context = _context(tmp_path, "rawjson", LINTED.replace("linted", "in-json"), cli.busybox)
    done = cli.build(context, "--progress=rawjson", "-o", f"type=tar,dest={tmp_path}/o.tar")
    assert done.returncode == 0, done.stderr
    stream = read_stream(done.stderr)  # every line a SolveStatus of BuildKit's schema
    definition = stream.named("[internal] load build definition from Dockerfile")
    assert definition["completed"] >= definition["started"] and "error" not in definition
    run = stream.named("[2/2] RUN echo in-json")
    assert b"in-json\n" in b"".join(log["data"] for log in stream.logs
                                    if log["vertex"] == run["digest"])
    assert stream.named("exporting to client tarball")["completed"]
    assert [w["short"].decode() for w in stream.warnings] == WARNED
    assert {w["vertex"] for w in stream.warnings} == {definition["digest"]}
    transfers = [s for s in stream.statuses if s["id"] == "transferring context:"]
    assert transfers and all("completed" in s for s in transfers)


@pytest.mark.parametrize(("argv", "env", "plain"), [
    (["--progress=tty"], {}, True),  # stderr is a pipe: tty falls back to plain
    ([], {"BUILDKIT_PROGRESS": "rawjson"}, False),
    (["--progress=plain"], {"BUILDKIT_PROGRESS": "rawjson"}, True),  # the flag wins
])
def test_progress_mode_from_the_flag_then_buildkit_progress(
        cli: Cli, tmp_path: Path, argv: list[str], env: dict[str, str], plain: bool) -> None:
    context = _context(tmp_path, "modes", "FROM IMAGE\n", cli.busybox)
    done = cli.build(context, *argv, env=env)
    assert done.returncode == 0, done.stderr
    if plain:
        assert done.stderr.startswith("#1 [internal] load build definition from Dockerfile\n")
    else:
        names = [v.get("name", "") for v in read_stream(done.stderr).vertexes.values()]
        assert any(name.startswith("[1/1] FROM ") for name in names), names


def test_a_bad_buildkit_progress_is_named(cli: Cli, tmp_path: Path) -> None:
    done = cli.build(_context(tmp_path, "bad", "FROM IMAGE\n", cli.busybox),
                     env={"BUILDKIT_PROGRESS": "fancy"})
    assert done.returncode == 1
    assert done.stderr.startswith("error: invalid BUILDKIT_PROGRESS 'fancy': unknown progress "
                                  "mode\n")
