"""Exporters against the real tools: skopeo and umoci read our OCI tar, dockerd (the BuildKit
oracle's private daemon) loads our docker tar, and the flattened outputs are checked on disk.

Layers are real: a busybox root filesystem through the differ (workers/_layers.write_layer)
and a second layer written with tarfile (a file, a hardlink, a whiteout, an opaque dir).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from dockyard.cache_backends._records import LayerDescriptor
from dockyard.scheduler._errors import CacheError, DockyardError, ExportError, LayerError
from dockyard.scheduler._graph import HistoryEntry, ImageConfig
from dockyard.scheduler._platform import Platform
from dockyard.workers._exporters import (
    BlobSource,
    MemoryBlobs,
    export_docker,
    export_local,
    export_oci,
    export_tar,
    push_image,
)
from dockyard.workers._image import ImageArtifacts, IndexArtifacts, build_image, build_index
from dockyard.workers._layers import write_layer
from dockyard.workers._registry import RegistryClient, RegistryConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "oracle"))
from _buildkit import DOCKER, DOCKERD, PrivateDockerd, make_oracle_root  # noqa: E402

AMD64 = Platform("linux", "amd64")
ARM64 = Platform("linux", "arm64")
CREATED = 1_700_000_000
EPOCH = 1_600_000_000
NAME = "example.com/team/app:1.0"
CONFIG = ImageConfig(
    env=("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "GREETING=hi"),
    cmd=("/bin/sh", "-c", "cat /etc/motd"), working_dir="/srv", labels=(("team", "yard"),),
    history=(HistoryEntry("COPY rootfs / # buildkit", comment="buildkit.dockerfile.v0"),
             HistoryEntry("ENV GREETING=hi", empty_layer=True, comment="buildkit.dockerfile.v0"),
             HistoryEntry("RUN change # buildkit", comment="buildkit.dockerfile.v0")))


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{tool} is missing under CI (make setup installs it)")
        pytest.skip(f"{tool} is not installed (make setup installs it)")
    return path


def run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"{argv}: {done.stderr}"
    return done.stdout


# --- layers ------------------------------------------------------------------------------

def _member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", mode: int = 0o644,
            link: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.linkname = kind, mode, len(data), link
    info.mtime = CREATED
    return info, data


def change_layer() -> bytes:
    """etc/motd (+ a hardlink), /tmp deleted by a whiteout, /home made opaque and refilled."""
    members = [
        _member("etc/", tarfile.DIRTYPE, mode=0o755),
        _member("etc/motd", data=b"hello from dockyard\n"),
        _member("etc/motd.link", tarfile.LNKTYPE, link="etc/motd"),
        _member(".wh.tmp"),
        _member("home/", tarfile.DIRTYPE, mode=0o755),
        _member("home/.wh..wh..opq"),
        _member("home/new", data=b"new\n", mode=0o600),
    ]
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def descriptor(plain: bytes) -> tuple[bytes, LayerDescriptor]:
    blob = gzip.compress(plain, mtime=0)
    return blob, LayerDescriptor(digest="sha256:" + hashlib.sha256(blob).hexdigest(),
                                 size=len(blob),
                                 diff_id="sha256:" + hashlib.sha256(plain).hexdigest())


class Built:
    """One platform's layers in a blob dict, and the image over them."""

    def __init__(self, rootfs: Path, platform: Platform) -> None:
        base = io.BytesIO()
        first = write_layer(rootfs, base)
        blob, second = descriptor(change_layer())
        self.blobs = {first.digest: base.getvalue(), second.digest: blob}
        self.layers = (first, second)
        self.platform = platform

    def image(self, *, epoch: int | None = None, oci: bool = True) -> ImageArtifacts:
        return build_image(None, CONFIG, self.layers, self.platform, created=CREATED,
                           epoch=epoch, oci=oci)


@pytest.fixture
def amd64(busybox_rootfs: Callable[[str], Path]) -> Built:
    return Built(busybox_rootfs("amd64"), AMD64)


@pytest.fixture
def both(busybox_rootfs: Callable[[str], Path]) -> tuple[Built, Built]:
    return Built(busybox_rootfs("amd64"), AMD64), Built(busybox_rootfs("arm64"), ARM64)


def index_of(pair: tuple[Built, Built]) -> tuple[IndexArtifacts, MemoryBlobs]:
    index = build_index([built.image() for built in pair])
    return index, MemoryBlobs({**pair[0].blobs, **pair[1].blobs})


