"""helm/dockyard rendered for every values combination that matters, and checked.

No helm binary is reachable here: helm/tools/render (Go text/template with sprig and
Helm's own functions, built once per session from Debian's Go packages) renders the chart
as ``helm template`` does.  Each case's manifests are checked for:

- Kubernetes' own schemas (``kubernetes-validate``, strict: unknown fields refused) for
  every built-in kind, and for each pod template the RayCluster embeds (as a PodTemplate);
- the RayCluster against helm/tools/raycluster-v1-schema.yaml: the fields of KubeRay's
  ``ray.io/v1`` API we use, written by us (not the upstream CRD: see that file);
- selectors matching the pods' labels (and only the endpoint's pods), arch node selectors,
  every referenced Secret and ConfigMap (and key) rendered or named as existing by values,
  ports consistent between containers, Service, probes, Ingress and ServiceMonitor, and
  probes on the paths the endpoint serves (cluster/_probes.py, which
  tests/integration/cluster/test_probes.py checks against a real ``dockyard serve``).
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from support.helm import CHART, IMAGE, PROJECT, Manifest, merge, render, run_renderer

from dockyard.cluster._probes import HEALTH_PATH, READY_PATH

RAYCLUSTER_SCHEMA = PROJECT / "helm" / "tools" / "raycluster-v1-schema.yaml"
KUBERNETES = "1.30"


CASES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "arm64-off": {"workers": {"arm64": {"enabled": False}}},
    "amd64-off": {"workers": {"amd64": {"enabled": False}}, "head": {"arch": "arm64"}},
    "binfmt": {"binfmt": {"enabled": True}},
    "binfmt-arm64-off": {"binfmt": {"enabled": True}, "workers": {"arm64": {"enabled": False}}},
    "ingress-tls": {"endpoint": {"ingress": {
        "enabled": True, "className": "nginx", "host": "builds.example.com",
        "annotations": {"nginx.ingress.kubernetes.io/proxy-read-timeout": "3600"},
        "tls": {"enabled": True}}}},
    "endpoint-tls": {"endpoint": {"tls": {"existingSecret": "dockyard-endpoint-cert"}}},
    "existing-secrets": {
        "rayToken": {"existingSecret": "my-ray-token", "key": "ray"},
        "endpoint": {"token": {"existingSecret": "my-endpoint-token"}},
        "cache": {"s3": {"enabled": True, "bucket": "builds", "region": "eu-west-1",
                         "credentials": {"existingSecret": "my-s3"}}}},
    "chart-secrets": {
        "rayToken": {"value": "ray-cluster-token-value"},
        "endpoint": {"token": {"value": "endpoint-token-value"}},
        "cache": {"s3": {"enabled": True, "bucket": "builds", "prefix": "ci/",
                         "endpointUrl": "https://s3.example", "usePathStyle": True,
                         "credentials": {"accessKeyId": "AKIAEXAMPLE",
                                         "secretAccessKey": "s3-secret-value"}}}},
    "s3-role-credentials": {"cache": {"s3": {"enabled": True, "bucket": "builds"}}},
    "servicemonitor": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
    "storage-ephemeral": {"storage": {"type": "ephemeral",
                                      "ephemeral": {"storageClassName": "fast"}}},
    "storage-hostpath": {"storage": {"type": "hostPath"}},
    "sized": {"workers": {"amd64": {"replicas": 3, "minReplicas": 2, "maxReplicas": 8,
                                    "slots": 6, "objectStoreMemory": 209715200}},
              "endpoint": {"readyArches": ["any"]}},
}


# --- rendering ---------------------------------------------------------------------------


@pytest.fixture(params=sorted(CASES), scope="module")
def case(request: pytest.FixtureRequest, renderer: Path,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[Manifest]]]:
    name: str = request.param
    yield name, render(renderer, tmp_path_factory.mktemp(name), CASES[name])


# --- looking into manifests --------------------------------------------------------------


def of_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def one(manifests: list[Manifest], kind: str) -> Manifest:
    found = of_kind(manifests, kind)
    assert len(found) == 1, f"{len(found)} {kind}s"
    return found[0]


def pod_templates(manifests: list[Manifest]) -> list[tuple[str, Manifest]]:
    """(where, pod template) of the endpoint Deployment and the RayCluster's groups."""
    found = [(f"Deployment/{d['metadata']['name']}", d["spec"]["template"])
             for d in of_kind(manifests, "Deployment")]
    for ray in of_kind(manifests, "RayCluster"):
        found.append(("head", ray["spec"]["headGroupSpec"]["template"]))
        found += [(f"group {g['groupName']}", g["template"])
                  for g in ray["spec"].get("workerGroupSpecs", [])]
    return found


