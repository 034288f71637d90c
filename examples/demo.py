"""``make demo``: a two-node cluster on this machine builds examples/ for linux/amd64
and linux/arm64, then each image runs.

1. Start Debian's docker-registry on a 127.0.0.1 port (storage in a temp dir) and push a
   multi-arch busybox image made from the host's static busybox binaries (skopeo).
2. Start a cluster as a user would (devkit/local_cluster.py): ``dockyard node start
   --head`` on 127.0.0.2 (amd64), ``dockyard node start --address`` on 127.0.0.3 (arm64;
   on an amd64 machine its binaries run through QEMU binfmt, but the cluster sees a native
   arm64 node, as on mixed hardware), each under its own root, then ``dockyard serve
   --ray-address auto`` with a token.
3. ``dockyard build --endpoint URL --token-file F --progress=plain --no-cache --platform
   linux/amd64,linux/arm64 -o type=oci,dest=<tmp>/demo.tar examples/`` from a client root
   of its own: each step runs (``--no-cache``) and says which node ran it.
4. Print the image index, unpack each platform's image and run its command under runc (the
   arm64 one through QEMU), then ``dockyard node ls``.
5. Stop the endpoint, the nodes (``dockyard node stop``, never ``ray stop``) and the
   registry, by PID, and remove the temp dir -- also on failure or Ctrl-C.  A run that was
   killed leaves its processes behind: the next run stops them first.

State lives under ``DOCKYARD_DEMO_DIR`` (default: ``.demo-root`` in the repository): one
root per node (``amd64``, ``arm64``) and one for the client (``client``), kept between
runs, with the endpoint's token and log.  Exit status: 0, 1 with the error on stderr, or
130 when interrupted (Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples"
sys.path[:0] = [str(REPO)]

from devkit.busybox_image import (  # noqa: E402 -- after the path is set
    SetupError,
    need_tool,
    skopeo_push,
    write_busybox_layout,
)
from devkit.local_cluster import LocalCluster  # noqa: E402
from devkit.registry import loopback_registry  # noqa: E402
from dockyard.scheduler._errors import DockyardError  # noqa: E402
from dockyard.workers._layers import apply_layer_flat  # noqa: E402

PLATFORMS = ("linux/amd64", "linux/arm64")
NODES = ("amd64", "arm64")  # the head first
BASE_REPO = "library/busybox:latest"
BEGAN = time.monotonic()


def log(message: str) -> None:
    """A line of the demo's own on stderr, with the seconds since it began."""
    print(f"demo [{time.monotonic() - BEGAN:5.1f}s]: {message}", file=sys.stderr, flush=True)


def demo_dir() -> Path:
    """``DOCKYARD_DEMO_DIR``, or ``.demo-root`` in the repository (ignored by git: it
    carries its own ``.gitignore``)."""
    given = os.environ.get("DOCKYARD_DEMO_DIR")
    base = Path(given).resolve() if given else REPO / ".demo-root"
    base.mkdir(parents=True, exist_ok=True)
    if not given:
        (base / ".gitignore").write_text("*\n")
    return base


def stop_stale_registry(base: Path) -> None:
    """A killed run left its registry running: stop it (by the PID it recorded, if that
    process is still a docker-registry serving from a demo's temp dir) and remove that
    dir."""
    record = base / "registry.pid"
    try:
        pid_text, _, work = record.read_text().partition(" ")
        argv = Path(f"/proc/{int(pid_text)}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        record.unlink(missing_ok=True)
        return
    config = f"{work}/registry/config.yml".encode()
    if argv[0].endswith(b"docker-registry") and config in argv:
        log(f"stopping the registry an earlier run left (pid {pid_text})")
        os.kill(int(pid_text), signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)
    record.unlink(missing_ok=True)


@contextmanager
def local_cluster(base: Path) -> Iterator[LocalCluster]:
    """The cluster's nodes and endpoint, stopped when done (also on failure)."""
    cluster = LocalCluster(base, echo=log)
    cluster.clear()
    try:
        yield cluster.start(*NODES)
    finally:
        cluster.close()


def push_base_image(work: Path, domain: str) -> str:
    reference = f"{domain}/{BASE_REPO}"
    index_digest, _ = write_busybox_layout(work / "busybox-layout")
    skopeo_push(work / "busybox-layout", "latest", reference)
    log(f"pushed {reference} ({index_digest})")
    return reference


def build(cluster: LocalCluster, base: str, dest: Path) -> float:
    """Build the example to the OCI tar ``dest`` through the endpoint, every step executed
    (``--no-cache``: each run shows where its steps ran); the seconds it took."""
    began = time.monotonic()
    cluster.build(cluster.client(), "--progress=plain", "--no-cache",
                  "--platform", ",".join(PLATFORMS),
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
    base = demo_dir()
    stop_stale_registry(base)
    (work / "registry").mkdir()
    with loopback_registry(work / "registry") as registry:
        (base / "registry.pid").write_text(f"{registry.process.pid} {work}")
        try:
            log(f"registry pid {registry.process.pid} on {registry.domain}, files in {work}")
            took = build_and_run(base, push_base_image(work, registry.domain), work)
        finally:
            (base / "registry.pid").unlink(missing_ok=True)
    log(f"done: the build took {took:.1f}s (roots under {base})")


def build_and_run(base: Path, image: str, work: Path) -> float:
    """The cluster's part: build, show and run the images, list the nodes; the build's
    seconds."""
    with local_cluster(base) as cluster:
        took = build(cluster, image, work / "demo.tar")
        layout = work / "oci"
        with tarfile.open(work / "demo.tar") as tar:
            tar.extractall(layout, filter="data")
        show(layout, work)
        cluster.dockyard(cluster.head.root, "node", "ls", stdout=sys.stdout)
    return took


def interrupted(signum: int, frame: FrameType | None) -> None:
    """SIGTERM (make's, a CI's) as Ctrl-C: unwind, stopping what the demo started."""
    raise KeyboardInterrupt


def main() -> int:
    signal.signal(signal.SIGTERM, interrupted)
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
