"""workers/_filecopy.py: a whole file copied through descriptors, owner, mode and times
set on the copy, and sendfile finishing what copy_file_range refuses or leaves short."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

import dockyard.workers._filecopy as filecopy
from dockyard.workers._filecopy import copy_new_file

DATA = os.urandom(3 * 1024 * 1024 + 17)


def _source(tmp_path: Path) -> Path:
    source = tmp_path / "source"
    source.write_bytes(DATA)
    os.utime(source, ns=(1_000_000_001, 1_600_000_000_123_456_789))
    return source


def test_a_copy_has_the_bytes_owner_mode_and_times(tmp_path: Path) -> None:
    source = _source(tmp_path)
    target = tmp_path / "target"
    copy_new_file(source, target, mode=0o104755, owner=(1234, 5678))
    info = os.lstat(target)
    assert target.read_bytes() == DATA
    assert (info.st_uid, info.st_gid) == (1234, 5678)
    assert info.st_mode & 0o7777 == 0o4755  # setuid set after the chown, so it stays
    assert info.st_mtime_ns == 1_600_000_000_123_456_789


def test_times_are_left_alone_when_not_asked(tmp_path: Path) -> None:
    target = tmp_path / "target"
    copy_new_file(_source(tmp_path), target, mode=0o644, times=False)
    assert os.lstat(target).st_mtime_ns != 1_600_000_000_123_456_789


def test_an_existing_target_is_an_error_and_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("mine")
    with pytest.raises(FileExistsError):
        copy_new_file(_source(tmp_path), target, mode=0o644)
    assert target.read_text() == "mine"


def test_a_symlinked_source_is_refused(tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to(_source(tmp_path))
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        copy_new_file(tmp_path / "link", tmp_path / "target", mode=0o644)


def test_sendfile_copies_when_copy_file_range_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(*args: object) -> int:
        raise OSError(errno.EXDEV, "cross-device")

    monkeypatch.setattr(filecopy.os, "copy_file_range", refused)
    copy_new_file(_source(tmp_path), tmp_path / "target", mode=0o644)
    assert (tmp_path / "target").read_bytes() == DATA


def test_sendfile_finishes_what_copy_file_range_left_short(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.copy_file_range
    calls: list[int] = []

    def short(reader: int, writer: int, count: int, offset: int) -> int:
        calls.append(count)
        return real(reader, writer, 1024 * 1024, offset) if len(calls) == 1 else 0

    monkeypatch.setattr(filecopy.os, "copy_file_range", short)
    copy_new_file(_source(tmp_path), tmp_path / "target", mode=0o644)
    assert (tmp_path / "target").read_bytes() == DATA
    assert len(calls) == 2
