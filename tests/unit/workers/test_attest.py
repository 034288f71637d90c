"""The SBOM scanner over real layer tars (whiteouts, opaque directories, hard links, each
package database it reads) and the attestations' assembly: the index with one attestation
manifest per image, the statement files of local outputs, the ``--metadata-file`` keys,
and the OCI and docker archives carrying every attestation blob."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from typing import Any

from dockyard.cache_backends._records import LayerDescriptor
from dockyard.scheduler._build_request import AttestSpec
from dockyard.scheduler._graph import BuildGraph, ExecMount, ExecOp, ImageConfig, SourceOp, Vertex
from dockyard.scheduler._platform import Platform
from dockyard.workers._attest import BuildFacts, attest_images, materials, metadata_provenance
from dockyard.workers._exporters import MemoryBlobs, export_docker, export_oci
from dockyard.workers._image import ImageArtifacts, build_image
from dockyard.workers._sbom import scan_layers, spdx_document

AMD64 = Platform("linux", "amd64")
ARM64 = Platform("linux", "arm64", "v8")


def _tar(entries: list[tuple[str, bytes | str | None]]) -> bytes:
    """A layer tar: ``(name, bytes)`` files, ``(name, "->target")`` hard links,
    ``(name, None)`` directories."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif isinstance(data, str):
                info.type, info.linkname = tarfile.LNKTYPE, data.removeprefix("->")
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _layer(blob: bytes, diff: bytes, media: str) -> LayerDescriptor:
    return LayerDescriptor("sha256:" + hashlib.sha256(blob).hexdigest(), len(blob),
                           "sha256:" + hashlib.sha256(diff).hexdigest(), media)


APK = b"""P:musl
V:1.2.4-r2
A:x86_64
L:MIT
T:the musl c library

P:busybox
V:1.36.1-r5
A:x86_64
L:GPL-2.0-only
"""
BASE = _tar([
    ("etc/os-release", b'NAME="Alpine Linux"\nID=alpine\n'),
    ("lib/apk/db/installed", APK),
    ("usr/lib/python3.12/site-packages/requests-2.31.0.dist-info/METADATA",
     b"Metadata-Version: 2.1\nName: requests\nVersion: 2.31.0\nLicense: Apache 2.0\n\nbody\n"),
    ("usr/lib/python3.12/site-packages/six-1.16.0.egg-info", b"Name: six\nVersion: 1.16.0\n"),
    ("app/node_modules/@scope/pkg/package.json",
     b'{"name": "@scope/pkg", "version": "1.0.0", "license": "MIT"}'),
    ("app/node_modules/left-pad/package.json", b'{"name": "left-pad", "version": "1.3.0"}'),
    ("app/node_modules/left-pad/test/package.json", b'{"name": "fixture", "version": "9"}'),
    ("old/", None), ("old/gone.txt", b"gone"), ("old/keep.txt", b"keep"),
    ("opaque/", None), ("opaque/a.txt", b"a"),
    ("data/", None), ("data/file.txt", b"shared content\n"),
    ("cache/", None), ("cache/deep/", None), ("cache/deep/x.bin", b"x"),
])
UPPER = _tar([
    ("old/.wh.gone.txt", b""), (".wh.cache", b""),
    ("opaque/.wh..wh..opq", b""), ("opaque/b.txt", b"b"),
    ("data/link.txt", "->data/file.txt"),
])
BASE_GZ = gzip.compress(BASE, mtime=0)
LAYERS = (_layer(BASE_GZ, BASE, "application/vnd.oci.image.layer.v1.tar+gzip"),
          _layer(UPPER, UPPER, "application/vnd.oci.image.layer.v1.tar"))
BLOBS = MemoryBlobs({LAYERS[0].digest: BASE_GZ, LAYERS[1].digest: UPPER})


def test_scanner_sees_the_final_filesystem() -> None:
    inventory = scan_layers(LAYERS, BLOBS)
    assert {"/old/keep.txt", "/opaque/b.txt", "/data/file.txt", "/data/link.txt",
            "/lib/apk/db/installed"} <= set(inventory.files)
    assert not {"/old/gone.txt", "/opaque/a.txt", "/cache/deep/x.bin"} & set(inventory.files)
    shared = hashlib.sha256(b"shared content\n").hexdigest()
    assert inventory.files["/data/link.txt"].sha256 == shared
    assert inventory.files["/data/link.txt"].sha1 == hashlib.sha1(  # noqa: S324 -- SPDX's
        b"shared content\n").hexdigest()
    assert inventory.distro == "alpine"


def test_scanner_lists_each_database_s_packages() -> None:
    packages = {(p.kind, p.name): p for p in scan_layers(LAYERS, BLOBS).packages()}
    assert set(packages) == {("apk", "musl"), ("apk", "busybox"), ("pypi", "requests"),
                             ("pypi", "six"), ("npm", "@scope/pkg"), ("npm", "left-pad")}
    assert packages["apk", "musl"].purl == "pkg:apk/alpine/musl@1.2.4-r2?arch=x86_64"
    assert packages["pypi", "requests"].purl == "pkg:pypi/requests@2.31.0"
    assert packages["npm", "@scope/pkg"].purl == "pkg:npm/%40scope/pkg@1.0.0"
    document = spdx_document(scan_layers(LAYERS, BLOBS), "example/app:1",
                             "2024-01-02T03:04:05Z", "sha256:" + "0" * 64)
    declared = {p["name"]: p["licenseDeclared"] for p in document["packages"]}
    assert declared["musl"] == "MIT" and declared["busybox"] == "GPL-2.0-only"
    assert declared["requests"] == "NOASSERTION"  # "Apache 2.0" is no SPDX expression
    ids = [item["SPDXID"] for item in (*document["packages"], *document["files"])]
    assert len(ids) == len(set(ids))
    related = {r["relatedSpdxElement"] for r in document["relationships"]}
    assert set(ids) == related


