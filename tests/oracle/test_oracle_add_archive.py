"""What BuildKit 20.10 makes of hostile archives ADD extracts: the facts dockyard's
extraction follows (workers/_archive.py), asked of the private dockerd.

A row is ``(case id, archive entries, BuildKit's tree or a piece of its error)``; the ids
are those of ``HOSTILE`` in tests/integration/workers/test_fileops_archive.py, which pins
dockyard's answers.  Each archive is ADDed to ``/dst/`` of ``FROM scratch``; the tree is
the image's, as :func:`_buildkit.tree_listing` writes it (a hardlink is an ``f``).

Where 20.10 fails with "no such file or directory" (a file written through a symlink whose
target directory the archive lacks), dockyard makes the directories inside the
destination, as BuildKit's newer unpacker does; every other row is dockyard's answer too.
"""

from __future__ import annotations

import io
import tarfile

import pytest
from _buildkit import PrivateDockerd

Entry = tuple[str, str, str]  # (kind f/d/l/h/c, name, data or link target)


def _archive(entries: list[Entry]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT,
                      errors="surrogateescape") as archive:
        for kind, name, text in entries:
            info = tarfile.TarInfo(name)
            info.type = {"f": tarfile.REGTYPE, "d": tarfile.DIRTYPE, "l": tarfile.SYMTYPE,
                         "h": tarfile.LNKTYPE, "c": tarfile.CONTTYPE}[kind]
            info.mode = 0o755 if kind == "d" else 0o644
            data = text.encode() if kind in "fc" else b""
            info.linkname, info.size = ("" if kind in "fc" else text), len(data)
            archive.addfile(info, io.BytesIO(data) if kind in "fc" else None)
    return buffer.getvalue()


ROWS: list[tuple[str, list[Entry], list[str] | str]] = [
    ("dotdot", [("f", "../evil", "x"), ("f", "a/../../evil2", "y"),
                ("f", "../../../up/deep", "z")],
     ["d 0755 0:0 dst", "f 0644 0:0 dst/evil", "f 0644 0:0 dst/evil2", "d 0755 0:0 dst/up",
      "f 0644 0:0 dst/up/deep"]),
    ("absolute", [("f", "/etc/x", "abs")],
     ["d 0755 0:0 dst", "d 0755 0:0 dst/etc", "f 0644 0:0 dst/etc/x"]),
    ("symlink-relative-out", [("l", "a/up", "../../../etc"), ("f", "a/up/passwd", "pw")],
     "open /a/up/passwd: no such file or directory"),
    ("symlink-absolute-var-run", [("d", "var", ""), ("l", "var/run", "/run"),
                                  ("f", "var/run/x", "x")],
     "open /var/run/x: no such file or directory"),
    ("symlink-absolute-etc", [("l", "sys", "/etc"), ("f", "sys/passwd", "pwned")],
     "open /sys/passwd: no such file or directory"),
    ("symlink-absolute-existing", [("d", "run", ""), ("l", "var/run", "/run"),
                                   ("f", "var/run/x", "x")],
     ["d 0755 0:0 dst", "d 0755 0:0 dst/run", "f 0644 0:0 dst/run/x", "d 0755 0:0 dst/var",
      "l 0777 0:0 dst/var/run -> /run"]),
    ("dir-over-symlink", [("l", "d", "/etc"), ("d", "d", ""), ("f", "d/x", "x")],
     ["d 0755 0:0 dst", "d 0755 0:0 dst/d", "f 0644 0:0 dst/d/x"]),
    ("file-over-dir", [("d", "d", ""), ("f", "d/x", "x"), ("f", "d", "file")],
     ["d 0755 0:0 dst", "f 0644 0:0 dst/d"]),
    ("root-entry-skipped", [("d", "./", ""), ("f", "./x", "x")],
     ["d 0755 0:0 dst", "f 0644 0:0 dst/x"]),
    ("symlink-loop", [("l", "a", "b"), ("l", "b", "a"), ("f", "a/x", "x")],
     "open /a/x: too many levels of symbolic links"),
    ("hardlink-out-missing", [("h", "h", "../../etc/passwd")],
     "link /etc/passwd /h: no such file or directory"),
    ("hardlink-dotdot-present", [("f", "f", "ff"), ("h", "sub/h", "../../f")],
     ["d 0755 0:0 dst", "f 0644 0:0 dst/f", "d 0755 0:0 dst/sub", "f 0644 0:0 dst/sub/h"]),
    ("hardlink-directory", [("d", "d", ""), ("h", "h", "d")],
     "link /d /h: operation not permitted"),
    ("hardlink-to-absolute-symlink", [("l", "evil", "/etc/passwd"), ("h", "grab", "evil")],
     ["d 0755 0:0 dst", "l 0777 0:0 dst/evil -> /etc/passwd", "f 0777 0:0 dst/grab"]),
    ("name-with-newline", [("f", "new\nline", "n")],
     ["d 0755 0:0 dst", "f 0644 0:0 dst/new\nline"]),
    ("name-not-utf8", [("f", "caf\udce9", "c")], ["d 0755 0:0 dst", "f 0644 0:0 dst/caf\udce9"]),
    ("name-component-too-long", [("f", "x" * 300, "l")], "file name too long"),
    ("contiguous-type", [("c", "c", "x")], "unhandled tar header type 55"),
]


@pytest.mark.oracle
@pytest.mark.parametrize(("entries", "expected"), [row[1:] for row in ROWS],
                         ids=[row[0] for row in ROWS])
def test_buildkit_agrees(buildkit: PrivateDockerd, entries: list[Entry],
                         expected: list[str] | str) -> None:
    result = buildkit.build("FROM scratch\nADD t.tar /dst/\n", {"t.tar": _archive(entries)})
    if isinstance(expected, str):
        assert not result.ok and expected in result.error_text
    else:
        assert result.ok, result.error_text
        assert buildkit.image_tree(str(result.image["Id"])) == expected


@pytest.mark.oracle
def test_buildkit_refuses_a_gnu_sparse_entry(buildkit: PrivateDockerd) -> None:
    """A GNU sparse entry (type S, 83) of 2 GiB, as ``tar --sparse --format=gnu`` writes
    it; built by hand as the workers' test builds it."""
    info = tarfile.TarInfo("big")
    info.type, info.mode = tarfile.GNUTYPE_SPARSE, 0o644
    header = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    size = b"%011o\0" % (2 << 30)
    header[386:398], header[398:410], header[483:495] = size, b"%011o\0" % 0, size
    header[148:156] = b" " * 8
    header[148:155] = b"%06o\0" % tarfile.calc_chksums(bytes(header))[0]
    result = buildkit.build("FROM scratch\nADD big.tar /dst/\n",
                            {"big.tar": bytes(header) + b"\0" * 1024})
    assert not result.ok and "unhandled tar header type 83" in result.error_text
