"""The loopback docker-registry: it lives in devkit/registry.py, which the demo shares
(examples/ imports nothing of tests/); the tests keep importing it from here."""

from devkit.registry import (
    READY_TIMEOUT,
    RunningRegistry,
    free_port,
    loopback_registry,
    registry_config,
    start_registry,
    stop_registry,
)

__all__ = ["READY_TIMEOUT", "RunningRegistry", "free_port", "loopback_registry",
           "registry_config", "start_registry", "stop_registry"]
