"""The image config the converter writes, checked against the one BuildKit writes.

Each folder of ``config_cases/`` is one row of the table:

- ``Dockerfile``: the input.
- ``case.json`` (optional): ``build_args``, ``target``, ``platform`` (``os/arch``),
  ``context`` (files of this machine copied into the build context by name: ``busybox``
  is Debian's static busybox, the only way to have a ``/bin/sh`` for RUN without a
  registry), and ``newer``: ``{"reason": ..., "ours": {field: value}}`` for the fields
  where Docker 20.10's older frontend differs from current BuildKit by design; ours
  follows current BuildKit, so those fields are compared with ``ours`` instead; and
  ``bug``: a known converter bug (current BuildKit agrees with 20.10), which makes
  ``test_converter_agrees`` a strict xfail until it is fixed.
- ``buildkit.json``: what BuildKit 20.10 made of it, recorded from the raw image config
  (``docker save``, so ``empty_layer`` is BuildKit's own) and normalized by
  :func:`normalize_buildkit`: ``{"config": {...}}`` or ``{"error": <BuildKit's message>}``.

``test_buildkit_agrees`` (marker ``oracle``) rebuilds every row on the private dockerd and
checks the recording still holds; ``test_converter_agrees`` runs ``build_graph`` on the
same row and compares with the recording (no dockerd needed).  To re-record after adding
a row: ``python tests/oracle/test_oracle_config.py [case ...]``; read the diff before
committing it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from _buildkit import OracleResult, PrivateDockerd, make_oracle_root

from dockyard.scheduler._errors import DockerfileError
from dockyard.scheduler._graph import ImageConfig
from dockyard.scheduler._platform import parse_platform
from dockyard.scheduler.dockerfile._frontend import build_graph

CASES = Path(__file__).parent / "config_cases"
HOST_FILES = {"busybox": Path("/bin/busybox")}
FIELDS = ("env", "cmd", "entrypoint", "user", "working_dir", "labels", "exposed_ports",
          "volumes", "stop_signal", "healthcheck", "on_build", "shell", "author", "history")
Config = dict[str, Any]


def case_names() -> list[str]:
    return sorted(p.name for p in CASES.iterdir() if (p / "Dockerfile").is_file())


def load_case(name: str) -> dict[str, Any]:
    extra = CASES / name / "case.json"
    case: dict[str, Any] = json.loads(extra.read_text()) if extra.exists() else {}
    return case


def recorded(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CASES / name / "buildkit.json").read_text())
    return data


def dockerfile(name: str) -> bytes:
    return (CASES / name / "Dockerfile").read_bytes()


# --- BuildKit's side -------------------------------------------------------------------


def normalize_buildkit(raw: Mapping[str, Any]) -> Config:
    """The fields we compare, from the image config JSON BuildKit wrote (``author`` sits
    beside ``config``, not in it)."""
    config = raw.get("config") or {}
    health = config.get("Healthcheck")
    return {
        "env": config.get("Env") or [],
        "cmd": config.get("Cmd"),
        "entrypoint": config.get("Entrypoint"),
        "user": config.get("User", ""),
        "working_dir": config.get("WorkingDir", ""),
        "labels": config.get("Labels") or {},
        "exposed_ports": sorted(config.get("ExposedPorts") or {}),
        "volumes": sorted(config.get("Volumes") or {}),
        "stop_signal": config.get("StopSignal", ""),
        "healthcheck": None if health is None else _health(health),
        "on_build": config.get("OnBuild") or [],
        "shell": config.get("Shell") or [],
        "author": raw.get("author", ""),
        "history": [[h.get("created_by", ""), bool(h.get("empty_layer", False))]
                    for h in raw.get("history") or []],
    }


def _health(health: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("Test", "Interval", "Timeout", "StartPeriod", "StartInterval", "Retries")
    return {key: health.get(key) or ([] if key == "Test" else 0) for key in keys}


def buildkit_answer(daemon: PrivateDockerd, name: str) -> dict[str, Any]:
    case = load_case(name)
    files = {f: HOST_FILES[f].read_bytes() for f in case.get("context", [])}
    result = daemon.build(dockerfile(name).decode(), files, case.get("build_args"),
                          case.get("target"), case.get("platform"))
    if not result.ok:
        return {"error": result.error_text.splitlines()[-1] if result.error_text else ""}
    return {"config": normalize_buildkit(_raw_config(daemon, result))}


def _raw_config(daemon: PrivateDockerd, result: OracleResult) -> dict[str, Any]:
    """The image config blob exactly as BuildKit wrote it: dockerd keeps it in its image
    store under the image ID, which is the blob's digest (``docker save`` refuses images
    without layers)."""
    digest = str(result.image["Id"]).removeprefix("sha256:")
    (blob,) = daemon.root.glob(f"data/image/*/imagedb/content/sha256/{digest}")
    raw: dict[str, Any] = json.loads(blob.read_bytes())
    return raw


# --- our side --------------------------------------------------------------------------


def normalize_ours(config: ImageConfig) -> Config:
    """Ours in the same shape; an explicitly empty Cmd/Entrypoint (``CMD []``) is None, as
    the image config JSON drops empty lists (``omitempty``)."""
    health = config.healthcheck
    return {
        "env": list(config.env),
        "cmd": list(config.cmd) if config.cmd else None,
        "entrypoint": list(config.entrypoint) if config.entrypoint else None,
        "user": config.user,
        "working_dir": config.working_dir,
        "labels": dict(config.labels),
        "exposed_ports": sorted(config.exposed_ports),
        "volumes": sorted(config.volumes),
        "stop_signal": config.stop_signal,
        "healthcheck": None if health is None else {
            "Test": list(health.test), "Interval": health.interval,
            "Timeout": health.timeout, "StartPeriod": health.start_period,
            "StartInterval": health.start_interval, "Retries": health.retries},
        "on_build": list(config.on_build),
        "shell": list(config.shell),
        "author": config.author,
        "history": [[h.created_by, h.empty_layer] for h in config.history],
    }


def our_config(name: str) -> Config:
    case = load_case(name)
    platforms = [parse_platform(case["platform"])] if "platform" in case else []
    result = build_graph(dockerfile(name), target=case.get("target"), platforms=platforms,
                         build_args=case.get("build_args") or {})
    (image,) = result.graph.results
    return normalize_ours(image.config)


def expected_for_us(name: str) -> Config:
    """BuildKit's recorded config, with the ``newer`` fields replaced by ours."""
    expected: Config = dict(recorded(name)["config"])
    expected.update(load_case(name).get("newer", {}).get("ours", {}))
    return expected


