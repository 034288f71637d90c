"""``/metrics`` of a real ``dockyard serve`` (cluster/_metrics.py), scraped as Prometheus
does: a plain GET without the token.

One endpoint for the module (its own DOCKYARD_ROOT, an embedded Ray head, a token, plain
HTTP on a free 127.0.0.1 port).  Two builds of one multi-platform Dockerfile through
``--endpoint`` (amd64 native, arm64 emulated on this machine), the second fully cached;
the scrape between and after them must parse (prometheus_client's own parser), hold
every family with bounded label values only, and count what the builds' own progress
says: vertices executed by the first, cached by the second, builds by status, emulated
executions, the context bytes the client sent.  ``dockyard metrics`` against an
embedded service of its own is the last test (the same text)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.cli_root import PROJECT, Dockyard
from support.progress import solve_blocks
from test_endpoint import _free_port, _stop, _wait_for_url

from dockyard.cluster._metrics import METRICS_PATH, OP_KINDS, OUTCOMES, WORKER_STATES
from dockyard.cluster._ray import ARCHES, ray_temp_dir

TOKEN = "metrics-token-77a2"

DOCKERFILE = """\
FROM BUSYBOX
COPY file.txt /file.txt
RUN cat /file.txt > /copied && uname -m > /arch
"""

#: Every family a scrape holds, and its type.
FAMILIES = {
    "dockyard_builds": "counter", "dockyard_build_duration_seconds": "histogram",
    "dockyard_vertices": "counter", "dockyard_vertex_duration_seconds": "histogram",
    "dockyard_executions": "counter", "dockyard_vertices_queued": "gauge",
    "dockyard_vertices_running": "gauge", "dockyard_workers": "gauge",
    "dockyard_workers_lost": "counter", "dockyard_workers_reporting": "gauge",
    "dockyard_cache_requests": "counter", "dockyard_cache_bytes": "counter",
    "dockyard_context_bytes_received": "counter", "dockyard_gc_runs": "counter",
    "dockyard_gc_removed_items": "counter", "dockyard_gc_removed_bytes": "counter",
}
#: What each label may say (bounded: never a build id, an image or a worker name).
LABEL_VALUES: dict[str, set[str]] = {
    "arch": {*ARCHES, "other"}, "outcome": set(OUTCOMES), "op": set(OP_KINDS),
    "state": set(WORKER_STATES), "mode": {"native", "emulated"}, "tenant": {"default"},
    "status": {"succeeded", "failed", "cancelled"}, "backend": {"worker", "s3", "local"},
    "object": {"record", "blob"}, "result": {"hit", "miss"},
    "direction": {"read", "written"}, "kind": {"image", "exec", "context", "cachemount"},
}


@dataclass
class Endpoint:
    url: str
    work: Path
    process: subprocess.Popen[bytes]
    token_file: Path

    def cli(self, *argv: str) -> subprocess.CompletedProcess[bytes]:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
        environ |= {"DOCKYARD_ROOT": str(self.work / "client-root"),
                    "PYTHONPATH": str(PROJECT)}
        return subprocess.run([sys.executable, "-m", "dockyard", *argv], cwd=self.work,
                              env=environ, capture_output=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def endpoint() -> Iterator[Endpoint]:
    root = Path(tempfile.mkdtemp(prefix="dym-", dir="/tmp"))
    work = Path(tempfile.mkdtemp(prefix="dym-work-"))
    token_file = work / "token"
    token_file.write_text(TOKEN + "\n")
    env = {**os.environ, "DOCKYARD_ROOT": str(root), "PYTHONPATH": str(PROJECT)}
    argv = [sys.executable, "-m", "dockyard", "serve", "--host", "127.0.0.1", "--port",
            str(_free_port()), "--token-file", str(token_file)]
    log = open(work / "serve.log", "wb")  # noqa: SIM115 -- closed at the end
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=log, cwd=work)
    try:
        yield Endpoint(_wait_for_url(process), work, process, token_file)
    finally:
        _stop(process)
        log.close()
        shutil.rmtree(ray_temp_dir(root), ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def _scrape(endpoint: Endpoint) -> tuple[str, dict[str, Any]]:
    """The exposition (fetched without a token) and its families by name, parsed."""
    with urllib.request.urlopen(endpoint.url + METRICS_PATH, timeout=60) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = answer.read().decode()
    return text, {family.name: family for family in text_string_to_metric_families(text)}


def _value(families: dict[str, Any], name: str, sample: str = "", **labels: str) -> float:
    """The sum of the samples of ``name`` (``sample``: its ``_total``, ``_count``...)
    whose labels include ``labels``."""
    return sum(s.value for s in families[name].samples
               if s.name == name + sample and labels.items() <= s.labels.items())


def _build(endpoint: Endpoint, context: Path, meta: Path) -> tuple[str, dict[str, Any]]:
    done = endpoint.cli("build", "--progress=plain", "--endpoint", endpoint.url,
                        "--token-file", str(endpoint.token_file), "--platform",
                        "linux/amd64,linux/arm64", "--metadata-file", str(meta),
                        str(context))
    assert done.returncode == 0, done.stderr.decode()
    return done.stderr.decode(), json.loads(meta.read_text())


def _ends(progress: str) -> list[str]:
    """How each vertex of the build's graph ended in plain progress: DONE or CACHED."""
    return [lines[-1].split()[0] for lines in solve_blocks(progress).values()]


