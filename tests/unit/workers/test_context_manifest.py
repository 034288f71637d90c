"""A context known by its manifest (workers/_context_source.py ``ManifestContext``) gives
byte for byte the checksums, matches, errors and materialised tree of the directory's
``LocalContext``; the manifest survives its wire form, and refuses malformed ones.

Each tree is a table row: a spec (``"d/"`` a directory, ``"f"`` a file whose content is
its own path, ``"f=text"`` a file with that content, ``"l -> target"`` a symlink,
``"x:0o4755"`` a mode for an entry made before), the ignore patterns, and what to check.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgpack
import pytest

from dockyard.cluster._context_server import MAX_ITEMS, ContextServer
from dockyard.scheduler._cachekey import Selector
from dockyard.scheduler._errors import SolveError
from dockyard.workers._context_fetch import ReadItem, ask_reader, plan_reads
from dockyard.workers._context_manifest import ContextManifest, ManifestEntry, build_manifest
from dockyard.workers._context_source import LocalContext, ManifestContext, Materialised
from dockyard.workers._context_store import ContextStore


def make_tree(root: Path, spec: Sequence[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for item in spec:
        if " -> " in item:
            name, target = item.split(" -> ")
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).symlink_to(target)
        elif ":0o" in item:
            name, mode = item.split(":")
            os.chmod(root / name, int(mode, 8))
        elif item.endswith("/"):
            (root / item).mkdir(parents=True, exist_ok=True)
        else:
            name, _, text = item.partition("=")
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(text if "=" in item else name)
    return root


class ServerReader:
    """An in-process ``ContextReader``: the client's ``ContextServer`` over msgpack, as the
    session channel carries it; counts the bytes and asks."""

    def __init__(self, server: ContextServer) -> None:
        self.server = server
        self.bytes = 0
        self.asks: list[list[ReadItem]] = []

    async def read(self, name: str, items: Sequence[ReadItem]) -> list[bytes]:
        self.asks.append(list(items))
        params = msgpack.unpackb(msgpack.packb({"name": name, "items": list(items)}))
        chunks = self.server.read(params)
        self.bytes += sum(len(chunk) for chunk in chunks)
        answer: list[bytes] = msgpack.unpackb(msgpack.packb(chunks))
        return answer


def over_the_wire(manifest: ContextManifest) -> ContextManifest:
    return ContextManifest.from_wire(msgpack.unpackb(msgpack.packb(manifest.to_wire())))


def both(root: Path, store: ContextStore, patterns: Sequence[str],
         exclude: Sequence[str] | None = None) -> tuple[LocalContext, ManifestContext]:
    """The directory's context and the context of its manifest (walked with
    ``patterns``; the op's ``exclude`` defaults to the same)."""
    exclude = patterns if exclude is None else exclude
    manifest = over_the_wire(build_manifest(root, patterns))
    return LocalContext(root, exclude), ManifestContext("context", manifest, store, exclude)


def outcome(call: Any, *args: Any) -> Any:
    try:
        return call(*args)
    except SolveError as err:
        return ("error", str(err))


# --- checksums: (name, tree, ignore patterns) ---------------------------------------------

BASIC = ["a.txt", "b.txt=", "src/", "src/main.c", "src/util/x.h", "src/util/y.h=y\n",
         "docs/readme.md", "secret.key"]
TREES: list[tuple[str, list[str], list[str]]] = [
    ("files and nested dirs", BASIC, []),
    ("ignored files and dirs", BASIC, ["secret.key", "docs"]),
    ("an exception under an excluded dir", BASIC, ["src", "!src/util/y.h"]),
    ("glob exception", BASIC, ["**", "!**/*.h"]),
    ("empty files", ["e1=", "d/e2=", "d/e3="], []),
    ("same content twice", ["one=same", "two=same", "d/three=same"], []),
    ("symlinks", BASIC + ["link -> src", "up -> ..", "abs -> /etc/passwd",
                          "dangling -> nowhere", "src/rel -> ../a.txt", "loop -> loop"], []),
    ("modes", BASIC + ["a.txt:0o4755", "b.txt:0o2750", "src/main.c:0o600",
                       "src/:0o1777", "src/util/:0o2775", "docs/readme.md:0o6711"], []),
    ("unicode names", ["é.txt", "日本/語.txt", "naïve dir/ü", "emoji-😀"], []),
    ("an empty context", [], []),
    ("everything ignored", BASIC, ["**"]),
]

