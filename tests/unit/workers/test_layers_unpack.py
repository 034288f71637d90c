"""Unpacking crafted layer tars: every escape attempt refused (exact messages, nothing left
behind), every whiteout and replacement case applied, in overlay form and flat form.

A layer is a list of entries, built into a tar by ``tarfile`` here:
``"f name=content"``, ``"d name"``, ``"l name->target"`` (symlink), ``"h name->target"``
(hardlink), ``"c name"`` (char device 1/3), ``"p name"`` (fifo).  A tree is described the
same way, read back by ``_tree``: ``"c name 0/0"`` for a whiteout device, ``"d name opaque"``
for a directory with ``trusted.overlay.opaque=y``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from dockyard.cache_backends._records import GZIP_LAYER
from dockyard.scheduler._errors import LayerError
from dockyard.workers._layers import apply_layer_flat, unpack_layer

_HINT = "\nhint: the layer is corrupt or hostile; rebuild or re-pull it"
#: vfs_cap_data v2 for cap_net_raw=ep (what ``setcap cap_net_raw+ep`` stores).
_CAP_NET_RAW = bytes.fromhex("0100000200200000000000000000000000000000")
_VIA = ": writing through a link could escape the root" + _HINT


def _member(spec: str) -> tuple[tarfile.TarInfo, bytes]:
    kind, _, rest = spec.partition(" ")
    name, _, value = rest.partition("=") if kind == "f" else rest.partition("->")
    info = tarfile.TarInfo(name)
    info.mode, info.mtime = 0o644, 1_600_000_000
    data = b""
    if kind == "f":
        data = value.encode()
        info.size = len(data)
    elif kind == "d":
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    elif kind in ("l", "h"):
        info.type = tarfile.SYMTYPE if kind == "l" else tarfile.LNKTYPE
        info.linkname = value
    elif kind == "c":
        info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    elif kind == "p":
        info.type = tarfile.FIFOTYPE
    return info, data


def _tar(entries: list[str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for spec in entries:
            info, data = _member(spec)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _layer(entries: list[str]) -> tuple[io.BytesIO, str]:
    blob = gzip.compress(_tar(entries), mtime=0)
    return io.BytesIO(blob), "sha256:" + hashlib.sha256(blob).hexdigest()


def _tree(root: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath, name)
            found.append(_describe(path, path.relative_to(root).as_posix()))
    return sorted(found)


def _describe(path: Path, rel: str) -> str:
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        return f"l {rel}->{os.readlink(path)}"
    if stat.S_ISDIR(st.st_mode):
        opaque = "trusted.overlay.opaque" in os.listxattr(path, follow_symlinks=False)
        return f"d {rel}" + (" opaque" if opaque else "")
    if stat.S_ISCHR(st.st_mode):
        return f"c {rel} {os.major(st.st_rdev)}/{os.minor(st.st_rdev)}"
    if stat.S_ISFIFO(st.st_mode):
        return f"p {rel}"
    return f"f {rel}={path.read_bytes().decode()}"


def _unpack(entries: list[str], dest: Path) -> str:
    blob, digest = _layer(entries)
    return unpack_layer(blob, dest, media_type=GZIP_LAYER, expected_digest=digest)


def _flat(entries: list[str], dest: Path) -> str:
    blob, digest = _layer(entries)
    return apply_layer_flat(blob, dest, media_type=GZIP_LAYER, expected_digest=digest)


# -- escapes: (entries, message in overlay form, message in flat form) --------------------

ESCAPES: list[tuple[str, list[str], str, str]] = [
    ("dotdot", ["f ../evil=x"],
     "layer entry '../evil' has a '..' component: it would escape the root" + _HINT, "same"),
    ("dotdot-inside", ["d a", "f a/../../evil=x"],
     "layer entry 'a/../../evil' has a '..' component: it would escape the root" + _HINT,
     "same"),
    ("dotdot-dir", ["d ../../tmp"],
     "layer entry '../../tmp' has a '..' component: it would escape the root" + _HINT, "same"),
    ("file-through-absolute-symlink", ["l lnk->/etc", "f lnk/passwd=x"],
     "layer entry 'lnk/passwd' goes through the symlink 'lnk'" + _VIA, "same"),
    ("file-through-relative-symlink", ["l lnk->../..", "f lnk/x=x"],
     "layer entry 'lnk/x' goes through the symlink 'lnk'" + _VIA, "same"),
    ("deep-through-symlink", ["d a", "l a/b->/", "f a/b/c/d=x"],
     "layer entry 'a/b/c/d' goes through the symlink 'a/b'" + _VIA, "same"),
    ("dir-through-symlink", ["l lnk->/tmp", "d lnk/sub"],
     "layer entry 'lnk/sub' goes through the symlink 'lnk'" + _VIA, "same"),
    ("whiteout-through-symlink", ["l lnk->/etc", "f lnk/.wh.passwd="],
     "layer entry 'lnk/.wh.passwd' goes through the symlink 'lnk'" + _VIA, "same"),
    ("opaque-through-symlink", ["l lnk->/etc", "f lnk/.wh..wh..opq="],
     "layer entry 'lnk/.wh..wh..opq' goes through the symlink 'lnk'" + _VIA, "same"),
    ("whiteout-dotdot", ["d a", "f a/.wh...="],
     "layer entry 'a/.wh...' is a whiteout of no valid name", "same"),
    ("whiteout-dot", ["f .wh..="],
     "layer entry '.wh..' is a whiteout of no valid name", "same"),
    ("hardlink-dotdot", ["h h->../outside"],
     "layer entry 'h' links to '../outside' has a '..' component: it would escape the root"
     + _HINT, "same"),
    ("hardlink-absolute", ["h h->/etc/passwd"],
     "layer entry 'h' is a hardlink to '/etc/passwd', which is not an earlier entry of this "
     "layer" + _HINT,
     "layer entry 'h' is a hardlink to '/etc/passwd', which is missing or a directory"),
    ("hardlink-through-symlink", ["l lnk->/etc", "h h->lnk/passwd"],
     "layer entry 'h' is a hardlink to 'lnk/passwd', which is not an earlier entry of this "
     "layer" + _HINT,
     "layer entry 'h' goes through the symlink 'lnk'" + _VIA),
    ("hardlink-after-dir-became-symlink", ["d d", "f d/f=x", "l d->/etc", "h h->d/f"],
     "layer entry 'h' is a hardlink to 'd/f', which is not an earlier entry of this layer"
     + _HINT,
     "layer entry 'h' goes through the symlink 'd'" + _VIA),
    ("hardlink-to-directory", ["d d", "h h->d"],
     "layer entry 'h' is a hardlink to 'd', which is missing or a directory", "same"),
    ("parent-is-a-file", ["f a=x", "f a/b=y"],
     "layer entry 'a/b': 'a' is not a directory", "same"),
]


@pytest.mark.parametrize(("entries", "message"),
                         [pytest.param(e, m, id=n) for n, e, m, _ in ESCAPES])
def test_unpack_refuses_escapes_and_leaves_nothing(tmp_path: Path, entries: list[str],
                                                    message: str) -> None:
    dest = tmp_path / "dest"
    with pytest.raises(LayerError) as caught:
        _unpack(entries, dest)
    assert str(caught.value) == message
    assert list(dest.iterdir()) == []


@pytest.mark.parametrize(("entries", "message"),
                         [pytest.param(e, o if f == "same" else f, id=n)
                          for n, e, o, f in ESCAPES])
def test_flat_refuses_escapes(tmp_path: Path, entries: list[str], message: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(LayerError) as caught:
        _flat(entries, dest)
    assert str(caught.value) == message
    assert list(outside.iterdir()) == []


def test_device_files_only_as_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(LayerError) as caught:
        _unpack(["d dev", "c dev/null"], tmp_path / "dest")
    assert str(caught.value) == ("layer entry 'dev/null' is a device file: only root can "
                                 "create it\nhint: unpack layers as root")
    assert list((tmp_path / "dest").iterdir()) == []


# -- what a layer makes: overlay form -----------------------------------------------------

OVERLAY_CASES: list[tuple[str, list[str], list[str]]] = [
    ("plain", ["d a", "f a/f=hi", "l a/l->/nowhere", "p a/p"],
     ["d a", "f a/f=hi", "l a/l->/nowhere", "p a/p"]),
    ("whiteout-becomes-device", ["d a", "f a/.wh.gone="], ["d a", "c a/gone 0/0"]),
    ("opaque-becomes-xattr", ["d a", "f a/.wh..wh..opq=", "f a/new=n"],
     ["d a opaque", "f a/new=n"]),
    ("implicit-parents", ["f x/y/z=1"], ["d x", "d x/y", "f x/y/z=1"]),
    ("leading-slash-stripped", ["d /abs", "f /abs/f=1", "f ./dot=2"],
     ["d abs", "f abs/f=1", "f dot=2"]),
    ("root-entry-skipped", ["d ./", "d /", "f f=1"], ["f f=1"]),
    ("later-entry-wins", ["f f=old", "f f=new"], ["f f=new"]),
    ("file-replaces-dir", ["d x", "f x/in=1", "f x=file"], ["f x=file"]),
    ("symlink-replaced-by-dir", ["l s->/etc", "d s", "f s/f=1"], ["d s", "f s/f=1"]),
    ("hardlink-in-layer", ["f a=1", "h b->a", "h c->/a"], ["f a=1", "f b=1", "f c=1"]),
    ("other-meta-whiteouts-ignored", ["f .wh..wh.plnk="], []),
    ("devices-as-root", ["c null"], ["c null 1/3"]),
]


@pytest.mark.parametrize(("entries", "tree"),
                         [pytest.param(e, t, id=n) for n, e, t in OVERLAY_CASES])
def test_unpack_overlay_form(tmp_path: Path, entries: list[str], tree: list[str]) -> None:
    digest = _unpack(entries, tmp_path / "dest")
    assert _tree(tmp_path / "dest") == sorted(tree)
    assert digest == "sha256:" + hashlib.sha256(_tar(entries)).hexdigest()


def test_unpack_keeps_metadata(tmp_path: Path) -> None:
    info, _ = _member("f f=")
    info.mode, info.uid, info.gid, info.mtime = 0o4755, 1000, 50, 1_234_567_890
    info.pax_headers = {"SCHILY.xattr.security.capability": _CAP_NET_RAW.decode("ascii"),
                        "SCHILY.xattr.trusted.overlay.redirect": "/etc",
                        "SCHILY.xattr.user.note": "kept"}
    d_info, _ = _member("d d")
    d_info.mtime, d_info.mode = 1_000_000_000, 0o1777
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(d_info)
        tar.addfile(info, io.BytesIO(b""))
        tar.addfile(_member("f d/child=x")[0], io.BytesIO(b"x"))
    unpack_layer(io.BytesIO(buf.getvalue()), tmp_path, media_type=GZIP_LAYER,
                 expected_digest=None)
    st = (tmp_path / "f").lstat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime) == \
        (0o4755, 1000, 50, 1_234_567_890)
    assert sorted(os.listxattr(tmp_path / "f")) == ["security.capability", "user.note"]
    assert os.getxattr(tmp_path / "f", "security.capability") == _CAP_NET_RAW
    d_st = (tmp_path / "d").lstat()
    assert (stat.S_IMODE(d_st.st_mode), d_st.st_mtime) == (0o1777, 1_000_000_000)


# -- what a layer does to a tree: flat form -----------------------------------------------

BASE = ["d d", "f d/x=1", "f d/y=2", "f a=a", "l s->d", "d e", "f e/in=3"]

FLAT_CASES: list[tuple[str, list[str], list[str]]] = [
    ("whiteout-deletes-file", ["f .wh.a="],
     ["d d", "f d/x=1", "f d/y=2", "l s->d", "d e", "f e/in=3"]),
    ("whiteout-deletes-dir", ["f .wh.d="], ["f a=a", "l s->d", "d e", "f e/in=3"]),
    ("whiteout-deletes-symlink-not-target", ["f .wh.s="],
     ["d d", "f d/x=1", "f d/y=2", "f a=a", "d e", "f e/in=3"]),
    ("whiteout-in-dir", ["d d", "f d/.wh.x="],
     ["d d", "f d/y=2", "f a=a", "l s->d", "d e", "f e/in=3"]),
    ("whiteout-of-missing-is-noop", ["f .wh.nothing="], BASE),
    ("opaque-clears-dir", ["d d", "f d/.wh..wh..opq=", "f d/new=n"],
     ["d d", "f d/new=n", "f a=a", "l s->d", "d e", "f e/in=3"]),
    ("opaque-keeps-this-layers-entries", ["d d", "f d/-first=f", "f d/.wh..wh..opq="],
     ["d d", "f d/-first=f", "f a=a", "l s->d", "d e", "f e/in=3"]),
    ("file-becomes-dir", ["d a", "f a/b=b"],
     ["d d", "f d/x=1", "f d/y=2", "d a", "f a/b=b", "l s->d", "d e", "f e/in=3"]),
    ("dir-becomes-file", ["f e=now-a-file"],
     ["d d", "f d/x=1", "f d/y=2", "f a=a", "l s->d", "f e=now-a-file"]),
    ("symlink-replaced-not-followed", ["d s", "f s/f=in-s"],
     ["d d", "f d/x=1", "f d/y=2", "f a=a", "d s", "f s/f=in-s", "d e", "f e/in=3"]),
    ("hardlink-to-earlier-layer", ["h e/h->a"],
     ["d d", "f d/x=1", "f d/y=2", "f a=a", "l s->d", "d e", "f e/in=3", "f e/h=a"]),
    ("dir-kept-when-dir", ["d d", "f d/z=3"],
     ["d d", "f d/x=1", "f d/y=2", "f d/z=3", "f a=a", "l s->d", "d e", "f e/in=3"]),
]


@pytest.mark.parametrize(("entries", "tree"),
                         [pytest.param(e, t, id=n) for n, e, t in FLAT_CASES])
def test_apply_flat(tmp_path: Path, entries: list[str], tree: list[str]) -> None:
    _flat(BASE, tmp_path)
    _flat(entries, tmp_path)
    assert _tree(tmp_path) == sorted(tree)


# -- the blob itself ------------------------------------------------------------------------

def test_digest_mismatch_leaves_nothing(tmp_path: Path) -> None:
    blob, _ = _layer(["f f=1"])
    wrong = "sha256:" + "0" * 64
    with pytest.raises(LayerError) as caught:
        unpack_layer(blob, tmp_path, media_type=GZIP_LAYER, expected_digest=wrong)
    assert str(caught.value).startswith(f"layer blob digest mismatch ({GZIP_LAYER}): "
                                        f"expected {wrong}, got sha256:")
    assert list(tmp_path.iterdir()) == []


BAD_BLOBS: list[tuple[str, bytes, str]] = [
    ("truncated-gzip", gzip.compress(_tar(["f f=" + "x" * 5000]))[:-40],
     f"corrupt layer ({GZIP_LAYER}): "),
    ("garbage", b"this is not a tar" * 64, f"corrupt layer ({GZIP_LAYER}): "),
    ("empty", b"", f"corrupt layer ({GZIP_LAYER}): "),
    ("gzip-garbage-tail", gzip.compress(_tar(["f f=1"])) + b"junk",
     f"corrupt layer ({GZIP_LAYER}): "),
]


@pytest.mark.parametrize(("blob", "prefix"), [pytest.param(b, p, id=n) for n, b, p in BAD_BLOBS])
def test_corrupt_blobs(tmp_path: Path, blob: bytes, prefix: str) -> None:
    with pytest.raises(LayerError) as caught:
        unpack_layer(io.BytesIO(blob), tmp_path, media_type=GZIP_LAYER, expected_digest=None)
    assert str(caught.value).startswith(prefix)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_blob_with_a_digest_reports_the_mismatch(tmp_path: Path) -> None:
    blob = gzip.compress(_tar(["f f=" + "x" * 5000]))
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    damaged = blob[:30] + bytes([blob[30] ^ 0xFF]) + blob[31:]
    with pytest.raises(LayerError, match="layer blob digest mismatch"):
        unpack_layer(io.BytesIO(damaged), tmp_path, media_type=GZIP_LAYER,
                     expected_digest=digest)
    assert list(tmp_path.iterdir()) == []


ARGUMENT_ERRORS: list[tuple[str, str, str | None, str]] = [
    ("not-a-layer", "application/vnd.oci.image.config.v1+json", None,
     "'application/vnd.oci.image.config.v1+json' is not a layer media type\n"
     "hint: only image layers (tar, tar+gzip, tar+zstd) can be unpacked"),
    ("sha512", GZIP_LAYER, "sha512:abc",
     "unsupported digest 'sha512:abc': only sha256 is supported"),
]


@pytest.mark.parametrize(("media_type", "digest", "message"),
                         [pytest.param(m, d, e, id=n) for n, m, d, e in ARGUMENT_ERRORS])
def test_argument_errors(tmp_path: Path, media_type: str, digest: str | None,
                         message: str) -> None:
    blob, _ = _layer(["f f=1"])
    with pytest.raises(LayerError) as caught:
        unpack_layer(blob, tmp_path, media_type=media_type, expected_digest=digest)
    assert str(caught.value) == message


def test_unpack_needs_an_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "there").write_text("x")
    blob, _ = _layer(["f f=1"])
    with pytest.raises(LayerError) as caught:
        unpack_layer(blob, tmp_path, media_type=GZIP_LAYER, expected_digest=None)
    assert str(caught.value) == (f"cannot unpack a layer into {tmp_path}: the directory is "
                                 "not empty\nhint: unpack into a fresh directory")
    assert [p.name for p in tmp_path.iterdir()] == ["there"]


@pytest.mark.parametrize("compress", [
    pytest.param(lambda raw: raw, id="plain"),
    pytest.param(lambda raw: gzip.compress(raw) + gzip.compress(b""), id="gzip-two-members"),
    pytest.param(lambda raw: __import__("zstandard").ZstdCompressor().compress(raw), id="zstd"),
])
def test_compression_detected_by_magic(tmp_path: Path, compress: object) -> None:
    raw = _tar(["f f=1"])
    blob = compress(raw)  # type: ignore[operator]
    digest = unpack_layer(io.BytesIO(blob), tmp_path, media_type=GZIP_LAYER,
                          expected_digest="sha256:" + hashlib.sha256(blob).hexdigest())
    assert digest == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert _tree(tmp_path) == ["f f=1"]
