"""The layer writer's own tar header (workers/_tar_write.py ``ustar_header``) is byte for
byte the one tarfile writes in PAX format, or None where tarfile would add a PAX record:
a layer's digest must not depend on which of the two wrote it."""

from __future__ import annotations

import tarfile

from hypothesis import example, given, settings
from hypothesis import strategies as st

from dockyard.workers._tar_write import ustar_header

TYPES = [tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
         tarfile.FIFOTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE]
# names around the 100-byte field, ASCII and not, with and without a trailing slash
NAMES = st.one_of(st.text(st.characters(min_codepoint=1, max_codepoint=0x7F), max_size=110),
                  st.text(min_size=1, max_size=60), st.sampled_from(
                      ["a", "x" * 99, "x" * 100, "x" * 101, "d/", "x" * 99 + "/", "é"]))
NUMBERS = st.one_of(st.integers(0, 8 ** 7 + 2), st.sampled_from([8 ** 7 - 1, 8 ** 7]),
                    st.integers(-2, 0))
BIG = st.one_of(st.integers(0, 8 ** 11 + 2), st.sampled_from([8 ** 11 - 1, 8 ** 11]),
                st.integers(-2, 0))


def _info(name: str, kind: bytes, mode: int, uid: int, gid: int, size: int, mtime: int,
          linkname: str, major: int, minor: int, xattr: bool) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid = kind, mode, uid, gid
    info.size = size if kind == tarfile.REGTYPE else 0
    info.mtime, info.uname, info.gname = mtime, "", ""
    if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        info.linkname = linkname
    info.devmajor, info.devminor = major, minor
    if xattr:
        info.pax_headers = {"SCHILY.xattr.security.capability": "\x01\x00\x00\x02"}
    return info


@settings(max_examples=600, deadline=None)
@given(NAMES, st.sampled_from(TYPES), st.integers(0, 0o177777), NUMBERS, NUMBERS, BIG, BIG,
       NAMES, NUMBERS, NUMBERS, st.booleans())
@example("a/b", tarfile.REGTYPE, 0o100644, 0, 0, 5, 1_700_000_000, "", 0, 0, False)
@example("c", tarfile.CHRTYPE, 0o20000, 0, 0, 0, 0, "", 0, 0, False)
def test_the_header_is_tarfile_s_or_none(name: str, kind: bytes, mode: int, uid: int,
                                          gid: int, size: int, mtime: int, linkname: str,
                                          major: int, minor: int, xattr: bool) -> None:
    if not name.strip("/"):
        name = "n"
    info = _info(name, kind, mode, uid, gid, size, mtime, linkname, major, minor, xattr)
    ours = ustar_header(info)
    try:
        theirs = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    except ValueError:  # a number tarfile cannot write at all (e.g. a negative size)
        assert ours is None
        return
    if ours is None:
        assert len(theirs) > tarfile.BLOCKSIZE  # tarfile needed a PAX record too
    else:
        assert ours == theirs


def test_the_common_entries_take_the_fast_path() -> None:
    regular = _info("usr/bin/tool", tarfile.REGTYPE, 0o755, 0, 0, 10, 1, "", 0, 0, False)
    folder = _info("usr/bin", tarfile.DIRTYPE, 0o755, 0, 0, 0, 1, "", 0, 0, False)
    whiteout = _info("etc/.wh.x", tarfile.REGTYPE, 0, 0, 0, 0, 0, "", 0, 0, False)
    assert all(ustar_header(info) is not None for info in (regular, folder, whiteout))
