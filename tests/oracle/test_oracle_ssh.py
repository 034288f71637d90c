"""``SSH_AUTH_SOCK`` in a ``RUN --mount=type=ssh``, as BuildKit sets it.

Each row is the stage after ``FROM busybox:stable`` and the value BuildKit gives the RUN
(its llb exec: the first ssh mount's target, as written, unless the stage already has
the variable).  ``test_buildkit_sets_it`` (marker ``oracle``) builds each row on the
private dockerd with ``--ssh default=... --ssh gh=...`` served by a real ``ssh-agent``
and reads what the RUN saw; ``test_converter_sets_it`` checks the converter's ExecOp
environment against the same table (no dockerd needed).
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _buildkit import PrivateDockerd

from dockyard.scheduler._graph import ExecOp
from dockyard.scheduler.dockerfile._frontend import build_graph

SEEN = ' echo "$SSH_AUTH_SOCK" > /out'
CASES = [
    ("default-target", f"RUN --mount=type=ssh{SEEN}\n", "/run/buildkit/ssh_agent.0"),
    ("first-mount-wins", f"RUN --mount=type=ssh,id=gh,target=/s/gh.sock "
                         f"--mount=type=ssh{SEEN}\n", "/s/gh.sock"),
    ("relative-target-kept", f"WORKDIR /w\nRUN --mount=type=ssh,target=a.sock{SEEN}\n",
     "a.sock"),
    ("second-default-index", f"RUN --mount=type=tmpfs,target=/t --mount=type=ssh,id=gh"
                             f"{SEEN}\n", "/run/buildkit/ssh_agent.0"),
    ("stage-env-kept", f"ENV SSH_AUTH_SOCK=/mine\nRUN --mount=type=ssh{SEEN}\n", "/mine"),
    ("build-arg-kept", f"ARG SSH_AUTH_SOCK=/from-arg\nRUN --mount=type=ssh{SEEN}\n",
     "/from-arg"),
    ("no-ssh-mount", f"RUN{SEEN}\n", ""),
]


@pytest.fixture(scope="module")
def agent() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="dy-oracle-ssh-"))
    socket = directory / "agent.sock"
    process = subprocess.Popen(["ssh-agent", "-D", "-a", str(socket)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not socket.is_socket():
            assert process.poll() is None and time.monotonic() < deadline, "no ssh-agent"
            time.sleep(0.02)
        yield socket
    finally:
        process.terminate()
        process.wait(10)
        for entry in directory.iterdir():
            entry.unlink()
        directory.rmdir()


@pytest.fixture(scope="module")
def base(buildkit: PrivateDockerd) -> str:
    buildkit.tag_busybox("busybox:stable")
    return "busybox:stable"


def _seen(buildkit: PrivateDockerd, agent: Path, dockerfile: str) -> str:
    context = buildkit._new_context({"Dockerfile": dockerfile})
    iidfile = context.parent / "iid"
    done = buildkit.docker("build", "--network=host", "--progress=plain",
                           f"--iidfile={iidfile}", "--ssh", f"default={agent}",
                           "--ssh", f"gh={agent}", str(context))
    assert done.returncode == 0, done.stderr[-2000:]
    shown = buildkit.docker("run", "--rm", "--network=none", iidfile.read_text().strip(),
                            "cat", "/out")
    assert shown.returncode == 0, shown.stderr
    return shown.stdout.removesuffix("\n")


@pytest.mark.oracle
@pytest.mark.parametrize(("stage", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_buildkit_sets_it(buildkit: PrivateDockerd, base: str, agent: Path, stage: str,
                          expected: str) -> None:
    assert _seen(buildkit, agent, f"FROM {base}\n{stage}") == expected


@pytest.mark.parametrize(("stage", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_converter_sets_it(stage: str, expected: str) -> None:
    result = build_graph(f"FROM busybox:stable\n{stage}")
    (run,) = [v.op for v in result.graph.vertices.values() if isinstance(v.op, ExecOp)]
    env = dict(entry.split("=", 1) for entry in run.env)
    assert env.get("SSH_AUTH_SOCK", "") == expected
