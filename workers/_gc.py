"""A worker's background garbage collector: its store kept within its policies.

The store of a root (docs/engine.md) holds cache records and layer blobs (``cache/``,
the ``LocalBackend``), unpacked layers (``snapshots/layers/<diff_id hex>``), cache mounts
(``cachemounts/<id>``) and context contents (``contexts/sha256/<hex>``).  ``GcLoop`` runs
``collect`` in a thread every ``interval`` seconds and soon after each build
(``kick``); ``collect`` applies each policy (workers/_gc_policy.py) in order to what the
ones before left:

1. records and blobs, least recently used first, through the backend's own prune
   (``LocalBackend.prune_blocking``: decided and deleted under the store's exclusive lock,
   so no record is put meanwhile); a record goes with the blobs no remaining record names,
   and the unpacked layers of those blobs count with them;
2. unpacked layers no remaining record names;
3. cache mounts (``cachemount``), least recently used first;
4. context contents (``context``), least recently used first.

It stops as soon as the store is within the policy's keep-storage.  What it never
removes:

- what a running build holds (``Leases``): the worker actor leases, under the build's id,
  the records a build looked up or put and the layers (blobs and unpacked) its steps read
  and made, until the build's session closes -- as BuildKit holds a build's refs with a
  lease; the check and the removal happen under the leases' lock;
- a cache mount a RUN has mounted: the RUN holds an flock on its directory
  (workers/_ops_exec.py); the collector takes the directory only with an exclusive flock
  of its own, under the cache-mount folder's lock that creators take;
- context contents while any build is open on the worker (a build reads them as it
  goes);
- anything used (for a directory: changed) in the last ``grace`` seconds: a layer being
  written before its record exists, a record not yet leased.

Every run is counted (workers/_gc_stats.py ``gc_statistics``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dockyard.cache_backends._local import LocalBackend
from dockyard.cache_backends._protocol import PruneEntry
from dockyard.cache_backends._rules import decode_record
from dockyard.scheduler._errors import DockyardError

from ._gc_policy import GcPolicy, GcSettings
from ._gc_stats import count_failure, count_run
from ._janitor import entry_size

__all__ = ["OPEN_BUILD", "POLICY_FILE", "GcLoop", "Leases", "StoreUsage", "collect", "measure",
           "read_policy_file", "write_policy_file"]

_log = logging.getLogger(__name__)

#: Where a worker writes the settings it runs with (``dockyard du`` shows them).
POLICY_FILE = Path("run") / "gc-policy.json"
_CACHE_KINDS = frozenset({"image", "exec", "context"})
_MIN_GAP = 5.0  # seconds between two runs at least (or the interval, when shorter)
#: ``Leases.guard``'s name for "some build is open here".
OPEN_BUILD = "open-build"


class Leases:
    """What running builds hold, by build id (see the module docstring).  Thread-safe:
    the actor's event loop adds and releases, the collector's thread reads under
    ``guard``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # build id -> the names (record keys, blob digests, diff_ids) it holds (counts > 0)
        self._held: dict[str, Counter[str]] = {}

    def add(self, owner: str, names: Iterable[str]) -> None:
        with self._lock:
            self._held.setdefault(owner, Counter()).update(names)

    def open(self, owner: str) -> None:
        """Build ``owner`` is open here (it holds context contents until ``release``)."""
        self.add(owner, ())

    def release(self, owner: str) -> None:
        with self._lock:
            self._held.pop(owner, None)

    def retain(self, owners: Iterable[str]) -> None:
        """Release every build but ``owners`` (the builds still open)."""
        keep = set(owners)
        with self._lock:
            for owner in [owner for owner in self._held if owner not in keep]:
                del self._held[owner]

    @contextlib.contextmanager
    def guard(self) -> Iterator[Callable[[str], bool]]:
        """The leases frozen while the block runs: yields ``holds(name)`` (``OPEN_BUILD``:
        whether any build is open)."""
        with self._lock:
            yield lambda name: (bool(self._held) if name == OPEN_BUILD else
                                any(name in names for names in self._held.values()))

    @property
    def builds(self) -> int:
        with self._lock:
            return len(self._held)

    def statistics(self) -> dict[str, int]:
        with self._lock:
            return {"builds": len(self._held),
                    "names": sum(len(names) for names in self._held.values())}

    def __repr__(self) -> str:
        stats = self.statistics()
        return f"<Leases builds={stats['builds']} names={stats['names']}>"