def check_rootfs(root: Path) -> None:
    """What the two layers make: busybox, motd + its hardlink, no /tmp, /home refilled."""
    assert (root / "bin" / "busybox").stat().st_size > 100_000
    assert os.readlink(root / "bin" / "sh") == "busybox"
    motd = root / "etc" / "motd"
    assert motd.read_text() == "hello from dockyard\n"
    assert (root / "etc" / "motd.link").stat().st_ino == motd.stat().st_ino
    assert not (root / "tmp").exists()
    assert sorted(os.listdir(root / "home")) == ["new"]
    assert (root / "home" / "new").stat().st_mode & 0o777 == 0o600
    assert (root / "etc" / "passwd").exists()


# --- oci ---------------------------------------------------------------------------------

def test_oci_tar_read_by_skopeo(amd64: Built, tmp_path: Path) -> None:
    skopeo = need("skopeo")
    image = amd64.image()
    out = tmp_path / "image.tar"
    export_oci(image, MemoryBlobs(amd64.blobs), out, names=[NAME])
    inspect = json.loads(run(skopeo, "inspect", f"oci-archive:{out}:1.0"))
    assert inspect["Digest"] == image.manifest_digest
    assert inspect["Layers"] == [layer.digest for layer in amd64.layers]
    assert inspect["Architecture"] == "amd64"
    assert inspect["Env"] == list(CONFIG.env)
    assert inspect["Labels"] == {"team": "yard"}
    config = json.loads(run(skopeo, "inspect", "--config", f"oci-archive:{out}:1.0"))
    assert config["rootfs"]["diff_ids"] == [layer.diff_id for layer in amd64.layers]
    assert [entry.get("empty_layer", False) for entry in config["history"]] == [False, True, False]


def test_oci_tar_unpacked_by_umoci(amd64: Built, tmp_path: Path) -> None:
    umoci = need("umoci")
    out = tmp_path / "image.tar"
    export_oci(amd64.image(), MemoryBlobs(amd64.blobs), out, names=[NAME])
    layout = tmp_path / "layout"
    layout.mkdir()
    with tarfile.open(out) as tar:
        tar.extractall(layout, filter="tar")
    assert json.loads((layout / "index.json").read_text())["manifests"][0]["annotations"] == {
        "io.containerd.image.name": NAME, "org.opencontainers.image.ref.name": "1.0"}
    run(umoci, "unpack", "--image", f"{layout}:1.0", str(tmp_path / "bundle"))
    check_rootfs(tmp_path / "bundle" / "rootfs")
    runtime = json.loads((tmp_path / "bundle" / "config.json").read_text())
    assert "GREETING=hi" in runtime["process"]["env"]
    assert runtime["process"]["cwd"] == "/srv"


def test_oci_index_multi_platform(both: tuple[Built, Built], tmp_path: Path) -> None:
    skopeo = need("skopeo")
    index, blobs = index_of(both)
    out = tmp_path / "multi.tar"
    export_oci(index, blobs, out, names=[NAME])
    raw = json.loads(run(skopeo, "inspect", "--raw", f"oci-archive:{out}:1.0"))
    assert [m["platform"]["architecture"] for m in raw["manifests"]] == ["amd64", "arm64"]
    arm = json.loads(run(skopeo, "--override-arch", "arm64", "inspect",
                         f"oci-archive:{out}:1.0"))
    assert arm["Architecture"] == "arm64"
    assert arm["Digest"] == index.digest  # skopeo names the index it resolved through
    assert arm["Layers"] == [layer.digest for layer in both[1].layers]


def test_stream_destination_matches_file(amd64: Built, tmp_path: Path) -> None:
    stream = io.BytesIO()
    export_oci(amd64.image(), MemoryBlobs(amd64.blobs), stream, names=[NAME])
    export_oci(amd64.image(), MemoryBlobs(amd64.blobs), tmp_path / "a.tar", names=[NAME])
    assert stream.getvalue() == (tmp_path / "a.tar").read_bytes()


# --- determinism and SOURCE_DATE_EPOCH ---------------------------------------------------

EXPORTS: list[tuple[str, Callable[..., None]]] = [
    ("oci", lambda image, blobs, dest, epoch: export_oci(image, blobs, dest, names=[NAME],
                                                         epoch=epoch)),
    ("docker", lambda image, blobs, dest, epoch: export_docker(image, blobs, dest, names=[NAME],
                                                               epoch=epoch)),
    ("tar", lambda image, blobs, dest, epoch: export_tar(image, blobs, dest, epoch=epoch)),
]


