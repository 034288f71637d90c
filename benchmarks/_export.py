"""Exporting a large layer: dockyard's layer writer against ``tar | gzip`` on the same files.

The files (``size_mb`` MiB in 10 MiB files): half incompressible (random bytes, like
already-compressed binaries), half text (a 1 MiB block of random words repeated with a
per-copy header, so that deflate's 32 KiB window finds no cheap repeats).  Both sides read
the same directory (warm in the page cache after the warm-up) and write a gzip (level 6,
gzip's default and BuildKit's) stream to a file on the same disk.

dockyard's side is ``dockyard.workers._layers.write_layer`` called in-process, with gzip: what an
image output pays for each layer the first time it is exported (a RUN stores its layer
uncompressed; ``WorkerRuntime.compressed`` gzips it, with this writer, when an image or a
remote cache first needs it, and keeps the result).
"""

from __future__ import annotations

import random
import shutil
import subprocess
import time
from pathlib import Path

from benchmarks._stats import Series
from benchmarks._tools import BenchmarkError
from dockyard.workers._layers import write_layer

__all__ = ["MIB", "export_case", "write_payload"]

MIB = 1024 * 1024
FILE_MIB = 10
_WORDS = ("layer", "image", "build", "cache", "stage", "vertex", "digest", "worker",
          "overlay", "manifest", "index", "blob", "snapshot", "export", "registry")


def _text_block(rng: random.Random) -> bytes:
    words: list[str] = []
    size = 0
    while size < MIB:
        word = rng.choice(_WORDS) + (str(rng.randrange(1000)) if rng.random() < 0.3 else "")
        words.append(word)
        size += len(word) + 1
    return " ".join(words).encode()[:MIB]


def write_payload(root: Path, size_mb: int, seed: int = 7) -> int:
    """Fill ``root`` with about ``size_mb`` MiB; the number of bytes written."""
    rng = random.Random(seed)
    block = _text_block(rng)
    total = 0
    for number in range(max(1, size_mb // FILE_MIB)):
        path = root / f"dir{number % 5}" / f"file{number:03d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as out:
            for copy in range(FILE_MIB):
                data = rng.randbytes(MIB) if number % 2 else block
                out.write(f"{number}:{copy}\n".encode() + data)
                total += len(data)
    return total


def _time_dockyard(files: Path, blob: Path) -> float:
    began = time.perf_counter()
    with open(blob, "wb") as out:
        write_layer(files, out)
    return time.perf_counter() - began


def _time_tar_gzip(files: Path, blob: Path) -> float:
    tar, gzip = shutil.which("tar"), shutil.which("gzip")
    if tar is None or gzip is None:
        raise BenchmarkError("tar and gzip are needed for the export baseline",
                             hint="apt-get install tar gzip")
    script = f'set -o pipefail; "{tar}" -C "{files}" -cf - . | "{gzip}" -6 > "{blob}"'
    began = time.perf_counter()
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=False)
    took = time.perf_counter() - began
    if done.returncode != 0:
        raise BenchmarkError(f"tar | gzip of {files} failed: {done.stderr.strip()}")
    return took


def export_case(work: Path, size_mb: int, warmups: int, reps: int
                ) -> tuple[int, Series, Series]:
    """Bytes exported, and the seconds of dockyard's layer writer and of ``tar | gzip``
    (alternating, so drift in the machine hits both alike)."""
    files, blob = work / "export-files", work / "export-blob"
    files.mkdir()
    size = write_payload(files, size_mb)
    ours: list[float] = []
    theirs: list[float] = []
    try:
        for rep in range(warmups + reps):
            timed = (_time_dockyard(files, blob), _time_tar_gzip(files, blob))
            if rep >= warmups:
                ours.append(timed[0])
                theirs.append(timed[1])
    finally:
        shutil.rmtree(files, ignore_errors=True)
        blob.unlink(missing_ok=True)
    return size, Series(tuple(ours)), Series(tuple(theirs))