def env_of(container: Manifest) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def args_of(container: Manifest) -> dict[str, str]:
    return dict(a[2:].split("=", 1) for a in container.get("args", []))


def endpoint_container(manifests: list[Manifest]) -> Manifest:
    container: Manifest = one(manifests, "Deployment")["spec"]["template"]["spec"][
        "containers"][0]
    return container


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# --- the checks --------------------------------------------------------------------------


def test_builtin_kinds_pass_kubernetes_schemas(case: tuple[str, list[Manifest]]) -> None:
    _, manifests = case
    kinds = {m["kind"] for m in manifests}
    assert {"Deployment", "Service", "ConfigMap", "RayCluster"} <= kinds
    for manifest in manifests:
        if manifest["apiVersion"] in ("ray.io/v1", "monitoring.coreos.com/v1"):
            continue
        kubernetes_validate.validate(manifest, KUBERNETES, strict=True)
    for where, template in pod_templates(manifests):
        as_kind = {"apiVersion": "v1", "kind": "PodTemplate",
                   "metadata": {"name": "t"}, "template": template}
        try:
            kubernetes_validate.validate(as_kind, KUBERNETES, strict=True)
        except kubernetes_validate.ValidationError as error:
            raise AssertionError(f"{where}: {error}") from None


def test_raycluster_passes_our_kuberay_v1_schema(case: tuple[str, list[Manifest]]) -> None:
    _, manifests = case
    schema = yaml.safe_load(RAYCLUSTER_SCHEMA.read_text())
    jsonschema.validate(one(manifests, "RayCluster"), schema)


def test_the_schema_refuses_what_kuberay_would(renderer: Path, tmp_path: Path) -> None:
    """The RayCluster schema is no rubber stamp: each break is refused."""
    schema = yaml.safe_load(RAYCLUSTER_SCHEMA.read_text())
    ray = one(render(renderer, tmp_path, {}), "RayCluster")
    breaks: list[tuple[tuple[str | int, ...], str]] = [
        (("spec",), "headGroupSpec"), (("spec", "headGroupSpec"), "rayStartParams"),
        (("spec", "workerGroupSpecs", 0), "groupName"),
        (("spec", "workerGroupSpecs", 0), "template")]
    for parent, key in breaks:
        broken = json.loads(json.dumps(ray))
        node = broken
        for step in parent:
            node = node[step]
        node.pop(key)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, schema)
    typo = json.loads(json.dumps(ray))
    typo["spec"]["workerGroupSpecs"][0]["maxReplica"] = 3
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(typo, schema)


