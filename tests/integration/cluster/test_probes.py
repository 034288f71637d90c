"""``/healthz`` and ``/readyz`` of a real ``dockyard serve`` (cluster/_probes.py), as a
kubelet probes them: plain GETs without the token.

One cluster for the module (tests/support/cluster.py): a head whose worker is amd64, and
``dockyard serve --ready-arch amd64,arm64`` over it; readiness is checked before an arm64
node joins, after it joined, and after it was stopped again; ``/metrics`` (no token
either) then counts the workers of both nodes, each one's own report included.  The paths
are the ones the Helm chart's probes use (tests/unit/helm imports the same constants)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.cluster import LocalCluster, wait_for

from dockyard.cluster._metrics import METRICS_PATH
from dockyard.cluster._probes import HEALTH_PATH, READY_PATH


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    running = LocalCluster()
    try:
        running.add_node("amd64", (), 1, head=True)
        running.start_endpoint("--ready-arch", "amd64,arm64")
        yield running
    finally:
        running.close()


def _get(cluster: LocalCluster, path: str) -> tuple[int, str]:
    """A GET with no Authorization header: (status, body)."""
    try:
        with urllib.request.urlopen(cluster.url + path, timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


def _ready(cluster: LocalCluster) -> tuple[int, dict[str, Any]]:
    status, body = _get(cluster, READY_PATH)
    return status, json.loads(body)


def _says_nothing_secret(cluster: LocalCluster, body: str) -> None:
    assert cluster.token not in body
    assert "127.0.0." not in body and str(cluster.base) not in body


def test_healthz_answers_without_the_token(cluster: LocalCluster) -> None:
    status, body = _get(cluster, HEALTH_PATH)
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    # the client calls still need it
    assert _get(cluster, "/ws")[0] == 401


def test_readyz_waits_for_a_worker_of_each_required_arch(cluster: LocalCluster) -> None:
    status, body = _ready(cluster)
    assert status == 503
    assert body == {"ready": False, "workers": {"amd64": 1},
                    "required": ["amd64", "arm64"], "missing": ["arm64"]}
    _says_nothing_secret(cluster, json.dumps(body))

    arm64 = cluster.add_node("arm64", (), 1)
    status, body = wait_for("/readyz to answer 200", lambda: (a := _ready(cluster))[0] == 200
                            and a, timeout=60)
    assert body == {"ready": True, "workers": {"amd64": 1, "arm64": 1},
                    "required": ["amd64", "arm64"]}
    # one scrape of /metrics sees both nodes: each worker's own report, each native arch
    metrics = _metrics(cluster)
    assert metrics["dockyard_workers_reporting"] == 2
    assert metrics['dockyard_workers{arch="amd64",mode="native",state="idle"}'] == 1
    assert metrics['dockyard_workers{arch="arm64",mode="native",state="idle"}'] == 1

    cluster.stop_node(arm64)
    status, body = wait_for("/readyz to answer 503 again",
                            lambda: (a := _ready(cluster))[0] == 503 and a, timeout=60)
    assert body["missing"] == ["arm64"] and body["workers"] == {"amd64": 1}
    metrics = _metrics(cluster)
    assert metrics["dockyard_workers_reporting"] == 1
    assert metrics['dockyard_workers{arch="arm64",mode="native",state="idle"}'] == 0


def _metrics(cluster: LocalCluster) -> dict[str, float]:
    """``/metrics`` (no token either), parsed: each sample as it is written -> its value."""
    status, text = _get(cluster, METRICS_PATH)
    assert status == 200
    _says_nothing_secret(cluster, text)
    return {s.name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                      + "}" if s.labels else ""): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}