def test_two_builds_scraped(endpoint: Endpoint, busybox_image: Any) -> None:
    context = endpoint.work / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(DOCKERFILE.replace("BUSYBOX",
                                                           busybox_image.reference))
    (context / "file.txt").write_text("counted\n")
    _, before = _scrape(endpoint)
    assert _value(before, "dockyard_builds", "_total") == 0
    assert _value(before, "dockyard_workers", state="idle", arch="amd64",
                  mode="native") >= 1

    first, meta = _build(endpoint, context, endpoint.work / "meta1.json")
    second, _ = _build(endpoint, context, endpoint.work / "meta2.json")
    text, families = _scrape(endpoint)

    assert set(FAMILIES) <= set(families), sorted(set(FAMILIES) - set(families))
    for name, kind in FAMILIES.items():
        assert families[name].type == kind, name
    _bounded(text, families)

    # the builds, as their own progress shows them
    executed, cached = _ends(first).count("DONE"), _ends(second).count("CACHED")
    assert executed >= 4 and "DONE" not in _ends(second), second
    assert _value(families, "dockyard_vertices", "_total", outcome="executed") == executed
    assert _value(families, "dockyard_vertices", "_total", outcome="cached") == cached
    for outcome in ("deduplicated", "failed", "retried"):
        assert _value(families, "dockyard_vertices", "_total", outcome=outcome) == 0
    assert _value(families, "dockyard_builds", "_total", status="succeeded") == 2
    assert _value(families, "dockyard_builds", "_total", status="failed") == 0
    assert _value(families, "dockyard_build_duration_seconds", "_count") == 2
    # every execution timed, one RUN per platform: the arm64 one emulated here
    assert _value(families, "dockyard_vertex_duration_seconds", "_count") == executed
    assert _value(families, "dockyard_executions", "_total") == executed
    assert _value(families, "dockyard_executions", "_total", arch="arm64",
                  mode="emulated") >= 1
    assert _value(families, "dockyard_vertex_duration_seconds", "_count", op="exec",
                  arch="arm64") == 1
    assert _value(families, "dockyard_vertices_running") == 0
    assert _value(families, "dockyard_vertices_queued") == 0
    # the workers' own counts: the cached build's lookups hit the node's store
    assert _value(families, "dockyard_workers_reporting") >= 1
    assert _value(families, "dockyard_cache_requests", "_total", backend="worker",
                  object="record", result="hit") >= 1
    assert _value(families, "dockyard_context_bytes_received", "_total") == \
        meta["dockyard.context.bytes-sent"]


