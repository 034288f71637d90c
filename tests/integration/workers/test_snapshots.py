"""SnapshotStore against the real kernel: overlayfs mounts, whiteouts, cleanup, 100+ layers."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest
from workers_helpers import aio, mounts_under

from dockyard.scheduler._errors import LayerError
from dockyard.workers._snapshots import SnapshotStore

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 and os.environ.get("CI") != "true",
    reason="overlayfs mounts need root (under CI=true this is a failure)")


def make_layer(root: Path, name: str, files: dict[str, str]) -> Path:
    layer = root / name
    for rel, text in files.items():
        (layer / rel).parent.mkdir(parents=True, exist_ok=True)
        (layer / rel).write_text(text)
    layer.mkdir(parents=True, exist_ok=True)
    return layer


@pytest.fixture
def store(tmp_path: Path) -> SnapshotStore:
    return SnapshotStore(tmp_path / "root")


def assert_clean(store: SnapshotStore) -> None:
    assert mounts_under(store.root) == []
    assert list((store.dir / "work").iterdir()) == []
    assert store.statistics().active_mounts == 0


@aio
async def test_write_lands_in_upper_and_delete_is_a_whiteout(store: SnapshotStore,
                                                             tmp_path: Path) -> None:
    base = make_layer(tmp_path, "base", {"etc/a": "a", "etc/b": "b", "d/x": "x"})
    async with store.mount([base], writable=True) as state:
        assert state.upper is not None
        (state.path / "etc" / "new").write_text("new")
        (state.path / "etc" / "a").unlink()
        (state.path / "etc" / "b").write_text("changed")
        upper = state.upper
        assert (upper / "etc" / "new").read_text() == "new"
        assert (upper / "etc" / "b").read_text() == "changed"
        whiteout = os.lstat(upper / "etc" / "a")
        assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
        assert sorted(p.name for p in (state.path / "etc").iterdir()) == ["b", "new"]
    assert (base / "etc" / "a").read_text() == "a"   # the layer itself is untouched
    assert_clean(store)


@aio
async def test_layers_stack_top_first_and_whiteouts_hide(store: SnapshotStore,
                                                         tmp_path: Path) -> None:
    lower = make_layer(tmp_path, "l1", {"f": "lower", "gone": "x", "keep": "k"})
    upper = make_layer(tmp_path, "l2", {"f": "upper"})
    os.mknod(upper / "gone", stat.S_IFCHR | 0o000, os.makedev(0, 0))
    async with store.mount([lower, upper]) as state:
        assert state.upper is None
        assert (state.path / "f").read_text() == "upper"
        assert not (state.path / "gone").exists()
        assert (state.path / "keep").read_text() == "k"
        with pytest.raises(OSError):
            (state.path / "new").write_text("no")
    assert_clean(store)


@pytest.mark.parametrize("writable", [False, True])
@aio
async def test_no_layers_is_an_empty_dir(store: SnapshotStore, writable: bool) -> None:
    async with store.mount([], writable=writable) as state:
        assert list(state.path.iterdir()) == []
        if writable:
            (state.path / "x").write_text("x")
            assert state.upper is not None and (state.upper / "x").exists()
    assert_clean(store)


@aio
async def test_one_layer_read_only_is_read_only(store: SnapshotStore, tmp_path: Path) -> None:
    base = make_layer(tmp_path, "base", {"f": "x"})
    async with store.mount([base]) as state:
        assert (state.path / "f").read_text() == "x"
        with pytest.raises(OSError):
            (state.path / "g").write_text("no")
    assert_clean(store)


@aio
async def test_150_layers_with_long_paths(store: SnapshotStore, tmp_path: Path) -> None:
    deep = tmp_path / ("long-directory-name-" * 8)
    layers = [make_layer(deep, f"layer-{i:03d}-{'x' * 40}", {f"f{i}": str(i), "top": str(i)})
              for i in range(150)]
    assert len(":".join(map(str, layers))) > 4096
    async with store.mount(layers, writable=True) as state:
        assert (state.path / "f0").read_text() == "0"
        assert (state.path / "f149").read_text() == "149"
        assert (state.path / "top").read_text() == "149"
    assert_clean(store)


@aio
async def test_cleanup_on_error(store: SnapshotStore, tmp_path: Path) -> None:
    base = make_layer(tmp_path, "base", {"f": "x"})
    with pytest.raises(RuntimeError):
        async with store.mount([base], writable=True):
            raise RuntimeError("boom")
    assert_clean(store)


@aio
async def test_cleanup_on_cancellation(store: SnapshotStore, tmp_path: Path) -> None:
    base = make_layer(tmp_path, "base", {"f": "x"})
    entered = asyncio.Event()

    async def hold() -> None:
        async with store.mount([base], writable=True) as state:
            (state.path / "busy").write_text("x")
            entered.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(hold())
    await entered.wait()
    assert len(mounts_under(store.root)) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert_clean(store)


@aio
async def test_cancelled_during_set_up_still_cleans(store: SnapshotStore,
                                                    tmp_path: Path) -> None:
    base = make_layer(tmp_path, "base", {"f": "x"})
    for delay in (0, 0.001, 0.003, 0.01):
        context = store.mount([base], writable=True)
        task = asyncio.create_task(context.__aenter__())
        await asyncio.sleep(delay)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            assert_clean(store)
            continue
        assert store.statistics().active_mounts == 1   # set-up won: live until exited
        await context.__aexit__(None, None, None)
        assert_clean(store)
    assert store.statistics().mounts_total < 4         # delay 0 always cancels set-up


@aio
async def test_a_repeated_layer_keeps_its_topmost_place(store: SnapshotStore,
                                                        tmp_path: Path) -> None:
    a = make_layer(tmp_path, "a", {"f": "a"})
    b = make_layer(tmp_path, "b", {"f": "b"})
    async with store.mount([a, b, a]) as state:
        assert (state.path / "f").read_text() == "a"
    async with store.mount([a, b, a, b]) as state:
        assert (state.path / "f").read_text() == "b"
    assert_clean(store)


@aio
async def test_mount_failure_is_a_layer_error(store: SnapshotStore, tmp_path: Path) -> None:
    with pytest.raises(LayerError, match="mount .* failed"):
        async with store.mount([tmp_path / "missing", tmp_path / "missing2"]):
            pass
    assert_clean(store)


def test_publish_is_atomic_and_first_wins(store: SnapshotStore) -> None:
    diff_id = "sha256:" + "ab" * 32
    assert not store.has_layer(diff_id)
    first = store.staging_dir()
    (first / "f").write_text("first")
    assert store.publish(diff_id, first) == store.layer_dir(diff_id)
    second = store.staging_dir()
    (second / "f").write_text("second")
    store.publish(diff_id, second)
    assert not second.exists()
    assert (store.layer_dir(diff_id) / "f").read_text() == "first"
    assert store.has_layer(diff_id)
    assert store.statistics().layers == 1
    assert "layers=1" in repr(store)


@pytest.mark.parametrize("bad", ["sha256:abc", "md5:" + "a" * 64, "sha256:" + "A" * 64,
                                 "sha256:" + "a" * 64 + "/.."])
def test_invalid_diff_id(store: SnapshotStore, bad: str) -> None:
    with pytest.raises(LayerError, match="invalid layer diff_id"):
        store.layer_dir(bad)


@aio
async def test_statistics_and_stale_cleanup(store: SnapshotStore, tmp_path: Path) -> None:
    base = make_layer(tmp_path, "base", {"f": "x"})
    async with store.mount([base], writable=True):
        assert store.statistics().active_mounts == 1
        other = SnapshotStore(store.root)     # a restarted service over the same root
        assert other.cleanup_stale() == 1
        assert mounts_under(store.root) == []
    assert store.statistics().mounts_total == 1
    assert_clean(store)
