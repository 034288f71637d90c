"""``dockyard build``'s image-side flags end to end, as a CI pipeline runs them: the CLI in a
subprocess with its own DOCKYARD_ROOT and the embedded service (started by the first build,
stopped by the module fixture), each flag checked by its effect on what was written.

- ``-q``: nothing but the image id on stdout; ``--iidfile``: the id, equal to the digest of
  the config the OCI output holds, removed when a build starts (a failed one leaves none).
- ``--label``: in the config's Labels, over the Dockerfile's LABEL of the same key.
- ``--annotation`` / ``-o ...,annotation*.K=V``: in the manifests, the index and the
  descriptors of an ``oci`` output and of a push, per platform.
- ``--metadata-file``: ``buildx.build.ref``; the image keys only for outputs writing one.
- flags read as buildx reads them: an unknown flag named alone, exit status 125.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

PROJECT = Path(__file__).resolve().parents[3]
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
CREATED = "org.opencontainers.image.created"


@dataclass
class Dockyard:
    root: Path
    busybox: str
    work: Path

    def run(self, *argv: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        environ = {**os.environ, "DOCKYARD_ROOT": str(self.root), "PYTHONPATH": str(PROJECT)}
        return subprocess.run([sys.executable, "-m", "dockyard", *argv], cwd=self.work,
                              env=environ, capture_output=True, text=True, timeout=timeout,
                              check=False)

    def context(self, name: str, dockerfile: str) -> Path:
        context = self.work / name
        context.mkdir()
        (context / "Dockerfile").write_text(dockerfile.replace("BUSYBOX", self.busybox))
        (context / "file.txt").write_text(f"{name}\n")
        return context


@pytest.fixture(scope="module")
def dockyard(busybox_image: Any) -> Iterator[Dockyard]:
    root = Path(tempfile.mkdtemp(prefix="dyf-", dir="/tmp"))
    work = Path(tempfile.mkdtemp(prefix="dyf-work-"))
    try:
        yield Dockyard(root, busybox_image.reference, work)
    finally:
        subprocess.run([sys.executable, "-m", "dockyard", "stop"], env={
            **os.environ, "DOCKYARD_ROOT": str(root), "PYTHONPATH": str(PROJECT)},
            capture_output=True, timeout=90, check=False)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def _ok(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert done.returncode == 0, done.stderr
    return done


class Layout:
    """An OCI layout tar, read: its index.json, and any blob as JSON."""

    def __init__(self, path: Path) -> None:
        with tarfile.open(path) as tar:
            self.files = {m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
                          for m in tar.getmembers() if m.isfile()}
        self.index = json.loads(self.files["index.json"])

    def blob(self, digest: str) -> bytes:
        data = self.files["blobs/sha256/" + digest.removeprefix("sha256:")]
        assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
        return data

    def json(self, digest: str) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self.blob(digest))
        return found


LABELLED = """\
FROM BUSYBOX
LABEL a=dockerfile c=3
COPY file.txt /file.txt
"""


def test_quiet_iidfile_labels_and_metadata(dockyard: Dockyard) -> None:
    context = dockyard.context("labelled", LABELLED)
    out = dockyard.work / "labelled-out"
    out.mkdir()
    (out / "iid").write_text("stale")
    done = _ok(dockyard.run(
        "build", "-q", "--iidfile", f"{out}/iid", "--label", "a=cli", "--label", "b=2",
        "-t", "example/flags:1", "-o", f"type=oci,dest={out}/image.tar",
        "--metadata-file", f"{out}/meta.json", str(context)))
    layout = Layout(out / "image.tar")
    top = layout.index["manifests"][0]
    manifest = layout.json(top["digest"])
    config_digest = manifest["config"]["digest"]
    config = layout.json(config_digest)
    assert done.stdout == f"{config_digest}\n"  # -q: the image id and nothing else
    assert "load build definition" not in done.stderr and "#1" not in done.stderr
    assert (out / "iid").read_text() == config_digest
    labels = config["config"]["Labels"]
    assert (labels["a"], labels["b"], labels["c"]) == ("cli", "2", "3")
    meta = json.loads((out / "meta.json").read_text())
    assert re.fullmatch(r"dockyard/[^/]+/[0-9a-f]{32}", meta["buildx.build.ref"])
    assert meta["containerimage.digest"] == top["digest"]
    assert meta["containerimage.config.digest"] == config_digest
    assert meta["containerimage.descriptor"] == {
        "mediaType": OCI_MANIFEST, "digest": top["digest"], "size": top["size"],
        "platform": {"architecture": config["architecture"], "os": "linux"},
        "annotations": {CREATED: config["created"]}}
    assert meta["image.name"] == "example/flags:1"


def test_failed_build_leaves_no_iidfile_and_local_output_no_image_keys(
        dockyard: Dockyard) -> None:
    context = dockyard.context("failing", "FROM BUSYBOX\nCOPY nope /nope\n")
    out = dockyard.work / "failing-out"
    out.mkdir()
    (out / "iid").write_text("stale")
    done = dockyard.run("build", "--iidfile", f"{out}/iid", "-o", f"type=oci,dest={out}/i.tar",
                        str(context))
    assert done.returncode == 1, done.stderr
    assert not (out / "iid").exists()
    (context / "Dockerfile").write_text("FROM scratch\nCOPY file.txt /file.txt\n")
    _ok(dockyard.run("build", "-o", f"type=local,dest={out}/rootfs", "--metadata-file",
                     f"{out}/meta.json", str(context)))
    meta = json.loads((out / "meta.json").read_text())
    assert "buildx.build.ref" in meta
    assert not [key for key in meta if key.startswith(("containerimage.", "image."))]


SCRATCH = "FROM scratch\nCOPY file.txt /file.txt\n"


def test_annotations_in_a_multi_platform_oci_output(dockyard: Dockyard) -> None:
    context = dockyard.context("annotated", SCRATCH)
    out = dockyard.work / "annotated-out"
    out.mkdir()
    _ok(dockyard.run(
        "build", "--platform", "linux/amd64,linux/arm64", "-t", "example/ann:1",
        "--annotation", "org.opencontainers.image.title=all",
        "--annotation", "manifest[linux/arm64]:only.arm=yes",
        "--annotation", "index:org.opencontainers.image.description=multi",
        "--annotation", "manifest-descriptor:d=1", "--annotation", "index-descriptor:top=1",
        "-o", f"type=oci,dest={out}/image.tar,annotation-index.from.output=2",
        "--metadata-file", f"{out}/meta.json", str(context)))
    layout = Layout(out / "image.tar")
    entry = layout.index["manifests"][0]
    assert entry["mediaType"] == OCI_INDEX
    assert entry["annotations"]["top"] == "1"
    index = layout.json(entry["digest"])
    assert index["annotations"] == {"org.opencontainers.image.description": "multi",
                                    "from.output": "2"}
    by_arch = {item["platform"]["architecture"]: item for item in index["manifests"]}
    assert {arch: item["annotations"] for arch, item in by_arch.items()} == {
        "amd64": {"d": "1"}, "arm64": {"d": "1"}}
    amd, arm = (layout.json(by_arch[arch]["digest"]) for arch in ("amd64", "arm64"))
    assert amd["annotations"] == {"org.opencontainers.image.title": "all"}
    assert arm["annotations"] == {"org.opencontainers.image.title": "all", "only.arm": "yes"}
    meta = json.loads((out / "meta.json").read_text())
    created = max(layout.json(item["config"]["digest"])["created"] for item in (amd, arm))
    assert meta["containerimage.descriptor"]["annotations"] == {"top": "1", CREATED: created}
    assert "containerimage.config.digest" not in meta  # an index has no one config


def test_annotations_of_one_image_and_what_is_refused(dockyard: Dockyard) -> None:
    context = dockyard.context("one", SCRATCH)
    out = dockyard.work / "one-out"
    out.mkdir()
    _ok(dockyard.run("build", "--annotation", "k=v", "--annotation", "manifest-descriptor:d=1",
                     "-o", f"type=oci,dest={out}/image.tar", str(context)))
    layout = Layout(out / "image.tar")
    entry = layout.index["manifests"][0]
    assert entry["annotations"] == {"d": "1"}
    assert layout.json(entry["digest"])["annotations"] == {"k": "v"}
    refused = dockyard.run("build", "--annotation", "index:k=v", "-o",
                           f"type=oci,dest={out}/never.tar", str(context))
    assert refused.returncode == 1
    assert "index annotations not supported for single platform export" in refused.stderr
    assert not (out / "never.tar").exists()
    # attestations put the one image in an index: then the index takes its annotations
    _ok(dockyard.run("build", "--provenance=true", "--annotation", "index:k=v", "-o",
                     f"type=oci,dest={out}/attested.tar", str(context)))
    attested = Layout(out / "attested.tar")
    assert attested.index["manifests"][0]["mediaType"] == OCI_INDEX
    assert attested.json(attested.index["manifests"][0]["digest"])["annotations"] == {"k": "v"}


def test_pushed_image_carries_its_annotations(dockyard: Dockyard) -> None:
    context = dockyard.context("pushed", SCRATCH)
    domain = dockyard.busybox.split("/")[0]
    _ok(dockyard.run("build", "--annotation", "pushed.by=dockyard", "--label", "l=1",
                     "-o", f"type=image,name={domain}/flags/pushed:1,push=true",
                     str(context)))
    request = urllib.request.Request(f"http://{domain}/v2/flags/pushed/manifests/1",
                                     headers={"Accept": OCI_MANIFEST})
    with urllib.request.urlopen(request, timeout=30) as answer:
        manifest = json.loads(answer.read())
    assert manifest["annotations"] == {"pushed.by": "dockyard"}


@pytest.mark.parametrize(("argv", "message"), [
    (["build", "--bogus", "x", "."], "error: unknown flag: --bogus\n"),
    (["build", "--no-cach", "."], "error: unknown flag: --no-cach\n"),
])
def test_flag_errors_exit_125(dockyard: Dockyard, argv: list[str], message: str) -> None:
    done = dockyard.run(*argv)
    assert (done.returncode, done.stdout) == (125, "")
    assert done.stderr.startswith(message)
