"""A real Debian bookworm base image for the ``debian-*`` cases, pushed to the bench's registry.

- ``debootstrap --variant=minbase --include=ca-certificates bookworm`` once, into
  ``/var/cache/dockyard/debian-bookworm-minbase`` (written beside it, then renamed: a
  half-made tree is never taken for the cache); later runs reuse it (about 30 s to make).
- Every run then lays this host's mirror settings over a copy of it (the cache stays as
  debootstrap left it), so ``apt-get`` and ``pip`` in a ``RUN`` reach the same mirrors as
  the host: the local CA certificates (``/usr/local/share/ca-certificates``, then
  ``update-ca-certificates`` in a chroot: HTTPS through this machine's egress works), apt's
  sources (``/etc/apt/sources.list`` and the ``*.list``/``*.sources`` of
  ``sources.list.d``, replacing debootstrap's own), the ``apt.conf.d`` files setting how
  apt reaches a mirror (``Acquire::http``/``https`` proxies and certificates,
  ``Check-Valid-Until``...), and ``/etc/pip.conf``, so the image follows the host's
  settings.
- The tree becomes one gzip layer (sorted, numeric owners, the files' own mtimes, hardlinks
  kept) without what an official image leaves out: ``/dev``'s nodes, apt's lists and
  downloaded ``.deb`` files, the host's ``resolv.conf`` and ``hostname`` (the runtimes
  mount their own).  Config and manifest are written with devkit/busybox_image.py's
  ``OciLayout``; ``skopeo_push`` copies it to the registry.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from benchmarks._tools import BenchmarkError
from devkit.busybox_image import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    PATH_ENV,
    OciLayout,
    skopeo_push,
)

__all__ = ["DEBIAN_CACHE", "debian_base", "debian_cache", "host_mirror_files", "layer_skips",
           "push_debian_base", "write_debian_index"]

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
DEBIAN_CACHE = Path(os.environ.get("DOCKYARD_CACHE_DIR", "/var/cache/dockyard")) / \
    f"debian-{SUITE}-minbase"
DEBOOTSTRAP_TIMEOUT = 900.0
#: the second stage of a foreign debootstrap runs every maintainer script through QEMU
SECOND_STAGE_TIMEOUT = 1800.0
_HOST_CA = Path("/usr/local/share/ca-certificates")
#: directories whose content the layer leaves out (the directory itself is kept)
_EMPTIED = ("dev", "var/lib/apt/lists", "var/cache/apt/archives", "proc", "sys", "tmp")
_DROPPED = ("etc/resolv.conf", "etc/hostname")
#: apt options about reaching a mirror (proxies, certificates, a snapshot's old Release)
_MIRROR_OPTION = re.compile(r"Acquire::(https?|ftp|Check-Valid-Until|Check-Date|Retries)\b")
_EPOCH = "1970-01-01T00:00:00Z"


def _run(argv: list[str], what: str, timeout: float = 120.0) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        raise BenchmarkError(f"{what} took over {timeout:.0f} s") from None
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).splitlines()[-15:])
        raise BenchmarkError(f"{what} failed (exit {done.returncode}):\n{tail}")


def host_arch() -> str:
    """This machine's Debian architecture (``amd64``, ``arm64``...)."""
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()


def debian_cache(arch: str) -> Path:
    """Where the tree of ``arch`` is cached: DEBIAN_CACHE for amd64 (the benchmarks'), the
    same name with ``-ARCH`` appended for another architecture."""
    return DEBIAN_CACHE if arch == "amd64" else DEBIAN_CACHE.with_name(
        f"{DEBIAN_CACHE.name}-{arch}")


