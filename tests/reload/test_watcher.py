"""The config watcher on a real filesystem: in-place edits and ConfigMap-style `..data` symlink swaps."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

from epp.config.watcher import ConfigWatcher, content_hash
from tests.helpers import until


def _configmap_dir(root: Path, content: str, ts: str) -> Path:
    """Lay out a directory the way the kubelet mounts a ConfigMap: file -> ..data/file, ..data -> ..ts."""
    data_dir = root / f"..{ts}"
    data_dir.mkdir()
    (data_dir / "config.yaml").write_text(content)
    os.symlink(f"..{ts}", root / "..data")
    os.symlink("..data/config.yaml", root / "config.yaml")
    return root / "config.yaml"


def _swap(root: Path, content: str, ts: str) -> None:
    """The kubelet's atomic update: write a new ..ts dir, point ..data_tmp at it, rename over ..data."""
    new_dir = root / f"..{ts}"
    new_dir.mkdir()
    (new_dir / "config.yaml").write_text(content)
    old_target = os.readlink(root / "..data")
    os.symlink(f"..{ts}", root / "..data_tmp")
    os.replace(root / "..data_tmp", root / "..data")
    for f in (root / old_target).iterdir():
        f.unlink()
    (root / old_target).rmdir()


@contextlib.asynccontextmanager
async def _watching(path: Path, loaded: bytes) -> AsyncIterator[tuple[ConfigWatcher, list[bytes]]]:
    """A running watcher of `path` for a daemon that loaded `loaded`; yields it and what it reported."""
    seen: list[bytes] = []

    async def on_change(data: bytes) -> None:
        seen.append(data)

    watcher = ConfigWatcher(path, on_change, initial_hash=content_hash(loaded), debounce=0.05)
    task = asyncio.create_task(watcher.run())
    try:
        yield watcher, seen
    finally:
        watcher.stop()
        await asyncio.wait_for(task, 5)


async def test_configmap_symlink_swap_triggers_one_callback_per_new_content(tmp_path: Path) -> None:
    path = _configmap_dir(tmp_path, "v: 1\n", "2026_01_01")
    async with _watching(path, b"v: 1\n") as (watcher, seen):
        await asyncio.wait_for(watcher.ready.wait(), 5)
        _swap(tmp_path, "v: 2\n", "2026_01_02")
        await until(lambda: len(seen) >= 1)
        assert seen == [b"v: 2\n"]
        # same content again under a new timestamp: hash unchanged, no callback
        _swap(tmp_path, "v: 2\n", "2026_01_03")
        _swap(tmp_path, "v: 3\n", "2026_01_04")
        await until(lambda: len(seen) >= 2)
        assert seen == [b"v: 2\n", b"v: 3\n"]


async def test_in_place_edit_and_manual_trigger(tmp_path: Path) -> None:
    path = tmp_path / "epp.yaml"
    path.write_text("a: 1\n")
    async with _watching(path, b"a: 1\n") as (watcher, seen):
        await asyncio.wait_for(watcher.ready.wait(), 5)
        tmp = tmp_path / ".epp.yaml.swp"
        tmp.write_text("a: 2\n")
        os.replace(tmp, path)
        await until(lambda: len(seen) >= 1)
        assert seen == [b"a: 2\n"]
        watcher.trigger()  # SIGHUP path: re-read even without a filesystem event
        await until(lambda: len(seen) >= 2)
        assert seen[-1] == b"a: 2\n"
        # an unrelated file in the directory does not produce a callback with changed content
        (tmp_path / "other.txt").write_text("x")
        path.write_text("a: 3\n")
        await until(lambda: len(seen) >= 3)
        assert seen[-1] == b"a: 3\n"


async def test_an_edit_made_before_the_watch_attached_is_applied(tmp_path: Path) -> None:
    """The daemon reads its config, then starts servers and sources, and only then watches: an edit in
    that window raised no event the watch could see."""
    path = tmp_path / "epp.yaml"
    path.write_text("a: 2\n")  # what the file says now, while the daemon loaded "a: 1" a moment ago
    async with _watching(path, b"a: 1\n") as (_, seen):
        await until(lambda: len(seen) >= 1)
        assert seen == [b"a: 2\n"]
