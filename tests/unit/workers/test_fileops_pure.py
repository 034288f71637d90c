"""The pure parts of the file ops: --chmod (octal and BSD symbolic, as fsutil applies it),
--chown through a user table, wildcard splitting and BuildKit's path cleaning."""

from __future__ import annotations

import pytest

from dockyard.scheduler._errors import SolveError
from dockyard.workers._copy import split_wildcards
from dockyard.workers._fileops import UserDb, _clean_path, parse_chmod

FILE, DIR = 0o100000, 0o040000

# (chmod, source st_mode, expected permission bits)
CHMOD = [
    ("755", FILE | 0o600, 0o755),
    ("0644", DIR | 0o700, 0o644),
    ("4755", FILE | 0o644, 0o4755),
    ("7777", FILE | 0o000, 0o7777),
    ("0", FILE | 0o4755, 0o000),
    ("u=rwX,go=rX", FILE | 0o600, 0o644),
    ("u=rwX,go=rX", FILE | 0o700, 0o755),
    ("u=rwX,go=rX", DIR | 0o700, 0o755),
    ("+x", FILE | 0o644, 0o755),
    ("a-w", FILE | 0o666, 0o444),
    ("go-rwx", FILE | 0o755, 0o700),
    ("u+s", FILE | 0o755, 0o4755),
    ("g+s", DIR | 0o755, 0o2755),
    ("o+s", FILE | 0o755, 0o755),
    ("+t", DIR | 0o777, 0o1777),
    ("=r", FILE | 0o4777, 0o444),
    ("u=rw,g=r,o=", FILE | 0o777, 0o640),
    ("go=u-w", FILE | 0o700, 0o755),
    ("a-x,+X", FILE | 0o744, 0o755),
    ("+X", FILE | 0o644, 0o644),
    ("a-X", DIR | 0o755, 0o644),
    ("a+X", DIR | 0o500, 0o511),
    ("g+rw,o+rw", DIR | 0o500, 0o566),
    ("u+x,g+w", FILE | 0o600, 0o720),
]


@pytest.mark.parametrize(("spec", "mode", "expected"), CHMOD)
def test_chmod(spec: str, mode: int, expected: int) -> None:
    apply = parse_chmod(spec)
    assert apply is not None
    assert oct(apply(mode)) == oct(expected)


@pytest.mark.parametrize("spec", ["8", "77777", "u", "u+q", "x+r", "rwx", ",", "u+r,"])
def test_bad_chmod(spec: str) -> None:
    with pytest.raises(SolveError, match="invalid chmod parameter"):
        parse_chmod(spec)


PASSWD = "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\nbad:x:x:1\n"
GROUP = "root:x:0:\nstaff:x:50:app\napp:x:1001:\n"

# (chown, (uid, gid)) -- unknown names are id 0, as BuildKit's readUser leaves them
CHOWN = [
    ("", None),
    ("app", (1000, 1001)),
    ("app:staff", (1000, 50)),
    ("app:7", (1000, 7)),
    ("42", (42, 42)),
    ("42:staff", (42, 50)),
    ("root", (0, 0)),
    ("app:root", (1000, 0)),
    ("ghost", (0, 0)),
    ("app:ghost", (1000, 1001)),
    ("bad", (0, 0)),
]


@pytest.mark.parametrize(("chown", "expected"), CHOWN)
def test_chown(tmp_path: object, chown: str, expected: tuple[int, int] | None) -> None:
    users = {"root": (0, 0), "app": (1000, 1001)}
    db = UserDb(users=users, groups={"root": 0, "staff": 50, "app": 1001})
    assert db.owner(chown) == expected


def test_user_db_from_root(tmp_path: pytest.TempPathFactory) -> None:
    from pathlib import Path
    root = Path(str(tmp_path))
    (root / "etc").mkdir()
    (root / "etc/passwd").write_text(PASSWD)
    (root / "etc/group").write_text(GROUP)
    db = UserDb.from_root(root)
    assert db.users == {"root": (0, 0), "app": (1000, 1001)}
    assert db.groups == {"root": 0, "staff": 50, "app": 1001}
    assert UserDb.from_root(root / "missing") == UserDb()


SPLIT = [
    ("/a/b/*.txt", ("/a/b", "*.txt")),
    ("/*", ("/", "*")),
    ("/a/b", ("/a/b", "")),
    ("/a/b?/c", ("/a", "b?/c")),
    ("/a/\\*b/c*", ("/a/\\*b", "c*")),
    ("/a/[xy]/c", ("/a", "[xy]/c")),
]


@pytest.mark.parametrize(("path", "expected"), SPLIT)
def test_split_wildcards(path: str, expected: tuple[str, str]) -> None:
    assert split_wildcards(path) == expected


CLEAN = [
    ("a", "/a"), ("/a/", "/a/"), ("/a/.", "/a/."), ("./", "/"), ("/", "/"),
    ("/a/../../b", "/b"), ("a//b/", "/a/b/"), (".", "/"),
]


@pytest.mark.parametrize(("path", "expected"), CLEAN)
def test_clean_path(path: str, expected: str) -> None:
    assert _clean_path(path) == expected