def debian_base(arch: str = "amd64") -> Path:
    """The cached debootstrap tree of ``arch``, made first when it is missing.

    Another architecture than the host's is made in two stages: ``debootstrap --foreign``
    unpacks its packages here, then ``debootstrap --second-stage`` runs inside the tree by
    chroot, its binaries through the kernel's binfmt_misc and QEMU (``make setup``
    registers qemu-aarch64 with the F flag, so the chroot needs no copy of QEMU)."""
    cache = debian_cache(arch)
    if cache.is_dir():
        return cache
    if shutil.which("debootstrap") is None:
        raise BenchmarkError("debootstrap is not installed", hint="run 'make setup'")
    foreign = arch != host_arch()
    cache.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{cache.name}.", dir=cache.parent))
    try:
        _run(["debootstrap", f"--arch={arch}", *(["--foreign"] if foreign else []),
              "--variant=minbase", "--include=ca-certificates", SUITE, str(staging), MIRROR],
             f"debootstrap {SUITE} {arch}", DEBOOTSTRAP_TIMEOUT)
        if foreign:
            _run(["chroot", str(staging), "/debootstrap/debootstrap", "--second-stage"],
                 f"debootstrap --second-stage of {SUITE} {arch} (through QEMU)",
                 SECOND_STAGE_TIMEOUT)
        staging.rename(cache)
    finally:
        _unmount_under(staging)  # a second stage killed midway leaves its /proc mounted
        shutil.rmtree(staging, ignore_errors=True)
    return cache


