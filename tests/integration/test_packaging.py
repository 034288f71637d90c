"""The distribution as a user installs it: ``python -m build`` makes the sdist and, from
it, the wheel; a new virtualenv gets PyPI's ``scheduler`` (an unrelated, active project
that installs a top-level ``scheduler``) and our wheel, and both work side by side:
``import scheduler`` is theirs, ``dockyard --version`` reads pyproject's version, and
``dockyard build`` of a small context runs through the local service it starts (its
daemon and its Ray worker import ``dockyard.*`` from the wheel).

The new virtualenv gets the wheel with ``--no-deps`` and reaches dockyard's dependencies
(Ray and the rest, some hundred MB) through a ``.pth`` naming this interpreter's
site-packages: a .pth adds a path, not that directory's own .pth files, so the editable
install of the checkout stays out of it, and what is tested is the wheel's files and its
entry point, not a download.  ``scheduler`` itself comes from PyPI (with its dependency).
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tomllib
import venv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.packaging

REPO = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


@dataclass
class Installed:
    env: Path
    site: Path
    dist: Path

    def run(self, *argv: str, cwd: Path, extra: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        # no PYTHONPATH: nothing of the checkout may leak into the new virtualenv
        environ = {k: v for k, v in os.environ.items()
                   if k not in ("PYTHONPATH", "DOCKYARD_ENDPOINT", "DOCKYARD_TOKEN")}
        environ["PATH"] = f"{self.env / 'bin'}{os.pathsep}{environ.get('PATH', '')}"
        return subprocess.run(argv, cwd=cwd, env=environ | (extra or {}), text=True,
                              capture_output=True, timeout=timeout, check=False)


def _pip(*argv: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check",
                           *argv], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    base = tmp_path_factory.mktemp("packaging")
    dist = base / "dist"
    built = subprocess.run([sys.executable, "-m", "build", "--outdir", str(dist), str(REPO)],
                           capture_output=True, text=True, timeout=300, check=False)
    assert built.returncode == 0, built.stdout[-4000:] + built.stderr[-4000:]
    env = base / "venv"
    venv.create(env, with_pip=False)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(env)}))
    (site / "_dockyard_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    wheel, = dist.glob("dockyard-*.whl")
    _pip("--python", str(env / "bin" / "python"), "install", "-q", "--no-deps", str(wheel))
    _pip("--python", str(env / "bin" / "python"), "install", "-q", "scheduler")
    yield Installed(env, site, dist)


def test_sdist_and_wheel_hold_the_package_under_dockyard(installed: Installed) -> None:
    import tarfile
    import zipfile

    wheel, = installed.dist.glob(f"dockyard-{VERSION}-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"dockyard", f"dockyard-{VERSION}.dist-info"}
    for module in ("dockyard/__init__.py", "dockyard/__main__.py",
                   "dockyard/scheduler/dockerfile/_convert/__init__.py",
                   "dockyard/workers/_actor.py", "dockyard/cache_backends/_s3.py",
                   "dockyard/cluster/_cli.py"):
        assert module in names
    sdist, = installed.dist.glob(f"dockyard-{VERSION}.tar.gz")
    with tarfile.open(sdist) as archive:
        members = archive.getnames()
    assert f"dockyard-{VERSION}/scheduler/_solver.py" in members
    assert f"dockyard-{VERSION}/pyproject.toml" in members


def test_pypi_scheduler_and_dockyard_side_by_side(installed: Installed,
                                                   tmp_path: Path) -> None:
    done = installed.run(
        str(installed.env / "bin" / "python"), "-c",
        "import scheduler, dockyard.scheduler, dockyard.cluster._cli\n"
        "print(scheduler.__file__); print(dockyard.scheduler.__file__)\n"
        "print(hasattr(scheduler, 'Scheduler'), hasattr(dockyard.scheduler, 'Scheduler'))",
        cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    theirs, ours, classes = done.stdout.splitlines()
    assert Path(theirs) == installed.site / "scheduler" / "__init__.py"
    assert Path(ours) == installed.site / "dockyard" / "scheduler" / "__init__.py"
    assert classes == "True False"


def test_version_from_pyproject(installed: Installed, tmp_path: Path) -> None:
    done = installed.run("dockyard", "--version", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (0, f"dockyard {VERSION}\n"), done.stderr
    assert (installed.env / "bin" / "dockyard").is_file()


def test_dockyard_build_runs_from_the_wheel(installed: Installed, tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    (context / "hello.txt").write_text("from the wheel\n")
    (context / "Dockerfile").write_text("FROM scratch\nCOPY hello.txt /greeting\n")
    root = tmp_path / "root"
    extra = {"DOCKYARD_ROOT": str(root)}
    try:
        done = installed.run("dockyard", "build", "--progress=plain", "-o",
                             f"type=local,dest={tmp_path / 'out'}", str(context),
                             cwd=tmp_path, extra=extra, timeout=240)
        assert done.returncode == 0, done.stderr[-4000:]
        assert (tmp_path / "out" / "greeting").read_text() == "from the wheel\n"
    finally:
        installed.run("dockyard", "stop", cwd=tmp_path, extra=extra, timeout=120)