def test_selectors_match_the_endpoint_pods_only(case: tuple[str, list[Manifest]]) -> None:
    _, manifests = case
    deployment = one(manifests, "Deployment")
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert matches(selector, deployment["spec"]["template"]["metadata"]["labels"])
    services = {s["metadata"]["name"]: s for s in of_kind(manifests, "Service")}
    service = services[deployment["metadata"]["name"]]
    chosen = [where for where, t in pod_templates(manifests)
              if matches(service["spec"]["selector"], t["metadata"]["labels"])]
    assert chosen == [f"Deployment/{deployment['metadata']['name']}"]
    for monitor in of_kind(manifests, "ServiceMonitor"):
        picked = [n for n, s in services.items()
                  if matches(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
        assert picked == [service["metadata"]["name"]]
        assert monitor["spec"]["namespaceSelector"]["matchNames"] == ["builds"]


def test_arch_node_selectors(case: tuple[str, list[Manifest]]) -> None:
    name, manifests = case
    values = merge(yaml.safe_load((CHART / "values.yaml").read_text()), CASES[name])
    ray = one(manifests, "RayCluster")
    head = ray["spec"]["headGroupSpec"]["template"]
    groups = {g["groupName"]: g for g in ray["spec"].get("workerGroupSpecs", [])}
    assert sorted(groups) == [a for a in ("amd64", "arm64") if values["workers"][a]["enabled"]]
    placed = [(values["head"]["arch"], head)] + [(a, g["template"]) for a, g in groups.items()]
    for arch, template in placed:
        assert template["spec"]["nodeSelector"]["kubernetes.io/arch"] == arch
        env = env_of(template["spec"]["containers"][0])
        assert env["DOCKYARD_ARCH"] == arch
        emulated = [a for a in env["DOCKYARD_EMULATE"].split(",") if a]
        assert arch not in emulated
        assert emulated == ([a for a in ("amd64", "arm64") if a != arch]
                            if values["binfmt"]["enabled"] else [])
        init = template["spec"].get("initContainers", [])
        if emulated:
            qemu = {"amd64": "qemu-x86_64", "arm64": "qemu-aarch64"}
            assert env_of(init[0])["QEMU_HANDLERS"] == " ".join(qemu[a] for a in emulated)
            assert init[0]["securityContext"]["privileged"] is True
        else:
            assert init == []
    for arch, group in groups.items():
        want = values["workers"][arch]
        assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (
            want["replicas"], want["minReplicas"], want["maxReplicas"])


def test_node_commands_are_dockyards(case: tuple[str, list[Manifest]]) -> None:
    """The Ray pods run `dockyard node start` (the scripts' ConfigMap) with the root, the
    token and the head's address of KubeRay's head Service; the endpoint runs `dockyard
    serve` attached to the same head, advertising its own Service."""
    name, manifests = case
    ray = one(manifests, "RayCluster")
    assert ray["metadata"]["annotations"]["ray.io/overwrite-container-cmd"] == "true"
    head_address = f"{ray['metadata']['name']}-head-svc.builds.svc:6379"
    scripts = one(manifests, "ConfigMap")["data"]
    assert "dockyard node start" in scripts["node.sh"] and "dockyard node stop" in scripts[
        "node.sh"]
    assert 'exec dockyard serve "$@"' in scripts["endpoint.sh"]
    for where, template in pod_templates(manifests):
        container = template["spec"]["containers"][0]
        env = env_of(container)
        assert env["DOCKYARD_ROOT"] == "/var/lib/dockyard", where
        assert env["RAY_AUTH_MODE"] == "token" and env["DOCKYARD_HEAD_ADDRESS"] == head_address
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        token_dir = env["RAY_AUTH_TOKEN_PATH"].rsplit("/", 1)[0]
        assert mounts[token_dir] == "ray-token"
        if where.startswith("Deployment"):
            continue
        assert container["command"] == ["/bin/sh", "/opt/dockyard/scripts/node.sh"]
        assert env["DOCKYARD_NODE_ROLE"] == ("head" if where == "head" else "worker")
        assert mounts["/var/lib/dockyard"] == "store"
        assert container["securityContext"] == {"privileged": True}
        assert container["livenessProbe"]["exec"]["command"][:3] == ["dockyard", "node", "ls"]
    serve = args_of(endpoint_container(manifests))
    assert serve["ray-address"] == head_address and serve["host"] == "0.0.0.0"
    service = one(manifests, "Deployment")["metadata"]["name"]
    scheme = "https" if "tls-cert" in serve else "http"
    assert serve["advertise-url"] == f"{scheme}://{service}.builds.svc:8375"
    values = merge(yaml.safe_load((CHART / "values.yaml").read_text()), CASES[name])
    enabled = [a for a in ("amd64", "arm64") if values["workers"][a]["enabled"]]
    assert serve.get("ready-arch") == (None if values["endpoint"]["readyArches"] == ["any"]
                                       else ",".join(enabled))
    if values["cache"]["s3"]["enabled"]:
        assert serve["cache"].startswith(f"type=s3,bucket={values['cache']['s3']['bucket']}")
    else:
        assert "cache" not in serve


def _referenced(template: Manifest) -> tuple[set[tuple[str, str | None]], set[str]]:
    """(secret, key or None) pairs and ConfigMap names a pod template refers to."""
    secrets: set[tuple[str, str | None]] = set()
    maps: set[str] = set()
    spec = template["spec"]
    for volume in spec.get("volumes", []):
        if "secret" in volume:
            secrets.add((volume["secret"]["secretName"], None))
        if "configMap" in volume:
            maps.add(volume["configMap"]["name"])
    for container in spec.get("initContainers", []) + spec["containers"]:
        for env in container.get("env", []):
            ref = env.get("valueFrom", {})
            if "secretKeyRef" in ref:
                secrets.add((ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"]))
            if "configMapKeyRef" in ref:
                maps.add(ref["configMapKeyRef"]["name"])
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                secrets.add((source["secretRef"]["name"], None))
            if "configMapRef" in source:
                maps.add(source["configMapRef"]["name"])
    return secrets, maps


def _existing_by_values(values: dict[str, Any]) -> set[str]:
    return {name for name in (values["rayToken"]["existingSecret"],
                              values["endpoint"]["token"]["existingSecret"],
                              values["endpoint"]["tls"]["existingSecret"],
                              values["cache"]["s3"]["credentials"]["existingSecret"],
                              values["endpoint"]["ingress"]["tls"]["secretName"]) if name}


def test_referenced_secrets_and_configmaps_exist(case: tuple[str, list[Manifest]]) -> None:
    name, manifests = case
    values = merge(yaml.safe_load((CHART / "values.yaml").read_text()), CASES[name])
    rendered = {s["metadata"]["name"]: s for s in of_kind(manifests, "Secret")}
    maps = {m["metadata"]["name"] for m in of_kind(manifests, "ConfigMap")}
    existing = _existing_by_values(values)
    assert not existing & set(rendered), "a Secret named as existing is rendered too"
    for where, template in pod_templates(manifests):
        secrets, config_maps = _referenced(template)
        assert config_maps <= maps, where
        for secret, key in secrets:
            if secret in existing:
                continue
            assert secret in rendered, f"{where} refers to Secret {secret}, which is nowhere"
            if key is not None:
                assert key in rendered[secret]["data"], f"{where}: {secret} has no {key}"
    for secret in rendered.values():
        for value in secret["data"].values():
            assert base64.b64decode(value, validate=True)
    for ingress in of_kind(manifests, "Ingress"):
        for tls in ingress["spec"].get("tls", []):
            assert tls["secretName"] in existing or tls["secretName"].endswith("-ingress-tls")


def test_chart_made_secrets_hold_the_given_values(renderer: Path, tmp_path: Path) -> None:
    manifests = render(renderer, tmp_path, CASES["chart-secrets"])
    data = {s["metadata"]["name"]: {k: base64.b64decode(v).decode()
                                    for k, v in s["data"].items()}
            for s in of_kind(manifests, "Secret")}
    assert data == {"ci-dockyard-ray-token": {"token": "ray-cluster-token-value"},
                    "ci-dockyard-endpoint-token": {"token": "endpoint-token-value"},
                    "ci-dockyard-s3-credentials": {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
                                                   "AWS_SECRET_ACCESS_KEY":
                                                       "s3-secret-value"}}
    text = json.dumps([m for m in manifests if m["kind"] != "Secret"])
    assert "s3-secret-value" not in text and "endpoint-token-value" not in text
    # without a value: a random token of 64 characters, another on each render
    first, second = (one_secret(render(renderer, tmp_path, {}), "ci-dockyard-endpoint-token")
                     for _ in range(2))
    assert len(first) == len(second) == 64 and first != second


def one_secret(manifests: list[Manifest], name: str) -> str:
    secret = next(s for s in of_kind(manifests, "Secret") if s["metadata"]["name"] == name)
    return base64.b64decode(secret["data"]["token"]).decode()


def test_ports_and_probes_agree(case: tuple[str, list[Manifest]]) -> None:
    _, manifests = case
    container = endpoint_container(manifests)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": int(args_of(container)["port"])}
    service = next(s for s in of_kind(manifests, "Service")
                   if s["metadata"]["name"] == one(manifests, "Deployment")["metadata"]["name"])
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] in ports and service_port["port"] == 8375
    scheme = "HTTPS" if "tls-cert" in args_of(container) else "HTTP"
    for probe, path in (("startupProbe", HEALTH_PATH), ("livenessProbe", HEALTH_PATH),
                        ("readinessProbe", READY_PATH)):
        get = container[probe]["httpGet"]
        assert (get["path"], get["port"], get["scheme"]) == (path, "http", scheme), probe
    for ingress in of_kind(manifests, "Ingress"):
        (rule,) = ingress["spec"]["rules"]
        backend = rule["http"]["paths"][0]["backend"]["service"]
        assert backend == {"name": service["metadata"]["name"],
                           "port": {"name": service_port["name"]}}
        assert [t["hosts"] for t in ingress["spec"]["tls"]] == [[rule["host"]]]
    for monitor in of_kind(manifests, "ServiceMonitor"):
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] == service_port["name"] and endpoint["path"] == "/metrics"
        assert endpoint["scheme"] == scheme.lower()
    ray = one(manifests, "RayCluster")
    head = ray["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {p["name"]: p["containerPort"] for p in head["ports"]} == {"gcs-server": 6379}
    assert env_of(head)["DOCKYARD_GCS_PORT"] == "6379"
    assert ray["spec"]["headGroupSpec"]["rayStartParams"] == {"port": "6379"}


def test_storage_kinds(renderer: Path, tmp_path: Path) -> None:
    def store(values: dict[str, Any]) -> Manifest:
        ray = one(render(renderer, tmp_path, values), "RayCluster")
        volumes = ray["spec"]["workerGroupSpecs"][0]["template"]["spec"]["volumes"]
        found: Manifest = next(v for v in volumes if v["name"] == "store")
        return found

    assert store({})["emptyDir"] == {"sizeLimit": "50Gi"}
    assert store(CASES["storage-hostpath"])["hostPath"] == {"path": "/var/lib/dockyard",
                                                            "type": "DirectoryOrCreate"}
    claim = store(CASES["storage-ephemeral"])["ephemeral"]["volumeClaimTemplate"]["spec"]
    assert claim == {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast",
                     "resources": {"requests": {"storage": "100Gi"}}}


REFUSED = [
    ({"image": {"repository": ""}}, "image.repository is required"),
    ({"endpoint": {"ingress": {"enabled": True}}}, "endpoint.ingress.host is required"),
    ({"cache": {"s3": {"enabled": True}}}, "cache.s3.bucket is required"),
    ({"storage": {"type": "nfs"}}, 'storage.type must be emptyDir, hostPath or ephemeral, '
                                   'not "nfs"'),
    ({"workers": {"arm64": {"minReplicas": 5, "maxReplicas": 2}}},
     "workers.arm64: minReplicas 5 is above maxReplicas 2"),
    ({"cache": {"s3": {"enabled": True, "bucket": "b",
                       "credentials": {"accessKeyId": "AKIA"}}}},
     "cache.s3.credentials.secretAccessKey is required"),
]


@pytest.mark.parametrize(("values", "message"), REFUSED)
def test_bad_values_are_refused_with_a_message(renderer: Path, tmp_path: Path,
                                               values: dict[str, Any], message: str) -> None:
    done = run_renderer(renderer, tmp_path, merge(IMAGE, values))
    assert done.returncode == 1 and message in done.stderr, done.stderr
    assert done.stdout == ""


def test_the_renderer_keeps_helms_semantics(renderer: Path, tmp_path: Path) -> None:
    """What the chart relies on from Helm, on a chart of its own: values coalesced (maps
    merged, null removes a key), numbers as Helm reads them, defines shared through
    _helpers.tpl, include, tpl, toYaml, .Release, .Chart and .Template."""
    chart = tmp_path / "mini"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: mini\nversion: 1.2.3\n"
                                      "appVersion: '9.9'\n")
    (chart / "values.yaml").write_text("a: {b: 1, c: 2}\ngone: here\nport: 8080\n"
                                       "greeting: 'hello {{ .Release.Name }}'\n")
    (chart / "templates" / "_helpers.tpl").write_text(
        '{{- define "mini.name" -}}{{ .Chart.Name }}-{{ .Release.Name }}{{- end -}}')
    (chart / "templates" / "out.yaml").write_text(
        'name: {{ include "mini.name" . }}\n'
        "greeting: {{ tpl .Values.greeting . }}\n"
        "a: {{ toYaml .Values.a | nindent 2 }}\n"
        "gone: {{ .Values.gone | default \"removed\" }}\n"
        "port: {{ .Values.port }}\n"
        "chart: {{ .Chart.Version }}/{{ .Chart.AppVersion }}\n"
        "template: {{ .Template.Name }}\n"
        "namespace: {{ .Release.Namespace }}\n")
    (tmp_path / "over.yaml").write_text("a: {c: 3}\ngone: null\n")
    done = subprocess.run([str(renderer), "-f", str(tmp_path / "over.yaml"), "-name", "r1",
                           "-namespace", "ns", str(chart)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("---\n# Source: mini/templates/out.yaml\n")
    assert yaml.safe_load(done.stdout) == {
        "name": "mini-r1", "greeting": "hello r1", "a": {"b": 1, "c": 3},
        "gone": "removed", "port": 8080, "chart": "1.2.3/9.9",
        "template": "mini/templates/out.yaml", "namespace": "ns"}
