"""The worker's store of context contents (workers/_context_store.py) and the manifest's
wire form (workers/_context_manifest.py): contents verified on write and published whole;
malformed manifests refused with the reason."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

import msgpack
import pytest

from dockyard.scheduler._errors import CacheError, SolveError
from dockyard.workers._context_manifest import ContextManifest, ManifestEntry, build_manifest
from dockyard.workers._context_store import ContextStore


def _hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- the store ------------------------------------------------------------------------------


def test_add_keeps_a_content_by_its_digest(tmp_path: Path) -> None:
    store = ContextStore(tmp_path)
    digest = _hex(b"hello world")
    assert store.missing([digest, digest]) == {digest}
    path = store.add(digest, [b"hello ", b"world"], "greeting.txt")
    assert path == tmp_path / "contexts" / "sha256" / digest
    assert path.read_bytes() == b"hello world"
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert store.missing([digest]) == set() and store.has(digest)
    assert store.usage() == 11
    assert list(store.tmp.iterdir()) == []


def test_a_wrong_content_is_refused_naming_the_path_and_not_kept(tmp_path: Path) -> None:
    store = ContextStore(tmp_path)
    digest = _hex(b"expected")
    with pytest.raises(SolveError) as caught:
        store.add(digest, [b"something else"], "src/main.c")
    assert caught.value.message.startswith(
        "the build context's 'src/main.c' changed on the client during the build")
    assert digest in caught.value.message
    assert store.missing([digest]) == {digest}
    assert list(store.tmp.iterdir()) == []


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    store = ContextStore(tmp_path)

    def chunks() -> Any:
        yield b"half"
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        store.add(_hex(b"half and more"), chunks())
    assert list(store.tmp.iterdir()) == [] and store.usage() == 0


def test_a_second_writer_of_one_digest_publishes_the_same_bytes(tmp_path: Path) -> None:
    store = ContextStore(tmp_path)
    digest = _hex(b"same")
    with store.pending(digest) as first, store.pending(digest) as second:
        first.write(b"same")
        second.write(b"same")
        assert not store.has(digest)  # nothing visible before a publish
        first.publish()
        second.publish()
    assert store.path(digest).read_bytes() == b"same"
    assert [p.name for p in store.contents.iterdir()] == [digest]


@pytest.mark.parametrize("digest", ["", "../../etc/passwd", "sha256:" + "0" * 64, "A" * 64,
                                    "0" * 63])
def test_only_hex_digests_name_contents(tmp_path: Path, digest: str) -> None:
    with pytest.raises(CacheError, match="is not a sha256 hex digest"):
        ContextStore(tmp_path).path(digest)


def test_contents_persist_across_stores(tmp_path: Path) -> None:
    digest = _hex(b"kept")
    ContextStore(tmp_path).add(digest, [b"kept"])
    assert ContextStore(tmp_path).missing([digest, _hex(b"new")]) == {_hex(b"new")}


# --- the manifest's wire form -------------------------------------------------------------


def test_build_manifest_lists_the_walk_with_times_and_digests(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"abc")
    (tmp_path / "l").symlink_to("d/f")
    (tmp_path / "skip").write_text("x")
    os.utime(tmp_path / "d" / "f", ns=(1, 1_500_000_000_123_456_789))
    manifest = build_manifest(tmp_path, ["skip"])
    info = {p: os.lstat(tmp_path / p) for p in ("d", "d/f", "l")}
    assert manifest == ContextManifest((
        ManifestEntry("d", info["d"].st_mode, 0, None, info["d"].st_mtime_ns, None),
        ManifestEntry("d/f", info["d/f"].st_mode, 3, None, 1_500_000_000_123_456_789,
                      _hex(b"abc")),
        ManifestEntry("l", info["l"].st_mode, 0, "d/f", info["l"].st_mtime_ns, None),
    ), ("skip",))


def test_the_wire_form_round_trips_names_that_are_not_utf8(tmp_path: Path) -> None:
    name = os.fsdecode(b"caf\xe9")
    (tmp_path / name).write_text("x")
    (tmp_path / "link").symlink_to(name)
    (tmp_path / "ok-é").write_text("y")
    manifest = build_manifest(tmp_path, [])
    wire = msgpack.packb(manifest.to_wire())
    assert ContextManifest.from_wire(msgpack.unpackb(wire)) == manifest


REG, DIR, LNK = stat.S_IFREG | 0o644, stat.S_IFDIR | 0o755, stat.S_IFLNK | 0o777
GOOD = "a" * 64


def _wire(*entries: list[Any], **extra: Any) -> dict[str, Any]:
    return {"v": 1, "patterns": [], "entries": list(entries)} | extra


# (data, what the error says)
MALFORMED: list[tuple[Any, str]] = [
    ([], "a list, not a map"),
    ({"v": 2, "patterns": [], "entries": []}, "version 2 (this dockyard reads 1)"),
    ({"patterns": [], "entries": []}, "version None"),
    (_wire(patterns=["ok", 3]), "'patterns' is not a list of strings"),
    (_wire(entries={"a": 1}), "'entries' is not a list"),
    (_wire(["f", REG, 1, None, 0]), "entry 0 is not a list of 6 fields"),
    (_wire(["/etc/passwd", REG, 1, None, 0, GOOD]), "entry 0 has the path '/etc/passwd'"),
    (_wire(["../x", REG, 1, None, 0, GOOD]), "entry 0 has the path '../x'"),
    (_wire(["a//b", REG, 1, None, 0, GOOD]), "entry 0 has the path 'a//b'"),
    (_wire(["./a", REG, 1, None, 0, GOOD]), "entry 0 has the path './a'"),
    (_wire(["", DIR, 0, None, 0, None]), "entry 0 has the path ''"),
    (_wire(["a\0b", REG, 1, None, 0, GOOD]), "entry 0 has the path 'a\\x00b'"),
    (_wire([7, REG, 1, None, 0, GOOD]), "entry 0 has the path 7"),
    (_wire(["f", "644", 1, None, 0, GOOD]), "entry 0 ('f') has the mode '644'"),
    (_wire(["f", REG, -1, None, 0, GOOD]), "entry 0 ('f') has the size -1"),
    (_wire(["f", REG, True, None, 0, GOOD]), "entry 0 ('f') has the size True"),
    (_wire(["f", REG, 1, None, 1.5, GOOD]), "entry 0 ('f') has the mtime_ns 1.5"),
    (_wire(["f", REG, 1, None, 0, None]), "entry 0 ('f') has the sha256 None"),
    (_wire(["f", REG, 1, None, 0, "sha256:" + GOOD]), "has the sha256 'sha256:aaaa"),
    (_wire(["f", REG, 1, None, 0, "../" + GOOD[3:]]), "has the sha256 '../aaa"),
    (_wire(["d", DIR, 0, None, 0, GOOD]), "entry 0 ('d') has the sha256 'aaaa"),
    (_wire(["d", DIR, 4, None, 0, None]), "is not a regular file but has the size 4"),
    (_wire(["l", LNK, 0, None, 0, None]), "entry 0 ('l') has the link target None"),
    (_wire(["f", REG, 1, "x", 0, GOOD]), "entry 0 ('f') has the link target 'x'"),
    (_wire(["l", LNK, 0, 5, 0, None]), "entry 0 ('l') has the link target 5"),
    (_wire(["a/f", REG, 1, None, 0, GOOD]), "entry 0 ('a/f') is not under a directory "
                                            "listed before it"),
    (_wire(["a", LNK, 0, "/etc", 0, None], ["a/passwd", REG, 1, None, 0, GOOD]),
     "entry 1 ('a/passwd') is not under a directory listed before it"),
    (_wire(["a/f", REG, 1, None, 0, GOOD], ["a", DIR, 0, None, 0, None]),
     "entry 0 ('a/f') is not under a directory listed before it"),
    (_wire(["f", REG, 1, None, 0, GOOD], ["f", REG, 1, None, 0, GOOD]),
     "entry 1 repeats the path 'f'"),
]


@pytest.mark.parametrize(("data", "says"), MALFORMED)
def test_malformed_manifests_are_refused(data: Any, says: str) -> None:
    with pytest.raises(SolveError) as caught:
        ContextManifest.from_wire(data)
    assert caught.value.message.startswith("malformed build context manifest: ")
    assert says in caught.value.message
    assert caught.value.hint


def test_a_good_manifest_is_read() -> None:
    data = _wire(["a", DIR, 0, None, 5, None], ["a/f", REG, 3, None, 6, GOOD],
                 ["a/l", LNK, 0, b"caf\xe9", 7, None])
    manifest = ContextManifest.from_wire(data)
    assert [e.path for e in manifest.entries] == ["a", "a/f", "a/l"]
    assert manifest.entries[2].linkname == os.fsdecode(b"caf\xe9")
    assert manifest.digests() == {GOOD}


def test_many_digests_are_answered_from_one_listing(tmp_path: Path) -> None:
    store = ContextStore(tmp_path)
    kept = [_hex(b"kept %d" % n) for n in range(300)]
    for n, digest in enumerate(kept):
        store.add(digest, [b"kept %d" % n])
    absent = [_hex(b"absent %d" % n) for n in range(300)]
    assert store.missing(kept + absent) == set(absent)  # past the listing threshold
    assert store.missing(kept[:10] + absent[:10]) == set(absent[:10])  # one stat each
    with pytest.raises(CacheError, match="is not a sha256 hex digest"):
        store.missing([*absent, "not-a-digest"])
