"""The CI recipes of docs/ci-recipes.md, run as their CI would run them.

The page's YAML blocks marked ``<!-- ci-recipe: NAME -->`` are parsed with PyYAML and run
by two small interpreters of just what the recipes use: GitHub Actions (job ``env``, step
``env``, ``${{ secrets.X }}``, ``${{ vars.X }}``, ``${{ github.sha }}``,
``${{ steps.ID.outputs.K }}`` from ``$GITHUB_OUTPUT``, each ``run:`` under ``bash -eo
pipefail``) and GitLab CI (``variables`` with ``$VAR`` expansion, jobs by stage, each
job's ``script:`` lines under ``bash -eo pipefail``, ``artifacts.reports.dotenv`` handed
to the jobs that ``need`` it).  An expression or a step kind the interpreters do not know
fails the test, so the page cannot grow something this test silently skips.

What is substituted: the endpoint's URL (the page names the chart's Service, checked
against helm/dockyard/values.yaml) becomes a real ``dockyard serve`` on loopback with a
token and TLS (its own embedded Ray head, one for the module); the token and the CA
certificate come from the "CI secrets"; the image repository is in the loopback
registry; ``--platform`` is left as the page has it.  The checkout is a copy of
examples/ whose base image defaults to the loopback registry's busybox.  The step that
installs the client with pip is checked for its form and replaced (no network here) by
writing what it would install, a two-line ``dockyard`` running this tree's CLI, into the
``bin`` of the pip it names (the rest of that step, ``python3 -m venv`` and
``$GITHUB_PATH``, runs as written).

Checked: the build succeeds through the token and the CA only, the image and the
registry cache are pushed, the digest the later step or job saw is the pushed
manifest's, and the token appears in no output.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from support.tls import self_signed

from dockyard.cluster._ray import ray_temp_dir
from dockyard.cluster._service import alive, kill_processes, process_tree

PROJECT = Path(__file__).resolve().parents[3]
DOC = PROJECT / "docs" / "ci-recipes.md"
TOKEN = "ci-recipe-token-9e41b7"
SHA = "3f2c9d41aa07be5c1d7e0b6a9c8f1e2d3b4a5c6d"
ACCEPT = ", ".join(["application/vnd.oci.image.index.v1+json",
                    "application/vnd.oci.image.manifest.v1+json",
                    "application/vnd.docker.distribution.manifest.list.v2+json",
                    "application/vnd.docker.distribution.manifest.v2+json"])
#: the recipes' ``pip install`` of the client: from the repository, at a version tag
INSTALL = re.compile(r'^(?P<pip>python3 -m pip|"\$[\w/]+/bin/pip") install '
                     r'"dockyard @ git\+https://\S+@v[\d.]+"$')
#: the keys of a GitLab job the interpreter below knows (image and tags: the runner's)
GITLAB_JOB_KEYS = {"stage", "image", "tags", "needs", "before_script", "script", "artifacts"}
#: what that install puts in a ``bin``: this tree's CLI
SHIM = ("#!/bin/sh", f'PYTHONPATH={PROJECT} exec {sys.executable} -m dockyard "$@"')


def recipes() -> dict[str, Any]:
    """The page's marked YAML blocks, by name."""
    found = re.findall(r"<!-- ci-recipe: (\S+) -->\n```yaml\n(.*?)\n```", DOC.read_text(),
                       re.S)
    return {name: yaml.safe_load(text) for name, text in found}


@dataclass
class Endpoint:
    url: str
    cert: Path
    process: subprocess.Popen[bytes]