def _bounded(text: str, families: dict[str, Any]) -> None:
    """Only known label names and values; no build id, image or worker name anywhere."""
    for family in families.values():
        for sample in family.samples:
            for label, value in sample.labels.items():
                if label == "le":
                    continue
                assert value in LABEL_VALUES.get(label, set()), (sample.name, label, value)
    assert not re.search(r"[0-9a-f]{32}", text)
    assert "busybox" not in text and "127.0.0.1" not in text and TOKEN not in text


def test_a_scrape_during_a_build_sees_it_running(endpoint: Endpoint,
                                                 busybox_image: Any) -> None:
    context = endpoint.work / "slow"
    context.mkdir()
    (context / "Dockerfile").write_text(f"FROM {busybox_image.reference}\n"
                                        "RUN sleep 4 && echo slept > /slept\n")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    environ |= {"DOCKYARD_ROOT": str(endpoint.work / "client-root"),
                "PYTHONPATH": str(PROJECT)}
    build = subprocess.Popen([sys.executable, "-m", "dockyard", "build", "--endpoint",
                              endpoint.url, "--token-file", str(endpoint.token_file),
                              "--platform", "linux/amd64", str(context)],
                             cwd=endpoint.work, env=environ, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    try:
        seen: list[float] = []
        while build.poll() is None and not seen:
            families = _scrape(endpoint)[1]
            if _value(families, "dockyard_vertices_running", arch="amd64") == 1:
                seen.append(_value(families, "dockyard_workers", arch="amd64",
                                   mode="native", state="idle"))
            time.sleep(0.2)
        _, stderr = build.communicate(timeout=300)
    finally:
        if build.poll() is None:
            build.kill()
            build.wait()
    assert build.returncode == 0, stderr.decode()
    assert seen == [0], "no scrape saw the RUN running on a busy worker"
    after = _scrape(endpoint)[1]
    assert _value(after, "dockyard_vertices_running") == 0
    assert _value(after, "dockyard_vertex_duration_seconds", "_sum", op="exec",
                  arch="amd64") >= 4


def test_metrics_needs_no_token_but_client_calls_do(endpoint: Endpoint) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(endpoint.url + "/ws", timeout=30)
    assert refused.value.code == 401
    assert _scrape(endpoint)[1]["dockyard_workers_reporting"].samples[0].value >= 1


def test_dockyard_metrics_prints_the_embedded_service_s(busybox_image: Any) -> None:
    """``dockyard metrics``: none running is one clear line; after a build on the embedded
    service, the same families, counting that build."""
    root = Path(tempfile.mkdtemp(prefix="dym-local-", dir="/tmp"))
    work = Path(tempfile.mkdtemp(prefix="dym-local-work-"))
    dockyard = Dockyard(root, busybox_image.reference, work)
    try:
        none = dockyard.run("metrics")
        assert none.returncode != 0 and b"Traceback" not in none.stderr
        assert b"no dockyard service is running" in none.stderr, none.stderr
        (work / "Dockerfile").write_text(DOCKERFILE.replace("BUSYBOX", dockyard.busybox))
        (work / "file.txt").write_text("counted\n")
        cache = work / "cache"
        built = dockyard.build("--cache-to", f"type=local,dest={cache},mode=max", str(work))
        assert built.returncode == 0, built.stderr.decode()
        done = dockyard.run("metrics")
        assert done.returncode == 0, done.stderr.decode()
        text = done.stdout.decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert set(FAMILIES) <= set(families)
        _bounded(text, families)
        assert _value(families, "dockyard_builds", "_total", status="succeeded") == 1
        assert _value(families, "dockyard_vertices", "_total", outcome="executed") == \
            _ends(built.stderr.decode()).count("DONE")
        # the --cache-to backend: the bytes it was sent; its counts kept as the build ended
        blobs = (cache / "cache" / "blobs").rglob("*")
        sent = sum(p.stat().st_size for p in blobs if p.is_file())
        assert sent > 0
        assert _value(families, "dockyard_cache_bytes", "_total", backend="local",
                      direction="written") == sent
        assert {s.labels["backend"] for s in families["dockyard_cache_requests"].samples} \
            == {"worker", "local"}
    finally:
        dockyard.run("stop", timeout=90)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
