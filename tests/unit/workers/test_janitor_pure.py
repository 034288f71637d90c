"""The janitor's pure parts: mountinfo lines, which mounts to remove and in which order,
runc's container list, and the report's log line."""

from __future__ import annotations

from pathlib import Path

import pytest

from dockyard.workers._janitor import (
    JanitorReport,
    MountEntry,
    _parse_list,
    _unescape,
    parse_mountinfo,
    stale_mounts,
)

# (id, mountinfo line, entry)
LINES: list[tuple[str, str, MountEntry | None]] = [
    ("overlay", "812 27 0:75 / /r/snapshots/work/ab/merged rw,relatime shared:400 - overlay "
     "overlay rw,lowerdir=l/0,upperdir=upper,workdir=work",
     MountEntry(812, 27, "/r/snapshots/work/ab/merged", "overlay")),
    ("no optional fields", "22 27 0:21 / /proc rw,relatime - proc proc rw",
     MountEntry(22, 27, "/proc", "proc")),
    ("several optional fields", "30 1 0:5 / /x rw shared:2 master:1 - tmpfs tmpfs rw",
     MountEntry(30, 1, "/x", "tmpfs")),
    ("escaped space", r"40 1 0:6 / /my\040root/tmp/a rw - tmpfs tmpfs rw",
     MountEntry(40, 1, "/my root/tmp/a", "tmpfs")),
    ("escaped tab newline backslash", r"41 1 0:6 / /a\011b\012c\134d rw - tmpfs tmpfs rw",
     MountEntry(41, 1, "/a\tb\nc\\d", "tmpfs")),
    ("too short", "42 1 0:6 /", None),
    ("no separator", "43 1 0:6 / /x rw shared:1", None),
    ("not a number", "x 1 0:6 / /x rw - tmpfs tmpfs rw", None),
]


@pytest.mark.parametrize(("line", "entry"), [c[1:] for c in LINES], ids=[c[0] for c in LINES])
def test_parse_mountinfo_line(line: str, entry: MountEntry | None) -> None:
    assert parse_mountinfo(line) == ([entry] if entry else [])


# (id, escaped, decoded)
ESCAPES = [
    ("plain", "/a/b", "/a/b"),
    ("space", r"/a\040b", "/a b"),
    ("backslash then digits", r"/a\134040", "/a\\040"),
    ("not octal", r"/a\089", r"/a\089"),
    ("short at the end", r"/a\04", r"/a\04"),
]


@pytest.mark.parametrize(("escaped", "decoded"), [c[1:] for c in ESCAPES],
                         ids=[c[0] for c in ESCAPES])
def test_unescape(escaped: str, decoded: str) -> None:
    assert _unescape(escaped) == decoded


def _entries(*points: str) -> list[MountEntry]:
    return [MountEntry(100 + index, 1, point) for index, point in enumerate(points)]


# (id, mount points in mountinfo order, root, expected unmount order)
SELECTION: list[tuple[str, list[str], str, list[str]]] = [
    ("deepest first",
     ["/r/snapshots/work/a/merged", "/r/snapshots/work/a/merged/proc",
      "/r/run/bundles/c/secrets", "/r/snapshots/work/a/merged/dev/pts"],
     "/r",
     ["/r/snapshots/work/a/merged/dev/pts", "/r/snapshots/work/a/merged/proc",
      "/r/run/bundles/c/secrets", "/r/snapshots/work/a/merged"]),  # same depth: latest first
    ("stacked on one path: latest first",
     ["/r/tmp/x", "/r/tmp/x"], "/r", ["/r/tmp/x", "/r/tmp/x"]),
    ("only under this root",
     ["/r2/snapshots/work/a/merged", "/r/snapshots/work/a/merged", "/other/tmp/a"],
     "/r", ["/r/snapshots/work/a/merged"]),
    ("never the root or a mount place itself",
     ["/r", "/r/tmp", "/r/snapshots/work", "/r/run/bundles", "/r/tmp/layer-1"],
     "/r", ["/r/tmp/layer-1"]),
    ("not the user's volumes elsewhere in the root",
     ["/r/cache", "/r/cachemounts/vol", "/r/snapshots/layers/ab", "/r/run/x",
      "/r/run/runc/dockyard-1/x"],
     "/r", ["/r/run/runc/dockyard-1/x"]),
    ("escaped root", ["/my root/tmp/a", "/my/tmp/a"], "/my root", ["/my root/tmp/a"]),
    ("a trailing slash in the root", ["/r/tmp/a"], "/r/", ["/r/tmp/a"]),
    ("nothing", ["/proc", "/sys"], "/r", []),
]