@pytest.mark.parametrize(("kind", "export"), EXPORTS, ids=[row[0] for row in EXPORTS])
def test_deterministic_bytes(kind: str, export: Callable[..., None], amd64: Built,
                             tmp_path: Path) -> None:
    outputs = []
    for run_no in range(2):
        out = tmp_path / f"{kind}-{run_no}.tar"
        export(amd64.image(oci=kind != "docker"), MemoryBlobs(amd64.blobs), out, None)
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize(("kind", "export"), EXPORTS, ids=[row[0] for row in EXPORTS])
def test_epoch_clamps_every_time(kind: str, export: Callable[..., None], amd64: Built,
                                 tmp_path: Path) -> None:
    image = amd64.image(epoch=EPOCH, oci=kind != "docker")
    out = tmp_path / "out.tar"
    export(image, MemoryBlobs(amd64.blobs), out, EPOCH)
    with tarfile.open(out) as tar:
        assert max(member.mtime for member in tar) <= EPOCH
    config = json.loads(image.config)
    stamp = "2020-09-13T12:26:40Z"
    assert {config["created"]} | {entry["created"] for entry in config["history"]} == {stamp}


# --- flattened outputs -------------------------------------------------------------------

def test_local_single_platform(amd64: Built, tmp_path: Path) -> None:
    export_local(amd64.image(), MemoryBlobs(amd64.blobs), tmp_path / "out")
    check_rootfs(tmp_path / "out")


