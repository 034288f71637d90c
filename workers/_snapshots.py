"""Filesystem states as overlayfs snapshots under ``<root>/snapshots`` (docs/engine.md).

- ``layers/<diffid-hex>/``: one unpacked layer in overlay form, published atomically (unpack
  into ``staging_dir()``, then ``publish``: a rename on the same filesystem).
- ``work/<id>/``: one mount: ``merged`` (what a RUN sees), ``upper`` and ``work`` (writable
  overlays), ``l/<n>`` (short symlinks to the lower dirs) and ``empty`` (no layers).

A result stays a snapshot: the upper dir of a writable mount whose diff became layer
``diff_id`` (``keep_upper``) is moved to ``layers/<diffid-hex>/`` when the mount is torn
down, and a tree staged under ``<root>/tmp`` is published the same way: the layer is never
unpacked from its blob on the machine that made it.  An upper dir is already in overlay
form (whiteouts, opaque xattrs), the form ``unpack_layer`` gives a blob; the tar of either
is the same (``_tar_write`` reads only what a layer holds: names, types, modes, owners,
seconds of mtime, ``security.capability``).

A mount's lowerdir option is one page (4 KiB) at most, and overlay stacks up to 500 lowers:
the option names ``l/0:l/1:...`` relative to the work dir (mount(8) runs with that cwd), so
a few hundred layers of any path length fit.  ``mount()`` always unmounts and removes its
work dir, even when the task is cancelled: set-up and clean-up run to completion in a
thread, shielded, and the cancellation is re-raised afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from dockyard.scheduler._errors import LayerError

__all__ = ["Mounted", "SnapshotStatistics", "SnapshotStore", "finish_shielded", "unmount",
           "wait_shielded"]

T = TypeVar("T")

_DIFF_ID = re.compile(r"sha256:([0-9a-f]{64})")
_MNT_DETACH = 2
_MAX_LOWERS = 500  # the kernel's OVL_MAX_STACK
_OVERLAY_PARAMS = Path("/sys/module/overlay/parameters")
#: Off so a diff of the upper dir is complete: no shared inode index, no redirect xattrs
#: for renamed directories, no metadata-only copy-ups.
_OFF_FEATURES = ("index", "redirect_dir", "metacopy")


@dataclass(frozen=True, slots=True)
class Mounted:
    """A mounted state: ``path`` is its root; ``upper`` the new diff when writable."""

    path: Path
    upper: Path | None


@dataclass(frozen=True, slots=True)
class SnapshotStatistics:
    layers: int          # unpacked layers in the store
    active_mounts: int   # mounts now in use (set up, not yet cleaned)
    mounts_total: int    # mounts set up since this store was created


@dataclass(frozen=True, slots=True)
class _Handle:
    """What teardown undoes: ``work`` is removed; ``target`` unmounted when ``mounted``."""

    work: Path
    target: Path
    mounted: bool
    state: Mounted


class SnapshotStore:
    """Layer directories by diff_id and overlay mounts over them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / "snapshots"
        self._layers = self.dir / "layers"
        self._work = self.dir / "work"
        self._tmp = root / "tmp"
        # Work dirs of mounts in use, by id; a key is removed once its teardown finished.
        self._active: dict[str, _Handle] = {}
        # Mounts set up since creation (only grows).
        self._mounts_total = 0
        # Work dir name -> the diff_id its upper dir becomes at teardown (``keep_upper``).
        self._keep: dict[str, str] = {}
        for path in (self._layers, self._work, self._tmp):
            path.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        stats = self.statistics()
        return (f"<SnapshotStore {self.dir} layers={stats.layers} "
                f"active={stats.active_mounts} total={stats.mounts_total}>")

    def statistics(self) -> SnapshotStatistics:
        layers = sum(1 for _ in self._layers.iterdir())
        return SnapshotStatistics(layers=layers, active_mounts=len(self._active),
                                  mounts_total=self._mounts_total)

    # --- layers --------------------------------------------------------------------------

    def layer_dir(self, diff_id: str) -> Path:
        """The directory of layer ``diff_id`` (``sha256:<hex>``), whether or not it exists."""
        match = _DIFF_ID.fullmatch(diff_id)
        if match is None:
            raise LayerError(f"invalid layer diff_id {diff_id!r}",
                             hint="a diff_id is 'sha256:' and 64 lowercase hex digits")
        return self._layers / match.group(1)

    def has_layer(self, diff_id: str) -> bool:
        return self.layer_dir(diff_id).is_dir()

    def staging_dir(self) -> Path:
        """A fresh empty directory on the store's filesystem to unpack a layer into."""
        return Path(tempfile.mkdtemp(prefix="layer-", dir=self._tmp))

    def publish(self, diff_id: str, unpacked: Path) -> Path:
        """Move ``unpacked`` into place as layer ``diff_id`` in one rename.  When the layer
        is already there (another unpack won), ``unpacked`` is removed and the existing
        directory returned: readers never see a half-written layer."""
        target = self.layer_dir(diff_id)
        try:
            unpacked.rename(target)
        except OSError as err:
            if err.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not target.is_dir():
                raise LayerError(f"cannot publish layer {diff_id} from {unpacked} to "
                                 f"{target}: {err.strerror}",
                                 hint=f"the staging dir must be under {self._tmp}") from err
            shutil.rmtree(unpacked, ignore_errors=True)
        return target

    def keep_upper(self, state: Mounted, diff_id: str) -> None:
        """At teardown, move the upper dir of ``state`` (a writable mount of this store
        now in use, its diff stored as layer ``diff_id``) into place as that layer, if the
        store lacks it, instead of removing it.  Nothing may write to the mount after."""
        if state.upper is None:
            raise LayerError(f"{state.path} is a read-only mount: it has no diff to keep")
        work = state.upper.parent
        if self._active.get(work.name) is None or work.parent != self._work:
            raise LayerError(f"{state.path} is not a mount of {self.dir} in use")
        self.layer_dir(diff_id)  # checked now, not at teardown
        self._keep[work.name] = diff_id

    # --- mounts --------------------------------------------------------------------------

    @asynccontextmanager
    async def mount(self, lower_dirs: Sequence[Path], writable: bool = False
                    ) -> AsyncIterator[Mounted]:
        """Mount ``lower_dirs`` (base first) as one tree; writable adds a fresh upper dir.

        Always unmounted and removed on exit, also on error and on cancellation."""
        lowers = _topmost_occurrences(lower_dirs)
        if len(lowers) > _MAX_LOWERS:
            raise LayerError(f"{len(lowers)} layers exceed overlayfs' limit of "
                             f"{_MAX_LOWERS}", hint="squash the image's layers")
        handle = await self._set_up(lowers, writable)
        try:
            yield handle.state
        finally:
            keep = self._keep.pop(handle.work.name, None)
            await finish_shielded(asyncio.to_thread(
                _tear_down, handle, None if keep is None else self.layer_dir(keep)))
            self._active.pop(handle.work.name, None)

    async def _set_up(self, lowers: tuple[Path, ...], writable: bool) -> _Handle:
        work = Path(tempfile.mkdtemp(dir=self._work))
        task = asyncio.ensure_future(asyncio.to_thread(_set_up, work, lowers, writable))
        cancelled = await wait_shielded(task)
        if cancelled is not None:
            if not task.cancelled() and task.exception() is None:
                await finish_shielded(asyncio.to_thread(_tear_down, task.result()))
            raise cancelled
        handle = task.result()
        self._active[work.name] = handle
        self._mounts_total += 1
        return handle

    def cleanup_stale(self) -> int:
        """Unmount and remove work dirs left by a process that died; returns how many.

        Only for start-up: it also removes the mounts of live stores over the same root."""
        count = 0
        for work in list(self._work.iterdir()):
            if work.name in self._active:
                continue
            unmount(work / "merged", missing_ok=True)
            shutil.rmtree(work, ignore_errors=True)
            count += 1
        return count


