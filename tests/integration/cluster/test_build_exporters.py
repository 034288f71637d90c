"""The exporter attributes of ``--output`` (buildx's names, issue 11), each through the real
CLI on the embedded service (one for the module), checked by their effect on what was
written: layer media types and blobs that decompress to the config's diff_ids, an OCI
layout directory that skopeo and umoci read, platform directories, names in the index,
a push without a tag, and file times in the layers."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard
from support.cli_root import Dockyard, private_root

GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
TAR = "application/vnd.oci.image.layer.v1.tar"
DOCKER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
RECENT = 1_700_000_000  # the context file's mtime: later than the epoch below
EPOCH = 1_000_000_000


@pytest.fixture(scope="module")
def dockyard(busybox_image: Any) -> Iterator[Dockyard]:
    with private_root(busybox_image.reference, "dye") as found:
        yield found


def _context(dockyard: Dockyard, name: str, dockerfile: str, **files: str) -> Path:
    context = dockyard.work / name
    context.mkdir()
    (context / "Dockerfile").write_text(dockerfile.replace("BUSYBOX", dockyard.busybox))
    for file, text in files.items():
        (context / file).write_text(text)
        os.utime(context / file, (RECENT, RECENT))
    return context


def _ok(done: subprocess.CompletedProcess[bytes]) -> None:
    assert done.returncode == 0, done.stderr.decode(errors="replace")


# --- reading an OCI layout (a tar or a directory) ----------------------------------------


class Layout:
    """An OCI image layout's blobs and index, from a tar or a directory."""

    def __init__(self, path: Path) -> None:
        self.files: dict[str, bytes] = {}
        if path.is_dir():
            for file in path.rglob("*"):
                if file.is_file():
                    self.files[str(file.relative_to(path))] = file.read_bytes()
        else:
            with tarfile.open(path) as tar:
                for member in tar.getmembers():
                    if member.isfile():
                        self.files[member.name] = tar.extractfile(member).read()  # type: ignore[union-attr]
        self.index = json.loads(self.files["index.json"])

    def blob(self, digest: str) -> bytes:
        data = self.files["blobs/sha256/" + digest.split(":")[1]]
        assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
        return data

    def json(self, digest: str) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.blob(digest))
        return value

    def image(self, entry: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
        """(manifest, config) of the index's ``entry``."""
        manifest = self.json(self.index["manifests"][entry]["digest"])
        return manifest, self.json(manifest["config"]["digest"])


def _plain(data: bytes, media_type: str) -> bytes:
    if media_type.endswith(("+gzip", ".gzip")):
        return gzip.decompress(data)
    if media_type.endswith("+zstd"):
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)) as reader:
            return reader.read()
    return data


def _layer_types(layout: Layout) -> list[str]:
    """Each layer's media type, after checking that its blob decompresses to the diff_id
    the config names for it."""
    manifest, config = layout.image()
    for layer, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True):
        plain = _plain(layout.blob(layer["digest"]), layer["mediaType"])
        assert "sha256:" + hashlib.sha256(plain).hexdigest() == diff_id
    return [layer["mediaType"] for layer in manifest["layers"]]


def _layer_files(layout: Layout, index: int) -> dict[str, int]:
    """Path -> mtime of the entries of the image's layer ``index``."""
    manifest, _ = layout.image()
    layer = manifest["layers"][index]
    data = _plain(layout.blob(layer["digest"]), layer["mediaType"])
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {member.name: int(member.mtime) for member in tar.getmembers()}


# --- the tests ---------------------------------------------------------------------------

IMAGE = """\
FROM BUSYBOX
COPY file.txt /file.txt
RUN echo built > /built
"""


