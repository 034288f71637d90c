"""``make demo``: build examples/ for linux/amd64 and linux/arm64, then run each image.

1. Start Debian's docker-registry on a free 127.0.0.1 port (storage in a temp dir) and push
   a multi-arch busybox image made from the host's static busybox binaries (skopeo).
2. ``dockyard build --platform linux/amd64,linux/arm64 --build-arg BASE_IMAGE=<that image>
   -o type=oci,dest=<tmp>/demo.tar examples/`` on the embedded local cluster.
3. Print the image index, unpack each platform's image and run its command under runc (the
   arm64 one through QEMU's binfmt_misc handler), printing what it says.
4. ``dockyard stop``, stop the registry (by PID), remove the temp dir -- also on failure.

State lives in ``DOCKYARD_ROOT`` (default: ``.demo-root`` in the repository), so a second
run finds its cache there.  Exit status: 0, or 1 with the error on stderr.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples"
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from support.busybox_image import (  # noqa: E402 -- after the path is set
    SetupError,
    need_tool,
    skopeo_push,
    write_busybox_layout,
)
from support.registry import loopback_registry  # noqa: E402

from scheduler._errors import DockyardError  # noqa: E402
from workers._layers import apply_layer_flat  # noqa: E402

PLATFORMS = ("linux/amd64", "linux/arm64")
BASE_REPO = "library/busybox:latest"


def log(message: str) -> None:
    print(f"demo: {message}", file=sys.stderr, flush=True)


def dockyard_root() -> Path:
    """``DOCKYARD_ROOT``, or ``.demo-root`` in the repository (ignored by git: it carries
    its own ``.gitignore``)."""
    given = os.environ.get("DOCKYARD_ROOT")
    root = Path(given) if given else REPO / ".demo-root"
    root.mkdir(parents=True, exist_ok=True)
    if not given:
        (root / ".gitignore").write_text("*\n")
    return root


def dockyard(root: Path, *argv: str, check: bool = True) -> int:
    """Run the CLI (progress and errors go straight to our stderr); its exit status."""
    env = {**os.environ, "DOCKYARD_ROOT": str(root), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "cluster", *argv], env=env,
                          stdout=sys.stderr, check=False)
    if check and done.returncode != 0:
        raise SetupError(f"dockyard {argv[0]} failed (exit status {done.returncode})",
                         hint="see its output above")
    return done.returncode


def sticky_port(root: Path) -> Path:
    """Where the root remembers its registry's port: the base image's reference is part of
    the cache keys, so the next run asks for the same port to find its cache."""
    return root / "demo-registry.port"


def saved_port(root: Path) -> int:
    try:
        return int(sticky_port(root).read_text())
    except (OSError, ValueError):
        return 0


@contextmanager
def service(root: Path) -> Iterator[None]:
    """The embedded service the first build starts; ``dockyard stop`` when done."""
    try:
        yield
    finally:
        dockyard(root, "stop", check=False)


def push_base_image(work: Path, domain: str) -> str:
    reference = f"{domain}/{BASE_REPO}"
    index_digest, _ = write_busybox_layout(work / "busybox-layout")
    skopeo_push(work / "busybox-layout", "latest", reference)
    log(f"pushed {reference} ({index_digest})")
    return reference


def build(root: Path, base: str, dest: Path) -> float:
    """Build the example to the OCI tar ``dest``; the seconds it took."""
    began = time.monotonic()
    dockyard(root, "build", "--progress=plain", "--platform", ",".join(PLATFORMS),
             "--build-arg", f"BASE_IMAGE={base}", "-o", f"type=oci,dest={dest}",
             str(EXAMPLE))
    return time.monotonic() - began


# --- the OCI layout the build wrote --------------------------------------------------------

def blob(layout: Path, digest: str) -> Path:
    algorithm, _, hexdigest = digest.partition(":")
    return layout / "blobs" / algorithm / hexdigest


def read_json(layout: Path, digest: str) -> Any:
    return json.loads(blob(layout, digest).read_bytes())


def image_index(layout: Path) -> tuple[str, Any]:
    """The digest and content of the image index the layout's index.json points at."""
    top = json.loads((layout / "index.json").read_text())["manifests"][0]
    if top["mediaType"] != "application/vnd.oci.image.index.v1+json":
        raise SetupError(f"{layout}/index.json names a {top['mediaType']}, not an image index",
                         hint=f"was the build run with --platform {','.join(PLATFORMS)}?")
    return top["digest"], read_json(layout, top["digest"])


