"""The differ and the unpackers against the real things: a real overlayfs mount (busybox
lower) changed the ways a RUN changes a root, its upper dir exported with ``write_layer``,
then checked four ways:

- GNU tar lists the blob (and sees the whiteouts and the opaque marker);
- ``unpack_layer`` gives back the upper dir (types, modes, ids, content, links, xattrs);
- a real overlay of ``[unpacked layer, busybox]`` shows the same tree as the first mount;
- ``apply_layer_flat`` of [busybox layer, diff layer], and umoci unpacking the same two
  layers from an OCI layout, both give that tree too.

Everything mounted is unmounted, even on failure.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from dockyard.cache_backends._records import GZIP_LAYER, LayerDescriptor
from dockyard.workers._layers import apply_layer_flat, unpack_layer, write_layer

_CAP_NET_RAW = bytes.fromhex("0100000200200000000000000000000000000000")
_OPTIONS = "redirect_dir=off,metacopy=off,index=off"

pytestmark = pytest.mark.skipif(os.geteuid() != 0 and os.environ.get("CI") != "true",
                                reason="overlay mounts and device files need root")


@contextmanager
def _overlay(lowers: list[Path], merged: Path, upper: Path | None = None,
             work: Path | None = None) -> Iterator[Path]:
    options = "lowerdir=" + ":".join(map(str, lowers))
    if upper is not None and work is not None:
        options += f",upperdir={upper},workdir={work},{_OPTIONS}"
    merged.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(merged)],
                   check=True, capture_output=True)
    try:
        yield merged
    finally:
        if subprocess.run(["umount", str(merged)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(merged)], check=True)


def _change(root: Path) -> None:
    """What RUN steps do to a root: every kind of change a layer must carry."""
    with (root / "etc/passwd").open("a") as passwd:
        passwd.write("extra:x:2000:2000::/:/bin/sh\n")
    (root / "bin/ls").unlink()                                  # deletion -> whiteout
    (root / "bin/cat").rename(root / "bin/kat")                 # rename: whiteout + new
    shutil.rmtree(root / "home")                                # rm -rf + mkdir -> opaque
    (root / "home").mkdir()
    (root / "home/new").write_text("fresh\n")
    (root / "etc/group").unlink()                               # file -> directory
    (root / "etc/group").mkdir()
    (root / "etc/group/inside").write_text("x\n")
    shutil.rmtree(root / "root")                                # directory -> file
    (root / "root").write_text("now a file\n")
    tool = root / "usr/bin/tool"
    tool.parent.mkdir(parents=True)
    tool.write_bytes(b"#!/bin/sh\necho tool\n")
    os.chmod(tool, 0o4755)                                      # setuid
    os.link(tool, root / "usr/bin/tool-again")                  # hardlink
    (root / "usr/bin/bb").symlink_to("../../bin/busybox")       # symlink
    os.mkfifo(root / "tmp/fifo")                                # fifo
    os.mknod(root / "tmp/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    owned = root / "home/app-file"
    owned.write_text("app\n")
    os.chown(owned, 1000, 1000)
    os.chmod(owned, 0o2640)                                     # setgid, uid/gid
    capped = root / "usr/bin/ping"
    capped.write_bytes(b"ping")
    os.chmod(capped, 0o755)
    os.setxattr(capped, "security.capability", _CAP_NET_RAW)   # file capability
    os.chmod(root / "tmp", 0o1770)                             # metadata-only change


def _snapshot(root: Path, *, with_dir_times: bool = False) -> dict[str, tuple[object, ...]]:
    """Everything a layer must keep, per path (overlay's own xattrs left out; for whiteout
    devices only the name: overlayfs may share one whiteout inode, and the tar marker
    carries no time, as containerd's)."""
    found: dict[str, tuple[object, ...]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        xattrs = {n: os.getxattr(path, n, follow_symlinks=False)
                  for n in os.listxattr(path, follow_symlinks=False)
                  if not n.startswith("trusted.overlay.") or n == "trusted.overlay.opaque"}
        if stat.S_ISREG(st.st_mode):
            content: object = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            content = os.readlink(path) if stat.S_ISLNK(st.st_mode) else st.st_rdev
        is_dir = stat.S_ISDIR(st.st_mode)
        whiteout = stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
        found[path.relative_to(root).as_posix()] = (
            stat.filemode(st.st_mode), st.st_uid, st.st_gid, content, xattrs,
            None if whiteout or is_dir else st.st_nlink,
            None if whiteout or (is_dir and not with_dir_times) else int(st.st_mtime))
    return found


def _export(upper: Path, blob: Path) -> LayerDescriptor:
    with blob.open("wb") as out:
        return write_layer(upper, out)


@pytest.fixture
def changed(tmp_path: Path, busybox_rootfs: Callable[[str], Path]) -> dict[str, object]:
    """A busybox lower, changed through a real overlay: the upper dir, the merged view."""
    lower = busybox_rootfs("amd64")
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    with _overlay([lower], tmp_path / "merged", upper, work) as merged:
        _change(merged)
        view = _snapshot(merged)
    return {"lower": lower, "upper": upper, "view": view}


def test_upper_round_trips_and_overlays_like_the_original(tmp_path: Path,
                                                          changed: dict[str, object]) -> None:
    upper, lower = Path(str(changed["upper"])), Path(str(changed["lower"]))
    desc = _export(upper, tmp_path / "diff.tar.gz")
    listing = subprocess.run(["tar", "-tvzf", str(tmp_path / "diff.tar.gz")], check=True,
                             capture_output=True, text=True).stdout
    for needle in (" bin/.wh.ls\n", " bin/.wh.cat\n", " home/.wh..wh..opq\n",
                   " usr/bin/tool-again link to usr/bin/tool\n", " usr/bin/bb -> "):
        assert needle in listing

    unpacked = tmp_path / "layer"
    with (tmp_path / "diff.tar.gz").open("rb") as blob:
        diff_id = unpack_layer(blob, unpacked, media_type=GZIP_LAYER,
                               expected_digest=desc.digest)
    assert diff_id == desc.diff_id
    assert _snapshot(unpacked) == _snapshot(upper)
    with _overlay([unpacked, lower], tmp_path / "again") as again:
        assert _snapshot(again) == changed["view"]


def test_flat_apply_and_umoci_give_the_merged_tree(tmp_path: Path,
                                                   changed: dict[str, object]) -> None:
    upper, lower = Path(str(changed["upper"])), Path(str(changed["lower"]))
    layers = [_export(lower, tmp_path / "base.tar.gz"), _export(upper, tmp_path / "diff.tar.gz")]
    blobs = [tmp_path / "base.tar.gz", tmp_path / "diff.tar.gz"]
    flat = tmp_path / "flat"
    flat.mkdir()
    for desc, blob in zip(layers, blobs, strict=True):
        with blob.open("rb") as stream:
            apply_layer_flat(stream, flat, media_type=desc.media_type,
                             expected_digest=desc.digest)
    assert _snapshot(flat) == changed["view"]

    layout = _oci_layout(tmp_path / "oci", layers, blobs)
    rootfs = tmp_path / "umoci-rootfs"
    subprocess.run(["umoci", "raw", "unpack", "--image", f"{layout}:latest", str(rootfs)],
                   check=True, capture_output=True)
    assert _snapshot(rootfs) == changed["view"]


def test_write_is_deterministic_with_epoch(tmp_path: Path, changed: dict[str, object]) -> None:
    upper = Path(str(changed["upper"]))
    first, second = tmp_path / "a.tgz", tmp_path / "b.tgz"
    with first.open("wb") as out:
        one = write_layer(upper, out, epoch=1_000_000)
    with second.open("wb") as out:
        two = write_layer(upper, out, epoch=1_000_000)
    assert one == two
    assert first.read_bytes() == second.read_bytes()
    listing = subprocess.run(["tar", "--full-time", "-tvzf", str(first)], check=True,
                             capture_output=True, text=True).stdout
    assert {line.split()[3] for line in listing.splitlines()} <= {"1970-01-12", "1970-01-01"}


def _oci_layout(root: Path, layers: list[LayerDescriptor], blobs: list[Path]) -> Path:
    """A one-image OCI layout (tag ``latest``) of ``layers``."""
    store = root / "blobs" / "sha256"
    store.mkdir(parents=True)
    for desc, blob in zip(layers, blobs, strict=True):
        shutil.copyfile(blob, store / desc.digest.removeprefix("sha256:"))
    config = _put(store, {"architecture": "amd64", "os": "linux", "config": {},
                          "rootfs": {"type": "layers",
                                     "diff_ids": [d.diff_id for d in layers]}})
    manifest = _put(store, {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
        "layers": [{"mediaType": d.media_type, "digest": d.digest, "size": d.size}
                   for d in layers]})
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest,
        "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}))
    return root


def _put(store: Path, document: dict[str, object]) -> dict[str, object]:
    data = json.dumps(document).encode()
    digest = hashlib.sha256(data).hexdigest()
    (store / digest).write_bytes(data)
    return {"digest": "sha256:" + digest, "size": len(data)}


def test_unpacks_what_gnu_tar_writes(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    deep = tree / ("d" * 80) / ("e" * 80)
    deep.mkdir(parents=True)
    (deep / "long-name-file").write_text("deep\n")
    (tree / "naïve-ünïcode").write_text("u\n")
    (tree / "capped").write_bytes(b"c")
    os.setxattr(tree / "capped", "security.capability", _CAP_NET_RAW)
    os.chown(tree / "capped", 70000, 70001)
    os.link(tree / "capped", tree / "capped-link")
    (tree / "sym").symlink_to("/" + "x" * 150)
    blob = tmp_path / "gnu.tar.gz"
    subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-czf",
                    str(blob), "-C", str(tree), "."], check=True)
    with blob.open("rb") as stream:
        unpack_layer(stream, tmp_path / "out", media_type=GZIP_LAYER, expected_digest=None)
    assert _snapshot(tmp_path / "out", with_dir_times=True) == \
        _snapshot(tree, with_dir_times=True)