def test_compression_media_types_and_layouts(dockyard: Dockyard, busybox_image: Any) -> None:
    """One build, eight outputs: each image in its own form, the default one unchanged."""
    context = _context(dockyard, "forms", IMAGE, **{"file.txt": "hello\n"})
    out = dockyard.work / "forms-out"
    out.mkdir()
    pushed = f"{busybox_image.domain}/exp/bydigest:never"
    _ok(dockyard.build(
        "-t", "example/forms:1", "--metadata-file", str(out / "meta.json"),
        "-o", f"type=oci,dest={out}/default.tar",
        "-o", f"type=oci,dest={out}/zstd.tar,compression=zstd,compression-level=19",
        "-o", f"type=oci,dest={out}/forced.tar,compression=zstd,force-compression=true",
        "-o", f"type=oci,dest={out}/gzip0.tar,compression=gzip,compression-level=0",
        "-o", f"type=oci,dest={out}/plain.tar,compression=uncompressed,force-compression=true",
        "-o", f'type=oci,dest={out}/layout,tar=false,compression=uncompressed,'
              f'"name=example/a:1,example/b:2"',
        "-o", f"type=docker,dest={out}/docker.tar,oci-mediatypes=false",
        "-o", f"type=registry,name={pushed},push-by-digest=true,compression=zstd",
        str(context)))
    default = Layout(out / "default.tar")
    base = 1  # busybox's one layer
    assert _layer_types(default) == [GZIP] * len(default.image()[0]["layers"])
    base_layers = default.image()[0]["layers"][:base]

    zstd = Layout(out / "zstd.tar")
    types = _layer_types(zstd)
    assert types[base:] == [ZSTD, ZSTD]  # the build's layers; the base's stay gzip
    assert zstd.image()[0]["layers"][:base] == base_layers
    assert zstd.image()[1]["rootfs"] == default.image()[1]["rootfs"]  # same diff_ids

    forced = Layout(out / "forced.tar")
    assert _layer_types(forced) == [ZSTD] * len(types)  # the base's too
    assert forced.image()[1]["rootfs"] == default.image()[1]["rootfs"]

    stored = Layout(out / "gzip0.tar")  # level 0: deflate's stored blocks, bigger blobs
    assert _layer_types(stored)[base:] == [GZIP, GZIP]
    sizes = [layer["size"] for layer in stored.image()[0]["layers"][base:]]
    assert sizes > [layer["size"] for layer in default.image()[0]["layers"][base:]]

    plain = Layout(out / "plain.tar")  # the base's layer decompressed too
    assert _layer_types(plain) == [TAR] * len(types)
    assert [layer["digest"] for layer in plain.image()[0]["layers"]] == \
        default.image()[1]["rootfs"]["diff_ids"]

    layout = Layout(out / "layout")
    assert _layer_types(layout)[base:] == [TAR, TAR]
    names = {entry["annotations"]["io.containerd.image.name"]: entry["annotations"][
        "org.opencontainers.image.ref.name"] for entry in layout.index["manifests"]}
    assert names == {"docker.io/example/a:1": "1", "docker.io/example/b:2": "2"}
    _skopeo_and_umoci_read(out / "layout", default.image()[1]["rootfs"]["diff_ids"])

    docker = Layout(out / "docker.tar")
    assert docker.json(docker.index["manifests"][0]["digest"])["mediaType"] == DOCKER_MANIFEST
    assert set(_layer_types(docker)) == {DOCKER_GZIP}
    assert json.loads(docker.files["manifest.json"])[0]["RepoTags"] == ["example/forms:1"]

    _pushed_by_digest(busybox_image.domain, json.loads((out / "meta.json").read_text()))


def _skopeo_and_umoci_read(layout: Path, diff_ids: list[str]) -> None:
    listed = subprocess.run(["umoci", "ls", "--layout", str(layout)], capture_output=True,
                            text=True, check=True, timeout=60)
    assert sorted(listed.stdout.split()) == ["1", "2"]
    inspected = subprocess.run(["skopeo", "inspect", "--raw", f"oci:{layout}:2"],
                               capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(inspected.stdout)["layers"][-1]["mediaType"] == TAR
    config = subprocess.run(["skopeo", "inspect", "--config", f"oci:{layout}:1"],
                            capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(config.stdout)["rootfs"]["diff_ids"] == diff_ids


def _pushed_by_digest(domain: str, meta: dict[str, Any]) -> None:
    """The image output was pushed without its tag, zstd-compressed; the metadata names
    its digest."""
    digest = meta["containerimage.digest"]
    with urllib.request.urlopen(urllib.request.Request(
            f"http://{domain}/v2/exp/bydigest/manifests/{digest}",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}),
            timeout=10) as answer:
        manifest = json.loads(answer.read())
    assert manifest["layers"][-1]["mediaType"] == ZSTD
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"http://{domain}/v2/exp/bydigest/manifests/never", timeout=10)
    assert missing.value.code == 404