def _graph() -> tuple[BuildGraph, str]:
    graph = BuildGraph()
    base = graph.add(Vertex(SourceOp("docker-image://docker.io/library/alpine:3.19@sha256:"
                                     + "a" * 64), platform=AMD64))
    run = graph.add(Vertex(ExecOp(("/bin/sh", "-c", "make"), mounts=(
        ExecMount("/", 0, output=True), ExecMount("/run/secrets/tok", type="secret",
                                                  secret_id="tok"))), (base,),
        platform=AMD64, location="Dockerfile:2:1"))
    return graph, run


def _images() -> list[ImageArtifacts]:
    return [build_image(None, ImageConfig(), LAYERS, platform, created=0, epoch=None)
            for platform in (AMD64, ARM64)]


def test_attested_index_files_and_metadata() -> None:
    graph, root = _graph()
    images = _images()
    attests = (AttestSpec("provenance", (("mode", "max"),)), AttestSpec("sbom"))
    facts = BuildFacts(build_args={"V": "1"}, names=("example/app:1",), started=1.0)
    done = attest_images(images, [root, root], attests, facts, graph, BLOBS, local=True)
    entries = json.loads(done.exported.index)["manifests"]
    assert [e["platform"]["architecture"] for e in entries] == ["amd64", "arm64", "unknown",
                                                                "unknown"]
    assert [e["annotations"]["vnd.docker.reference.digest"] for e in entries[2:]] == [
        image.manifest_digest for image in images]
    assert set(done.files) == {f"{p}/{n}" for p in ("linux_amd64", "linux_arm64_v8")
                               for n in ("provenance.json", "sbom.spdx.json")}
    local = json.loads(done.files["linux_amd64/provenance.json"])
    assert {"name": "data/link.txt", "digest": {"sha256": hashlib.sha256(
        b"shared content\n").hexdigest()}} in local["subject"]
    predicate = local["predicate"]
    assert predicate["materials"] == [{"uri": "pkg:docker/alpine@3.19?platform=linux%2Famd64",
                                       "digest": {"sha256": "a" * 64}}]
    assert predicate["invocation"]["parameters"]["secrets"] == [{"id": "tok",
                                                                 "optional": True}]
    assert predicate["invocation"]["parameters"]["args"] == {"build-arg:V": "1"}
    assert predicate["metadata"]["https://mobyproject.org/buildkit@v1#hermetic"] is False
    keys = metadata_provenance(done.exported)
    assert set(keys) == {"buildx.build.provenance/linux/amd64",
                         "buildx.build.provenance/linux/arm64/v8"}
    assert "buildConfig" not in keys["buildx.build.provenance/linux/amd64"]


def _archive(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
                for m in tar.getmembers() if m.isfile()}


def test_oci_and_docker_archives_carry_the_attestations() -> None:
    graph, root = _graph()
    image = _images()[0]
    done = attest_images([image], [root], (AttestSpec("provenance", (("mode", "min"),)),),
                         BuildFacts(), graph, BLOBS, local=False)
    assert done.files == {}
    attestation = done.exported.attestations[0]
    statement: Any = json.loads(attestation.blobs[0][1])
    assert statement["subject"] == [{"name": "_", "digest": {
        "sha256": image.manifest_digest.removeprefix("sha256:")}}]
    wanted = {attestation.digest, attestation.config_digest, attestation.blobs[0][0],
              done.exported.digest, image.manifest_digest}
    for export in (export_oci, export_docker):
        out = io.BytesIO()
        export(done.exported, BLOBS, out)
        files = _archive(out.getvalue())
        assert {"blobs/sha256/" + d.removeprefix("sha256:") for d in wanted} <= set(files)
        top = json.loads(files["index.json"])["manifests"][0]
        assert top["digest"] == done.exported.digest
        if export is export_docker:
            assert json.loads(files["manifest.json"])[0]["Config"].endswith(
                image.config_digest.removeprefix("sha256:"))


def test_materials_name_images_urls_and_git_sources_once() -> None:
    graph = BuildGraph()
    image = graph.add(Vertex(SourceOp("docker-image://127.0.0.1:5000/base@sha256:"
                                      + "c" * 64), platform=ARM64))
    url = graph.add(Vertex(SourceOp("https://example.com/a.tgz", (
        ("checksum", "sha256:" + "b" * 64), ("filename", "a.tgz")))))
    git = graph.add(Vertex(SourceOp("git://github.com/o/r.git#v1", (
        ("fullurl", "https://github.com/o/r.git"),))))
    unused = graph.add(Vertex(SourceOp("https://example.com/unused")))
    root = graph.add(Vertex(ExecOp(("true",), mounts=(ExecMount("/", 0, output=True),)),
                            (image, url, git, image)))
    del unused  # in the graph, not among the image's inputs
    assert materials(graph, root) == [
        {"uri": "pkg:docker/127.0.0.1%3A5000/base@sha256%3A" + "c" * 64
                + "?platform=linux%2Farm64%2Fv8", "digest": {"sha256": "c" * 64}},
        {"uri": "https://example.com/a.tgz", "digest": {"sha256": "b" * 64}},
        {"uri": "https://github.com/o/r.git#v1", "digest": {}},
    ]