@dataclass
class Run:
    """What one recipe's run left: every step's output, and the workspace."""

    output: str
    workspace: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def endpoint() -> Iterator[Endpoint]:
    """``dockyard serve`` with a token and TLS on a free loopback port (embedded Ray)."""
    root = Path(tempfile.mkdtemp(prefix="dyr-", dir="/tmp"))
    work = Path(tempfile.mkdtemp(prefix="dyr-serve-"))
    cert, key = self_signed(work)
    (work / "token").write_text(TOKEN + "\n")
    argv = [sys.executable, "-m", "dockyard", "serve", "--host", "127.0.0.1", "--port",
            str(_free_port()), "--token-file", str(work / "token"), "--tls-cert", str(cert),
            "--tls-key", str(key)]
    env = {**_clean_environ(), "DOCKYARD_ROOT": str(root), "PYTHONPATH": str(PROJECT)}
    with open(work / "serve.log", "wb") as log:
        process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=log,
                                   cwd=work)
    try:
        yield Endpoint(_wait_for_url(process), cert, process)
    finally:
        _stop(process)
        shutil.rmtree(ray_temp_dir(root), ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def _wait_for_url(process: subprocess.Popen[bytes], timeout: float = 120) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    line = process.stdout.readline().decode()
    while not line.startswith("dockyard serving on "):
        assert process.poll() is None and time.monotonic() < deadline, \
            f"dockyard serve did not start: {line!r}"
        line = process.stdout.readline().decode()
    return line.split()[-1]


def _stop(process: subprocess.Popen[bytes]) -> None:
    started = process_tree(process.pid)
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    deadline = time.monotonic() + 10
    while any(alive(p) for p in started) and time.monotonic() < deadline:
        time.sleep(0.05)
    kill_processes({p for p in started if alive(p)})


def _clean_environ() -> dict[str, str]:
    """This environment without dockyard's or a CI's variables, and without the ``PATH``
    entries holding a ``dockyard`` (a venv's): the recipe must install its own."""
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith(("DOCKYARD_", "GITHUB_", "CI_", "RUNNER_"))}
    path = os.environ.get("PATH", os.defpath).split(os.pathsep)
    environ["PATH"] = os.pathsep.join(p for p in path if p and
                                      not os.path.exists(os.path.join(p, "dockyard")))
    return environ


@pytest.fixture
def machine(tmp_path: Path, busybox_image: Any) -> Path:
    """A runner: its ``home``, a ``bin`` on its PATH (where a system pip installs) and a
    checkout of examples/ under ``checkout``."""
    (tmp_path / "home").mkdir()
    (tmp_path / "bin").mkdir()
    checkout = tmp_path / "checkout"
    shutil.copytree(PROJECT / "examples", checkout)
    dockerfile = checkout / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text().replace(
        "ARG BASE_IMAGE=busybox:stable", f"ARG BASE_IMAGE={busybox_image.reference}"))
    return tmp_path


def _bash(script: str, env: Mapping[str, str], cwd: Path) -> str:
    done = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
                          env=dict(env), cwd=cwd, capture_output=True, text=True,
                          timeout=240, check=False)
    out = done.stdout + done.stderr
    assert done.returncode == 0, f"the recipe's step failed ({done.returncode}):\n{script}\n{out}"
    return out


def _runner_environ(machine: Path, extra: Mapping[str, str]) -> dict[str, str]:
    environ = {**_clean_environ(), "HOME": str(machine / "home"),
               "DOCKYARD_ROOT": str(machine / "client"), **extra,
               # should an install slip past _offline: no index, no git over the network
               "PIP_NO_INDEX": "1", "GIT_ALLOW_PROTOCOL": "file"}
    environ["PATH"] = f"{machine / 'bin'}:{environ['PATH']}"
    return environ


def _offline(script: str, runner_bin: Path) -> str:
    """``script`` with each ``pip install`` of dockyard (checked for its form) replaced by
    writing the ``dockyard`` it would install into its pip's ``bin``, or into the
    runner's ``bin`` for ``python3 -m pip``."""
    lines = []
    for line in script.splitlines():
        if re.search(r"\binstall\b", line):
            match = INSTALL.match(line.strip())
            assert match, f"an install of the client this test does not know: {line}"
            pip = match["pip"]
            where = shlex.quote(str(runner_bin)) if pip == "python3 -m pip" \
                else f'"$(dirname {pip})"'
            line = (f"printf '%s\\n' {' '.join(shlex.quote(x) for x in SHIM)} "
                    f'> {where}/dockyard && chmod +x {where}/dockyard')
        lines.append(line)
    return "\n".join(lines)


def _check_service_url(url: str) -> None:
    """The page's endpoint is the chart's Service, on the chart's port."""
    values = yaml.safe_load((PROJECT / "helm" / "dockyard" / "values.yaml").read_text())
    parsed = urlparse(url)
    assert parsed.hostname is not None
    assert re.fullmatch(r"[a-z0-9-]+-dockyard-endpoint\.[a-z0-9-]+\.svc", parsed.hostname)
    assert parsed.port == values["endpoint"]["service"]["port"]


