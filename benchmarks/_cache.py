"""The shared S3 cache's benchmarks (issue 4, "Performance"), each on its own moto server.

- ``restore``: machine A (one ``DOCKYARD_ROOT``) builds a 5 x 40 MiB image (incompressible
  RUN layers) with ``--cache-to type=s3,mode=max``; then, per repetition, machine B (a new,
  empty root; its service started by an untimed ``FROM``-only build, as the CLI starts it)
  runs ``dockyard build --cache-from type=s3 -o type=oci``, an output that needs every
  layer.  Baseline in the same run: boto3 ``download_file`` of every blob object in the
  bucket, one after the other, on the same endpoint.
- ``requests``: a no-change rebuild on an empty root against a warm S3 cache, no output;
  a counting proxy in front of moto counts its requests, divided by the graph's vertices
  (``dockyard debug graph``).
- ``s3-export``: the same root builds a multi-step Dockerfile with a new ``NONCE`` each time
  (every RUN runs), alternately without and with ``--cache-to type=s3,mode=max``.
- BuildKit beside ``restore``: Debian's docker 20.10 has no ``--cache-to`` (no buildx in
  Debian 12); its inline cache is what it has: build with ``BUILDKIT_INLINE_CACHE=1``, push
  to the loopback registry, then ``--cache-from IMAGE`` on a fresh dockerd data root.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

from benchmarks._cases import write_app
from benchmarks._paths import REPO
from benchmarks._s3 import (
    ENVIRONMENT,
    REGION,
    blob_keys,
    counting_proxy,
    download_blobs,
    moto_server,
    s3_client,
)
from benchmarks._stats import Series
from benchmarks._tools import BUILD_TIMEOUT, BenchmarkError, DockerClient

__all__ = ["ExportResult", "RequestsResult", "RestoreResult", "buildkit_inline_restore",
           "cache_flag", "cached_steps", "count_vertices", "export_dockerfile",
           "export_overhead", "ran_steps", "requests_case", "restore_case", "restore_dockerfile"]

LAYERS = 5


def restore_dockerfile(base: str, layers: int, mib: int) -> str:
    """``layers`` RUN steps each writing ``mib`` MiB of random (incompressible) bytes."""
    steps = "".join(f"RUN head -c {mib * 1024 * 1024} /dev/urandom > /data{n}.bin\n"
                    for n in range(layers))
    return f"FROM {base}\n{steps}"


def export_dockerfile(base: str) -> str:
    """Four RUN steps (some files, a little data, a little work) that a NONCE re-runs."""
    return (f"FROM {base}\nARG NONCE\n"
            "RUN echo \"$NONCE\" > /nonce && mkdir /deps && "
            "for i in $(seq 1 300); do echo \"dep $i $NONCE\" > /deps/d$i; done\n"
            "RUN head -c 8388608 /dev/urandom > /blob1 && sleep 0.5\n"
            "RUN head -c 8388608 /dev/urandom > /blob2 && md5sum /blob1 /blob2 > /sums\n"
            "RUN cat /sums /nonce > /status && echo built >> /status\n")


def cache_flag(direction: str, url: str, bucket: str, mode: str = "max") -> str:
    """``--cache-to=type=s3,...`` (direction ``to``, with ``mode``) or ``--cache-from=...``."""
    value = (f"type=s3,bucket={bucket},region={REGION},endpoint_url={url},"
             "use_path_style=true")
    if direction == "to":
        value += f",mode={mode}"
    return f"--cache-{direction}={value}"


def count_vertices(graph: str) -> int:
    """The vertices in ``dockyard debug graph`` output (JSON lines; results are not)."""
    return sum(1 for line in graph.splitlines()
               if line.strip() and "digest" in json.loads(line))


_CACHED = re.compile(r"^#\d+ CACHED\s*$", re.MULTILINE)
_RUN = re.compile(r"^#(\d+) \[[^\]]*\] (RUN .*)$", re.MULTILINE)


def cached_steps(progress: str) -> int:
    """How many ``#N CACHED`` lines a plain progress log has (BuildKit's and ours)."""
    return len(_CACHED.findall(progress))


def ran_steps(progress: str) -> list[str]:
    """The RUN steps a plain progress log shows executed (``#N DONE``), not cached."""
    names = {number: name for number, name in _RUN.findall(progress)}
    return [name for number, name in names.items()
            if re.search(rf"^#{number} DONE\b", progress, re.MULTILINE)]


