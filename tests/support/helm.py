"""helm/dockyard rendered by helm/tools/render (no helm binary is reachable here): the
renderer built once per session (tests/integration/helm/conftest.py), values given as
Python maps, manifests back as parsed YAML."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

PROJECT = Path(__file__).resolve().parents[2]
CHART = PROJECT / "helm" / "dockyard"
RENDERER = PROJECT / "helm" / "tools" / "render"
GOPATH = "/usr/share/gocode"  # Debian's Go libraries (golang-github-masterminds-sprig-dev...)
IMAGE = {"image": {"repository": "registry.example/dockyard", "tag": "1.2.3"}}
Manifest = dict[str, Any]


def build_renderer(out: Path) -> Path:
    """helm/tools/render built into ``out`` (GOPATH mode over Debian's packages, offline)."""
    go = shutil.which("go")
    assert go, "no go: make setup installs golang-go (Debian)"
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": GOPATH, "GOFLAGS": "",
           "GOCACHE": str(out / "cache"), "CGO_ENABLED": "0"}
    built = subprocess.run([go, "build", "-o", str(out / "render"), "."], cwd=RENDERER,
                           env=env, capture_output=True, text=True, timeout=600, check=False)
    assert built.returncode == 0, f"building the renderer failed:\n{built.stderr}"
    return out / "render"


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on ``base``, maps merged key by key (as Helm coalesces values)."""
    out = dict(base)
    for key, value in over.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(
            out.get(key), dict) else value
    return out


def run_renderer(renderer: Path, tmp: Path, values: dict[str, Any]
                 ) -> subprocess.CompletedProcess[str]:
    """The chart rendered as release ``ci`` in namespace ``builds`` with ``values``."""
    path = tmp / f"values-{len(list(tmp.iterdir()))}.yaml"
    path.write_text(json.dumps(values))  # JSON is YAML
    return subprocess.run([str(renderer), "-f", str(path), "-name", "ci", "-namespace",
                           "builds", str(CHART)], capture_output=True, text=True,
                          timeout=60, check=False)


def render(renderer: Path, tmp: Path, values: dict[str, Any]) -> list[Manifest]:
    """The manifests of the chart with ``values`` over an image."""
    done = run_renderer(renderer, tmp, merge(IMAGE, values))
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]
