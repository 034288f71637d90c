"""``resolve_user``: BuildKit's and runc's rules for ``user[:group]``, as a table."""

from __future__ import annotations

from pathlib import Path

import pytest

from dockyard.workers._users import ResolvedUser, UserError, path_in_root, resolve_user

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
# a comment
app:x:1000:1000:app:/home/app:/bin/sh
twin:x:1000:77:first wins:/home/twin:/bin/sh
nohome:x:1200:1200::
42:x:4242:4242:numeric name:/home/n:/bin/sh
"""
GROUP = """\
root:x:0:
app:x:1000:
staff:x:50:app,nohome
wheel:x:10:app
dev:x:2000:
"""

CASES: list[tuple[str, ResolvedUser]] = [
    # additional gids: the primary gid first, then the groups listing the user (BuildKit)
    ("", ResolvedUser(0, 0, (0,), "/root")),              # no USER: uid 0, looked up
    ("0", ResolvedUser(0, 0, (0,), "/root")),
    ("1000", ResolvedUser(1000, 1000, (1000, 50, 10), "/home/app")),  # first uid match
    ("1000:1000", ResolvedUser(1000, 1000, (1000,), "/home/app")),    # fast path
    ("5555:6666", ResolvedUser(5555, 6666, (6666,), "/")),
    ("root", ResolvedUser(0, 0, (0,), "/root")),
    ("app", ResolvedUser(1000, 1000, (1000, 50, 10), "/home/app")),
    ("app:", ResolvedUser(1000, 1000, (1000, 50, 10), "/home/app")),
    ("twin", ResolvedUser(1000, 77, (77,), "/home/twin")),  # by name, not the first uid
    ("app:dev", ResolvedUser(1000, 2000, (2000,), "/home/app")),
    ("app:staff", ResolvedUser(1000, 50, (50,), "/home/app")),
    ("app:50", ResolvedUser(1000, 50, (50,), "/home/app")),
    ("app:9999", ResolvedUser(1000, 9999, (9999,), "/home/app")),
    ("nohome", ResolvedUser(1200, 1200, (1200, 50), "/")),
    ("42", ResolvedUser(42, 0, (0,), "/")),              # a number is a uid, not a name
    ("42:dev", ResolvedUser(42, 2000, (2000,), "/")),
    ("8888:dev", ResolvedUser(8888, 2000, (2000,), "/")),
    (":dev", ResolvedUser(0, 2000, (2000,), "/root")),   # no user part: uid 0's entry
]


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text(PASSWD)
    (tmp_path / "etc" / "group").write_text(GROUP)
    return tmp_path


@pytest.mark.parametrize(("spec", "expected"), CASES, ids=[c[0] or "empty" for c in CASES])
def test_resolve(rootfs: Path, spec: str, expected: ResolvedUser) -> None:
    assert resolve_user(rootfs, spec) == expected


ERRORS = [
    ("ghost", "unable to find user ghost: no matching entries in /etc/passwd ({root}/etc/passwd)"),
    ("app:ghosts", "unable to find group ghosts: no matching entries in /etc/group "
                   "({root}/etc/group)"),
    ("99999999999", "user or group id 99999999999 is out of range (0..2147483647)"),
]


@pytest.mark.parametrize(("spec", "message"), ERRORS)
def test_errors(rootfs: Path, spec: str, message: str) -> None:
    with pytest.raises(UserError) as caught:
        resolve_user(rootfs, spec)
    assert caught.value.message == message.format(root=rootfs)


def test_missing_files_numeric_ok_names_fail(tmp_path: Path) -> None:
    assert resolve_user(tmp_path, "7:8") == ResolvedUser(7, 8, (8,))
    assert resolve_user(tmp_path, "") == ResolvedUser(0, 0, (0,), "/")
    assert resolve_user(tmp_path, "1234") == ResolvedUser(1234, 0, (0,), "/")
    with pytest.raises(UserError, match="unable to find user app"):
        resolve_user(tmp_path, "app")


BUSYBOX_GROUP = "root:x:0:root\nwheel:x:10:root\ndaemon:x:1:\n"


@pytest.mark.parametrize(("spec", "expected"), [
    ("", ResolvedUser(0, 0, (0, 10), "/root")),   # busybox's `id -G`: 0 10, no repeat
    ("root", ResolvedUser(0, 0, (0, 10), "/root")),
    ("0:0", ResolvedUser(0, 0, (0,), "/root")),
])
def test_root_gets_its_groups_without_repeats(rootfs: Path, spec: str,
                                              expected: ResolvedUser) -> None:
    (rootfs / "etc" / "group").write_text(BUSYBOX_GROUP)
    assert resolve_user(rootfs, spec) == expected


def test_passwd_through_an_absolute_symlink_stays_inside(rootfs: Path, tmp_path: Path) -> None:
    (rootfs / "etc" / "passwd").rename(rootfs / "real-passwd")
    (rootfs / "etc" / "passwd").symlink_to("/real-passwd")
    assert resolve_user(rootfs, "app").uid == 1000


PATHS = [
    ("/a/b", "a/b"),
    ("a/../../b", "b"),
    ("/link-abs/x", "etc/x"),     # link-abs -> /etc
    ("/link-rel/x", "etc/x"),     # link-rel -> ../../etc
    ("/missing/../etc", "etc"),
]


@pytest.mark.parametrize(("path", "expected"), PATHS)
def test_path_in_root(rootfs: Path, path: str, expected: str) -> None:
    (rootfs / "link-abs").symlink_to("/etc")
    (rootfs / "link-rel").symlink_to("../../etc")
    assert path_in_root(rootfs, path) == rootfs / expected


def test_symlink_loop(rootfs: Path) -> None:
    (rootfs / "loop").symlink_to("loop")
    with pytest.raises(UserError, match="too many levels of symbolic links"):
        path_in_root(rootfs, "/loop/x")