SPLIT = """\
FROM scratch
ARG TARGETARCH
COPY $TARGETARCH.txt /
"""


def test_platform_split(dockyard: Dockyard) -> None:
    context = _context(dockyard, "split", SPLIT, **{"amd64.txt": "a\n", "arm64.txt": "b\n"})
    out = dockyard.work / "split-out"
    out.mkdir()
    _ok(dockyard.build(
        "--platform", "linux/amd64,linux/arm64",
        "-o", f"type=local,dest={out}/split",
        "-o", f"type=local,dest={out}/merged,platform-split=false",
        "-o", f"type=tar,dest={out}/merged.tar,platform-split=false", str(context)))
    assert sorted(os.listdir(out / "split")) == ["linux_amd64", "linux_arm64"]
    assert (out / "split" / "linux_arm64" / "arm64.txt").read_text() == "b\n"
    assert sorted(os.listdir(out / "merged")) == ["amd64.txt", "arm64.txt"]
    with tarfile.open(out / "merged.tar") as tar:
        assert sorted(tar.getnames()) == ["amd64.txt", "arm64.txt"]

    both = _context(dockyard, "conflict", "FROM scratch\nCOPY same.txt /\n",
                    **{"same.txt": "x\n"})
    failed = dockyard.build("--platform", "linux/amd64,linux/arm64", "-o",
                            f"type=local,dest={out}/conflict,platform-split=false", str(both))
    assert failed.returncode != 0
    assert ("cannot overwrite same.txt from linux/amd64 with linux/arm64 when split option "
            "is disabled") in failed.stderr.decode()
    assert "Traceback" not in failed.stderr.decode()


def test_rewrite_timestamp(dockyard: Dockyard) -> None:
    """A layer cached by a build without SOURCE_DATE_EPOCH keeps its file times in an
    image of a build with it, unless rewrite-timestamp=true clamps them (the base image's
    layers stay as they are); platform-split=true puts even one platform in its directory."""
    context = _context(dockyard, "times", "FROM BUSYBOX\nCOPY file.txt /file.txt\n",
                       **{"file.txt": "times\n"})
    out = dockyard.work / "times-out"
    out.mkdir()
    _ok(dockyard.build("-o", f"type=oci,dest={out}/before.tar", str(context),
                       env={"SOURCE_DATE_EPOCH": ""}))
    _ok(dockyard.build(
        "-o", f"type=oci,dest={out}/kept.tar",
        "-o", f"type=oci,dest={out}/rewritten.tar,rewrite-timestamp=true",
        "-o", f"type=tar,dest={out}/split.tar,platform-split=true", str(context),
        env={"SOURCE_DATE_EPOCH": str(EPOCH)}))
    kept, rewritten = Layout(out / "kept.tar"), Layout(out / "rewritten.tar")
    assert _layer_files(kept, -1)["file.txt"] == RECENT
    assert _layer_files(rewritten, -1)["file.txt"] == EPOCH
    assert max(_layer_files(rewritten, -1).values()) <= EPOCH
    _layer_types(rewritten)  # its blobs match its (new) diff_ids
    assert rewritten.image()[0]["layers"][0] == kept.image()[0]["layers"][0]  # the base's
    assert rewritten.image()[1]["rootfs"]["diff_ids"][-1] != \
        kept.image()[1]["rootfs"]["diff_ids"][-1]
    with tarfile.open(out / "split.tar") as tar:
        platform = next(name for name in tar.getnames() if "/" not in name)
        assert platform.startswith("linux_")
        assert f"{platform}/file.txt" in tar.getnames()
