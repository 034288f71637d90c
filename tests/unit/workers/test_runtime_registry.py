"""A build's insecure registries reach the registry client of that build only: the
runtime's shared client when the build adds none, else one client per set of extra
registries (plain HTTP for them), and other builds keep speaking HTTPS."""

from __future__ import annotations

import asyncio
from pathlib import Path

from dockyard.workers._manifests import registry_url
from dockyard.workers._registry import RegistryClient, RegistryConfig
from dockyard.workers._runtime import BuildSession, WorkerRuntime


def _scheme(client: RegistryClient, domain: str) -> str:
    config: RegistryConfig = client._config  # noqa: SLF001 -- the client's own settings
    return registry_url(domain, config.insecure_registries).split(":", 1)[0]


def test_each_build_gets_the_registries_it_asked_for(tmp_path: Path) -> None:
    runtime = WorkerRuntime(tmp_path, registry=RegistryConfig(
        insecure_registries=frozenset({"always:5000"})))
    plain = runtime.backend(BuildSession())
    same = runtime.backend(BuildSession(insecure_registries=frozenset({"always:5000"})))
    asked = runtime.backend(BuildSession(insecure_registries=frozenset({"reg.local:5000"})))
    again = runtime.backend(BuildSession(insecure_registries=frozenset({"reg.local:5000"})))
    assert plain.registry is runtime.registry and same.registry is runtime.registry
    assert asked.registry is again.registry and asked.registry is not runtime.registry
    assert _scheme(plain.registry, "reg.local:5000") == "https"
    assert _scheme(asked.registry, "reg.local:5000") == "http"
    assert _scheme(asked.registry, "always:5000") == "http"
    assert _scheme(asked.registry, "other:5000") == "https"
    asyncio.run(runtime.aclose())