async def wait_shielded(task: asyncio.Future[T]) -> asyncio.CancelledError | None:
    """Wait until ``task`` is done, whatever cancellations arrive meanwhile; return the
    first of them (the caller cleans up, then re-raises it), or None."""
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError as err:
            cancelled = cancelled or err
        except Exception:  # noqa: S110 -- the task's own error: read by the caller
            pass
    return cancelled


async def finish_shielded(awaitable: Awaitable[T]) -> T:
    """Run ``awaitable`` to its end even if cancelled meanwhile; then re-raise the
    cancellation, else return its result."""
    task = asyncio.ensure_future(awaitable)
    cancelled = await wait_shielded(task)
    if cancelled is not None:
        raise cancelled
    return task.result()


def _topmost_occurrences(lower_dirs: Sequence[Path]) -> tuple[Path, ...]:
    """Drop all but the topmost occurrence of a repeated layer (overlayfs refuses the same
    lower twice).  Same result: the top copy holds every entry of the lower one."""
    seen: set[Path] = set()
    kept: list[Path] = []
    for lower in reversed(lower_dirs):
        key = lower.resolve()
        if key not in seen:
            seen.add(key)
            kept.append(lower)
    return tuple(reversed(kept))


# --- the blocking part, run in a thread ------------------------------------------------