def test_local_multi_platform(both: tuple[Built, Built], tmp_path: Path) -> None:
    index, blobs = index_of(both)
    export_local(index, blobs, tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out")) == ["linux_amd64", "linux_arm64"]
    for name in ("linux_amd64", "linux_arm64"):
        check_rootfs(tmp_path / "out" / name)
    amd, arm = (tmp_path / "out" / name / "bin" / "busybox" for name in ("linux_amd64",
                                                                         "linux_arm64"))
    assert amd.read_bytes()[18] != arm.read_bytes()[18]  # ELF e_machine differs


def test_tar_single_and_multi_platform(both: tuple[Built, Built], tmp_path: Path) -> None:
    index, blobs = index_of(both)
    export_tar(index.images[0], blobs, tmp_path / "one.tar")
    export_tar(index, blobs, tmp_path / "multi.tar")
    for archive, prefix in (("one.tar", ""), ("multi.tar", "linux_arm64/")):
        with tarfile.open(tmp_path / archive) as tar:
            names = tar.getnames()
            assert prefix + "etc/motd" in names and prefix + "bin/busybox" in names
            assert not any(name.startswith(prefix + "tmp") for name in names)
            unpacked = tmp_path / f"{archive}.d"
            tar.extractall(unpacked, filter="tar")
        check_rootfs(unpacked / prefix)


def test_no_scratch_left_behind(amd64: Built, tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    export_tar(amd64.image(), MemoryBlobs(amd64.blobs), tmp_path / "x.tar", scratch=scratch)
    assert os.listdir(scratch) == []


# --- failures ----------------------------------------------------------------------------

def corrupt(blobs: dict[str, bytes], digest: str) -> MemoryBlobs:
    damaged = dict(blobs)
    damaged[digest] = damaged[digest][:-1] + bytes([damaged[digest][-1] ^ 1])
    return MemoryBlobs(damaged)


def _missing(built: Built) -> MemoryBlobs:
    return MemoryBlobs({built.layers[0].digest: built.blobs[built.layers[0].digest]})


FAILURES: list[tuple[str, Callable[[Built, Path], None], type[DockyardError], str]] = [
    ("oci: corrupt blob",
     lambda b, out: export_oci(b.image(), corrupt(b.blobs, b.layers[1].digest), out),
     ExportError, "layer blob {second} does not match its digest or size"),
    ("oci: missing blob", lambda b, out: export_oci(b.image(), _missing(b), out),
     CacheError, "blob {second} is not in the memory blob source"),
    ("tar: corrupt blob",
     lambda b, out: export_tar(b.image(), corrupt(b.blobs, b.layers[1].digest), out),
     LayerError, "layer blob digest mismatch (application/vnd.oci.image.layer.v1.tar+gzip): "
     "expected {second}"),
    ("docker: bad name", lambda b, out: export_docker(b.image(), MemoryBlobs(b.blobs), out,
                                                      names=["Bad:Name"]),
     ExportError, "cannot name the exported image: "),
]


@pytest.mark.parametrize(("name", "export", "error", "message"), FAILURES,
                         ids=[row[0] for row in FAILURES])
def test_failures_leave_no_output(name: str, export: Callable[[Built, Path], None],
                                  error: type[DockyardError], message: str, amd64: Built,
                                  tmp_path: Path) -> None:
    out = tmp_path / "out" / "image.tar"
    out.parent.mkdir()
    with pytest.raises(error) as caught:
        export(amd64, out)
    assert message.format(second=amd64.layers[1].digest) in str(caught.value)
    assert os.listdir(out.parent) == []


def test_docker_refuses_an_index(both: tuple[Built, Built], tmp_path: Path) -> None:
    index, blobs = index_of(both)
    with pytest.raises(ExportError) as caught:
        export_docker(index, blobs, tmp_path / "d.tar")
    assert str(caught.value) == (
        "the docker exporter writes one platform; got linux/amd64, linux/arm64\n"
        "hint: build one --platform, or use type=oci for several")


def test_unwritable_destination(amd64: Built, tmp_path: Path) -> None:
    with pytest.raises(ExportError) as caught:
        export_oci(amd64.image(), MemoryBlobs(amd64.blobs), tmp_path / "nope" / "x.tar")
    assert str(caught.value).startswith(f"cannot write {tmp_path / 'nope' / 'x.tar'}: ")


# --- docker load (the oracle's private dockerd) ------------------------------------------

@pytest.fixture(scope="module")
def dockerd() -> Iterator[PrivateDockerd]:
    for path in (DOCKERD, DOCKER):
        if not path.exists():
            if os.environ.get("CI") == "true":
                pytest.fail(f"{path} is missing under CI (make setup installs docker.io)")
            pytest.skip(f"{path} is not installed (make setup installs docker.io)")
    daemon = PrivateDockerd(make_oracle_root())
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.mark.oracle
def test_docker_tar_loaded_by_dockerd(dockerd: PrivateDockerd, amd64: Built,
                                      tmp_path: Path) -> None:
    image = amd64.image(oci=False)
    out = tmp_path / "docker.tar"
    export_docker(image, MemoryBlobs(amd64.blobs), out, names=[NAME, "app:latest"])
    loaded = dockerd.docker("load", "-i", str(out))
    assert loaded.returncode == 0, loaded.stderr
    inspect = dockerd.docker("image", "inspect", NAME)
    assert inspect.returncode == 0, inspect.stderr
    record: dict[str, Any] = json.loads(inspect.stdout)[0]
    assert record["Id"] == image.config_digest
    assert set(record["RepoTags"]) == {NAME, "app:latest"}
    assert record["Config"]["Env"] == list(CONFIG.env)
    assert record["Config"]["Cmd"] == list(CONFIG.cmd or ())
    assert record["Config"]["WorkingDir"] == "/srv"
    assert record["RootFS"]["Layers"] == [layer.diff_id for layer in amd64.layers]
    assert record["Created"] == "2023-11-14T22:13:20Z"
    ran = dockerd.docker("run", "--rm", "--network=none", NAME)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "hello from dockyard\n"


# --- registry push (Debian's docker-registry, tests/integration/conftest.py) ---------------

def _push(subject: ImageArtifacts | IndexArtifacts, blobs: BlobSource, name: str) -> str:
    async def go() -> str:
        async with RegistryClient(RegistryConfig()) as client:
            return await push_image(subject, blobs, client, name)
    return asyncio.run(go())


class DirBlobs:
    """Blobs as files (like the local cache): pushed from their paths, not spooled."""

    def __init__(self, root: Path, blobs: dict[str, bytes]) -> None:
        self.root = root
        for digest, data in blobs.items():
            (root / digest.replace(":", "-")).write_bytes(data)

    def blob_path(self, digest: str) -> Path | None:
        return self.root / digest.replace(":", "-")

    def open_blob(self, digest: str) -> BinaryIO:
        return open(self.root / digest.replace(":", "-"), "rb")


def test_push_image_and_index(registry: Any, both: tuple[Built, Built], tmp_path: Path) -> None:
    skopeo = need("skopeo")
    image = both[0].image()
    single = f"{registry.domain}/team/app:one"
    files = DirBlobs(tmp_path, both[0].blobs)
    assert _push(image, files, single) == image.manifest_digest
    seen = json.loads(run(skopeo, "inspect", "--tls-verify=false", f"docker://{single}"))
    assert seen["Digest"] == image.manifest_digest
    assert seen["Layers"] == [layer.digest for layer in both[0].layers]
    index, blobs = index_of(both)
    multi = f"{registry.domain}/team/app:multi"
    assert _push(index, blobs, multi) == index.digest
    raw = run(skopeo, "inspect", "--raw", "--tls-verify=false", f"docker://{multi}")
    assert raw.encode() == index.index
    config = json.loads(run(skopeo, "--override-arch", "arm64", "inspect", "--config",
                            "--tls-verify=false", f"docker://{multi}"))
    assert config["architecture"] == "arm64"