# --- the tests -------------------------------------------------------------------------


@pytest.mark.oracle
@pytest.mark.parametrize("name", case_names())
def test_buildkit_agrees(buildkit: PrivateDockerd, name: str) -> None:
    answer, want = buildkit_answer(buildkit, name), recorded(name)
    if "error" in want:
        assert want["error"] in answer.get("error", ""), answer
        return
    assert answer == want


def _converter_params() -> list[Any]:
    params = []
    for name in case_names():
        bug = load_case(name).get("bug")
        marks = [pytest.mark.xfail(reason=bug, strict=True)] if bug else []
        params.append(pytest.param(name, marks=marks, id=name))
    return params


@pytest.mark.parametrize("name", _converter_params())
def test_converter_agrees(name: str) -> None:
    if "error" in recorded(name):
        with pytest.raises(DockerfileError):
            our_config(name)
        return
    ours, want = our_config(name), expected_for_us(name)
    assert {f: ours[f] for f in FIELDS} == {f: want[f] for f in FIELDS}


def test_table_is_large_enough() -> None:
    built = [n for n in case_names() if "config" in recorded(n)]
    assert len(built) >= 30 and len(case_names()) - len(built) >= 5


def _record(names: list[str]) -> None:
    daemon = PrivateDockerd(make_oracle_root())
    daemon.start()
    try:
        for name in names or case_names():
            answer = buildkit_answer(daemon, name)
            text = json.dumps(answer, indent=1, ensure_ascii=False) + "\n"
            (CASES / name / "buildkit.json").write_text(text)
            print(name, "error" if "error" in answer else "ok")
    finally:
        daemon.stop()


if __name__ == "__main__":
    _record(sys.argv[1:])