# --- GitHub Actions --------------------------------------------------------------------

def _expression(contexts: Mapping[str, str], steps: Mapping[str, dict[str, str]]
                ) -> Any:
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        step = re.fullmatch(r"steps\.([\w-]+)\.outputs\.([\w-]+)", name)
        if step:
            assert step.group(2) in steps.get(step.group(1), {}), \
                f"the recipe uses ${{{{ {name} }}}}, which no earlier step wrote"
            return steps[step.group(1)][step.group(2)]
        assert name in contexts, f"the recipe uses ${{{{ {name} }}}}, unknown to this test"
        return contexts[name]
    return lambda text: re.sub(r"\$\{\{\s*([^}]+?)\s*\}\}", value, str(text))


def run_github(workflow: dict[str, Any], machine: Path, job_env: Mapping[str, str],
               contexts: Mapping[str, str]) -> Run:
    (job,) = workflow["jobs"].values()
    workspace, temp = machine / "checkout", machine / "runner-temp"
    temp.mkdir()
    outputs: dict[str, dict[str, str]] = {}
    expand = _expression(contexts, outputs)
    env = {k: expand(v) for k, v in job["env"].items()}
    assert set(job_env) <= set(env), "the recipe lost a variable the test sets"
    env |= job_env
    log = ""
    for number, step in enumerate(job["steps"]):
        assert set(step) <= {"name", "id", "env", "run", "uses"}, f"unknown to this test: {step}"
        if "uses" in step:
            assert step["uses"].startswith("actions/checkout@"), step  # the workspace
            continue
        files = {"GITHUB_OUTPUT": temp / f"output-{number}",
                 "GITHUB_STEP_SUMMARY": temp / f"summary-{number}",
                 "GITHUB_PATH": temp / f"path-{number}"}
        for file in files.values():
            file.touch()
        step_env = {k: expand(v) for k, v in step.get("env", {}).items()}
        environ = _runner_environ(machine, {**env, **step_env, "RUNNER_TEMP": str(temp),
                                            "GITHUB_WORKSPACE": str(workspace),
                                            **{k: str(v) for k, v in files.items()}})
        log += _bash(_offline(expand(step["run"]), machine / "bin"), environ, workspace)
        log += files["GITHUB_STEP_SUMMARY"].read_text()
        for directory in files["GITHUB_PATH"].read_text().splitlines():
            env["PATH"] = f"{directory}:{env.get('PATH', _clean_environ()['PATH'])}"
        lines = files["GITHUB_OUTPUT"].read_text().splitlines()
        outputs[step.get("id", str(number))] = dict(line.split("=", 1) for line in lines)
    assert (machine / "bin").is_dir() and not any((machine / "bin").iterdir()), \
        "the client was installed outside the recipe's virtual environment"
    return Run(log, workspace)


# --- GitLab CI -------------------------------------------------------------------------