SELECTORS: list[Selector] = [
    Selector("/"),
    Selector("/a.txt"),
    Selector("/src"),
    Selector("/src/util/"),
    Selector("/src/*.c", wildcard=True),
    Selector("/src/*/*.h", wildcard=True),
    Selector("/*.txt", wildcard=True),
    Selector("/nothing-*", wildcard=True),
    Selector("/missing.txt"),
    Selector("/src", include=("*.h",)),
    Selector("/src", exclude=("util",)),
    Selector("/", include=("**/*.h",), exclude=("src/util/x.h",)),
    Selector("/link"),
    Selector("/link", follow_symlinks=False),
    Selector("/link/main.c"),
    Selector("/dangling"),
    Selector("/up"),
    Selector("/loop"),
    Selector("/src/rel"),
    Selector("/src/rel", follow_symlinks=False),
    Selector("/日本/語.txt"),
    Selector("/same*", wildcard=True),
    Selector("/d"),
]


@pytest.mark.parametrize(("tree", "patterns"), [row[1:] for row in TREES],
                         ids=[row[0] for row in TREES])
def test_checksums_are_the_directory_checksums(tmp_path: Path, tree: list[str],
                                               patterns: list[str]) -> None:
    root = make_tree(tmp_path / "ctx", tree)
    local, remote = both(root, ContextStore(tmp_path / "worker"), patterns)
    assert list(remote.entries.values()) == list(local.entries.values())
    assert remote.checksum() == local.checksum()
    for selector in SELECTORS:
        assert outcome(remote.selector_checksum, selector) == \
            outcome(local.selector_checksum, selector), selector
        assert outcome(remote.match, selector) == outcome(local.match, selector), selector


def test_a_missing_path_is_the_same_error(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "ctx", BASIC)
    local, remote = both(root, ContextStore(tmp_path / "worker"), [])
    with pytest.raises(SolveError) as caught:
        remote.selector_checksum(Selector("/missing.txt"))
    assert caught.value.message == '"/missing.txt": not found'
    assert outcome(local.selector_checksum, Selector("/missing.txt")) == \
        ("error", str(caught.value))


def test_a_changed_file_changes_the_checksum_as_locally(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "ctx", BASIC)
    store = ContextStore(tmp_path / "worker")
    before = both(root, store, [])[1].checksum()
    (root / "src" / "main.c").write_text("changed")
    local, remote = both(root, store, [])
    assert remote.checksum() == local.checksum() != before


# --- the op's exclude patterns against the manifest's: (sent, asked, same as local?) -------

REFILTER: list[tuple[list[str], list[str], bool]] = [
    ([], ["docs"], True),
    (["secret.key"], ["secret.key", "src/util", "**/*.md"], True),
    (["src", "!src/util/y.h"], ["src", "!src/util/y.h", "*.txt"], True),
    (["**", "!**/*.h"], ["**", "!**/*.h", "src/util/x.h"], True),
    (["docs"], [], False),  # would include what was not sent
    (["docs"], ["docs", "!docs/readme.md"], False),  # an exception added
    (["docs", "a.txt"], ["a.txt", "docs"], False),  # not the same list first
]


@pytest.mark.parametrize(("sent", "asked", "same"), REFILTER)
def test_other_exclude_patterns_refilter_or_refuse(tmp_path: Path, sent: list[str],
                                                   asked: list[str], same: bool) -> None:
    root = make_tree(tmp_path / "ctx", BASIC + ["link -> src"])
    local, remote = both(root, ContextStore(tmp_path / "worker"), sent, asked)
    if same:
        assert list(remote.entries.values()) == list(local.entries.values())
        assert remote.checksum() == local.checksum()
        return
    with pytest.raises(SolveError, match="was sent without what the ignore patterns"):
        remote.checksum()


# --- fetching and materialising -----------------------------------------------------------


def _tree_of(dest: Path) -> dict[str, tuple[Any, ...]]:
    found: dict[str, tuple[Any, ...]] = {}
    for path in sorted(dest.rglob("*")):
        info = os.lstat(path)
        body: Any = None
        if stat.S_ISREG(info.st_mode):
            body = path.read_bytes()
        elif stat.S_ISLNK(info.st_mode):
            body = os.readlink(path)
        found[path.relative_to(dest).as_posix()] = (
            info.st_mode, info.st_uid, info.st_gid, info.st_mtime_ns, body)
    return found


