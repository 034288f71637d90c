"""Issue 10's Debian cases and base image: Dockerfiles, contexts, edits, step times, rows,
which host files reach the image (no build, no debootstrap): ``pytest benchmarks``."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks._debian_base import host_mirror_files, layer_skips
from benchmarks._debian_cases import (
    APT_C,
    DEBIAN_CASES,
    RootfsDiff,
    Step,
    c_dockerfile,
    diff_section,
    multistage_dockerfile,
    py_dockerfile,
    rootfs_diff,
    rootfs_row,
    step_table,
    step_times,
)
from benchmarks._main import CASES
from benchmarks._scale_cases import ScaleResult, scale_rows
from benchmarks._stats import Series


def test_every_debian_case_is_a_choice_of_the_cli() -> None:
    assert set(DEBIAN_CASES) <= set(CASES)


def test_every_figure_has_the_one_x_target() -> None:
    assert all(case.targets == {"cold", "warm", "edit"} for case in DEBIAN_CASES.values())


DOCKERFILES = [
    (c_dockerfile, ["FROM reg/debian", f"RUN {APT_C}", "COPY . /src", "RUN make -C /src"]),
    (multistage_dockerfile, ["FROM reg/debian AS build", f"RUN {APT_C}", "COPY . /src",
                             "RUN make -C /src", "", "FROM reg/debian",
                             "COPY --from=build /src/hello /usr/local/bin/hello",
                             'CMD ["hello"]']),
]


@pytest.mark.parametrize(("write", "lines"), DOCKERFILES)
def test_c_dockerfiles(write: object, lines: list[str]) -> None:
    assert callable(write)
    assert write("reg/debian").splitlines() == lines


def test_py_dockerfile_uses_a_venv_and_a_pip_cache_mount() -> None:
    text = py_dockerfile("reg/debian")
    assert "RUN python3 -m venv /venv\nENV PATH=/venv/bin:$PATH\n" in text
    assert ("RUN --mount=type=cache,target=/root/.cache/pip pip install -r requirements.txt"
            in text)
    assert text.index("COPY requirements.txt") < text.index("COPY app.py")


EDITED = [("debian-c", "hello.c"), ("debian-py", "app.py"), ("debian-multistage", "hello.c")]


@pytest.mark.parametrize(("case", "edited"), EDITED)
def test_setup_writes_the_context_and_edits_one_line(tmp_path: Path, case: str,
                                                     edited: str) -> None:
    edit = DEBIAN_CASES[case].setup(tmp_path, "reg/debian")
    assert (tmp_path / "Dockerfile").read_text().startswith("FROM reg/debian")
    before = {p.name: p.read_text() for p in tmp_path.iterdir()}
    edit("edit-3")
    after = {p.name: p.read_text() for p in tmp_path.iterdir()}
    assert [name for name in before if before[name] != after[name]] == [edited]
    old, new = before[edited].splitlines(), after[edited].splitlines()
    changed = [(a, b) for a, b in zip(old, new, strict=True) if a != b]
    assert len(changed) == 1 and "edit-3" in changed[0][1]


BUILDKIT_PLAIN = """\
#1 [internal] load build definition from Dockerfile
#1 DONE 0.0s
#5 [1/4] FROM 127.0.0.1:5000/library/debian:bookworm@sha256:abc
#5 CACHED
#6 [2/4] RUN apt-get update && apt-get install -y gcc
#6 0.512 Get:1 http://deb.debian.org/debian bookworm InRelease
#6 12.25 Setting up gcc (4:12.2.0-3) ...
#6 DONE 41.3s
#7 [3/4] COPY . /src
#7 DONE 0.1s
"""


def test_step_times_reads_every_step_of_plain_progress() -> None:
    assert step_times(BUILDKIT_PLAIN) == [
        Step("[internal] load build definition from Dockerfile", "0.0s"),
        Step("[1/4] FROM 127.0.0.1:5000/library/debian:bookworm@sha256:abc", "CACHED"),
        Step("[2/4] RUN apt-get update && apt-get install -y gcc", "41.3s", 0.512, 12.25),
        Step("[3/4] COPY . /src", "0.1s")]


def test_step_table_has_a_line_per_tool_figure_and_step() -> None:
    result = ScaleResult("BuildKit", {}, {"cold": BUILDKIT_PLAIN, "edit": BUILDKIT_PLAIN})
    table = step_table("debian-c", [result]).splitlines()
    assert len([line for line in table if line.startswith("| BuildKit |")]) == 8
    assert ("| BuildKit | cold | `[2/4] RUN apt-get update && apt-get install -y gcc` | 41.3s "
            "| 0.5-12.2s |") in table


def test_debian_rows_carry_their_targets_and_titles() -> None:
    ours = ScaleResult("dockyard", {n: Series((3.0,)) for n in ("cold", "warm", "edit")})
    theirs = ScaleResult("BuildKit", {n: Series((2.0,)) for n in ("cold", "warm", "edit")})
    rows = scale_rows("debian-py", ours, theirs, "p", DEBIAN_CASES)
    assert [(r.ratio, r.target) for r in rows] == [(1.5, 1.0)] * 3
    assert rows[2].benchmark.startswith("Debian: apt-get python3-venv")


TREE = ["d 0755 0:0 - etc", "f 0644 0:0 * etc/a 3 aaaa", "f 0644 0:0 * var/log 9 bbbb"]


def test_rootfs_diff_lists_each_differing_path_once() -> None:
    theirs = [TREE[0], TREE[1], "f 0644 0:0 * var/log 9 cccc"]
    diff = rootfs_diff(TREE, theirs)
    assert diff.differing_paths == ["var/log"]
    assert diff.lines == ["-f 0644 0:0 * var/log 9 bbbb", "+f 0644 0:0 * var/log 9 cccc"]
    row = rootfs_row("debian-c", diff, "p")
    assert (row.dockyard, row.reference, row.ratio, row.target) == ("3 paths", "3 paths",
                                                                    1.0, None)
    assert "1 paths differ, 1 in content only; listed below" in row.benchmark
    assert diff_section("debian-c", diff) == (
        "Root filesystems, `debian-c`: 1 paths differ.\n\n"
        "In content only (same kind, mode, owner, size; 1 other): `var/log`")


def test_content_only_needs_the_same_metadata_and_size_on_both_sides() -> None:
    theirs = ["d 0700 0:0 - etc", "f 0600 0:0 * etc/a 3 ffff", "f 0644 0:0 * var/log 9 dddd",
              "f 0644 0:0 * var/new 1 eeee"]
    diff = rootfs_diff(TREE, theirs)
    assert diff.differing_paths == ["etc", "etc/a", "var/log", "var/new"]
    assert diff.content_only == ["var/log"]
    section = diff_section("debian-c", diff)
    assert "\n-d 0755 0:0 - etc\n" in section and "\n+d 0700 0:0 - etc\n" in section
    assert "+f 0644 0:0 * var/new 1 eeee" in section and "var/log 9" not in section


def test_content_only_paths_are_counted_by_short_suffixes() -> None:
    names = ["a/x.pyc", "b/y.pyc", "var/lib/apt/lists/deb.debian.org_dists_InRelease", "z.log"]
    tree = [f"f 0644 0:0 * {name} 1 aaaa" for name in names]
    diff = rootfs_diff(tree, [line.replace("aaaa", "bbbb") for line in tree])
    assert "(same kind, mode, owner, size; 2 .pyc, 1 .log, 1 other)" in diff_section("c", diff)


def test_identical_rootfs() -> None:
    diff = RootfsDiff(3, 3, [])
    assert "0 paths differ)" in rootfs_row("debian-c", diff, "p").benchmark
    assert "identical" in diff_section("debian-c", diff)


SKIPS = [("dev", False), ("dev/null", True), ("dev/pts/ptmx", True), ("devices", False),
         ("var/lib/apt/lists", False), ("var/lib/apt/lists/partial", True),
         ("var/cache/apt/archives/gcc.deb", True), ("etc/resolv.conf", True),
         ("etc/hostname", True), ("etc/hosts", False), ("usr/bin/apt", False)]


@pytest.mark.parametrize(("path", "skipped"), SKIPS)
def test_layer_skips(path: str, skipped: bool) -> None:
    assert layer_skips(path) is skipped


def test_host_mirror_files_are_sources_pip_and_acquire_options(tmp_path: Path) -> None:
    files = {"apt/sources.list.d/debian.sources": "Types: deb\n",
             "apt/sources.list.d/old.list.disabled": "deb x\n",
             "apt/apt.conf.d/99mirror": 'Acquire::Check-Valid-Until "false";\n',
             "apt/apt.conf.d/99proxy": 'Acquire::https::Proxy "http://p";\n',
             "apt/apt.conf.d/docker-gzip-indexes": 'Acquire::GzipIndexes "true";\n',
             "apt/apt.conf.d/01autoremove": "APT {};\n", "pip.conf": "[global]\n"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    found = [str(p.relative_to(tmp_path)) for p in host_mirror_files(tmp_path)]
    assert found == ["pip.conf", "apt/sources.list.d/debian.sources", "apt/apt.conf.d/99mirror",
                     "apt/apt.conf.d/99proxy"]