def unpack(layout: Path, manifest: Any, rootfs: Path) -> None:
    rootfs.mkdir(parents=True)
    for layer in manifest["layers"]:
        with open(blob(layout, layer["digest"]), "rb") as stream:
            apply_layer_flat(stream, rootfs, media_type=layer["mediaType"],
                             expected_digest=layer["digest"])


# --- running an image under runc -----------------------------------------------------------

def runtime_spec(bundle: Path, config: Any) -> None:
    """``runc spec``'s default, with the image config's command, env and working dir."""
    subprocess.run([need_tool("runc"), "spec", "--bundle", str(bundle)], check=True)
    spec = json.loads((bundle / "config.json").read_text())
    image = config.get("config", {})
    spec["process"].update(terminal=False, cwd=image.get("WorkingDir") or "/",
                           env=image.get("Env") or [],
                           args=(image.get("Entrypoint") or []) + (image.get("Cmd") or []))
    spec["root"] = {"path": "rootfs", "readonly": True}
    spec["hostname"] = "dockyard-demo"
    (bundle / "config.json").write_text(json.dumps(spec, indent=2))


def run_image(bundle: Path, name: str) -> str:
    """Run the bundle's command; its standard output."""
    runc = need_tool("runc")
    try:
        done = subprocess.run([runc, "run", "--bundle", str(bundle), name],
                              capture_output=True, text=True, timeout=60, check=False)
    finally:
        subprocess.run([runc, "delete", "--force", name], capture_output=True, check=False)
    if done.returncode != 0:
        raise SetupError(f"runc run {name} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def run_platform(layout: Path, entry: Any, work: Path) -> str:
    platform = entry["platform"]
    name = f"{platform['os']}_{platform['architecture']}"
    manifest = read_json(layout, entry["digest"])
    bundle = work / "bundles" / name
    unpack(layout, manifest, bundle / "rootfs")
    runtime_spec(bundle, read_json(layout, manifest["config"]["digest"]))
    return run_image(bundle, f"dockyard-demo-{os.getpid()}-{name}")


# --- the demo ------------------------------------------------------------------------------

def show(layout: Path, work: Path) -> None:
    digest, index = image_index(layout)
    print(f"image index {digest}:")
    print(json.dumps(index, indent=2))
    for entry in index["manifests"]:
        platform = "/".join(filter(None, (entry["platform"].get(k) for k in
                                          ("os", "architecture", "variant"))))
        said = run_platform(layout, entry, work).rstrip("\n")
        print(f"{platform}: {said}", flush=True)


def demo(work: Path) -> None:
    began = time.monotonic()
    root = dockyard_root()
    (work / "registry").mkdir()
    with loopback_registry(work / "registry", port=saved_port(root)) as registry, \
            service(root):
        sticky_port(root).write_text(str(registry.port))
        log(f"registry pid {registry.process.pid} on {registry.domain}, files in {work}")
        base = push_base_image(work, registry.domain)
        took = build(root, base, work / "demo.tar")
    layout = work / "oci"
    with tarfile.open(work / "demo.tar") as tar:
        tar.extractall(layout, filter="data")
    show(layout, work)
    log(f"build {took:.1f}s, whole demo {time.monotonic() - began:.1f}s "
        f"(DOCKYARD_ROOT={root})")


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="dockyard-demo-"))
    try:
        demo(work)
    except DockyardError as error:
        log(f"error: {error}")
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
