"""Registry and inline caches as a CI pipeline uses them: ``dockyard build --cache-to
type=registry,ref=...`` (or ``type=inline`` with a pushed image) on one machine, the same
build on a second machine whose store has never seen it, with ``--cache-from``.

Each machine is its own DOCKYARD_ROOT with its own embedded service (started by its first
build, stopped at the end of the module); the registry is the loopback one of the
``registry`` fixture.  Each test builds a context of its own (a word no other test uses),
so the second machine's store holds none of its records: every hit comes from the
registry."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.progress import plain_blocks

from dockyard.scheduler._errors import CacheError
from dockyard.scheduler._reference import parse_reference
from dockyard.workers._manifests import OCI_MANIFEST
from dockyard.workers._registry import RegistryClient
from dockyard.workers._registry_cache import RegistryCache

PROJECT = Path(__file__).resolve().parents[3]
CACHE_CONFIG = "application/vnd.buildkit.cacheconfig.v0"

DOCKERFILE = """\
FROM {base}
COPY hello.txt /app/
RUN cat /app/hello.txt > /app/copy && echo one > /app/one
RUN echo two > /app/two
"""


@dataclass
class Machine:
    """One DOCKYARD_ROOT and how to run the CLI against it."""

    root: Path

    def run(self, *argv: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        environ = {**os.environ, "DOCKYARD_ROOT": str(self.root), "PYTHONPATH": str(PROJECT)}
        return subprocess.run([sys.executable, "-m", "dockyard", *argv], env=environ,
                              capture_output=True, text=True, timeout=timeout, check=False)

    def build(self, context: Path, out: Path, *flags: str) -> tuple[str, str]:
        """(plain progress, the image's digest); without an ``-o`` in ``flags`` the image
        goes to ``out/image.tar`` (OCI)."""
        out.mkdir(exist_ok=True)
        outputs = () if "-o" in flags else ("-o", f"type=oci,dest={out}/image.tar")
        done = self.run("build", "--progress=plain", "--platform=linux/amd64", *outputs,
                        "--metadata-file", f"{out}/meta.json", *flags, str(context))
        assert done.returncode == 0, done.stderr
        meta = json.loads((out / "meta.json").read_text())
        return done.stderr, str(meta["containerimage.digest"])


@pytest.fixture(scope="module")
def machines() -> Iterator[tuple[Machine, Machine]]:
    top = Path(tempfile.mkdtemp(prefix="dyr-", dir="/tmp"))
    made = (Machine(top / "one"), Machine(top / "two"))
    try:
        yield made
    finally:
        for machine in made:
            machine.run("stop", timeout=90)
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def context(tmp_path: Path, busybox_image: Any) -> Path:
    context = tmp_path / "context"
    context.mkdir()
    (context / "hello.txt").write_text(f"hello {uuid.uuid4().hex}\n")  # this test's keys
    (context / "Dockerfile").write_text(DOCKERFILE.format(base=busybox_image.reference))
    return context


def _runs(progress: str) -> list[str]:
    """Each RUN step's last line (``CACHED``, ``DONE 0.3s``)."""
    return [lines[-1] for lines in plain_blocks(progress).values() if " RUN " in lines[0]]


def _get(url: str, accept: str = "") -> Any:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def _artifact(registry: Any, repository: str, tag: str) -> tuple[dict[str, Any], Any]:
    """The manifest or index at ``repository:tag`` and its cache config."""
    accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"
    top = _get(f"{registry.url}/v2/{repository}/manifests/{tag}", accept)
    config = top.get("config") or next(entry for entry in top["manifests"]
                                       if entry["mediaType"] == CACHE_CONFIG)
    assert config["mediaType"] == CACHE_CONFIG
    return top, _get(f"{registry.url}/v2/{repository}/blobs/{config['digest']}")


def test_max_cache_round_trip_through_a_skopeo_copy(
        registry: Any, machines: tuple[Machine, Machine], context: Path,
        tmp_path: Path) -> None:
    first, second = machines
    ref = f"{registry.domain}/cache/app:max"
    built, digest = first.build(context, tmp_path / "one",
                                "--cache-to", f"type=registry,ref={ref},mode=max")
    assert [last for last in _runs(built) if last.startswith("DONE")], built
    manifest, config = _artifact(registry, "cache/app", "max")
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    # mode=max: FROM, the context, COPY and both RUNs, each naming its chain's top layer
    assert len(config["records"]) == 5
    blobs = {layer["digest"] for layer in manifest["layers"]}
    assert {layer["blob"] for layer in config["layers"]} <= blobs
    assert all("containerd.io/uncompressed" in layer["annotations"]
               for layer in manifest["layers"])

    # a rebuild whose last step hits asks for no record below it: the chain goes all the same
    first.build(context, tmp_path / "one", "--cache-to",
                f"type=registry,ref={registry.domain}/cache/app:again,mode=max")
    _, again_config = _artifact(registry, "cache/app", "again")
    names = sorted(record["dockyard"]["meta"]["name"].split("] ")[-1]
                   for record in again_config["records"])
    assert len(names) == 4 and names[0].startswith("COPY") and names[1].startswith("FROM"), names

    copied = f"{registry.domain}/copied/app:max"
    done = subprocess.run(["skopeo", "copy", "--src-tls-verify=false",
                           "--dest-tls-verify=false", f"docker://{ref}", f"docker://{copied}"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr

    again, same = second.build(context, tmp_path / "two", "--cache-from", copied)
    assert _runs(again) == ["CACHED", "CACHED"], again
    assert "warning" not in again.lower(), again
    assert same == digest
    assert (tmp_path / "two/image.tar").read_bytes() == (tmp_path / "one/image.tar").read_bytes()


def test_min_cache_as_an_index_holds_the_images_chain_and_still_hits(
        registry: Any, machines: tuple[Machine, Machine], context: Path,
        tmp_path: Path) -> None:
    first, second = machines
    ref = f"{registry.domain}/cache/app:min"
    _, digest = first.build(context, tmp_path / "one", "--cache-to",
                            f"type=registry,ref={ref},image-manifest=false")
    index, config = _artifact(registry, "cache/app", "min")
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    # mode=min: the records whose results are the image's layers (not the context's)
    names = sorted(record["dockyard"]["meta"]["name"].split("] ")[-1]
                   for record in config["records"])
    assert len(names) == 4 and names[0].startswith("COPY") and names[1].startswith("FROM"), names
    assert len(config["layers"]) == len(index["manifests"]) - 1 == 4  # busybox's + 3

    again, same = second.build(context, tmp_path / "two",
                               "--cache-from", f"type=registry,ref={ref}")
    assert _runs(again) == ["CACHED", "CACHED"], again
    assert same == digest


def test_inline_cache_round_trip(registry: Any, machines: tuple[Machine, Machine],
                                 context: Path, tmp_path: Path) -> None:
    first, second = machines
    image = f"{registry.domain}/app/inline"
    built, digest = first.build(context, tmp_path / "one", "--cache-to", "type=inline",
                                "-o", f"type=image,name={image}:1,push=true")
    assert [last for last in _runs(built) if last.startswith("DONE")], built
    _, rebuilt = first.build(context, tmp_path / "one", "--cache-to", "type=inline",
                             "-o", f"type=image,name={image}:1,push=true")
    assert rebuilt == digest  # a rebuild from the local store writes the same cache

    again, same = second.build(context, tmp_path / "two", "--cache-to", "type=inline",
                               "--cache-from", f"{image}:1",
                               "-o", f"type=image,name={image}:2,push=true")
    assert _runs(again) == ["CACHED", "CACHED"], again
    assert same == digest


def test_a_corrupt_blob_in_the_registry_rebuilds_only_its_step(
        registry: Any, machines: tuple[Machine, Machine], context: Path,
        tmp_path: Path) -> None:
    first, second = machines
    ref = f"{registry.domain}/cache/app:corrupt"
    epoch = ("--build-arg", "SOURCE_DATE_EPOCH=1700000000")  # a rebuilt layer is the same
    _, digest = first.build(context, tmp_path / "one", *epoch, "--cache-to",
                            f"type=registry,ref={ref},mode=max")
    _, config = _artifact(registry, "cache/app", "corrupt")
    last = next(record for record in config["records"]
                if record["dockyard"]["meta"]["name"].endswith("RUN echo two > /app/two"))
    top = config["layers"][last["layers"][0]["layer"]]["blob"].removeprefix("sha256:")
    data = registry.root / f"storage/docker/registry/v2/blobs/sha256/{top[:2]}/{top}/data"
    data.write_bytes(b"x" * len(data.read_bytes()))  # same size, other bytes

    again, same = second.build(context, tmp_path / "two", *epoch, "--cache-from", ref)
    assert sorted(last.split()[0] for last in _runs(again)) == ["CACHED", "DONE"], again
    assert same == digest


def _read(ref: str) -> Any:
    async def read() -> Any:
        async with RegistryClient() as client:
            return await RegistryCache(parse_reference(ref), client).loaded()
    return asyncio.run(read())


@pytest.mark.parametrize(("config", "why"), [
    (b"not json", "Expecting value"),
    (b'{"layers": 3}', "layers must be a list"),
    (b'{"records": [{"digest": "k", "layers": [{"layer": 9}], '
     b'"dockyard": {"created": 1, "layers": 1}}]}', "list index out of range"),
])
def test_a_malformed_cache_is_a_cache_error(registry: Any, config: bytes, why: str) -> None:
    """(the build reads it as misses, with one warning: RemoteRecords)"""
    ref = parse_reference(f"{registry.domain}/bad/cache:{uuid.uuid4().hex[:8]}")
    digest = "sha256:" + hashlib.sha256(config).hexdigest()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": [],
                           "config": {"mediaType": CACHE_CONFIG, "digest": digest,
                                      "size": len(config)}}).encode()

    async def push() -> None:
        async with RegistryClient() as client:
            await client.push_blob(ref, digest, len(config), config)
            await client.push_manifest(ref, manifest, OCI_MANIFEST)
    asyncio.run(push())
    with pytest.raises(CacheError, match=f"the cache config in the registry cache {ref} is "
                                         f"malformed: {why}"):
        _read(str(ref))


def test_nothing_at_the_ref_or_an_image_without_inline_cache_is_an_empty_cache(
        registry: Any, busybox_image: Any) -> None:
    for ref in (f"{registry.domain}/nothing/here:1", busybox_image.reference):
        found = _read(ref)
        assert found.records == {} and found.foreign == 0


def test_a_failed_build_leaves_the_registry_cache_as_it_was(
        registry: Any, machines: tuple[Machine, Machine], context: Path) -> None:
    first, _ = machines
    (context / "Dockerfile").write_text((context / "Dockerfile").read_text() + "RUN exit 3\n")
    ref = f"{registry.domain}/cache/app:failed"
    done = first.run("build", "--progress=plain", "--cache-to",
                     f"type=registry,ref={ref},mode=max", str(context))
    assert done.returncode != 0 and "exit code: 3" in done.stderr, done.stderr
    with pytest.raises(urllib.error.HTTPError) as missing:
        _get(f"{registry.url}/v2/cache/app/manifests/failed")
    assert missing.value.code == 404


def test_a_zstd_cache_holds_zstd_layers_and_hits(
        registry: Any, machines: tuple[Machine, Machine], context: Path,
        tmp_path: Path) -> None:
    """(the image then names the zstd layers it got from the cache, as BuildKit's does
    without force-compression: its digest is not the gzip image's)"""
    first, second = machines
    ref = f"{registry.domain}/cache/app:zstd"
    first.build(context, tmp_path / "one", "--cache-to",
                f"type=registry,ref={ref},mode=max,compression=zstd")
    manifest, _ = _artifact(registry, "cache/app", "zstd")
    kinds = [layer["mediaType"].rsplit("+", 1)[-1] for layer in manifest["layers"]]
    assert sorted(kinds) == ["gzip"] + ["zstd"] * 4  # busybox's layer stays as it is
    again, _ = second.build(context, tmp_path / "two", "--cache-from", ref)
    assert _runs(again) == ["CACHED", "CACHED"], again