class Machine:
    """One dockyard 'machine': a ``DOCKYARD_ROOT`` of its own, its service as the CLI runs it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._env = {**os.environ, **ENVIRONMENT, "DOCKYARD_ROOT": str(root),
                     "PYTHONPATH": str(REPO)}

    def run(self, *args: str) -> tuple[float, str, str]:
        """``dockyard ARGS``: (wall seconds, stdout, stderr); a BenchmarkError on failure."""
        script = Path(sys.executable).parent / "dockyard"
        argv = [str(script), *args]
        began = time.perf_counter()
        try:
            done = subprocess.run(argv, env=self._env, capture_output=True, text=True,
                                  stdin=subprocess.DEVNULL, timeout=BUILD_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            raise BenchmarkError(f"dockyard {' '.join(args)} took over {BUILD_TIMEOUT:.0f}s",
                                 hint=f"run it by hand with DOCKYARD_ROOT={self.root}") from None
        took = time.perf_counter() - began
        if done.returncode != 0:
            tail = "\n".join((done.stderr or done.stdout).splitlines()[-25:])
            raise BenchmarkError(f"dockyard {' '.join(args)} failed (exit {done.returncode}):"
                                 f"\n{tail}", hint=f"DOCKYARD_ROOT={self.root}")
        return took, done.stdout, done.stderr

    def build(self, context: Path, *flags: str) -> tuple[float, str]:
        took, _, progress = self.run("build", "--progress=plain", *flags, str(context))
        return took, progress

    def stop(self) -> None:
        script = Path(sys.executable).parent / "dockyard"
        subprocess.run([str(script), "stop"], env=self._env, capture_output=True,
                       stdin=subprocess.DEVNULL, timeout=120, check=False)


@contextmanager
def machine(label: str) -> Iterator[Machine]:
    """A new, empty root; its service stopped and the root removed on the way out."""
    node = Machine(Path(tempfile.mkdtemp(prefix=f"dyb-{label}-", dir="/tmp")))
    try:
        yield node
    finally:
        node.stop()
        shutil.rmtree(node.root, ignore_errors=True)


def _context(work: Path, name: str, dockerfile: str) -> Path:
    context = work / name
    context.mkdir(parents=True, exist_ok=True)
    (context / "Dockerfile").write_text(dockerfile)
    return context


def _bucket(client: object, name: str) -> str:
    client.create_bucket(Bucket=name)  # type: ignore[attr-defined]
    return name


@dataclass(frozen=True)
class RestoreResult:
    ours: Series
    boto3: Series
    blobs: int
    size: int  # bytes of every blob in the bucket
    local: Series  # the same build again on machine B, every blob local: one record GET


def _log(text: str) -> None:
    print(f"bench: {text}", flush=True)


def restore_case(work: Path, base: str, mib: int, warmups: int, reps: int) -> RestoreResult:
    warm = _context(work, "restore-warm", f"FROM {base}\n")
    context = _context(work, "restore", restore_dockerfile(base, LAYERS, mib))
    with moto_server(work / "moto-restore.log") as url:
        client = s3_client(url)
        bucket = _bucket(client, "restore")
        with machine("a") as node:
            node.build(context, cache_flag("to", url, bucket))
        keys = blob_keys(client, bucket, "")
        ours: list[float] = []
        local: list[float] = []
        theirs: list[float] = []
        for rep in range(warmups + reps):
            with machine("b") as node:
                node.build(warm)
                took, progress = node.build(context, cache_flag("from", url, bucket), "-o",
                                            f"type=oci,dest={node.root / 'image.tar'}")
                again, rerun = node.build(context, cache_flag("from", url, bucket), "-o",
                                          f"type=oci,dest={node.root / 'again.tar'}")
                progress += rerun
            if ran_steps(progress):
                raise BenchmarkError(f"the restore ran {len(ran_steps(progress))} RUN steps:"
                                     f"\n{progress[-3000:]}")
            boto = download_blobs(client, bucket, keys, work / "boto3")
            shutil.rmtree(work / "boto3")
            _log(f"restore {rep}: dockyard {took:.2f}s (again, all local: {again:.2f}s), "
                 f"boto3 {boto:.2f}s")
            if rep >= warmups:
                ours.append(took)
                local.append(again)
                theirs.append(boto)
    return RestoreResult(Series(tuple(ours)), Series(tuple(theirs)), len(keys),
                         sum(size for _, size in keys), Series(tuple(local)))


@dataclass(frozen=True)
class RequestsResult:
    requests: tuple[int, ...]  # per repetition
    vertices: int
    kinds: dict[str, int]  # the last repetition's requests by kind


def requests_case(work: Path, base: str, reps: int) -> RequestsResult:
    context = work / "requests"
    write_app(context, base)
    warm = _context(work, "requests-warm", f"FROM {base}\n")
    with moto_server(work / "moto-requests.log") as url, counting_proxy(url) as proxy:
        bucket = _bucket(s3_client(url), "requests")
        with machine("c") as node:
            node.build(context, cache_flag("to", proxy.url, bucket))
            vertices = count_vertices(node.run("debug", "graph", str(context))[1])
        counts: list[int] = []
        kinds: dict[str, int] = {}
        for _ in range(reps):
            with machine("d") as node:
                node.build(warm)
                proxy.reset()
                _, progress = node.build(context, cache_flag("from", proxy.url, bucket))
                counts.append(len(proxy.requests))
                kinds = proxy.summary()
            if ran_steps(progress):
                raise BenchmarkError(f"the no-change rebuild ran {len(ran_steps(progress))} "
                                     f"RUN steps:\n{progress[-3000:]}")
            _log(f"requests: {counts[-1]} for {vertices} vertices ({kinds}); "
                 f"{cached_steps(progress)} cached, {len(ran_steps(progress))} RUN ran")
    return RequestsResult(tuple(counts), vertices, kinds)


@dataclass(frozen=True)
class ExportResult:
    plain: Series
    exported: Series  # each taken right after the plain build of the same index

    @property
    def overhead(self) -> float:
        """The median of the paired ratios (exported / plain): a pair is adjacent in time,
        so a drift in the machine's load cancels out of it, unlike a ratio of medians."""
        return statistics.median(with_ / without for with_, without
                                 in zip(self.exported.samples, self.plain.samples,
                                        strict=True))


