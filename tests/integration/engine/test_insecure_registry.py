"""Plain-HTTP registries beyond loopback, per build: the loopback registry addressed by
this machine's host name (which resolves to 127.0.0.1 but does not look like loopback, so
it is spoken to over HTTPS unless listed).  ``registry.insecure=true`` and
``DOCKYARD_INSECURE_REGISTRIES`` go options -> wire -> the build's session -> its registry
client: the image is pushed there and pulled back, while a build that did not list the
registry still speaks HTTPS to it (and fails)."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import socket
from pathlib import Path
from typing import Any

import pytest

from dockyard.cluster._build_options import BuildOptions, gather_options
from dockyard.cluster._cli import build_parser
from dockyard.cluster._local_build import LocalBuildOptions, build_local
from dockyard.scheduler._errors import RegistryError
from dockyard.scheduler._platform import parse_platform
from dockyard.scheduler._reference import parse_reference
from dockyard.workers._exporters import push_image
from dockyard.workers._manifests import uses_plain_http
from dockyard.workers._runtime import BuildSession, WorkerRuntime

AMD64 = parse_platform("linux/amd64")


def _loopback_alias() -> str:
    """A name of this machine that resolves to loopback without looking like it."""
    name = socket.gethostname()
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(name, None, socket.AF_INET)}
    except OSError:
        addresses = set()
    if (uses_plain_http(name) or not addresses or
            not all(ipaddress.ip_address(a).is_loopback for a in addresses)):
        pytest.skip(f"the host name {name!r} does not resolve to loopback only, and only "
                    f"loopback may be contacted")
    return name


def _options(tmp_path: Path, argv: list[str], environ: dict[str, str]) -> BuildOptions:
    args: argparse.Namespace = build_parser().parse_args(["build", *argv, str(tmp_path)])
    return BuildOptions.from_wire(gather_options(args, environ).to_wire())


def test_registry_insecure_true_pushes_and_the_listed_registry_is_pulled(
        tmp_path: Path, busybox_image: Any, registry: Any) -> None:
    domain = f"{_loopback_alias()}:{registry.port}"
    name = f"{domain}/team/insecure:1"
    pushed = _options(tmp_path, ["-o", f"type=image,name={name},push=true,"
                                       "registry.insecure=true"], {})
    pulling = _options(tmp_path, [], {"DOCKYARD_INSECURE_REGISTRIES": domain})
    assert pushed.insecure_registries == pulling.insecure_registries == (domain,)
    asyncio.run(_push_then_pull(tmp_path, busybox_image, name, pushed, pulling))


async def _push_then_pull(tmp_path: Path, busybox_image: Any, name: str,
                          pushed: BuildOptions, pulling: BuildOptions) -> None:
    runtime = WorkerRuntime(tmp_path / "root")
    try:
        built = await build_local(f"FROM {busybox_image.reference}\nENV MARK=insecure\n"
                                  .encode(), tmp_path,
                                  LocalBuildOptions(root=runtime.root, platforms=(AMD64,)),
                                  runtime=runtime)
        client = runtime.registry_for(pushed.insecure_registries)
        digest = await push_image(built.exported, runtime.blob_source(), client, name,
                                  scratch=runtime.tmp)
        listed = runtime.backend(BuildSession(
            insecure_registries=frozenset(pulling.insecure_registries)))
        image = await listed.resolve_image(name, AMD64)
        assert image.digest == digest and b"MARK=insecure" in image.config
        await listed.fetch_image_blobs(parse_reference(name), image)
        unlisted = runtime.backend(BuildSession())
        with pytest.raises(RegistryError, match=r"https://"):
            await unlisted.resolve_image(name, AMD64)
    finally:
        await runtime.aclose()
