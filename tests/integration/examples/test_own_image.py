"""dockyard's own Dockerfile (the repository's root), through the real ``dockyard debug
graph`` for linux/amd64,linux/arm64: what `make image` builds, without building it (that
takes minutes; ``make image`` itself builds, pushes and runs it).

- Both platforms get an image: the final stage's base is pulled for each.
- Nothing of pip runs emulated: every RUN but the final stage's ``apt-get install`` runs
  on the build machine's platform, and the wheel's install is made once per target arch.
- Each platform's image has the entrypoint ``dockyard``.
- The final stage installs what the chart's pods run (runc, QEMU, update-binfmts, Python).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[3]
PLATFORMS = ("linux/amd64", "linux/arm64")
BASE = "127.0.0.1:5055/library/debian:bookworm"


def _graph(tmp_path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The vertices and the results (one per platform)."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "DOCKYARD_ROOT": str(tmp_path / "root")}
    done = subprocess.run(
        [str(Path(sys.executable).with_name("dockyard")), "debug", "graph",
         "--platform", ",".join(PLATFORMS), "--build-arg", f"DEBIAN_IMAGE={BASE}", str(PROJECT)],
        capture_output=True, text=True, timeout=120, env=env, check=False)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    return [v for v in lines if "op" in v], [r for r in lines if "result" in r]


def test_own_image_runs_only_apt_get_emulated(tmp_path: Path) -> None:
    vertices, results = _graph(tmp_path)
    assert sorted(r["platform"] for r in results) == sorted(PLATFORMS)
    for result in results:
        assert result["config"]["entrypoint"] == ["dockyard"]
    base = f"docker-image://{BASE}"
    assert sorted(v["platform"] for v in vertices if v.get("identifier") == base) == \
        sorted(PLATFORMS), "a base per platform: one image per platform"
    runs = [v for v in vertices if v["op"] == "exec"]
    emulated = [v for v in runs if v["platform"] == "linux/arm64"]
    assert len(emulated) == 1, [v["name"] for v in emulated]
    script = emulated[0]["args"][-1]
    assert "apt-get install" in script and "pip" not in script
    for package in ("python3", "runc", "qemu-user-static", "binfmt-support"):
        assert f" {package}" in script, package
    pip_installs = [v for v in runs if "pip install" in v["args"][-1]]
    assert {v["platform"] for v in pip_installs} == {"linux/amd64"}
    assert sorted(e for v in pip_installs for e in v["env"] if e.startswith("TARGETARCH=")) \
        == ["TARGETARCH=amd64", "TARGETARCH=arm64"]
