"""``make image``: dockyard builds its own image (the repository's Dockerfile) for
linux/amd64 and linux/arm64, then checks it.

1. The base: a Debian bookworm index of both platforms (benchmarks/_debian_base.py:
   debootstrap for amd64, ``debootstrap --foreign`` plus the second stage under QEMU for
   arm64, the host's mirror settings laid over each), cached under ``$DOCKYARD_CACHE_DIR``
   (default /var/cache/dockyard) as an OCI layout.
2. Debian's docker-registry on 127.0.0.1 (its storage kept in ``<cache>/image/registry``:
   a later push finds its blobs there), the base pushed to it with skopeo.
3. ``dockyard build --platform linux/amd64,linux/arm64 --build-arg DEBIAN_IMAGE=<base>
   -t 127.0.0.1:PORT/dockyard:dev --push .`` on the local embedded service, under the root
   ``<cache>/image/root`` (kept: its store is the next run's cache), then ``dockyard
   stop``.  arm64 steps run through QEMU's binfmt_misc handler.
4. Checks: ``skopeo inspect --raw`` of the tag is an index naming both platforms; each
   platform's image is copied out (skopeo) and unpacked (umoci), then under runc (arm64
   through QEMU) runc, update-binfmts and the other arch's QEMU answer ``--version`` in
   it, and ``dockyard --version`` prints this checkout's version.
5. The registry stops, by PID, also on failure or Ctrl-C.

Exit status: 0, or 1 with the error on stderr.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._debian_base import write_debian_index
from devkit.busybox_image import SetupError, need_tool, skopeo_push
from devkit.local_cluster import environment
from devkit.registry import loopback_registry
from dockyard.scheduler._errors import DockyardError

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("DOCKYARD_CACHE_DIR", "/var/cache/dockyard")) / "image"
ARCHES = ("amd64", "arm64")
PLATFORMS = ",".join(f"linux/{arch}" for arch in ARCHES)
#: the registry's preferred port: the same base reference from run to run
REGISTRY_PORT = 5055
BUILD_TIMEOUT = 3600.0
BEGAN = time.monotonic()


def log(message: str) -> None:
    print(f"image [{time.monotonic() - BEGAN:6.1f}s]: {message}", file=sys.stderr, flush=True)


def _run(argv: list[str], what: str, *, env: dict[str, str] | None = None,
         capture: bool = True, timeout: float = 300.0) -> str:
    """Run ``argv``; its stdout (captured) or "" (passed through); a SetupError naming
    ``what`` when it fails."""
    try:
        done = subprocess.run(argv, env=env, text=True, timeout=timeout, check=False,
                              stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE if capture else sys.stderr,
                              stderr=subprocess.PIPE if capture else None)
    except subprocess.TimeoutExpired:
        raise SetupError(f"{what} took over {timeout:.0f} s") from None
    if done.returncode != 0:
        said = (done.stderr or "").strip()[-2000:]
        raise SetupError(f"{what} failed (exit status {done.returncode})"
                         f"{': ' + said if said else ''}")
    return done.stdout or ""


def dockyard_command() -> list[str]:
    """The ``dockyard`` console script of the Python running this."""
    script = Path(sys.executable).with_name("dockyard")
    if not script.exists():
        raise SetupError(f"no dockyard command beside {sys.executable}",
                         hint="run 'make setup'")
    return [str(script)]


def build(registry: str, root: Path) -> None:
    """``dockyard build`` of the repository for both platforms, pushed to ``registry``."""
    env = environment(root)
    argv = [*dockyard_command(), "build", "--progress=plain", "--platform", PLATFORMS,
            "--build-arg", f"DEBIAN_IMAGE={registry}/library/debian:bookworm",
            "-t", f"{registry}/dockyard:dev", "--push", str(REPO)]
    log("$ " + " ".join(["dockyard", *argv[1:]]))
    stop = [*dockyard_command(), "stop"]
    try:
        _run(argv, "dockyard build", env=env, capture=False, timeout=BUILD_TIMEOUT)
    except BaseException:
        subprocess.run(stop, env=env, capture_output=True, timeout=120.0, check=False)
        raise  # the build's error, not the stop's
    _run(stop, "dockyard stop", env=env, timeout=120.0)


def check_index(registry: str) -> dict[str, Any]:
    """The pushed index, after checking that it names both platforms."""
    raw = _run([need_tool("skopeo"), "inspect", "--raw", "--tls-verify=false",
                f"docker://{registry}/dockyard:dev"], "skopeo inspect --raw")
    index: dict[str, Any] = json.loads(raw)
    found = sorted(f"{m['platform']['os']}/{m['platform']['architecture']}"
                   for m in index.get("manifests", []) if "platform" in m)
    wanted = sorted(f"linux/{arch}" for arch in ARCHES)
    if found != wanted:
        raise SetupError(f"{registry}/dockyard:dev names the platforms {found}, not {wanted}")
    log(f"index {index.get('mediaType')}: {', '.join(found)}")
    for entry in index["manifests"]:
        manifest = json.loads(_run([need_tool("skopeo"), "inspect", "--raw",
                                    "--tls-verify=false",
                                    f"docker://{registry}/dockyard@{entry['digest']}"],
                                   "skopeo inspect --raw of a platform's manifest"))
        size = sum(layer["size"] for layer in manifest["layers"])
        log(f"  {entry['platform']['architecture']}: {len(manifest['layers'])} layers, "
            f"{size / 2**20:.0f} MiB compressed")
    return index


#: per platform, the emulator its image keeps for the other (Dockerfile's QEMU_TARGETS)
OTHER_QEMU = {"amd64": "qemu-aarch64-static", "arm64": "qemu-x86_64-static"}


def _runc(bundle: Path, args: list[str], what: str) -> str:
    """Run ``args`` in the unpacked image ``bundle`` under runc; what it printed."""
    config_path = bundle / "config.json"
    config = json.loads(config_path.read_text())
    config["process"]["args"] = args
    config["process"]["terminal"] = False
    config_path.write_text(json.dumps(config))
    return _run([need_tool("runc"), "run", "--bundle", str(bundle),
                 f"dockyard-image-{os.getpid()}-{bundle.name}"], f"{what} (runc)",
                timeout=120.0).strip()


def run_image(registry: str, arch: str, work: Path) -> str:
    """Copy out and unpack the ``arch`` image, check its tools (runc, update-binfmts, the
    other arch's QEMU), run ``dockyard --version`` in it; what that printed."""
    layout, bundle = work / "layout", work / f"bundle-{arch}"
    overrides = ["--override-arch", arch, *(["--override-variant", "v8"]
                                           if arch == "arm64" else [])]
    _run([need_tool("skopeo"), *overrides, "copy", "--quiet", "--src-tls-verify=false",
          f"docker://{registry}/dockyard:dev", f"oci:{layout}:{arch}"],
         f"skopeo copy of the {arch} image")
    _run([need_tool("umoci"), "unpack", "--image", f"{layout}:{arch}", str(bundle)],
         f"umoci unpack of the {arch} image")
    qemu = OTHER_QEMU[arch]
    tools = _runc(bundle, ["sh", "-c", f"runc --version | head -n1 && "
                           f"update-binfmts --version && {qemu} --version | head -n1"],
                  f"the tools of the {arch} image")
    log(f"linux/{arch}: " + "; ".join(tools.splitlines()))
    said = _runc(bundle, ["dockyard", "--version"], f"dockyard --version in the {arch} image")
    log(f"linux/{arch}: $ dockyard --version -> {said}")
    return said


def main() -> int:
    for tool in ("skopeo", "umoci", "runc", "docker-registry"):
        need_tool(tool)
    expected = _run([*dockyard_command(), "--version"], "dockyard --version on the host",
                    env=environment(CACHE / "root")).strip()
    log(f"the Debian base for {PLATFORMS} (cached under {CACHE.parent}) ...")
    layout = write_debian_index(ARCHES, CACHE / "base")
    (CACHE / "registry").mkdir(parents=True, exist_ok=True)
    with loopback_registry(CACHE / "registry", port=REGISTRY_PORT) as reg, \
            tempfile.TemporaryDirectory(prefix="dockyard-image.") as tmp:
        log(f"registry on {reg.url}; pushing the base")
        skopeo_push(layout, "latest", f"{reg.domain}/library/debian:bookworm")
        started = time.monotonic()
        build(reg.domain, CACHE / "root")
        log(f"built and pushed {reg.domain}/dockyard:dev in "
            f"{time.monotonic() - started:.1f} s")
        check_index(reg.domain)
        for arch in ARCHES:
            said = run_image(reg.domain, arch, Path(tmp))
            if said != expected:
                raise SetupError(f"the {arch} image says {said!r}, this checkout "
                                 f"{expected!r}")
            shutil.rmtree(Path(tmp) / f"bundle-{arch}")
    log("done: both images run dockyard")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DockyardError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
