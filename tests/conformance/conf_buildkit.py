"""The BuildKit side: a private dockerd (tests/oracle/_buildkit.py) holding the same busybox
image as the loopback registry, loaded from the same OCI layout (written by the integration
fixtures' ``write_busybox_layout``) with ``skopeo copy`` to a docker-archive and
``docker load`` -- dockerd never pulls: ``busybox:latest`` is a local tag, re-pointed at the
amd64 or arm64 image before each build."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from conf_compare import Built, Failed, Result
from conf_corpus import Case, materialise
from conf_tree import read_archive

TESTS = Path(__file__).parents[1]
sys.path.insert(0, str(TESTS / "oracle"))

from _buildkit import PrivateDockerd, make_oracle_root  # noqa: E402

ARCHES = ("amd64", "arm64")


def integration_fixtures() -> ModuleType:
    """tests/integration/conftest.py as a module (its busybox image and registry)."""
    name = "conf_integration_fixtures"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name,
                                                      TESTS / "integration" / "conftest.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


class BuildKitSide:
    """Builds corpus cases on one private dockerd."""

    def __init__(self, daemon: PrivateDockerd) -> None:
        self.daemon = daemon
        self._arch = ""

    @classmethod
    def start(cls) -> BuildKitSide:
        daemon = PrivateDockerd(make_oracle_root())
        daemon.start()
        side = cls(daemon)
        try:
            side.load_busybox()
        except BaseException:
            daemon.stop()
            raise
        return side

    def stop(self) -> None:
        self.daemon.stop()

    def load_busybox(self) -> None:
        layout = self.daemon.root / "busybox-oci"
        integration_fixtures().write_busybox_layout(layout)
        for arch in ARCHES:
            archive = self.daemon.root / f"busybox-{arch}.tar"
            variant = ["--override-variant", "v8"] if arch == "arm64" else []
            _run(["skopeo", "--override-os", "linux", "--override-arch", arch, *variant,
                  "copy", "--quiet", f"oci:{layout}:latest",
                  f"docker-archive:{archive}:busybox:{arch}"])
            self._docker("load", f"--input={archive}")
            archive.unlink()

    def use_arch(self, arch: str) -> None:
        if arch != self._arch:
            self._docker("tag", f"busybox:{arch}", "busybox:latest")
            self._arch = arch

    def build(self, case: Case, scratch: Path) -> Result:
        """The case's result (its second build for a ``rebuild`` case)."""
        context = materialise(case, scratch / "context")
        self.use_arch(case.platform.split("/")[1])
        result = self._build_once(case, context, scratch, case.build_args)
        if case.rebuild_args is not None and isinstance(result, Built):
            result = self._build_once(case, context, scratch, case.rebuild_args)
        return result

    def _build_once(self, case: Case, context: Path, scratch: Path,
                    build_args: dict[str, str]) -> Result:
        iidfile = scratch / "iid"
        argv = ["build", "--network=host", "--progress=plain", f"--iidfile={iidfile}",
                f"--file={context / 'Dockerfile'}", f"--platform={case.platform}"]
        argv += [f"--build-arg={key}={value}" for key, value in build_args.items()]
        argv += [f"--target={case.target}"] if case.target else []
        for key, value in case.secrets.items():
            (scratch / f"secret-{key}").write_text(value)
            argv.append(f"--secret=id={key},src={scratch / f'secret-{key}'}")
        done = self.daemon.docker(*argv, str(context))
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines()
                     if line.strip() and not line.startswith("#")]
            return Failed("\n".join(lines).replace(str(context), "<context>"))
        return self._saved(iidfile.read_text().strip(), scratch)

    def _saved(self, image_id: str, scratch: Path) -> Built:
        archive = scratch / "image.tar"
        self._docker("save", f"--output={archive}", image_id)
        try:
            tree, config = read_archive(archive)
        finally:
            archive.unlink()
        return Built(tree, config)

    def _docker(self, *args: str) -> None:
        done = self.daemon.docker(*args, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)} failed: {done.stderr.strip()}")


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
