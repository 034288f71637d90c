"""BuildKit 20.10's inline cache (``BUILDKIT_INLINE_CACHE=1``) and dockyard's, each read by
the other, through a loopback registry.

What can match: nothing, by key.  BuildKit's records are keyed by digests of its LLB ops
(an exec's args, env, mounts and platform as Go's JSON of its protobuf), linked to their
inputs' records; dockyard's keys hash its own op encoding (scheduler/_cachekey.py).  The
layers differ too (BuildKit's tars keep the build's mtimes).  So dockyard reads a
BuildKit inline cache without error, counts its records as foreign and runs every step;
BuildKit reads a dockyard inline cache without error and runs every step.  These tests
pin both halves: a format either side could not parse would fail them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _buildkit import PrivateDockerd
from support.progress import plain_blocks
from support.registry import RunningRegistry, loopback_registry

from dockyard.cache_backends._cache_config import INLINE_CACHE_KEY, CacheConfig
from dockyard.scheduler._reference import parse_reference
from dockyard.workers._registry import RegistryClient
from dockyard.workers._registry_cache import RegistryCache

pytestmark = pytest.mark.oracle
PROJECT = Path(__file__).resolve().parents[2]
DOCKERFILE = "FROM {base}\nCOPY hello.txt /hello.txt\nRUN echo hi > /hi\n"


@pytest.fixture(scope="module")
def registry() -> Iterator[RunningRegistry]:
    root = Path(tempfile.mkdtemp(prefix="dyo-reg-"))
    try:
        with loopback_registry(root) as reg:
            yield reg
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def base(buildkit: PrivateDockerd, registry: RunningRegistry) -> str:
    """A busybox image BuildKit built, pushed where dockyard can pull it too."""
    tag = f"{registry.domain}/interop/base:1"
    buildkit.tag_busybox(tag)
    _ok(buildkit.docker("push", tag))
    return tag


@pytest.fixture(scope="module")
def dockyard_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="dyo-root-", dir="/tmp"))
    try:
        yield root
    finally:
        _dockyard(root, "stop")
        shutil.rmtree(root, ignore_errors=True)


def _ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    return done.stdout


def _dockyard(root: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "DOCKYARD_ROOT": str(root), "PYTHONPATH": str(PROJECT)}
    return subprocess.run([sys.executable, "-m", "dockyard", *argv], env=environ,
                          capture_output=True, text=True, timeout=240, check=False)


def _context(tmp_path: Path, base: str, text: str = "hello\n") -> Path:
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(DOCKERFILE.format(base=base))
    (context / "hello.txt").write_text(text)
    return context


def _config(registry: RunningRegistry, repository: str, tag: str) -> dict[str, Any]:
    def get(path: str, accept: str = "") -> Any:
        request = urllib.request.Request(f"{registry.url}/v2/{repository}/{path}",
                                         headers={"Accept": accept})
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read())
    manifest = get(f"manifests/{tag}", "application/vnd.docker.distribution.manifest.v2+json,"
                                       " application/vnd.oci.image.manifest.v1+json")
    config: dict[str, Any] = get(f"blobs/{manifest['config']['digest']}")
    return config


def _read(ref: str) -> CacheConfig:
    async def read() -> CacheConfig:
        async with RegistryClient() as client:
            return await RegistryCache(parse_reference(ref), client).loaded()
    return asyncio.run(read())


def _runs(progress: str) -> list[str]:
    return [lines[-1] for lines in plain_blocks(progress).values() if " RUN " in lines[0]]


def test_dockyard_reads_a_buildkit_inline_cache_and_nothing_of_it_matches(
        buildkit: PrivateDockerd, registry: RunningRegistry, base: str,
        dockyard_root: Path, tmp_path: Path) -> None:
    image = f"{registry.domain}/interop/app:buildkit"
    result = buildkit.build(DOCKERFILE.format(base=base), {"hello.txt": "hello\n"},
                            build_args={"BUILDKIT_INLINE_CACHE": "1"})
    assert result.ok, result.error_text
    _ok(buildkit.docker("tag", result.image["Id"], image))
    _ok(buildkit.docker("push", image))
    records = json.loads(base64.b64decode(_config(registry, "interop/app", "buildkit")
                                          [INLINE_CACHE_KEY]))
    assert isinstance(records, list) and any("inputs" in record for record in records)

    found = _read(image)
    assert found.records == {} and found.foreign == len(records)

    done = _dockyard(dockyard_root, "build", "--progress=plain", "--platform=linux/amd64",
                     "--cache-from", image, str(_context(tmp_path, base)))
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr.lower(), done.stderr
    assert [last.split()[0] for last in _runs(done.stderr)] == ["DONE"], done.stderr


def test_buildkit_reads_dockyards_inline_and_registry_caches(
        buildkit: PrivateDockerd, registry: RunningRegistry, base: str,
        dockyard_root: Path, tmp_path: Path) -> None:
    """BuildKit 20.10 reads an inline cache and a cache index (it predates the image
    manifest form, image-manifest=true)."""
    image = f"{registry.domain}/interop/app:dockyard"
    cache = f"{registry.domain}/interop/cache:index"
    done = _dockyard(dockyard_root, "build", "--progress=plain", "--platform=linux/amd64",
                     "--cache-to", "type=inline", "-o", f"type=image,name={image},push=true",
                     "--cache-to", f"type=registry,ref={cache},mode=max,image-manifest=false",
                     str(_context(tmp_path, base, "built by dockyard\n")))
    assert done.returncode == 0, done.stderr
    assert INLINE_CACHE_KEY in _config(registry, "interop/app", "dockyard")
    assert len(_read(image).records) >= 1
    assert len(_read(cache).records) >= 4

    _ok(buildkit.docker("pull", image))
    for source in (image, cache):
        context = buildkit.new_context_dir()
        (context / "Dockerfile").write_text(DOCKERFILE.format(base=base) + "RUN echo more\n")
        (context / "hello.txt").write_text("hello\n")
        built = buildkit.docker("build", "--network=host", "--progress=plain",
                                "--cache-from", source, str(context))
        assert built.returncode == 0, built.stderr
        imported = [lines for lines in plain_blocks(built.stderr).values()
                    if lines[0].startswith("importing cache manifest from")]
        # a config BuildKit cannot parse ends this block with "ERROR: json: cannot ..."
        assert len(imported) == 1 and imported[0][-1].startswith("DONE"), built.stderr
