"""The cluster's benchmarks (issue 8), on a real multi-node Ray cluster on this machine.

tests/support/cluster.py's ``LocalCluster`` starts the nodes through the CLI
(``dockyard node start``, each node on its own loopback address 127.0.0.2, .3, ... with its
own ``DOCKYARD_ROOT``) and ``dockyard serve`` on 127.0.0.1; clients build with their own
root through ``--endpoint``.  One cluster serves every case, grown as the cases need:

- ``overhead``: 1 node.  A generated Dockerfile of about 1,000 vertices (``FROM scratch``
  stages of small ``COPY`` steps, gathered by ``COPY --from``): the fully cached second
  run's time per vertex; and a ``--no-cache`` run (every vertex executes) against the same
  build in-process (``dockyard.cluster._local_build.build_local``, its own root): the difference
  per executed vertex is the dispatch overhead.
- ``context``: 1 node.  A 10,000-file context, one line of one file changed before each
  build, through the endpoint and through the embedded service (the client's own root):
  bytes the client sent (benchmarks/_client.py counts them) and time.
- ``scale``: 8 independent stages of ``RUN ... sleep 2`` (a new ``NONCE`` each build),
  2 slots per worker, on 1, 2 and 4 amd64 nodes (nodes added to the running cluster).
  The machine has 2 cpus: sleeping stages are what lets 4 nodes on it show their count.
- ``concurrent``: 4 nodes.  10 identical builds started at once (one new ``NONCE``: one
  2 s RUN for all of them, shared) against one build alone.
- ``transfer``: an arm64 node joins; a 200 MiB random file made by a ``linux/amd64``
  stage is ``COPY --from``'d by a ``linux/arm64`` build, so the arm64 worker fetches the
  layer blob from the amd64 worker that holds it (workers/_peers.py).  The fetch's own
  time is the worker's log line (workers/_runtime.py); the reference is the same blob file
  sent over a loopback TCP socket (127.0.0.1) to a receiver that writes it to a file in the
  same file system and fsyncs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from support.busybox_image import skopeo_push, write_busybox_layout
from support.cluster import LocalCluster, environment
from support.registry import loopback_registry

from benchmarks._paths import REPO
from benchmarks._stats import Series
from benchmarks._tools import BUILD_TIMEOUT, BenchmarkError

__all__ = ["ClusterBench", "ConcurrentResult", "ContextResult", "OverheadResult", "TransferResult",
           "big_context", "cluster_bench", "gather_dockerfile", "main_txt",
           "overhead_dockerfile", "scale_dockerfile"]

MIB = 1024 * 1024


def _log(text: str) -> None:
    print(f"bench: {text}", flush=True)


# -- Dockerfiles --


def scale_dockerfile(base: str, stages: int) -> str:
    """``stages`` independent stages of one 2 s RUN (distinct content through ``NONCE`` and
    the stage's name), gathered by a final stage."""
    names = [f"s{n}" for n in range(stages)]
    parts = [f"FROM {base} AS {name}\nARG NONCE\n"
             f"RUN echo \"$NONCE {name}\" > /{name} && sleep 2\n" for name in names]
    parts.append(f"FROM {base}\n" + "".join(f"COPY --from={n} /{n} /{n}\n" for n in names))
    return "\n".join(parts)


def overhead_dockerfile(stages: int, steps: int) -> str:
    """``stages`` ``FROM scratch`` stages of ``steps`` ``COPY`` of a small context file
    each, and a final stage copying one file of every stage (no RUN, no base image: only
    file ops, so the dispatch around them is what the time shows)."""
    parts = []
    for stage in range(stages):
        copies = "".join(f"COPY f{stage}_{step} /d/{step}\n" for step in range(steps))
        parts.append(f"FROM scratch AS s{stage}\n{copies}")
    gather = "".join(f"COPY --from=s{stage} /d/0 /s{stage}\n" for stage in range(stages))
    return "\n".join(parts) + f"\nFROM scratch\n{gather}"


def gather_dockerfile(base: str, mib: int) -> str:
    """A ``linux/amd64`` stage that writes ``mib`` MiB of random bytes, copied into the
    target platform's image (``--platform linux/arm64``: another node) and read by a RUN
    there.  The ``COPY`` needs no arch (it may run where the big layer is); the ``RUN``
    needs arm64, so its worker needs the layer: the fetch measured."""
    return (f"FROM --platform=linux/amd64 {base} AS big\nARG NONCE\n"
            f"RUN echo \"$NONCE\" > /nonce && head -c {mib * MIB} /dev/urandom > /big\n"
            f"FROM {base}\nCOPY --from=big /big /big\nRUN ls -l /big > /size\n")


def _write(context: Path, dockerfile: str, files: dict[str, str] | None = None) -> Path:
    context.mkdir(parents=True, exist_ok=True)
    (context / "Dockerfile").write_text(dockerfile)
    for name, text in (files or {}).items():
        path = context / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return context


# -- the cluster and its clients --


@dataclass
class ClusterBench:
    """The running cluster, the base image's reference and the scratch directory."""

    cluster: LocalCluster
    base: str
    work: Path

    def build(self, context: Path, *flags: str, client: str = "client") -> tuple[float, str]:
        """``dockyard build --endpoint`` from ``client``'s root: (seconds, progress)."""
        root = self.cluster.client(client)
        began = time.perf_counter()
        try:
            done = self.cluster.build(root, "--progress=plain", *flags, str(context),
                                      check=False, timeout=BUILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise BenchmarkError(f"a cluster build of {context} took over "
                                 f"{BUILD_TIMEOUT:.0f}s") from None
        took = time.perf_counter() - began
        progress = done.stderr.decode(errors="replace")
        if done.returncode != 0:
            raise BenchmarkError(f"the cluster build of {context} failed (exit "
                                 f"{done.returncode}):\n{_tail(progress)}",
                                 hint=f"see {self.cluster.base / 'serve.log'}")
        return took, progress


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def cluster_bench() -> Iterator[ClusterBench]:
    """A loopback registry with busybox and a one-node (amd64, 2 slots) cluster; all
    stopped by PID and removed on the way out."""
    work = Path(tempfile.mkdtemp(prefix="dyb-cluster-", dir="/tmp"))
    (work / "registry").mkdir()
    try:
        with loopback_registry(work / "registry") as registry:
            write_busybox_layout(work / "busybox-layout")
            base = f"{registry.domain}/library/busybox:latest"
            skopeo_push(work / "busybox-layout", "latest", base)
            began = time.monotonic()
            with LocalCluster() as cluster:
                cluster.start(("amd64", (), 2))
                _log(f"cluster: head at {cluster.head.ip}, endpoint {cluster.url} "
                     f"(ready in {time.monotonic() - began:.1f}s)")
                yield ClusterBench(cluster, base, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- scale --


def scale_case(bench: ClusterBench, nodes: int, warmups: int, reps: int,
               nonces: Iterator[int]) -> Series:
    """The 8-stage build on the cluster as it is (``nodes`` workers): its wall times."""
    context = _write(bench.work / f"scale{nodes}", scale_dockerfile(bench.base, 8))
    times: list[float] = []
    for rep in range(warmups + reps):
        took, progress = bench.build(context, f"--build-arg=NONCE={next(nonces)}")
        spread = sorted(set(_placed(progress).values()))
        _log(f"scale {nodes} node(s), {rep}: {took:.2f}s, RUNs on {spread}")
        if rep >= warmups:
            times.append(took)
    return Series(tuple(times))


def _placed(progress: str) -> dict[str, str]:
    """RUN vertex number -> the address of the node that ran it (plain progress)."""
    runs = {n for n, name in re.findall(r"^#(\d+) (\[.*)$", progress, re.MULTILINE)
            if "RUN" in name}
    return {n: ip for n, ip in re.findall(r"^#(\d+) running on \S+ at (\S+)", progress,
                                          re.MULTILINE) if n in runs}


def grow(bench: ClusterBench, nodes: int, arch: str = "amd64") -> None:
    """Add amd64 nodes (2 slots) until the cluster has ``nodes``."""
    while len(bench.cluster.nodes) < nodes:
        began = time.monotonic()
        node = bench.cluster.add_node(arch, (), 2)
        _log(f"cluster: {arch} node at {node.ip} joined in {time.monotonic() - began:.1f}s")
    time.sleep(2.0)  # the coordinator's registry finds new workers by name


# -- concurrent --


def _at_once(bench: ClusterBench, context: Path, flag: str, builds: int
             ) -> tuple[float, list[tuple[float, str]]]:
    """``builds`` clients started together: (first start to last end, their results)."""
    began = time.perf_counter()
    with ThreadPoolExecutor(builds) as pool:
        done = list(pool.map(lambda i: bench.build(context, flag, client=f"c{i}"),
                             range(builds)))
    return time.perf_counter() - began, done


@dataclass(frozen=True)
class ConcurrentResult:
    one: Series  # one build alone (its RUN runs)
    many: Series  # ``builds`` identical builds at once (one shared RUN)
    one_cached: Series  # the same build again alone, fully cached
    many_cached: Series  # ``builds`` fully cached builds at once


def concurrent_case(bench: ClusterBench, warmups: int, reps: int, nonces: Iterator[int],
                    builds: int = 10) -> ConcurrentResult:
    """One build alone, then ``builds`` identical ones at once (each round a new NONCE):
    the single builds' times and the concurrent rounds' (first start to last end); then
    the same, fully cached (what every build pays besides the shared RUN)."""
    context = _write(bench.work / "concurrent",
                     f"FROM {bench.base}\nARG NONCE\n"
                     "RUN echo \"$NONCE\" > /n && date +%s%N > /t && sleep 2\n")
    times: list[tuple[float, float, float, float]] = []
    for rep in range(warmups + reps):
        flag = f"--build-arg=NONCE={next(nonces)}"
        alone = bench.build(context, flag)[0]
        cached_alone = bench.build(context, flag)[0]
        cached_together, _ = _at_once(bench, context, flag, builds)
        flag = f"--build-arg=NONCE={next(nonces)}"
        together, done = _at_once(bench, context, flag, builds)
        ran = sum(1 for _, progress in done if _placed(progress))
        _log(f"concurrent {rep}: one {alone:.2f}s, {builds} at once {together:.2f}s "
             f"(the RUN dispatched by {ran} of them); cached: one {cached_alone:.2f}s, "
             f"{builds} at once {cached_together:.2f}s")
        if rep >= warmups:
            times.append((alone, together, cached_alone, cached_together))
    one, many, one_cached, many_cached = (Series(column) for column in zip(*times,
                                                                         strict=True))
    return ConcurrentResult(one, many, one_cached, many_cached)


# -- overhead --


@dataclass(frozen=True)
class OverheadResult:
    vertices: int
    cached: Series  # the fully cached run through the cluster
    cold: Series  # --no-cache through the cluster
    local: Series  # --no-cache in-process (build_local)
    local_cached: Series  # the fully cached build in-process (build_local)

    @property
    def per_vertex_ms(self) -> float:
        return self.cached.median / self.vertices * 1000

    @property
    def dispatch_ms(self) -> float:
        return (self.cold.median - self.local.median) / self.vertices * 1000


def _overhead_context(work: Path, stages: int, steps: int) -> Path:
    files = {f"f{stage}_{step}": f"{stage}.{step}\n"
             for stage in range(stages) for step in range(steps)}
    return _write(work / "overhead", overhead_dockerfile(stages, steps), files)


def count_vertices(bench: ClusterBench, context: Path) -> int:
    root = bench.cluster.client("graph")
    done = subprocess.run([sys.executable, "-m", "dockyard", "debug", "graph", str(context)],
                          env=environment(root), capture_output=True, text=True,
                          timeout=BUILD_TIMEOUT, check=False)
    if done.returncode != 0:
        raise BenchmarkError(f"dockyard debug graph failed:\n{_tail(done.stderr)}")
    return sum(1 for line in done.stdout.splitlines()
               if line.strip() and "digest" in json.loads(line))


def overhead_case(bench: ClusterBench, warmups: int, reps: int, stages: int = 100,
                  steps: int = 9) -> OverheadResult:
    context = _overhead_context(bench.work, stages, steps)
    vertices = count_vertices(bench, context)
    _log(f"overhead: {vertices} vertices")
    took, _ = bench.build(context)
    _log(f"overhead: first (cold) build {took:.2f}s")
    cached, cold, local, local_cached = [], [], [], []
    local_root = Path(tempfile.mkdtemp(prefix="dyb-local-", dir="/tmp"))
    try:
        for rep in range(warmups + reps):
            hit = bench.build(context)[0]
            miss = bench.build(context, "--no-cache")[0]
            here = _build_in_process(context, local_root, no_cache=True)
            here_hit = _build_in_process(context, local_root, no_cache=False)
            _log(f"overhead {rep}: cached {hit:.2f}s, --no-cache {miss:.2f}s, "
                 f"in-process --no-cache {here:.2f}s, in-process cached {here_hit:.2f}s")
            if rep >= warmups:
                cached.append(hit)
                cold.append(miss)
                local.append(here)
                local_cached.append(here_hit)
    finally:
        _clean_local_root(local_root)
    return OverheadResult(vertices, Series(tuple(cached)), Series(tuple(cold)),
                          Series(tuple(local)), Series(tuple(local_cached)))


def _build_in_process(context: Path, root: Path, no_cache: bool) -> float:
    """``build_local`` of ``context`` (a fresh runtime each time, as a process would open
    it; its opening is inside the time)."""
    from dockyard.cluster._local_build import LocalBuildOptions, build_local  # noqa: PLC0415

    options = LocalBuildOptions(root=root, no_cache=no_cache)
    dockerfile = (context / "Dockerfile").read_bytes()
    began = time.perf_counter()
    asyncio.run(build_local(dockerfile, context, options))
    return time.perf_counter() - began


def _clean_local_root(root: Path) -> None:
    from dockyard.workers._janitor import claim_root  # noqa: PLC0415

    with contextlib.suppress(Exception):
        lock, _ = claim_root(root)
        lock.release()
    shutil.rmtree(root, ignore_errors=True)


# -- context --


@dataclass(frozen=True)
class ContextResult:
    files: int
    changed: int  # bytes of the changed file
    endpoint: Series
    embedded: Series
    sent: tuple[int, ...]  # bytes the client sent per endpoint build
    served: tuple[int, ...]  # context bytes served per endpoint build
    manifest: int  # msgpack bytes of the manifest


CONTEXT_FILES = 10_000
_LINE = 17  # the line of src/main.txt the edit rewrites


def main_txt(version: str) -> str:
    lines = [f"line {n}: some application source text" for n in range(1, 41)]
    lines[_LINE - 1] = f"line {_LINE}: version {version}"
    return "\n".join(lines) + "\n"


def big_context(path: Path, base: str, count: int = CONTEXT_FILES) -> Path:
    """``count`` files (10,000): ``src/main.txt`` and the others, small, 100 a directory;
    ``COPY lib/``, ``COPY src/``, a ``RUN`` (the ``files`` build cases use it too)."""
    files = {f"lib/d{n // 100:02d}/f{n % 100:02d}.txt": f"file {n}\n" * 3
             for n in range(count - 1)}
    files["src/main.txt"] = main_txt("0")
    dockerfile = (f"FROM {base}\nCOPY lib/ /app/lib/\nCOPY src/ /app/src/\n"
                  "RUN wc -l /app/src/main.txt > /app/lines\n")
    return _write(path, dockerfile, files)


def _counted(argv: list[str], env: dict[str, str], stats: Path) -> tuple[float, dict[str, int]]:
    """``dockyard ARGV`` through benchmarks/_client.py: (seconds, its byte counts)."""
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "benchmarks._client", str(stats), *argv],
                          env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT,
                          check=False, cwd=REPO)
    took = time.perf_counter() - began
    if done.returncode != 0:
        raise BenchmarkError(f"dockyard {' '.join(argv[:1])} failed:\n{_tail(done.stderr)}")
    counts: dict[str, int] = json.loads(stats.read_text())
    return took, counts


def context_case(bench: ClusterBench, warmups: int, reps: int) -> ContextResult:
    remote = big_context(bench.work / "ctx-endpoint", bench.base)
    local = big_context(bench.work / "ctx-embedded", bench.base)
    cluster = bench.cluster
    env_remote = environment(cluster.client("ctx"), {"DOCKYARD_ENDPOINT": cluster.url,
                                                     "DOCKYARD_TOKEN": cluster.token})
    embedded_root = Path(tempfile.mkdtemp(prefix="dyb-emb-", dir="/tmp"))
    env_local = environment(embedded_root)
    stats = bench.work / "client-stats.json"
    ours, theirs, sent, served = [], [], [], []
    manifest = 0
    try:
        for context, env in ((remote, env_remote), (local, env_local)):  # first, full sends
            took, counts = _counted(["build", "--progress=plain", str(context)], env, stats)
            _log(f"context: first build {took:.2f}s, sent {counts['sent']} bytes")
        for rep in range(warmups + reps):
            for context in (remote, local):
                (context / "src" / "main.txt").write_text(main_txt(f"edit {rep}"))
            took, counts = _counted(["build", "--progress=plain", str(remote)], env_remote,
                                    stats)
            here, _ = _counted(["build", "--progress=plain", str(local)], env_local, stats)
            manifest = counts["manifest"]
            _log(f"context {rep}: endpoint {took:.2f}s (sent {counts['sent']} bytes, "
                 f"{counts['served']} of content, manifest {manifest}), embedded {here:.2f}s")
            if rep >= warmups:
                ours.append(took)
                theirs.append(here)
                sent.append(counts["sent"])
                served.append(counts["served"])
    finally:
        subprocess.run([sys.executable, "-m", "dockyard", "stop"], env=env_local,
                       capture_output=True, timeout=120, check=False)
        shutil.rmtree(embedded_root, ignore_errors=True)
    changed = len(main_txt("edit 0").encode())
    return ContextResult(CONTEXT_FILES, changed, Series(tuple(ours)), Series(tuple(theirs)),
                         tuple(sent), tuple(served), manifest)


# -- transfer --


@dataclass(frozen=True)
class TransferResult:
    size: int  # bytes of the blob
    fetch: Series  # the worker's peer fetch (its log line)
    socket: Series  # the same blob over a loopback socket into an fsynced file
    build: Series  # the whole build
    received: Series  # of the fetch: the chunks through Ray into the staging file
    checked: Series  # of the fetch: the staging file read back and hashed


_PHASES = re.compile(r"blob (sha256:[0-9a-f]{64}) from worker \S+: received in ([0-9.]+) s, "
                     r"checked in ([0-9.]+) s, published in ([0-9.]+) s")
_FETCHED = re.compile(r"fetched blob (sha256:[0-9a-f]{64}) \((\d+) bytes\) from worker "
                      r"\S+ in ([0-9.]+) s")


def _worker_logs(node_root: Path) -> str:
    text = ""
    for path in sorted((node_root / "run").rglob("worker-*")):
        if path.suffix in (".err", ".out", ".log"):
            with contextlib.suppress(OSError):
                text += path.read_text(errors="replace")
    return text


def _fetch_lines(node_root: Path) -> list[tuple[str, int, float]]:
    """The peer fetches a node's worker logged: (digest, bytes, seconds)."""
    return [(d, int(n), float(s)) for d, n, s in _FETCHED.findall(_worker_logs(node_root))]


def _phases(node_root: Path, digest: str) -> tuple[float, float, float]:
    """The last logged (received, checked, published) seconds of ``digest``'s fetch."""
    found = [tuple(map(float, rest)) for d, *rest in _PHASES.findall(_worker_logs(node_root))
             if d == digest]
    return found[-1] if found else (float("nan"),) * 3  # type: ignore[return-value]


def _blob_file(roots: list[Path], digest: str) -> Path:
    hexa = digest.split(":", 1)[1]
    for root in roots:
        for path in (root / "cache").rglob(hexa):
            if path.is_file():
                return path
    raise BenchmarkError(f"blob {digest} is in no node's store")


def socket_copy(blob: Path, dest: Path) -> float:
    """Seconds to send ``blob`` over a loopback TCP connection to a receiver writing it to
    ``dest`` (fsynced): a plain copy of the bytes between two processes' worth of ends."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def receive() -> None:
        conn, _ = server.accept()
        with conn, open(dest, "wb") as out:
            while chunk := conn.recv(4 * MIB):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())

    receiver = threading.Thread(target=receive)
    began = time.perf_counter()
    receiver.start()
    with socket.create_connection(("127.0.0.1", port)) as conn, open(blob, "rb") as src:
        conn.sendfile(src)
    receiver.join()
    took = time.perf_counter() - began
    server.close()
    return took


def transfer_case(bench: ClusterBench, warmups: int, reps: int, nonces: Iterator[int],
                  mib: int = 200) -> TransferResult:
    arm = next((n for n in bench.cluster.nodes if n.arch == "arm64"), None)
    if arm is None:
        grow(bench, len(bench.cluster.nodes) + 1, "arm64")
        arm = bench.cluster.nodes[-1]
    context = _write(bench.work / "transfer", gather_dockerfile(bench.base, mib))
    fetch, copy, builds, received, checked = [], [], [], [], []
    size = 0
    for rep in range(warmups + reps):
        seen = len(_fetch_lines(arm.root))
        took, _ = bench.build(context, "--platform=linux/arm64",
                              f"--build-arg=NONCE={next(nonces)}")
        new = [line for line in _fetch_lines(arm.root)[seen:] if line[1] > mib * MIB // 2]
        if not new:
            raise BenchmarkError("the arm64 worker logged no fetch of the big layer",
                                 hint=f"see the worker logs under {arm.root / 'run'}")
        digest, size, seconds = new[-1]
        phases = _phases(arm.root, digest)
        blob = _blob_file([n.root for n in bench.cluster.nodes if n is not arm], digest)
        plain = socket_copy(blob, bench.work / "socket-copy.bin")
        (bench.work / "socket-copy.bin").unlink()
        _log(f"transfer {rep}: build {took:.2f}s, peer fetch of {size / MIB:.0f} MiB "
             f"{seconds:.2f}s (received {phases[0]:.2f}s, checked {phases[1]:.2f}s, "
             f"published {phases[2]:.2f}s), loopback socket copy {plain:.2f}s")
        if rep >= warmups:
            received.append(phases[0])
            checked.append(phases[1])
            fetch.append(seconds)
            copy.append(plain)
            builds.append(took)
    return TransferResult(size, Series(tuple(fetch)), Series(tuple(copy)),
                          Series(tuple(builds)), Series(tuple(received)),
                          Series(tuple(checked)))


NONCES = itertools.count(int(time.time()))
