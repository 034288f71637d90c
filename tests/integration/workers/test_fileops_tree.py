"""File ops on real directories: one table of (source tree, actions, expected listing of
the target), walked by one test, plus the errors pinned in a table.

Trees and listings are lines:

    f PATH MODE UID:GID [CONTENT]     a regular file (listing: SIZE instead of CONTENT,
                                      plus ``links=N`` when hardlinked)
    d PATH MODE UID:GID               a directory
    l PATH TARGET                     a symlink (listing: ``l PATH -> TARGET UID:GID``)
    h PATH OTHER                      a hardlink to OTHER (trees only)

The target starts as a rootfs holding /etc/passwd and /etc/group (left out of listings).
Expectations follow BuildKit's file backend and fsutil's copier (see workers/_copy.py).
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest
from workers_helpers import tree_listing

from dockyard.scheduler._errors import DockyardError
from dockyard.scheduler._graph import Copy, FileAction, Mkdir, Mkfile, Rm, Symlink
from dockyard.workers._fileops import apply_file_actions

PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"
GROUP = "root:x:0:\napp:x:1000:\nstaff:x:50:app\n"
BASE = {"/etc", "/etc/passwd", "/etc/group"}


def make_tree(root: Path, lines: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for line in lines:
        kind, path, *rest = line.split(" ", 4)
        where = root / path
        if kind == "f":
            where.write_text(rest[2] if len(rest) > 2 else "")
        elif kind == "d":
            where.mkdir()
        elif kind == "l":
            where.symlink_to(rest[0])
            continue
        elif kind == "h":
            os.link(root / rest[0], where)
            continue
        os.chmod(where, int(rest[0], 8))
        os.chown(where, *map(int, rest[1].split(":")))
    return root


def target_root(tmp: Path) -> Path:
    root = tmp / "target"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text(PASSWD)
    (root / "etc/group").write_text(GROUP)
    return root


CTX = ["f a.txt 644 0:0 hello", "f b.txt 600 0:0 bee", "f c.log 644 0:0 log",
       "d dir 750 0:0", "f dir/x 640 0:0 xx", "d dir/sub 700 0:0", "f dir/sub/y 755 0:0 y",
       "l dir/link ../a.txt", "l alink a.txt", "l dlink dir"]

# (id, context tree, target tree (besides /etc), actions, expected listing)
CASES: list[tuple[str, list[str], list[str], list[FileAction], list[str]]] = [
    ("file-into-new-dir-with-slash", CTX, [], [Copy(1, "/a.txt", "/out/")],
     ["d /out 755 0:0", "f /out/a.txt 644 0:0 5"]),
    ("file-to-new-name", CTX, [], [Copy(1, "/a.txt", "/out")], ["f /out 644 0:0 5"]),
    ("file-into-existing-dir-without-slash", CTX, ["d out 700 0:0"],
     [Copy(1, "a.txt", "/out")], ["d /out 700 0:0", "f /out/a.txt 644 0:0 5"]),
    ("file-replaces-file", CTX, ["f out 777 5:5 old-content"], [Copy(1, "/b.txt", "/out")],
     ["f /out 600 0:0 3"]),
    ("dir-contents-into-new-dir-made-0755", CTX, [], [Copy(1, "/dir", "/out")],
     ["d /out 755 0:0", "f /out/x 640 0:0 2", "d /out/sub 700 0:0",
      "f /out/sub/y 755 0:0 1", "l /out/link -> ../a.txt 0:0"]),
    ("dir-contents-into-existing-dir-keeps-its-mode", CTX, ["d out 711 0:0"],
     [Copy(1, "/dir/", "/out/")],
     ["d /out 711 0:0", "f /out/x 640 0:0 2", "d /out/sub 700 0:0",
      "f /out/sub/y 755 0:0 1", "l /out/link -> ../a.txt 0:0"]),
    ("dir-itself-when-not-contents", CTX, ["d out 755 0:0"],
     [Copy(1, "/dir/sub", "/out", copy_dir_contents=False)],
     ["d /out 755 0:0", "d /out/sub 700 0:0", "f /out/sub/y 755 0:0 1"]),
    ("root-of-source-into-dir", ["f only 644 0:0 1"], [], [Copy(1, "/", "/out/")],
     ["d /out 755 0:0", "f /out/only 644 0:0 1"]),
    ("wildcard-files", CTX, [], [Copy(1, "/*.txt", "/out/")],
     ["d /out 755 0:0", "f /out/a.txt 644 0:0 5", "f /out/b.txt 600 0:0 3"]),
    ("wildcard-single-match-to-file-name", CTX, [], [Copy(1, "/c.*", "/out")],
     ["f /out 644 0:0 3"]),
    ("wildcard-dir-contents-merged", CTX, [], [Copy(1, "/di?", "/out/")],
     ["d /out 755 0:0", "f /out/x 640 0:0 2", "d /out/sub 700 0:0",
      "f /out/sub/y 755 0:0 1", "l /out/link -> ../a.txt 0:0"]),
    ("wildcard-nested", CTX, [], [Copy(1, "/dir/*/y", "/out/")],
     ["d /out 755 0:0", "f /out/y 755 0:0 1"]),
    ("wildcard-class", CTX, [], [Copy(1, "/[ab].txt", "/o/")],
     ["d /o 755 0:0", "f /o/a.txt 644 0:0 5", "f /o/b.txt 600 0:0 3"]),
    ("empty-wildcard-allowed", CTX, [], [Copy(1, "/nomatch*", "/out/")], []),
    ("top-symlink-followed", CTX, [], [Copy(1, "/alink", "/out/")],
     ["d /out 755 0:0", "f /out/alink 644 0:0 5"]),
    ("top-symlink-to-dir-followed", CTX, [], [Copy(1, "/dlink", "/out")],
     ["d /out 755 0:0", "f /out/x 640 0:0 2", "d /out/sub 700 0:0",
      "f /out/sub/y 755 0:0 1", "l /out/link -> ../a.txt 0:0"]),
    ("top-symlink-kept-without-follow", CTX, [],
     [Copy(1, "/alink", "/out/", follow_symlinks=False)],
     ["d /out 755 0:0", "l /out/alink -> a.txt 0:0"]),
    ("hardlinks-kept", ["f a 644 0:0 same", "h b a", "f c 644 0:0 other"], [],
     [Copy(1, "/", "/out/")],
     ["d /out 755 0:0", "f /out/a 644 0:0 4 links=2", "f /out/b 644 0:0 4 links=2",
      "f /out/c 644 0:0 5"]),
    ("owners-kept-without-chown", ["d d 755 7:8", "f d/f 600 1000:50 z"], [],
     [Copy(1, "/d", "/out")], ["d /out 755 0:0", "f /out/f 600 1000:50 1"]),
    ("chown-by-name-through-target", CTX, [],
     [Copy(1, "/dir/sub", "/a/b/", chown="app")],
     ["d /a 755 1000:1000", "d /a/b 755 1000:1000", "f /a/b/y 755 1000:1000 1"]),
    ("chown-user-and-group-names", CTX, [], [Copy(1, "/a.txt", "/o", chown="app:staff")],
     ["f /o 644 1000:50 5"]),
    ("chown-number", CTX, [], [Copy(1, "/a.txt", "/o", chown="1234")],
     ["f /o 644 1234:1234 5"]),
    ("chown-unknown-name-is-root", CTX, [], [Copy(1, "/a.txt", "/o", chown="ghost")],
     ["f /o 644 0:0 5"]),
    ("chown-symlink-itself", CTX, [], [Copy(1, "/dir/link", "/o", chown="5:6",
                                            follow_symlinks=False)],
     ["l /o -> ../a.txt 5:6"]),
    ("chmod-octal-on-files-and-dirs", CTX, [], [Copy(1, "/dir", "/o/p", chmod="751")],
     ["d /o 751 0:0", "d /o/p 751 0:0", "f /o/p/x 751 0:0 2", "d /o/p/sub 751 0:0",
      "f /o/p/sub/y 751 0:0 1", "l /o/p/link -> ../a.txt 0:0"]),
    # BuildKit's testCopyChmod (fsutil#228): the directories made to hold the destination
    # get the octal mode, exactly (no umask); those already there keep theirs
    ("chmod-octal-on-created-parents", CTX, [],
     [Copy(1, "/a.txt", "/parent/foo", chmod="777"),
      Copy(1, "/a.txt", "/parent/sub/foo", chmod="770")],
     ["d /parent 777 0:0", "f /parent/foo 777 0:0 5", "d /parent/sub 770 0:0",
      "f /parent/sub/foo 770 0:0 5"]),
    ("chmod-octal-parents-owned-by-chown", CTX, ["d have 700 0:0"],
     [Copy(1, "/a.txt", "/have/new/deep/", chmod="750", chown="app")],
     ["d /have 700 0:0", "d /have/new 750 1000:1000", "d /have/new/deep 750 1000:1000",
      "f /have/new/deep/a.txt 750 1000:1000 5"]),
    ("chmod-symbolic-leaves-parents-0755", CTX, [],
     [Copy(1, "/a.txt", "/s/t/", chmod="u=rwx,go=")],
     ["d /s 755 0:0", "d /s/t 755 0:0", "f /s/t/a.txt 700 0:0 5"]),
    ("chmod-symbolic", CTX, [], [Copy(1, "/dir", "/o", chmod="u=rwX,go=rX")],
     ["d /o 755 0:0", "f /o/x 644 0:0 2", "d /o/sub 755 0:0", "f /o/sub/y 755 0:0 1",
      "l /o/link -> ../a.txt 0:0"]),
    ("exclude-patterns", CTX, [], [Copy(1, "/", "/o/", exclude=("*.log", "dir/sub"))],
     ["d /o 755 0:0", "f /o/a.txt 644 0:0 5", "f /o/b.txt 600 0:0 3",
      "l /o/alink -> a.txt 0:0", "d /o/dir 750 0:0", "f /o/dir/x 640 0:0 2",
      "l /o/dir/link -> ../a.txt 0:0", "l /o/dlink -> dir 0:0"]),
    ("exclude-with-exception", CTX, [], [Copy(1, "/dir", "/o/", exclude=("*", "!x"))],
     ["d /o 755 0:0", "f /o/x 640 0:0 2"]),
    ("parents-keep-the-path", CTX, [],
     [Copy(1, "/", "/o/", include=("dir/sub/*",), parents=True)],
     ["d /o 755 0:0", "d /o/dir 750 0:0", "d /o/dir/sub 700 0:0",
      "f /o/dir/sub/y 755 0:0 1"]),
    ("parents-from-a-dot-split", CTX, [],
     [Copy(1, "/dir", "/o/", include=("sub/y",), parents=True)],
     ["d /o 755 0:0", "d /o/sub 700 0:0", "f /o/sub/y 755 0:0 1"]),
    ("parents-wildcard-matching-nothing", CTX, [],
     [Copy(1, "/", "/o/", include=("dir/nope*/y",), parents=True),
      Copy(1, "/dir", "/p/", include=("sub2*",), parents=True)],
     ["d /o 755 0:0", "d /p 755 0:0"]),
    ("replace-existing-of-other-type", CTX, ["f o 644 0:0 in-the-way", "d x 755 0:0",
                                             "d x/a.txt 755 0:0"],
     [Copy(1, "/dir", "/o", always_replace_existing=True),
      Copy(1, "/a.txt", "/x/", always_replace_existing=True)],
     ["d /o 750 0:0", "f /o/x 640 0:0 2", "d /o/sub 700 0:0", "f /o/sub/y 755 0:0 1",
      "l /o/link -> ../a.txt 0:0", "d /x 755 0:0", "f /x/a.txt 644 0:0 5"]),
    ("dest-resolved-through-target-symlink", CTX, ["d real 755 0:0", "l alias /real"],
     [Copy(1, "/a.txt", "/alias/")],
     ["d /real 755 0:0", "f /real/a.txt 644 0:0 5", "l /alias -> /real 0:0"]),
    ("dest-symlink-escaping-stays-inside", CTX, ["l up ../../../../.."],
     [Copy(1, "/a.txt", "/up/tmp/")],
     ["l /up -> ../../../../.. 0:0", "d /tmp 755 0:0", "f /tmp/a.txt 644 0:0 5"]),
    ("source-dotdot-stays-inside", CTX, [], [Copy(1, "/../../../a.txt", "/o")],
     ["f /o 644 0:0 5"]),
    ("mkdir-parents-chown", [], [],
     [Mkdir("/w/x/y", 0o755, make_parents=True, chown="app")],
     ["d /w 755 1000:1000", "d /w/x 755 1000:1000", "d /w/x/y 755 1000:1000"]),
    ("mkdir-existing-is-a-no-op", [], ["d w 700 3:3"], [Mkdir("/w", 0o755)],
     ["d /w 700 3:3"]),
    ("mkdir-mode-less-umask", [], [], [Mkdir("/w", 0o777)], ["d /w 755 0:0"]),
    ("mkfile", [], ["d d 755 0:0"], [Mkfile("/d/f", "hi\n", 0o600, chown="1:2")],
     ["d /d 755 0:0", "f /d/f 600 1:2 3"]),
    ("rm-file-and-tree", [], ["f a 644 0:0", "d t 755 0:0", "f t/x 644 0:0"],
     [Rm("/a"), Rm("/t"), Rm("/missing", allow_not_found=True)], []),
    ("rm-wildcard", [], ["f a.o 644 0:0", "f b.o 644 0:0", "f c.c 644 0:0"],
     [Rm("/*.o", allow_wildcard=True)], ["f /c.c 644 0:0 0"]),
    ("rm-symlink-not-its-target", [], ["d d 755 0:0", "l l d"], [Rm("/l")],
     ["d /d 755 0:0"]),
    ("symlink", [], [], [Symlink("/etc/passwd", "/p")], ["l /p -> /etc/passwd 0:0"]),
    ("actions-in-order", CTX, [],
     [Mkdir("/w", 0o755), Copy(1, "/a.txt", "/w/"), Rm("/w/a.txt"),
      Mkfile("/w/n", "n")],
     ["d /w 755 0:0", "f /w/n 644 0:0 1"]),
]


@pytest.mark.parametrize(("context", "before", "actions", "expected"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_file_actions(tmp_path: Path, context: list[str], before: list[str],
                      actions: list[FileAction], expected: list[str]) -> None:
    target = make_tree(target_root(tmp_path), before)
    source = make_tree(tmp_path / "context", context)
    apply_file_actions(actions, target, [target, source])
    assert tree_listing(target, BASE) == sorted(expected)


# (id, context tree, target tree, actions, exact message)
ERRORS: list[tuple[str, list[str], list[str], list[FileAction], str]] = [
    ("missing-source", CTX, [], [Copy(1, "/missing", "/o")], '"/missing": not found'),
    ("missing-source-no-wildcard", CTX, [], [Copy(1, "/x*", "/o", allow_wildcard=False)],
     '"/x*": not found'),
    ("empty-wildcard-refused", CTX, [],
     [Copy(1, "/nomatch*", "/o", allow_empty_wildcard=False)], "/nomatch* not found"),
    ("absolute-symlink-cannot-reach-host", ["l evil /etc/hostname"], [],
     [Copy(1, "/evil", "/o")], '"/evil": not found'),
    ("file-over-directory", CTX, ["d o 755 0:0", "d o/a.txt 755 0:0"],
     [Copy(1, "/a.txt", "/o/")], "cannot replace to directory /o/a.txt with file"),
    ("dir-over-file", CTX, ["d o 755 0:0", "f o/sub 644 0:0"],
     [Copy(1, "/dir", "/o")], "cannot copy to non-directory: /o/sub"),
    ("no-dest-parent", CTX, [], [Copy(1, "/a.txt", "/no/such/f", create_dest_path=False)],
     "failed to stat /no/such/f: no such file or directory"),
    # BuildKit's testCopyParentsMissingDirectory: a path without a wildcard must exist
    ("parents-missing-file", CTX, [],
     [Copy(1, "/", "/o/", include=("dir/nonexistent-file",), parents=True)],
     '"/dir/nonexistent-file": not found'),
    ("parents-missing-after-the-pivot", CTX, [],
     [Copy(1, "/dir", "/o/", include=("sub/z",), parents=True)], '"/dir/sub/z": not found'),
    ("rm-missing", [], [], [Rm("/gone")], 'rm "/gone": not found'),
    ("mkdir-no-parent", [], [], [Mkdir("/a/b")],
     "mkdir /a/b: /a/b: No such file or directory"),
    ("mkdir-parents-through-file", [], ["f a 644 0:0"], [Mkdir("/a/b", make_parents=True)],
     "/a: not a directory"),
    ("symlink-exists", [], ["f p 644 0:0"], [Symlink("x", "/p")],
     "symlink /p -> x: /p: File exists"),
    ("empty-input", [], [], [Copy(2, "/a", "/b")],
     "copy /a: input 2 is an empty state or missing"),
    ("bad-chmod", CTX, [], [Copy(1, "/a.txt", "/o", chmod="u+q")],
     "invalid chmod parameter: 'u+q'. it should be octal string and between 0 and 07777"),
]


@pytest.mark.parametrize(("context", "before", "actions", "message"),
                         [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS])
def test_file_action_errors(tmp_path: Path, context: list[str], before: list[str],
                            actions: list[FileAction], message: str) -> None:
    target = make_tree(target_root(tmp_path), before)
    source = make_tree(tmp_path / "context", context)
    with pytest.raises(DockyardError) as caught:
        apply_file_actions(actions, target, [target, source, None])
    assert caught.value.message == message


def test_mtimes_kept(tmp_path: Path) -> None:
    source = make_tree(tmp_path / "ctx", ["d d 755 0:0", "f d/f 644 0:0 x", "l d/l f"])
    for path in ("d/f", "d/l", "d"):
        os.utime(source / path, ns=(1_000_000_123, 1_500_000_000_000_000_456),
                 follow_symlinks=False)
    target = target_root(tmp_path)
    apply_file_actions([Copy(1, "/", "/o")], target, [target, source])
    for path in ("o/d/f", "o/d/l", "o/d"):
        assert os.lstat(target / path).st_mtime_ns == 1_500_000_000_000_000_456, path


def test_chown_reads_the_target_passwd_not_the_host(tmp_path: Path) -> None:
    source = make_tree(tmp_path / "ctx", ["f f 644 0:0 x"])
    target = target_root(tmp_path)
    (target / "etc/passwd").write_text("daemon:x:4242:4343::/:/bin/sh\n")
    apply_file_actions([Copy(1, "/f", "/o", chown="daemon")], target, [target, source])
    assert (os.lstat(target / "o").st_uid, os.lstat(target / "o").st_gid) == (4242, 4343)


def test_fifos_and_sockets_are_not_copied_and_devices_become_empty_files(
        tmp_path: Path) -> None:
    """fsutil skips a fifo or a socket (BuildKit 20.10 leaves a stage's fifo out of
    ``COPY --from``): not in a tree, and alone only its destination directory is made
    (an existing file in its place is removed first, as fsutil does); a device node is
    copied as an empty regular file with its permission bits."""
    source = make_tree(tmp_path / "stage", ["d x 755 0:0", "f x/a 644 0:0 a"])
    os.mkfifo(source / "x" / "f", 0o640)
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(source / "x" / "s"))
    os.mkfifo(source / "g", 0o600)
    os.mknod(source / "x" / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    os.chmod(source / "x" / "null", 0o620)
    target = make_tree(target_root(tmp_path), ["d n 755 0:0", "f n/g 644 0:0 old"])
    apply_file_actions([Copy(1, "/x", "/y"), Copy(1, "/g", "/n/")], target, [target, source])
    assert tree_listing(target, BASE) == ["d /n 755 0:0", "d /y 755 0:0",
                                          "f /y/a 644 0:0 1", "f /y/null 620 0:0 0"]
    assert stat.S_ISREG(os.lstat(target / "y" / "null").st_mode)