# --- what the store holds ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Record:
    key: str
    kind: str  # "" when the record does not say
    layers: tuple[tuple[str, str], ...]  # (digest, diff_id)


@dataclass(slots=True)
class StoreUsage:
    """Bytes of a root's store by part (a measure, not a promise: builds keep writing)."""

    cache: int = 0  # blobs and records
    layers: dict[str, int] = field(default_factory=dict)  # unpacked: diff_id -> bytes
    mounts: int = 0
    contexts: int = 0

    @property
    def total(self) -> int:
        return self.cache + sum(self.layers.values()) + self.mounts + self.contexts


def _entries(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as found:
            return list(found)
    except FileNotFoundError:
        return []


def _files_size(directory: Path) -> int:
    total = 0
    for entry in _entries(directory):
        with contextlib.suppress(OSError):
            total += entry.stat(follow_symlinks=False).st_size
    return total


class _Sizes:
    """Unpacked layers' sizes, remembered (a published layer never changes)."""

    def __init__(self) -> None:
        self._known: dict[str, int] = {}  # diff_id -> bytes

    def of(self, path: Path) -> int:
        diff_id = f"sha256:{path.name}"
        if diff_id not in self._known:
            self._known[diff_id] = entry_size(path)
        return self._known[diff_id]

    def forget(self, diff_id: str) -> None:
        self._known.pop(diff_id, None)


def measure(root: Path, sizes: _Sizes | None = None) -> StoreUsage:
    """The store's bytes by part."""
    sizes = sizes or _Sizes()
    cache = root / "cache"
    layers = {f"sha256:{e.name}": sizes.of(Path(e.path))
              for e in _entries(root / "snapshots" / "layers") if e.is_dir()}
    mounts = sum(entry_size(Path(e.path)) for e in _entries(root / "cachemounts")
                 if e.is_dir(follow_symlinks=False))
    return StoreUsage(cache=_files_size(cache / "blobs" / "sha256")
                      + _files_size(cache / "records"), layers=layers, mounts=mounts,
                      contexts=_files_size(root / "contexts" / "sha256"))


def _records(root: Path) -> list[_Record]:
    found = []
    for entry in _entries(root / "cache" / "records"):
        try:
            record = decode_record(Path(entry.path).read_bytes())
        except OSError:
            continue
        if record is not None:
            found.append(_Record(record.key, str(record.meta.get("kind", "")), tuple(
                (layer.digest, layer.diff_id) for layer in record.result.layers)))
    return found


# --- one run -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Run:
    """One collection over ``root``: what it removed, by kind."""

    root: Path
    backend: LocalBackend
    leases: Leases
    grace: float
    sizes: _Sizes
    now: float
    removed: dict[str, list[int]] = field(default_factory=dict)  # kind -> [items, bytes]
    _usage: StoreUsage | None = None  # the last measure; None once something was removed

    def count(self, kind: str, size: int) -> None:
        self._usage = None
        counts = self.removed.setdefault(kind or "exec", [0, 0])
        counts[0] += 1
        counts[1] += size

    def usage(self) -> StoreUsage:
        """The store's usage, measured again only after something was removed."""
        if self._usage is None:
            self._usage = measure(self.root, self.sizes)
        return self._usage

    def apply(self, policy: GcPolicy) -> None:
        bound = policy.bound(self.root)
        older = max(policy.keep_duration or 0.0, self.grace)
        if _within(self.usage(), bound):
            return
        if policy.kinds & _CACHE_KINDS:
            self._cache(policy, bound, older, self.usage())
        if "cachemount" in policy.kinds and not _within(self.usage(), bound):
            self._mounts(self.usage(), bound, older)
        if "context" in policy.kinds and not _within(self.usage(), bound):
            self._contexts(self.usage(), bound, older)

    # -- 1 and 2: records, blobs and unpacked layers --

    def _cache(self, policy: GcPolicy, bound: int | None, older: float,
               usage: StoreUsage) -> None:
        records = _records(self.root)
        kinds = {record.key: record.kind or "exec" for record in records}
        layer_kind = {diff_id: record.kind or "exec" for record in records
                      for _, diff_id in record.layers}
        extra: dict[str, int] = {}  # blob digest -> bytes of its unpacked layer
        weighed: set[str] = set()  # diff_ids counted in ``extra`` (once each)
        for record in records:
            for digest, diff_id in record.layers:
                if diff_id in usage.layers and diff_id not in weighed:
                    weighed.add(diff_id)
                    extra.setdefault(digest, usage.layers[diff_id])
        carried = sum(extra.values())
        others = usage.total - usage.cache - carried
        keep = None if bound is None else max(0, bound - others)
        with self.leases.guard() as holds:
            report = self.backend.prune_blocking(
                keep_bytes=keep, older_than=older,
                collector=_eligible(policy, holds, extra))
        named_by: dict[str, str] = {}
        for entry in report.removed:
            if entry.blobs or entry.name in kinds:
                self.count(entry.kind or kinds.get(entry.name, "exec"), entry.size)
                named_by.update(dict.fromkeys(entry.blobs, entry.kind or "exec"))
        for entry in report.removed:
            if not (entry.blobs or entry.name in kinds):
                self.count(named_by.get(entry.name, "exec"), entry.size)
        self._layers(layer_kind, policy)

    def _layers(self, layer_kind: Mapping[str, str], policy: GcPolicy) -> None:
        named = {diff_id for record in _records(self.root) for _, diff_id in record.layers}
        for entry in _entries(self.root / "snapshots" / "layers"):
            diff_id = f"sha256:{entry.name}"
            kind = layer_kind.get(diff_id, "exec")
            if diff_id in named or kind not in policy.kinds or self._fresh(entry):
                continue
            with self.leases.guard() as holds:
                if holds(diff_id):
                    continue
                size = self.sizes.of(Path(entry.path))
                gone = self._take(Path(entry.path))
            if gone:
                self.sizes.forget(diff_id)
                self.count(kind, size)

    def _fresh(self, entry: os.DirEntry[str]) -> bool:
        """Changed in the last ``grace`` seconds (a rename into place counts)."""
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            return True
        return max(info.st_mtime, info.st_ctime) > self.now - self.grace

    def _take(self, path: Path) -> bool:
        """Rename ``path`` into prune's trash (nobody sees it half gone), then remove it."""
        trash = self.root / "tmp"
        gone = trash / f"gc-{uuid.uuid4().hex}"
        try:
            trash.mkdir(parents=True, exist_ok=True)
            os.rename(path, gone)
        except OSError as err:
            _log.warning("gc: cannot remove %s: %s", path, err.strerror or err)
            return False
        shutil.rmtree(gone, ignore_errors=True)
        return True

    # -- 3: cache mounts --

    def _mounts(self, usage: StoreUsage, bound: int | None, older: float) -> None:
        folder = self.root / "cachemounts"
        total = usage.total
        for entry in _by_age(folder, older, self.now):
            if bound is not None and total <= bound:
                return
            size = self._take_mount(folder, Path(entry.path))
            if size is not None:
                total -= size
                self.count("cachemount", size)

    def _take_mount(self, folder: Path, path: Path) -> int | None:
        """Remove the cache mount ``path`` if no RUN holds it (its size), else None."""
        with _flocked(folder) as creators, _flocked(path) as users:
            if not (creators and users):
                return None
            size = entry_size(path)
            return size if self._take(path) else None

    # -- 4: context contents --

    def _contexts(self, usage: StoreUsage, bound: int | None, older: float) -> None:
        total = usage.total
        for entry in _by_age(self.root / "contexts" / "sha256", older, self.now):
            if bound is not None and total <= bound:
                return
            with contextlib.suppress(OSError):
                size = entry.stat(follow_symlinks=False).st_size
                with self.leases.guard() as holds:
                    if holds(OPEN_BUILD):
                        return
                    os.unlink(entry.path)
                total -= size
                self.count("context", size)


def _within(usage: StoreUsage, bound: int | None) -> bool:
    return bound is not None and usage.total <= bound


def _eligible(policy: GcPolicy, holds: Callable[[str], bool],
              extra: Mapping[str, int]) -> Any:
    def collector(records: list[PruneEntry], blobs: list[PruneEntry]) -> Any:
        named = {digest for record in records for digest in record.blobs}

        def eligible(entry: PruneEntry, is_record: bool) -> bool:
            if holds(entry.name):
                return False
            if is_record:
                return (entry.kind or "exec") in policy.kinds
            return entry.name in named or "exec" in policy.kinds
        return eligible, extra
    return collector


def _by_age(directory: Path, older: float, now: float) -> list[os.DirEntry[str]]:
    """The entries of ``directory`` unused for ``older`` seconds, least recently used
    first (last use: the mtime, which a RUN mounting a cache directory sets)."""
    aged = []
    for entry in _entries(directory):
        with contextlib.suppress(OSError):
            used = entry.stat(follow_symlinks=False).st_mtime
            if used <= now - older:
                aged.append((used, entry.name, entry))
    return [entry for _, _, entry in sorted(aged, key=lambda item: item[:2])]


@contextlib.contextmanager
def _flocked(path: Path) -> Iterator[bool]:
    """An exclusive flock of ``path`` if free now (True), else False."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def collect(root: Path, settings: GcSettings, leases: Leases, *,
            backend: LocalBackend | None = None, sizes: _Sizes | None = None,
            now: Callable[[], float] = time.time) -> dict[str, tuple[int, int]]:
    """One run of every policy (blocking: call it in a thread); what it removed, by kind
    (items, bytes), also added to ``gc_statistics``."""
    run = _Run(root, backend or LocalBackend(root), leases, settings.grace,
               sizes or _Sizes(), now())
    try:
        for policy in settings.policies:
            run.apply(policy)
    except BaseException:
        count_failure()
        raise
    removed = {kind: (items, size) for kind, (items, size) in run.removed.items()}
    count_run(removed)
    return removed


# --- the loop ------------------------------------------------------------------------------


def write_policy_file(root: Path, settings: GcSettings) -> None:
    path = root / POLICY_FILE
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_suffix(f".{os.getpid()}.tmp")
        temp.write_text(json.dumps(settings.to_wire()))
        os.replace(temp, path)


def read_policy_file(root: Path) -> GcSettings | None:
    """The settings the root's worker runs with (None: no worker wrote them)."""
    try:
        return GcSettings.from_wire(json.loads((root / POLICY_FILE).read_text()))
    except (OSError, ValueError, DockyardError):
        return None


class GcLoop:
    """``collect`` every ``settings.interval`` seconds and soon after each ``kick``, in a
    thread, until ``aclose``; a failed run is logged and counted, the next one retries."""

    def __init__(self, root: Path, settings: GcSettings, leases: Leases) -> None:
        self.root = root
        self.settings = settings
        self.leases = leases
        self._kicked = asyncio.Event()  # set by ``kick``: run now
        self._task: asyncio.Task[None] | None = None  # the loop, once started
        self._sizes = _Sizes()
        self._backend: LocalBackend | None = None  # made in the first run

    def start(self) -> None:
        if self._task is None and self.settings.enabled:
            write_policy_file(self.root, self.settings)
            self._task = asyncio.get_running_loop().create_task(self._loop())

    def kick(self) -> None:
        self._kicked.set()

    async def _loop(self) -> None:
        while True:
            await self._once()
            # builds that end together start one run, not one each
            await asyncio.sleep(min(self.settings.interval, _MIN_GAP))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.interval):
                    await self._kicked.wait()
            self._kicked.clear()

    async def _once(self) -> None:
        try:
            removed = await asyncio.to_thread(self._collect)
        except (DockyardError, OSError) as err:
            _log.warning("gc of %s failed: %s", self.root, err)
            return
        if removed:
            _log.info("gc of %s removed %s", self.root, ", ".join(
                f"{kind}: {items} items, {size} bytes"
                for kind, (items, size) in sorted(removed.items())))

    def _collect(self) -> dict[str, tuple[int, int]]:
        self._backend = self._backend or LocalBackend(self.root)
        return collect(self.root, self.settings, self.leases, backend=self._backend,
                       sizes=self._sizes)

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
