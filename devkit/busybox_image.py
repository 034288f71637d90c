"""A multi-arch busybox base image made from the host's static busybox binaries.

``write_busybox_layout`` writes ``library/busybox``-style OCI image layout: an index of
linux/amd64 and linux/arm64/v8 images, each one gzip layer holding /bin/busybox with a
symlink per applet, /etc/passwd, /etc/group, /tmp and /root.  Everything is built with
tarfile/json (mtimes 0, fixed metadata), so the same binaries give the same digests.
``skopeo_push`` copies it to a registry with ``skopeo copy --all`` -- deliberately not
through dockyard's own registry client, which is what the image is used to test.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dockyard.scheduler._errors import DockyardError

#: Debian's static busybox binaries; ``make setup`` provides both.
BUSYBOX = {
    "amd64": Path("/bin/busybox"),
    "arm64": Path(os.environ.get("DOCKYARD_BUSYBOX_ARM64",
                                 "/var/cache/dockyard/busybox-arm64/bin/busybox")),
}
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
_GROUP = "root:x:0:\nnogroup:x:65534:\n"
_EPOCH = "1970-01-01T00:00:00Z"


class SetupError(DockyardError):
    """A host prerequisite of the tests or the demo (a binary, a tool) is missing or failed."""


def need_tool(name: str) -> str:
    """The path of the host tool ``name``; a SetupError naming the fix when it is missing."""
    found = shutil.which(name)
    if found is None:
        raise SetupError(f"{name} is not installed", hint="run 'make setup'")
    return found


def _busybox(arch: str) -> Path:
    binary = BUSYBOX[arch]
    if not binary.exists():
        raise SetupError(f"the {arch} busybox {binary} is missing", hint="run 'make setup'")
    return binary


def _applets() -> list[str]:
    listed = subprocess.run([str(_busybox("amd64")), "--list"], check=True,
                            capture_output=True, text=True).stdout.split()
    return sorted(name for name in listed if name != "busybox")


def _entry(name: str, kind: bytes, mode: int, data: bytes = b"", link: str = "") -> tuple[
        tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.size = kind, mode, link, len(data)
    info.mtime, info.uname, info.gname = 0, "root", "root"
    return info, data


def busybox_layer(arch: str) -> bytes:
    """The uncompressed layer tar of the ``arch`` (amd64, arm64) image."""
    entries = [_entry("bin", tarfile.DIRTYPE, 0o755), _entry("etc", tarfile.DIRTYPE, 0o755),
               _entry("root", tarfile.DIRTYPE, 0o700), _entry("tmp", tarfile.DIRTYPE, 0o1777),
               _entry("bin/busybox", tarfile.REGTYPE, 0o755, _busybox(arch).read_bytes()),
               _entry("etc/passwd", tarfile.REGTYPE, 0o644, _PASSWD.encode()),
               _entry("etc/group", tarfile.REGTYPE, 0o644, _GROUP.encode())]
    entries += [_entry(f"bin/{name}", tarfile.SYMTYPE, 0o777, link="busybox")
                for name in _applets()]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data else None)
    return out.getvalue()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class OciLayout:
    """An OCI image layout directory being written: blobs by digest, then index.json."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True)
        (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')

    def add(self, media_type: str, data: bytes) -> dict[str, Any]:
        digest = sha256(data)
        (self.root / "blobs" / "sha256" / digest[7:]).write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def add_json(self, media_type: str, value: dict[str, Any]) -> dict[str, Any]:
        return self.add(media_type, json.dumps(value, separators=(",", ":")).encode())

    def finish(self, top: dict[str, Any], tag: str) -> None:
        entry = {**top, "annotations": {"org.opencontainers.image.ref.name": tag}}
        (self.root / "index.json").write_text(json.dumps({"schemaVersion": 2,
                                                          "manifests": [entry]}))


@dataclass(frozen=True)
class PlatformImage:
    """One platform of the busybox image as written."""

    manifest_digest: str
    config_digest: str
    layer_digest: str
    layer_size: int
    diff_id: str


def _platform(arch: str) -> dict[str, str]:
    return {"architecture": arch, "os": "linux", **({"variant": "v8"} if arch == "arm64"
                                                     else {})}


def _platform_image(layout: OciLayout, arch: str) -> tuple[dict[str, Any], PlatformImage]:
    tar = busybox_layer(arch)
    layer = layout.add(OCI_LAYER, gzip.compress(tar, mtime=0))
    config = layout.add_json(OCI_CONFIG, {
        **_platform(arch), "created": _EPOCH, "config": {"Env": [PATH_ENV], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256(tar)]},
        "history": [{"created": _EPOCH, "created_by": f"busybox {arch}"}]})
    manifest = layout.add_json(OCI_MANIFEST, {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                                              "config": config, "layers": [layer]})
    return {**manifest, "platform": _platform(arch)}, PlatformImage(
        manifest["digest"], config["digest"], layer["digest"], layer["size"], sha256(tar))


def write_busybox_layout(root: Path, tag: str = "latest") -> tuple[str, dict[str,
                                                                           PlatformImage]]:
    """Write the multi-arch busybox OCI layout at ``root`` (which must not exist); its index
    digest and, per architecture, its image."""
    layout = OciLayout(root)
    entries, images = [], {}
    for arch in ("amd64", "arm64"):
        entry, images[arch] = _platform_image(layout, arch)
        entries.append(entry)
    index = layout.add_json(OCI_INDEX, {"schemaVersion": 2, "mediaType": OCI_INDEX,
                                        "manifests": entries})
    layout.finish(index, tag)
    return index["digest"], images


def skopeo_push(layout: Path, tag: str, destination: str) -> None:
    """``skopeo copy --all`` the layout's ``tag`` to ``destination`` (``host:port/repo:tag``
    of a plain-HTTP registry), digests kept."""
    argv = [need_tool("skopeo"), "copy", "--all", "--preserve-digests", "--quiet",
            "--dest-tls-verify=false", f"oci:{layout}:{tag}", f"docker://{destination}"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    except subprocess.TimeoutExpired as err:
        raise SetupError(f"skopeo copy to {destination} took over 120 s") from err
    if done.returncode != 0:
        raise SetupError(f"skopeo copy to {destination} failed: {done.stderr.strip()}",
                         hint="is the registry up? see its log")