def _expand_variables(value: str, environ: Mapping[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in environ, f"the recipe uses ${name}, unknown to this test"
        return environ[name]
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, value)


def run_gitlab(pipeline: dict[str, Any], machine: Path, predefined: Mapping[str, str],
               overrides: Mapping[str, str]) -> Run:
    workspace = machine / "checkout"
    variables = {k: _expand_variables(str(v), predefined)
                 for k, v in pipeline["variables"].items()}
    assert set(overrides) <= set(variables), "the recipe lost a variable the test sets"
    variables |= overrides
    jobs = {name: job for name, job in pipeline.items() if isinstance(job, dict)
            and "script" in job}
    assert {job["stage"] for job in jobs.values()} <= set(pipeline["stages"])
    dotenv: dict[str, dict[str, str]] = {}
    log = ""
    for stage in pipeline["stages"]:
        for name, job in jobs.items():
            if job["stage"] != stage:
                continue
            assert set(job) <= GITLAB_JOB_KEYS, f"unknown to this test: {name}: {job}"
            inherited = {k: v for need in job.get("needs", []) for k, v in dotenv[need].items()}
            environ = _runner_environ(machine, {**predefined, **variables, **inherited})
            script = "\n".join([*job.get("before_script", []), *job["script"]])
            log += _bash(_offline(script, machine / "bin"), environ, workspace)
            report = job.get("artifacts", {}).get("reports", {}).get("dotenv")
            if report:
                text = (workspace / report).read_text()
                dotenv[name] = dict(line.split("=", 1) for line in text.splitlines())
    return Run(log, workspace)


# --- the checks --------------------------------------------------------------------------

def _manifest_digest(domain: str, repository: str, tag: str) -> str:
    request = urllib.request.Request(f"http://{domain}/v2/{repository}/manifests/{tag}",
                                     headers={"Accept": ACCEPT}, method="HEAD")
    with urllib.request.urlopen(request, timeout=10) as answer:
        digest: str = answer.headers["Docker-Content-Digest"]
    return digest


def _cache_config_type(domain: str, repository: str) -> str:
    """The config media type of the manifest at ``REPOSITORY:buildcache``."""
    request = urllib.request.Request(f"http://{domain}/v2/{repository}/manifests/buildcache",
                                     headers={"Accept": ACCEPT})
    with urllib.request.urlopen(request, timeout=10) as answer:
        kind: str = json.load(answer)["config"]["mediaType"]
    return kind


def _check_pushed(run: Run, domain: str, repository: str, tag: str, metadata: Path) -> None:
    digest = json.loads(metadata.read_text())["containerimage.digest"]
    assert _manifest_digest(domain, repository, tag) == digest
    assert f"{domain}/{repository}@{digest}" in run.output  # what the later step saw
    assert _cache_config_type(domain, repository) == "application/vnd.buildkit.cacheconfig.v0"
    assert TOKEN not in run.output


def test_github_actions_recipe(endpoint: Endpoint, machine: Path, busybox_image: Any) -> None:
    workflow = recipes()["github-actions"]
    (job,) = workflow["jobs"].values()
    _check_service_url(job["env"]["DOCKYARD_ENDPOINT"])
    repository = "team/github-app"
    run = run_github(workflow, machine,
                     {"DOCKYARD_ENDPOINT": endpoint.url,
                      "IMAGE": f"{busybox_image.domain}/{repository}"},
                     {"secrets.DOCKYARD_TOKEN": TOKEN,
                      "vars.DOCKYARD_CA_PEM": endpoint.cert.read_text().strip(),
                      "github.sha": SHA})
    _check_pushed(run, busybox_image.domain, repository, SHA,
                  machine / "runner-temp" / "metadata.json")


def test_gitlab_ci_recipe(endpoint: Endpoint, machine: Path, busybox_image: Any) -> None:
    pipeline = recipes()["gitlab-ci"]
    _check_service_url(pipeline["variables"]["DOCKYARD_ENDPOINT"])
    registry_image = f"{busybox_image.domain}/team/gitlab"
    run = run_gitlab(pipeline, machine,
                     {"CI_REGISTRY_IMAGE": registry_image, "CI_COMMIT_SHORT_SHA": SHA[:8],
                      "DOCKYARD_TOKEN": TOKEN, "DOCKYARD_TLS_CA": str(endpoint.cert)},
                     {"DOCKYARD_ENDPOINT": endpoint.url})
    _check_pushed(run, busybox_image.domain, "team/gitlab/app", SHA[:8],
                  run.workspace / "metadata.json")


def test_a_recipe_without_the_token_is_refused(endpoint: Endpoint, machine: Path,
                                               busybox_image: Any) -> None:
    """The recipes' builds pass only because they present the token: the same GitLab
    job without the CI secret fails with the endpoint's one-line refusal."""
    pipeline = recipes()["gitlab-ci"]
    with pytest.raises(AssertionError, match="refused the token: this endpoint needs a token"):
        run_gitlab(pipeline, machine,
                   {"CI_REGISTRY_IMAGE": f"{busybox_image.domain}/team/refused",
                    "CI_COMMIT_SHORT_SHA": SHA[:8], "DOCKYARD_TOKEN": "",
                    "DOCKYARD_TLS_CA": str(endpoint.cert)},
                   {"DOCKYARD_ENDPOINT": endpoint.url})