def test_materialise_gives_the_directory_s_tree(tmp_path: Path) -> None:
    spec = BASIC + ["link -> src", "dangling -> nowhere", "a.txt:0o4755", "src/:0o1777",
                    "src/util/:0o2775", "é.txt", "empty="]
    root = make_tree(tmp_path / "ctx", spec)
    for index, path in enumerate(sorted(root.rglob("*"), reverse=True)):
        os.lchown(path, 1234, 5678)
        os.utime(path, ns=(1, 1_000_000_000 * (1_600_000_000 + index)),
                 follow_symlinks=False)
    local, remote = both(root, ContextStore(tmp_path / "worker"), ["secret.key"])
    reader = ServerReader(ContextServer(root, remote.manifest))
    asyncio.run(remote.ensure_local(reader))
    for context, name in ((local, "local"), (remote, "remote")):
        (tmp_path / name).mkdir()
        context.materialise(tmp_path / name)
    assert _tree_of(tmp_path / "remote") == _tree_of(tmp_path / "local")
    assert "secret.key" not in _tree_of(tmp_path / "remote")


def test_a_manifest_materialise_links_what_a_directory_materialise_wrote(
        tmp_path: Path) -> None:
    """Both kinds key an entry alike (mode, mtime, content): a manifest's tree links
    every unchanged file from a tree the directory gave, and is the same tree; nothing
    is a change to either."""
    root = make_tree(tmp_path / "ctx", BASIC + ["a.txt:0o4755"])
    local, remote = both(root, ContextStore(tmp_path / "worker"), ["secret.key"])
    asyncio.run(remote.ensure_local(ServerReader(ContextServer(root, remote.manifest))))
    (tmp_path / "local").mkdir()
    keys = local.materialise(tmp_path / "local")
    previous = Materialised((), {path: (key, tmp_path / "local") for path, key in keys.items()})
    (tmp_path / "remote").mkdir()
    remote.materialise(tmp_path / "remote", previous)
    assert _tree_of(tmp_path / "remote") == _tree_of(tmp_path / "local")
    files = [p for p in (tmp_path / "remote").rglob("*") if p.is_file()]
    assert files and all(os.lstat(p).st_nlink == 2 for p in files)
    assert {path: remote.entry_key(path) for path in remote.entries} == keys


def test_materialise_without_the_contents_is_an_error(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "ctx", ["a.txt"])
    _, remote = both(root, ContextStore(tmp_path / "worker"), [])
    (tmp_path / "out").mkdir()
    with pytest.raises(SolveError, match="'a.txt' .* is not on this worker"):
        remote.materialise(tmp_path / "out")


def test_a_rebuild_after_a_one_file_change_reads_only_that_file(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "ctx", BASIC + ["big=" + "x" * 100_000, "same=a.txt"])
    store = ContextStore(tmp_path / "worker")
    _, first = both(root, store, [])
    reader = ServerReader(ContextServer(root, first.manifest))
    assert asyncio.run(first.ensure_local(reader)) == reader.bytes
    assert reader.bytes == sum(e.size for e in first.manifest.entries) - len("a.txt")
    assert asyncio.run(first.ensure_local(reader)) == 0  # all there now
    (root / "src" / "main.c").write_text("a new main")
    _, second = both(root, store, [])
    again = ServerReader(ContextServer(root, second.manifest))
    asyncio.run(second.ensure_local(again))
    assert again.asks == [[("src/main.c", 0, len("a new main"))]]
    assert again.bytes == len("a new main")


