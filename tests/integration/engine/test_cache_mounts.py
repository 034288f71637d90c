"""RUN --mount=type=cache, end to end: caches seeded ``from`` a stage (once, then kept),
and sharing between two builds running at once in two processes on one root
(``locked`` serialises them, ``private`` gives the second its own empty directory)."""

from __future__ import annotations

import asyncio
import multiprocessing
from pathlib import Path
from typing import Any

from dockyard.cluster._local_build import LocalBuildOptions, Output, build_local
from dockyard.scheduler._platform import parse_platform


def _build(root: Path, dockerfile: str, out: Path) -> None:
    context = root.parent / "context"
    context.mkdir(exist_ok=True)
    options = LocalBuildOptions(root=root, platforms=(parse_platform("linux/amd64"),),
                                outputs=(Output("local", out),))
    asyncio.run(build_local(dockerfile.encode(), context, options))


def test_a_cache_seeded_from_a_stage_is_copied_once_then_kept(tmp_path: Path,
                                                              busybox_image: Any) -> None:
    root, base = tmp_path / "root", busybox_image.reference
    seeded = ("RUN --mount=type=cache,id=c,from=data,source=/seed,target=/c "
              "cat /c/a > /seen-{0} && echo {0} >> /c/a\n")
    dockerfile = (f"FROM {base} AS data\nRUN mkdir /seed && echo seed > /seed/a\n"
                  f"FROM {base}\n{seeded.format('one')}{seeded.format('two')}"
                  "RUN --mount=type=cache,id=c,target=/c ls -A /c > /plain\n"
                  "RUN --mount=type=cache,id=c,from=data,target=/c,uid=7,mode=0700 "
                  "stat -c '%u %a' /c > /owned && ls -A /c > /owned-ls\n")
    _build(root, dockerfile, tmp_path / "out")
    out = tmp_path / "out"
    assert (out / "seen-one").read_text() == "seed\n"
    assert (out / "seen-two").read_text() == "seed\none\n"
    assert (out / "plain").read_text() == ""  # the same id unseeded: another cache
    assert (out / "owned").read_text() == "7 700\n"
    assert (out / "owned-ls").read_text() == ""
    names = sorted(p.name for p in (root / "cachemounts").iterdir())
    assert [n.partition("@")[0] for n in names] == ["c", "c", "c"]  # seeded: own caches
    owned_dir, seeded_dir = sorted((root / "cachemounts" / n for n in names[1:]),
                                   key=lambda p: not (p / "cache").exists())
    assert (owned_dir / "cache").stat().st_uid == 7
    assert (seeded_dir / "seed" / "a").read_text() == "seed\none\ntwo\n"
    assert (seeded_dir / "bin" / "busybox").is_file()  # the whole state, as BuildKit


def _concurrent(root: Path, barrier: Any, dockerfile: str, out: Path) -> None:
    barrier.wait(timeout=60)
    _build(root, dockerfile, out)


def _run_both(tmp_path: Path, run: str, base: str) -> None:
    """Warm the root (image pulled and unpacked), then two builds in two processes,
    released together, each running ``run`` with its own name."""
    root = tmp_path / "root"
    _build(root, f"FROM {base}\nRUN true\n", tmp_path / "warm")
    spawn = multiprocessing.get_context("spawn")
    barrier = spawn.Barrier(2)
    workers = [spawn.Process(target=_concurrent,
                             args=(root, barrier, f"FROM {base}\n{run.format(name)}",
                                   tmp_path / name))
               for name in ("a", "b")]
    for worker in workers:
        worker.start()
    try:
        for worker in workers:
            worker.join(timeout=120)
        assert [worker.exitcode for worker in workers] == [0, 0]
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.kill()
                worker.join()


def test_locked_serialises_two_builds_in_two_processes(tmp_path: Path,
                                                       busybox_image: Any) -> None:
    run = ("RUN --mount=type=cache,id=l,target=/c,sharing=locked "
           "echo start-{0} >> /c/log && sleep 1 && echo end-{0} >> /c/log && echo {0}\n")
    _run_both(tmp_path, run, busybox_image.reference)
    log = (tmp_path / "root" / "cachemounts" / "l" / "log").read_text().split()
    first = log[0].partition("-")[2]
    second = "b" if first == "a" else "a"
    assert log == [f"start-{first}", f"end-{first}", f"start-{second}", f"end-{second}"]


def test_private_gives_a_concurrent_build_its_own_empty_dir(tmp_path: Path,
                                                            busybox_image: Any) -> None:
    run = ("RUN --mount=type=cache,id=p,target=/c,sharing=private "
           "touch /c/mark-{0} && sleep 2 && ls -A /c > /seen\n")
    _run_both(tmp_path, run, busybox_image.reference)
    seen = {name: (tmp_path / name / "seen").read_text().split() for name in ("a", "b")}
    assert seen == {"a": ["mark-a"], "b": ["mark-b"]}
    kept = sorted(p.name for p in (tmp_path / "root" / "cachemounts" / "p").iterdir())
    assert len(kept) == 1 and kept[0] in ("mark-a", "mark-b")
    assert not list((tmp_path / "root" / "tmp").glob("private-*"))