@pytest.mark.parametrize(("points", "root", "expected"), [c[1:] for c in SELECTION],
                         ids=[c[0] for c in SELECTION])
def test_stale_mounts(points: list[str], root: str, expected: list[str]) -> None:
    assert stale_mounts(_entries(*points), Path(root)) == expected


def test_stale_mounts_from_a_mountinfo_text() -> None:
    text = ("22 27 0:21 / /proc rw - proc proc rw\n"
            r"90 27 0:60 / /d\040r/snapshots/work/k/merged rw - overlay overlay rw" "\n"
            r"91 90 0:61 / /d\040r/snapshots/work/k/merged/x rw - tmpfs tmpfs rw" "\n")
    assert stale_mounts(parse_mountinfo(text), Path("/d r")) == [
        "/d r/snapshots/work/k/merged/x", "/d r/snapshots/work/k/merged"]


# (id, runc list -f json output, (id, pid, status) of dockyard's containers)
LISTS: list[tuple[str, str, list[tuple[str, int, str]]]] = [
    ("none", "null", []),
    ("empty output", "", []),
    ("ours and others",
     '[{"id":"dockyard-0a1b","pid":42,"status":"running"},'
     '{"id":"buildkit-x","pid":43,"status":"running"},'
     '{"id":"dockyard-ff","pid":0,"status":"stopped"}]',
     [("dockyard-0a1b", 42, "running"), ("dockyard-ff", 0, "stopped")]),
]


@pytest.mark.parametrize(("output", "expected"), [c[1:] for c in LISTS],
                         ids=[c[0] for c in LISTS])
def test_parse_runc_list(output: str, expected: list[tuple[str, int, str]]) -> None:
    assert [(c.id, c.pid, c.status) for c in _parse_list(output)] == expected


# (id, report, its line for root /r)
REPORTS: list[tuple[str, JanitorReport, str]] = [
    ("nothing", JanitorReport(), "clean-up of /r: nothing left by a previous worker"),
    ("something", JanitorReport(1, 2, 3, 4, 5),
     "clean-up of /r: 1 containers killed, 2 mounts removed, 3 directories and 4 files "
     "removed, 5 bytes freed"),
    ("problems", JanitorReport(problems=("/r/tmp/x (still mounted: /r/tmp/x/y)",)),
     "clean-up of /r: 0 containers killed, 0 mounts removed, 0 directories and 0 files "
     "removed, 0 bytes freed; kept /r/tmp/x (still mounted: /r/tmp/x/y)"),
]


@pytest.mark.parametrize(("report", "line"), [c[1:] for c in REPORTS],
                         ids=[c[0] for c in REPORTS])
def test_report_line(report: JanitorReport, line: str) -> None:
    assert report.line(Path("/r")) == line


def test_without_runc_nothing_a_container_may_use_is_removed(tmp_path: Path) -> None:
    """A state dir of a dockyard container, and runc cannot be run: the bundle and the
    scratch stay (the container may still run), and the report says why."""
    from dockyard.workers._janitor import clean_stale

    (tmp_path / "run" / "runc" / "dockyard-0123").mkdir(parents=True)
    (tmp_path / "run" / "bundles" / "dockyard-0123").mkdir(parents=True)
    (tmp_path / "tmp").mkdir()
    (tmp_path / "tmp" / "layer-1").mkdir()
    report = clean_stale(tmp_path, runc=str(tmp_path / "no-runc"))
    assert (report.containers_killed, report.directories_removed) == (0, 0)
    assert report.problems == (
        f"the containers in {tmp_path}/run/runc (cannot run {tmp_path}/no-runc list for "
        f"{tmp_path}/run/runc: [Errno 2] No such file or directory: "
        f"'{tmp_path}/no-runc')",
        "every mount and directory (a container may still use them)")
    assert (tmp_path / "run" / "bundles" / "dockyard-0123").is_dir()
    assert (tmp_path / "tmp" / "layer-1").is_dir()


def test_without_containers_runc_is_not_needed(tmp_path: Path) -> None:
    from dockyard.workers._janitor import clean_stale

    (tmp_path / "tmp").mkdir()
    (tmp_path / "tmp" / "layer-1").mkdir()
    (tmp_path / "tmp" / "layer-1" / "f").write_bytes(b"abc")
    report = clean_stale(tmp_path, runc=str(tmp_path / "no-runc"))
    assert report == JanitorReport(directories_removed=1, bytes_freed=3)