def export_overhead(work: Path, base: str, warmups: int, reps: int) -> ExportResult:
    context = _context(work, "s3-export", export_dockerfile(base))
    nonces = itertools.count()
    with moto_server(work / "moto-export.log") as url, machine("e") as node:
        flag = cache_flag("to", url, _bucket(s3_client(url), "export"))
        node.build(_context(work, "s3-export-warm", f"FROM {base}\n"))  # starts the service

        def build(*flags: str) -> float:
            return node.build(context, f"--build-arg=NONCE={next(nonces)}", *flags)[0]

        plain: list[float] = []
        exported: list[float] = []
        for rep in range(warmups + reps):
            pair = build(), build(flag)
            _log(f"s3-export {rep}: plain {pair[0]:.2f}s, mode=max {pair[1]:.2f}s")
            if rep >= warmups:
                plain.append(pair[0])
                exported.append(pair[1])
    return ExportResult(Series(tuple(plain)), Series(tuple(exported)))


Daemons = Callable[[], AbstractContextManager[DockerClient]]


def buildkit_inline_restore(daemons: Daemons, domain: str, work: Path, base: str, mib: int,
                            warmups: int, reps: int) -> Series:
    """BuildKit 20.10's inline registry cache: push from one dockerd, import on fresh ones.

    ``daemons()`` is a context manager yielding a started private dockerd (its ``docker``)."""
    context = _context(work, "restore-buildkit", restore_dockerfile(base, LAYERS, mib))
    warm = _context(work, "restore-buildkit-warm", f"FROM {base}\n")
    image = f"{domain}/bench/restore:inline"
    with daemons() as first:
        _docker(first, "build", "--network=host", "--build-arg", "BUILDKIT_INLINE_CACHE=1",
                "-t", image, str(context))
        _docker(first, "push", image)
    times: list[float] = []
    for rep in range(warmups + reps):
        with daemons() as fresh:
            _docker(fresh, "build", "--network=host", str(warm))
            began = time.perf_counter()
            progress = _docker(fresh, "build", "--network=host", "--progress=plain",
                               "--cache-from", image, "-t", "restored", str(context))
            took = time.perf_counter() - began
        if ran_steps(progress):
            raise BenchmarkError(f"BuildKit's inline-cache import ran RUN steps:\n"
                                 f"{progress[-3000:]}")
        _log(f"BuildKit inline restore {rep}: {took:.2f}s")
        if rep >= warmups:
            times.append(took)
    return Series(tuple(times))


def _docker(daemon: DockerClient, *args: str) -> str:
    done = daemon.docker(*args, timeout=BUILD_TIMEOUT)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.splitlines()[-25:])
        raise BenchmarkError(f"docker {' '.join(args[:2])} failed (exit {done.returncode}):"
                             f"\n{tail}")
    return done.stderr