def _set_up(work: Path, lowers: tuple[Path, ...], writable: bool) -> _Handle:
    target = work / "merged"
    try:
        return _mount_state(work, target, lowers, writable)
    except BaseException:
        _tear_down(_Handle(work=work, target=target, mounted=True, state=Mounted(target, None)))
        raise


def _mount_state(work: Path, target: Path, lowers: tuple[Path, ...],
                 writable: bool) -> _Handle:
    if not lowers:
        (work / "empty").mkdir()
        lowers = (work / "empty",)
        if not writable:
            return _Handle(work, target, False, Mounted(work / "empty", None))
    target.mkdir()
    if not writable and len(lowers) == 1:
        _run_mount(["--bind", "-o", "ro", str(lowers[0]), str(target)], work)
        return _Handle(work, target, True, Mounted(target, None))
    links = work / "l"
    links.mkdir()
    for index, lower in enumerate(reversed(lowers)):  # overlay wants the top layer first
        (links / str(index)).symlink_to(lower.resolve())
    option = "lowerdir=" + ":".join(f"l/{i}" for i in range(len(lowers)))
    upper = None
    if writable:
        upper = work / "upper"
        upper.mkdir()
        (work / "work").mkdir()
        option += ",upperdir=upper,workdir=work"
    _run_mount(["-t", "overlay", "overlay", "-o", option + _feature_options(),
                str(target)], work)
    return _Handle(work, target, True, Mounted(target, upper))


def _feature_options() -> str:
    return "".join(f",{name}=off" for name in _OFF_FEATURES
                   if (_OVERLAY_PARAMS / name).exists())


def _run_mount(args: list[str], cwd: Path) -> None:
    try:
        done = subprocess.run(["mount", *args], cwd=cwd, capture_output=True, text=True,
                              check=False)
    except OSError as err:
        raise LayerError(f"cannot run mount(8) for {cwd}: {err.strerror}",
                         hint="install util-linux's mount") from err
    if done.returncode != 0:
        raise LayerError(f"mount {' '.join(args)} failed in {cwd}: {done.stderr.strip()}",
                         hint="overlayfs mounts need root and a kernel with overlay")


def _tear_down(handle: _Handle, keep: Path | None = None) -> None:
    """Unmount and remove ``handle``'s work dir; its upper dir first becomes ``keep`` (a
    layer dir) when given, the store lacks it, and the overlay came off cleanly (after a
    lazy detach a process may still write through it)."""
    clean = unmount(handle.target, missing_ok=True) if handle.mounted else True
    upper = handle.state.upper
    if keep is not None and upper is not None and clean and not keep.exists():
        # another build may have published it first: then it is removed with the rest
        with contextlib.suppress(OSError):
            upper.rename(keep)
    shutil.rmtree(handle.work, ignore_errors=True)


_libc = ctypes.CDLL(None, use_errno=True)


def unmount(target: Path, *, missing_ok: bool) -> bool:
    """Unmount ``target``: retry while busy, then detach lazily; not mounted is fine.
    False when it had to be detached (it may stay in use until its last user ends)."""
    path = os.fsencode(target)
    for attempt in range(20):
        if _libc.umount2(path, 0) == 0:
            return True
        code = ctypes.get_errno()
        if code in (errno.EINVAL, errno.ENOENT) and missing_ok:
            return True
        if code != errno.EBUSY:
            raise LayerError(f"cannot unmount {target}: {os.strerror(code)}")
        time.sleep(0.01 * (attempt + 1))
    if _libc.umount2(path, _MNT_DETACH) != 0:
        code = ctypes.get_errno()
        raise LayerError(f"cannot unmount {target}: {os.strerror(code)}",
                         hint="a process still uses the mount; find it with fuser -m")
    return False