def test_large_files_come_in_ranges_and_asks_are_bounded(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    monkeypatch.setattr("dockyard.workers._context_fetch.READ_BYTES", 100)
    monkeypatch.setattr("dockyard.workers._context_fetch.RANGE_BYTES", 40)
    monkeypatch.setattr("dockyard.cluster._context_server.READ_BYTES", 100)
    root = make_tree(tmp_path / "ctx", ["a=" + "a" * 30, "b=" + "b" * 95, "c=" + "c" * 10,
                                        "d=", "e=" + "e" * 50])
    store = ContextStore(tmp_path / "worker")
    _, remote = both(root, store, [])
    reader = ServerReader(ContextServer(root, remote.manifest))
    asyncio.run(remote.ensure_local(reader))
    assert reader.asks == [
        [("a", 0, 30), ("b", 0, 40)],
        [("b", 40, 40), ("b", 80, 15), ("c", 0, 10)],
        [("e", 0, 40), ("e", 40, 10)],  # "d" is empty: read by no ask
    ]
    assert all(sum(length for _, _, length in ask) <= 100 for ask in reader.asks)
    assert store.missing(remote.manifest.digests()) == set()


class _Changing(ServerReader):
    """The file changed on the client after the manifest was made."""

    async def read(self, name: str, items: Sequence[ReadItem]) -> list[bytes]:
        return [b"X" * length for _, _, length in items]


class _Short(ServerReader):
    async def read(self, name: str, items: Sequence[ReadItem]) -> list[bytes]:
        return [b"" for _ in items]


@pytest.mark.parametrize("reader", [_Changing, _Short])
def test_a_file_changed_on_the_client_is_named_and_not_kept(tmp_path: Path,
                                                            reader: type[ServerReader]
                                                            ) -> None:
    root = make_tree(tmp_path / "ctx", ["d/changing.txt=original"])
    store = ContextStore(tmp_path / "worker")
    _, remote = both(root, store, [])
    with pytest.raises(SolveError) as caught:
        asyncio.run(remote.ensure_local(reader(ContextServer(root, remote.manifest))))
    assert "'d/changing.txt' changed on the client during the build" in caught.value.message
    assert caught.value.hint == "build again once the files stop changing"
    assert store.missing(remote.manifest.digests()) == remote.manifest.digests()
    assert list(store.tmp.iterdir()) == []


def test_ask_reader_asks_context_read(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "ctx", ["a.txt=hello"])
    server = ContextServer(root, build_manifest(root, []))
    asked: list[tuple[str, Any]] = []

    async def ask(what: str, params: dict[str, Any]) -> Any:
        asked.append((what, params))
        return server.read(msgpack.unpackb(msgpack.packb(params)))

    chunks = asyncio.run(ask_reader(ask).read("context", [("a.txt", 1, 3)]))
    assert chunks == [b"ell"]
    assert asked == [("context.read", {"name": "context", "items": [["a.txt", 1, 3]]})]

    async def wrong(what: str, params: dict[str, Any]) -> Any:
        return {"not": "a list"}

    with pytest.raises(SolveError, match="with a dict, not a list of bytes"):
        asyncio.run(ask_reader(wrong).read("context", [("a.txt", 0, 1)]))


# --- a source path through a symlinked directory, and --parents' literal paths ---------

LINKED = ["sub/foo", "sub/bar.txt", "sub/deeper/x", "link -> sub", "abs -> /sub",
          "hop -> link/deeper", "up/in -> ../sub", "self -> self/more"]
THROUGH: list[tuple[Selector, Any]] = [
    (Selector("/link/foo"), ["sub/foo"]),
    (Selector("/abs/foo"), ["sub/foo"]),
    (Selector("/hop/x"), ["sub/deeper/x"]),
    (Selector("/up/in/deeper"), ["sub/deeper"]),
    (Selector("/link/../sub/foo"), ["sub/foo"]),
    (Selector("/link/*.txt", wildcard=True), ["sub/bar.txt"]),
    (Selector("/link/*/x", wildcard=True), ["sub/deeper/x"]),
    (Selector("/link"), ["sub"]),
    (Selector("/link", follow_symlinks=False), ["link"]),
    (Selector("/link/missing"), []),
    (Selector("/self/more/x"), ("error", '"/self/more/x": too many levels of symbolic '
                                         "links in the build context")),
]


@pytest.mark.parametrize(("selector", "expected"), THROUGH,
                         ids=[row[0].path for row in THROUGH])
def test_a_source_path_follows_symlinked_directories(tmp_path: Path, selector: Selector,
                                                     expected: Any) -> None:
    """BuildKit's testCopyThroughSymlinkContext: ``COPY link/foo`` with ``link`` a symlink
    to a directory of the context copies ``sub/foo``; the key reads what it reads."""
    root = make_tree(tmp_path / "ctx", LINKED)
    local, remote = both(root, ContextStore(tmp_path / "worker"), [])
    assert outcome(local.match, selector) == expected
    assert outcome(remote.match, selector) == expected
    if isinstance(expected, list) and len(expected) == 1:
        plain = Selector("/" + expected[0], follow_symlinks=selector.follow_symlinks)
        assert local.selector_checksum(selector) == local.selector_checksum(plain)
        assert remote.selector_checksum(selector) == local.selector_checksum(plain)


PARENTS: list[tuple[Selector, str | None]] = [
    (Selector("/", include=("sub/foo",)), None),
    (Selector("/sub", include=("deeper/x",)), None),
    (Selector("/", include=("sub/nonexistent-file",)), '"/sub/nonexistent-file": not found'),
    (Selector("/sub", include=("deeper/nope",)), '"/sub/deeper/nope": not found'),
    (Selector("/", include=("sub2*/foo",)), None),
    (Selector("/sub", include=("nope*",)), None),
]


@pytest.mark.parametrize(("selector", "error"), PARENTS,
                         ids=[str(row[0].include) for row in PARENTS])
def test_a_literal_parents_path_must_exist(tmp_path: Path, selector: Selector,
                                           error: str | None) -> None:
    """BuildKit's testCopyParentsMissingDirectory: ``COPY --parents`` of a missing path
    without a wildcard fails at key time with ``not found``; a wildcard may match nothing."""
    root = make_tree(tmp_path / "ctx", LINKED)
    local, remote = both(root, ContextStore(tmp_path / "worker"), [])
    for context in (local, remote):
        found = outcome(context.selector_checksum, selector)
        if error is None:
            assert str(found).startswith("sha256:")
        else:
            assert found[0] == "error" and found[1].startswith(error)


def _make_specials(root: Path) -> None:
    """A socket (0755), a character and a block device (0600, 0640) and a fifo (0640)."""
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(root / "sock"))
    os.chmod(root / "sock", 0o755)
    os.mknod(root / "dev", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(root / "sub" / "blk", 0o640 | stat.S_IFBLK, os.makedev(7, 0))
    os.mkfifo(root / "fifo", 0o640)


def test_sockets_and_devices_are_sent_as_empty_files_and_a_fifo_is_left_out(
        tmp_path: Path) -> None:
    """What BuildKit 20.10's client sends of such a context: the socket and both devices
    as empty regular files with their permission bits, the fifo as a fifo (which COPY
    skips); from the directory and from its manifest alike, nothing of them ever read."""
    root = make_tree(tmp_path / "ctx", ["a.txt", "sub/"])
    _make_specials(root)
    local, remote = both(root, ContextStore(tmp_path / "worker"), [])
    reader = ServerReader(ContextServer(root, remote.manifest))
    asyncio.run(remote.ensure_local(reader))
    assert reader.bytes == len("a.txt") and remote.checksum() == local.checksum()
    for context, name in ((local, "local"), (remote, "remote")):
        (tmp_path / name).mkdir()
        context.materialise(tmp_path / name)
        tree = {path: (oct(mode), body) for path, (mode, _, _, _, body)
                in _tree_of(tmp_path / name).items()}
        assert tree == {"a.txt": ("0o100644", b"a.txt"), "sub": ("0o40755", None),
                        "sub/blk": ("0o100640", b""), "dev": ("0o100600", b""),
                        "sock": ("0o100755", b""), "fifo": ("0o10640", None)}, name
    plain = make_tree(tmp_path / "plain", ["dev=", "dev:0o600"])
    as_file, _ = both(plain, ContextStore(tmp_path / "worker2"), [])
    assert remote.selector_checksum(Selector("/dev")) == \
        as_file.selector_checksum(Selector("/dev"))  # the key reads what is sent


def test_a_read_of_many_small_files_is_split_at_the_ranges_a_client_serves() -> None:
    """100,000 files of 25 bytes fit in one read's bytes, not in one read's ranges: the
    client refuses more than ``MAX_ITEMS`` (files100k failed with it)."""
    files = [ManifestEntry(f"d/f{n}", 0o100644, 25, None, 0, f"{n:064x}")
             for n in range(100_000)]
    calls = plan_reads(files)
    assert [len(call) for call in calls] == [MAX_ITEMS, 100_000 - MAX_ITEMS]
    assert [piece.entry for call in calls for piece in call] == files