def _unmount_under(root: Path) -> None:
    """Lazily unmount every mount point at or under ``root``, deepest first."""
    prefix = f"{root}/"
    points = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for point in sorted((p for p in points if p.startswith(prefix)), reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def host_mirror_files(etc: Path = Path("/etc")) -> list[Path]:
    """This host's files that say how apt and pip reach their mirrors (see the module doc);
    paths under ``etc``."""
    apt = etc / "apt"
    found = [apt / "sources.list", etc / "pip.conf"]
    found += sorted((apt / "sources.list.d").glob("*.list"))
    found += sorted((apt / "sources.list.d").glob("*.sources"))
    found += [path for path in sorted((apt / "apt.conf.d").glob("*"))
              if path.is_file() and _MIRROR_OPTION.search(path.read_text(errors="replace"))]
    return [path for path in found if path.is_file()]


def _copy_into(root: Path, source: Path, relative: Path) -> None:
    target = root / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    target.chmod(0o644)


def apply_host_settings(root: Path) -> None:
    """Lay this host's CA certificates and mirror settings over the tree ``root``."""
    for old in [root / "etc/apt/sources.list",
                *(root / "etc/apt/sources.list.d").glob("*")]:
        old.unlink(missing_ok=True)
    shutil.rmtree(root / _HOST_CA.relative_to("/"), ignore_errors=True)
    for cert in sorted(_HOST_CA.rglob("*.crt")):
        _copy_into(root, cert, cert.relative_to("/"))
    for path in host_mirror_files():
        _copy_into(root, path, path.relative_to("/"))
    _run(["chroot", str(root), "update-ca-certificates", "--fresh"],
         "update-ca-certificates in the Debian tree")


def layer_skips(relative: str) -> bool:
    """Whether the layer leaves out the path ``relative`` (to the tree's root)."""
    parent = relative.rpartition("/")[0]
    return relative in _DROPPED or parent in _EMPTIED or any(
        relative.startswith(f"{top}/") and parent != top for top in _EMPTIED)


def _walk(root: Path) -> Iterator[str]:
    """Every path under ``root``, relative, sorted, parents first (symlinks not followed)."""
    for directory, subdirs, files in os.walk(root):
        subdirs.sort()
        base = os.path.relpath(directory, root)
        for name in sorted([*subdirs, *files]):
            yield name if base == "." else f"{base}/{name}"


def layer_tar(root: Path, out: Path) -> None:
    """Write the uncompressed layer tar of ``root`` to ``out``."""
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for relative in _walk(root):
            if layer_skips(relative):
                continue
            info = tar.gettarinfo(root / relative, arcname=relative)
            if info is None:  # a socket: no tar type for it
                continue
            info.uname = info.gname = ""
            if info.isreg():
                with open(root / relative, "rb") as data:
                    tar.addfile(info, data)
            else:
                tar.addfile(info)


def _gzip_file(source: Path, out: Path) -> None:
    with open(source, "rb") as raw, gzip.GzipFile(out, "wb", compresslevel=6, mtime=0) as gz:
        shutil.copyfileobj(raw, gz, 1 << 20)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as data:
        for block in iter(lambda: data.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def _platform(arch: str) -> dict[str, str]:
    return {"architecture": arch, "os": "linux", **({"variant": "v8"} if arch == "arm64"
                                                     else {})}


def _add_image(layout: OciLayout, tar_path: Path, arch: str) -> dict[str, Any]:
    """Gzip the layer tar ``tar_path`` and add it, its config and its manifest (``arch``)
    to ``layout``; the manifest's descriptor."""
    gz_path = tar_path.with_suffix(".tar.gz")
    _gzip_file(tar_path, gz_path)
    layer = layout.add(OCI_LAYER, gz_path.read_bytes())
    gz_path.unlink()
    config = layout.add_json(OCI_CONFIG, {
        **_platform(arch), "created": _EPOCH,
        "config": {"Env": [PATH_ENV], "Cmd": ["bash"]},
        "rootfs": {"type": "layers", "diff_ids": [_file_digest(tar_path)]},
        "history": [{"created": _EPOCH,
                     "created_by": f"debootstrap --variant=minbase {SUITE} + host mirrors"}]})
    return layout.add_json(OCI_MANIFEST, {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                                          "config": config, "layers": [layer]})


def _write_layout(layout_dir: Path, tar_path: Path) -> None:
    layout = OciLayout(layout_dir)
    layout.finish(_add_image(layout, tar_path, "amd64"), "latest")


def _host_layer(arch: str, scratch: Path) -> Path:
    """The layer tar of the cached tree of ``arch`` with this host's settings laid over a
    copy of it (the copy is removed)."""
    cached = debian_base(arch)
    root = scratch / f"rootfs-{arch}"
    try:
        _run(["cp", "-a", str(cached), str(root)], f"copying the Debian {arch} tree")
        apply_host_settings(root)
        tar = scratch / f"layer-{arch}.tar"
        layer_tar(root, tar)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return tar


def push_debian_base(work: Path, destination: str) -> None:
    """Make (or reuse) the Debian tree, apply the host's settings to a copy of it, push that
    as ``destination`` (``host:port/repo:tag``)."""
    scratch = work / "debian-base"
    scratch.mkdir()
    try:
        _write_layout(scratch / "layout", _host_layer("amd64", scratch))
        skopeo_push(scratch / "layout", "latest", destination)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _index_key(archs: Sequence[str]) -> str:
    """What the index of ``archs`` is made of: the cached trees (by their directory's
    mtime: a tree made again is another tree) and this host's settings laid over them."""
    digest = hashlib.sha256(f"{SUITE} {' '.join(archs)}\n".encode())
    for arch in archs:
        digest.update(f"{arch} {debian_cache(arch).stat().st_mtime_ns}\n".encode())
    for path in [*sorted(_HOST_CA.rglob("*.crt")), *host_mirror_files()]:
        digest.update(f"{path}\n".encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def write_debian_index(archs: Sequence[str], cache_root: Path) -> Path:
    """An OCI image layout whose tag ``latest`` is an index of the Debian base for each of
    ``archs`` (host settings applied), kept under ``cache_root`` and made again only when
    a tree or the host's settings changed (an older one is then removed)."""
    for arch in archs:
        debian_base(arch)
    layout_dir = cache_root / f"debian-{SUITE}-{'-'.join(archs)}-{_index_key(archs)}"
    if (layout_dir / "index.json").is_file():
        return layout_dir
    cache_root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"{layout_dir.name}.", dir=cache_root))
    try:
        layout = OciLayout(scratch / "layout")
        entries = []
        for arch in archs:
            tar = _host_layer(arch, scratch)
            entries.append({**_add_image(layout, tar, arch), "platform": _platform(arch)})
            tar.unlink()
        layout.finish(layout.add_json(OCI_INDEX, {"schemaVersion": 2, "mediaType": OCI_INDEX,
                                                  "manifests": entries}), "latest")
        for old in cache_root.glob(f"debian-{SUITE}-{'-'.join(archs)}-*"):
            if old != scratch:
                shutil.rmtree(old, ignore_errors=True)
        (scratch / "layout").rename(layout_dir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return layout_dir
