"""The chart's pod commands for real: the scripts of its ConfigMap run on this machine with
the environment and arguments of the rendered pod specs, as Kubernetes would run them.

A "head pod" (the head template's env, node.sh), an "arm64 worker pod" (the arm64 group's
env, node.sh) and an "endpoint pod" (the Deployment's env and args, endpoint.sh), each a
process with its own root and loopback address (what a pod's IP is here); only what a
cluster provides is replaced: the pod IPs, the roots, the Secrets' mount paths, the head's
address (KubeRay's Service) and the endpoint's port and bind address.  Then the
endpoint's /readyz (the chart's readiness probe) must answer 200 with one amd64 and one
arm64 worker, and SIGTERM must stop each node through the script's trap."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from support.cluster import root_processes, wait_for
from support.helm import PROJECT, Manifest, render
from support.registry import free_port

from dockyard.cluster._probes import READY_PATH

RAY_TOKEN = "ray-token-of-the-chart-test-0123456789"
CLIENT_TOKEN = "client-token-of-the-chart-test"
VALUES = {"rayToken": {"value": RAY_TOKEN}, "endpoint": {"token": {"value": CLIENT_TOKEN}}}


class Pods:
    """Processes standing in for the chart's pods; see the module docstring."""

    def __init__(self, manifests: list[Manifest], base: Path) -> None:
        self.base = base
        self.gcs_port = free_port()
        self.http_port = free_port()
        scripts = next(m for m in manifests if m["kind"] == "ConfigMap")["data"]
        for name, text in scripts.items():
            (base / name).write_text(text)
        (base / "ray-token").write_text(RAY_TOKEN)
        (base / "client-token").write_text(CLIENT_TOKEN)
        self.processes: list[subprocess.Popen[bytes]] = []
        self.roots: list[Path] = []

    def _env(self, container: Manifest, ip: str, root: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "DOCKYARD_"))}
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        env["PYTHONPATH"] = str(PROJECT)
        for item in container["env"]:
            if "value" in item:
                env[item["name"]] = item["value"]
        # what the cluster provides
        assert {e["name"] for e in container["env"] if "valueFrom" in e} == {"POD_IP"}
        assert env["RAY_AUTH_TOKEN_PATH"].startswith("/etc/dockyard/ray-token/")
        env |= {"POD_IP": ip, "DOCKYARD_ROOT": str(root),
                "RAY_AUTH_TOKEN_PATH": str(self.base / "ray-token"),
                "DOCKYARD_HEAD_ADDRESS": f"127.0.0.2:{self.gcs_port}"}
        if "DOCKYARD_GCS_PORT" in env:
            env["DOCKYARD_GCS_PORT"] = str(self.gcs_port)
        return env

    def start(self, name: str, container: Manifest, ip: str, args: Sequence[str] = ()
              ) -> subprocess.Popen[bytes]:
        root = Path(tempfile.mkdtemp(prefix=f"dyh{name[0]}-", dir="/tmp"))
        self.roots.append(root)
        script = container["command"][-1].rsplit("/", 1)[1]
        log = open(self.base / f"{name}.log", "wb")  # noqa: SIM115 -- lives with the process
        process = subprocess.Popen(["/bin/sh", str(self.base / script), *args],
                                   env=self._env(container, ip, root), stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(process)
        return process

    def log(self, name: str) -> str:
        return (self.base / f"{name}.log").read_text(errors="replace")

    def close(self) -> None:
        for process in reversed(self.processes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(60)
        for root in self.roots:
            for pid in root_processes(root):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(self.base, ignore_errors=True)


def _container(template: Manifest) -> Manifest:
    container: Manifest = template["spec"]["containers"][0]
    return container


def _endpoint_args(deployment: Manifest, pods: Pods) -> list[str]:
    """The Deployment's `dockyard serve` arguments, with what the cluster provides."""
    args: list[str] = []
    for arg in _container(deployment["spec"]["template"])["args"]:
        flag, _, value = arg.partition("=")
        value = {"--host": "127.0.0.1", "--port": str(pods.http_port),
                 "--ray-address": f"127.0.0.2:{pods.gcs_port}",
                 "--token-file": str(pods.base / "client-token"),
                 "--advertise-url": f"http://127.0.0.1:{pods.http_port}"}.get(flag, value)
        args.append(f"{flag}={value}")
    return args


def _ready(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{READY_PATH}",
                                    timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())
    except (urllib.error.URLError, ConnectionError):
        return 0, {}


@pytest.fixture(scope="module")
def pods(renderer: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pods]:
    tmp = tmp_path_factory.mktemp("chart-values")
    running = Pods(render(renderer, tmp, VALUES), Path(tempfile.mkdtemp(prefix="dyh-")))
    try:
        yield running
    finally:
        running.close()


def test_the_charts_pods_make_a_ready_cluster(pods: Pods, renderer: Path,
                                              tmp_path: Path) -> None:
    manifests = render(renderer, tmp_path, VALUES)
    ray = next(m for m in manifests if m["kind"] == "RayCluster")["spec"]
    deployment = next(m for m in manifests if m["kind"] == "Deployment")
    arm64 = next(g for g in ray["workerGroupSpecs"] if g["groupName"] == "arm64")

    head = pods.start("head", _container(ray["headGroupSpec"]["template"]), "127.0.0.2")
    wait_for("the head's node", lambda: "started head" in pods.log("head")
             or head.poll() is not None, timeout=180)
    assert head.poll() is None, pods.log("head")
    endpoint_container = _container(deployment["spec"]["template"])
    endpoint = pods.start("endpoint", endpoint_container, "127.0.0.4",
                          _endpoint_args(deployment, pods))
    worker = pods.start("worker", _container(arm64["template"]), "127.0.0.3")

    status, body = wait_for("/readyz to answer 200", lambda: (a := _ready(pods.http_port))[0]
                            == 200 and a, timeout=240)
    assert body["workers"] == {"amd64": 1, "arm64": 1}, body
    assert body["required"] == ["amd64", "arm64"]
    assert endpoint.poll() is None and worker.poll() is None

    # the kubelet's SIGTERM goes to the container's first process: the script
    wait_for("the worker's node start to end", lambda: "started node" in pods.log("worker"),
             timeout=120)
    for name, process in (("worker", worker), ("head", head)):
        process.send_signal(signal.SIGTERM)
        assert process.wait(90) == 0, pods.log(name)
        assert "stopped dockyard-worker-" in pods.log(name), pods.log(name)
