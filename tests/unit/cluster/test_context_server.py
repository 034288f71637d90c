"""The client's answer to ``context.read`` (cluster/_context_server.py): ranges of the files
its manifest lists, and a clear refusal for anything else."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from dockyard.cluster._context_server import ContextServer
from dockyard.scheduler._errors import SolveError
from dockyard.workers._context_fetch import READ_BYTES
from dockyard.workers._context_manifest import build_manifest


def _server(root: Path) -> ContextServer:
    (root / "src").mkdir(parents=True)
    (root / "src" / "main.c").write_bytes(b"int main;\n")
    (root / "a.txt").write_bytes(b"0123456789")
    (root / "secret.key").write_bytes(b"s3cr3t")
    (root / "link").symlink_to("a.txt")
    (root / "empty").write_bytes(b"")
    return ContextServer(root, build_manifest(root, ["secret.key"]))


def test_it_reads_the_ranges_asked(tmp_path: Path) -> None:
    server = _server(tmp_path)
    items = [["a.txt", 0, 10], ["a.txt", 3, 4], ["src/main.c", 4, 6], ["empty", 0, 0],
             [b"a.txt", 9, 1]]
    assert server.read({"name": "context", "items": items}) == [
        b"0123456789", b"3456", b"main;\n", b"", b"9"]
    assert server.served == 21


# (items, what the refusal says)
REFUSED: list[tuple[Any, str]] = [
    ([["../etc/passwd", 0, 1]], "'../etc/passwd' is not a file of the build context"),
    ([["/etc/passwd", 0, 1]], "'/etc/passwd' is not a file"),
    ([["src/../a.txt", 0, 1]], "'src/../a.txt' is not a file"),
    ([["secret.key", 0, 1]], "'secret.key' is not a file"),
    ([["src", 0, 0]], "'src' is not a file"),
    ([["link", 0, 1]], "'link' is not a file"),
    ([["nope", 0, 1]], "'nope' is not a file"),
    ([[None, 0, 1]], "None is not a file"),
    ([["a.txt", 5, 6]], "the range 5+6 is not within 'a.txt' (10 bytes)"),
    ([["a.txt", -1, 1]], "the range -1+1"),
    ([["a.txt", 0, True]], "the range 0+True"),
    ([["a.txt", 0, "1"]], "the range 0+'1'"),
    ([["a.txt", 0]], "item 0 is not [path, offset, length]"),
    (["a.txt"], "item 0 is not [path, offset, length]"),
    ("a.txt", "'items' must be a list"),
]


@pytest.mark.parametrize(("items", "says"), REFUSED)
def test_refusals(tmp_path: Path, items: Any, says: str) -> None:
    server = _server(tmp_path)
    with pytest.raises(SolveError) as caught:
        server.read({"name": "context", "items": items})
    assert caught.value.message.startswith("refused to read the build context: ")
    assert says in caught.value.message
    assert server.served == 0


def test_too_many_items_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SolveError, match="at most 65536 ranges"):
        _server(tmp_path).read({"items": [["empty", 0, 0]] * 65_537})


def test_more_than_a_read_s_bytes_are_refused(tmp_path: Path) -> None:
    with open(tmp_path / "big", "wb") as big:
        big.truncate(READ_BYTES + 2)
    server = ContextServer(tmp_path, build_manifest(tmp_path, []))
    assert server.read({"items": [["big", 0, READ_BYTES]]}) == [bytes(READ_BYTES)]
    with pytest.raises(SolveError, match=f"{READ_BYTES + 1} bytes asked in one read "
                                         f"\\(at most {READ_BYTES}\\)"):
        server.read({"items": [["big", 0, READ_BYTES], ["big", READ_BYTES, 1]]})


def test_params_that_are_not_a_map_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SolveError, match="'items' must be a list"):
        _server(tmp_path).read([["a.txt", 0, 1]])


def _symlink_file(root: Path) -> None:
    (root / "a.txt").unlink()
    (root / "a.txt").symlink_to(root / "secret.key")


def _symlink_dir(root: Path) -> None:
    (root / "elsewhere").mkdir()
    (root / "elsewhere" / "main.c").write_bytes(b"not the context's")
    (root / "src" / "main.c").unlink()
    (root / "src").rmdir()
    (root / "src").symlink_to(root / "elsewhere")


def _fifo(root: Path) -> None:
    (root / "a.txt").unlink()
    os.mkfifo(root / "a.txt")


# (what changed since the walk, the path then read)
SWAPPED = [(_symlink_file, "a.txt"), (_symlink_dir, "src/main.c"), (_fifo, "a.txt")]


@pytest.mark.parametrize(("swap", "path"), SWAPPED)
def test_what_was_swapped_in_since_the_walk_is_refused(tmp_path: Path, swap: Any,
                                                       path: str) -> None:
    server = _server(tmp_path)
    swap(tmp_path)
    with pytest.raises(SolveError, match=f"'{path}' is no longer a regular file"):
        server.read({"items": [[path, 0, 1]]})


def test_a_file_that_shrank_gives_fewer_bytes(tmp_path: Path) -> None:
    server = _server(tmp_path)
    (tmp_path / "a.txt").write_bytes(b"0123")
    assert server.read({"items": [["a.txt", 2, 8]]}) == [b"23"]


def test_a_vanished_file_is_an_error_naming_it(tmp_path: Path) -> None:
    server = _server(tmp_path)
    (tmp_path / "a.txt").unlink()
    with pytest.raises(SolveError, match="cannot read 'a.txt' in the build context"):
        server.read({"items": [["a.txt", 0, 1]]})
