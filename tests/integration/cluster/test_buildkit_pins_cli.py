"""What BuildKit's integration tests pin, checked as a user sees it: ``dockyard build`` as a
subprocess on the embedded service (started by the first build, stopped at the end), real
runc, the registry fixture's busybox.  Each test names the BuildKit test it follows; error
texts are matched exactly, as the line after ``ERROR: failed to solve: ``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.ssh_tools import make_key

PROJECT = Path(__file__).resolve().parents[3]
FAILED = "ERROR: failed to solve: "  # how buildx (and dockyard) begins a failed build's error


@dataclass
class Cli:
    root: Path
    work: Path
    busybox: str

    def build(self, dockerfile: str, *argv: str, env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess[str]:
        context = Path(tempfile.mkdtemp(dir=self.work))
        (context / "Dockerfile").write_text(dockerfile.replace("BUSYBOX", self.busybox))
        environ = {**os.environ, "DOCKYARD_ROOT": str(self.root), "PYTHONPATH": str(PROJECT),
                   **(env or {})}
        return subprocess.run([sys.executable, "-m", "dockyard", "build", "--progress=plain",
                               *argv, str(context)], cwd=self.work, env=environ,
                              capture_output=True, text=True, timeout=180, check=False)

    def error(self, dockerfile: str, *argv: str) -> str:
        """The text after ``ERROR: failed to solve: `` of a build that must fail (its first
        line)."""
        done = self.build(dockerfile, *argv)
        assert done.returncode == 1, done.stderr
        assert "Traceback" not in done.stderr
        return done.stderr.split(FAILED, 1)[1].splitlines()[0]


@pytest.fixture(scope="module")
def cli(busybox_image: Any) -> Iterator[Cli]:
    root = Path(tempfile.mkdtemp(prefix="dyp-", dir="/tmp"))
    work = Path(tempfile.mkdtemp(prefix="dyp-work-"))
    try:
        yield Cli(root, work, busybox_image.reference)
    finally:
        subprocess.run([sys.executable, "-m", "dockyard", "stop"], timeout=90, check=False,
                       env={**os.environ, "DOCKYARD_ROOT": str(root),
                            "PYTHONPATH": str(PROJECT)}, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def test_target_stage_typo_suggests_the_stage(cli: Cli) -> None:  # testTargetMistype
    error = cli.error("FROM scratch AS build\nFROM scratch\n", "--target", "bulid")
    assert error == ('Dockerfile:1:1: target stage "bulid" could not be found '
                     "(did you mean build?)")


def test_unknown_run_flag_suggests_the_flag(cli: Cli) -> None:  # testMountInvalid
    error = cli.error("FROM scratch\nRUN --mont=type=tmpfs,target=/x true\n")
    assert error == "Dockerfile:2:5: unknown flag: --mont (did you mean mount?)"


def test_missing_required_secret(cli: Cli) -> None:  # testSecretRequiredWithoutValue
    error = cli.error("FROM BUSYBOX\nRUN --mount=type=secret,required,id=mysecret true\n")
    assert error == ("Dockerfile:2:1 [2/2] RUN --mount=type=secret,required,id=mysecret true: "
                     "secret mysecret: not found")


def test_a_build_that_runs_nothing_on_its_platform(cli: Cli) -> None:  # testPlatformArgsExplicit
    """Every step runs on the build platform and feeds a scratch stage: any --platform
    works, even one no worker has (and which has no image of its own)."""
    out = cli.work / "explicit-out"
    done = cli.build("FROM --platform=$BUILDPLATFORM BUSYBOX AS build\nARG TARGETPLATFORM\n"
                     "ARG TARGETOS\nRUN mkdir /out && echo -n $TARGETPLATFORM > /out/platform"
                     " && echo -n $TARGETOS > /out/os\nFROM scratch\nCOPY --from=build out .\n",
                     "--platform", "darwin/ppc64le", "--build-arg", "TARGETOS=freebsd",
                     "-o", f"type=local,dest={out}")
    assert done.returncode == 0, done.stderr
    assert (out / "platform").read_text() == "darwin/ppc64le"
    assert (out / "os").read_text() == "freebsd"


def test_host_network_needs_allow(cli: Cli) -> None:  # testRunHostNetwork, testRunGlobalNetwork
    dockerfile = "FROM BUSYBOX\nRUN --network=host true\n"
    done = cli.build(dockerfile)
    assert done.returncode == 1, done.stderr
    assert done.stderr[done.stderr.index(FAILED):] == (
        f"{FAILED}Dockerfile:2:1 [2/2] RUN --network=host true: entitlement network.host is not "
        "allowed\nhint: pass --allow network.host to grant it to this build\n")
    granted = cli.build(dockerfile, "--allow", "network.host")
    assert granted.returncode == 0, granted.stderr


def test_ssh_socket_params(cli: Cli) -> None:  # testSSHSocketParams
    key = make_key(cli.work / "params-key", "params-key")
    out = cli.work / "ssh-params-out"
    done = cli.build("FROM BUSYBOX AS base\nRUN --mount=type=ssh,mode=741,uid=100,gid=102 "
                     'mkdir /out && stat -c "%u %g %f" $SSH_AUTH_SOCK > /out/stat\n'
                     "FROM scratch\nCOPY --from=base /out /\n",
                     "--ssh", f"default={key}", "-o", f"type=local,dest={out}")
    assert done.returncode == 0, done.stderr
    assert (out / "stat").read_text() == "100 102 c1e1\n"


def test_ulimit_and_shm_size(cli: Cli) -> None:  # testUlimit, testShmSize
    out = cli.work / "resources-out"
    done = cli.build("FROM BUSYBOX AS base\nRUN mkdir /out && ulimit -n > /out/nofile && "
                     "grep ' /dev/shm ' /proc/mounts | grep -o 'size=[0-9]*k' > /out/shm\n"
                     "FROM scratch\nCOPY --from=base /out /\n", "--ulimit", "nofile=1062:1062",
                     "--shm-size", "134217728", "-o", f"type=local,dest={out}")
    assert done.returncode == 0, done.stderr
    assert (out / "nofile").read_text() == "1062\n"
    assert (out / "shm").read_text() == "size=131072k\n"


def test_build_network_for_every_run(cli: Cli) -> None:  # testRunGlobalNetwork
    """--network=host is every RUN's network but one naming its own: the RUN on the host
    network sees the host's interfaces, the one with --network=none only loopback.  The
    flag grants its own entitlement, as buildx's --network=host adds network.host to the
    solve's allowed entitlements (BuildKit's own test asks for it at the API)."""
    out = cli.work / "global-network-out"
    dockerfile = ("FROM BUSYBOX AS base\nRUN mkdir /out && ls /sys/class/net | sort > /out/host\n"
                  "RUN --network=none ls /sys/class/net > /out/none\n"
                  "FROM scratch\nCOPY --from=base /out /\n")
    done = cli.build(dockerfile, "--network", "host", "-o", f"type=local,dest={out}")
    assert done.returncode == 0, done.stderr
    assert (out / "host").read_text().split() == sorted(os.listdir("/sys/class/net"))
    assert (out / "none").read_text() == "lo\n"
