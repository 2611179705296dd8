"""Watch the config file's directory and hand new content to a reload callback.

A Kubernetes ConfigMap volume never changes a file in place: the kubelet writes a new `..<timestamp>`
directory and atomically renames a `..data` symlink to it, and `file -> ..data/file` follows. Editors
often write a temporary file and rename it. So we watch the *directory* (never the file), re-read the
file through its path on any change there, and call back only when the content hash differs from the
last content we handed over. `trigger()` (SIGHUP) forces a re-read.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import watchfiles

__all__ = ["ConfigWatcher", "content_hash"]

log = logging.getLogger(__name__)


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ConfigWatcher:
    """Calls `on_change(content)` for each new version of `path` (debounced, hash-deduplicated)."""

    def __init__(
        self,
        path: str | Path,
        on_change: Callable[[bytes], Awaitable[object]],
        *,
        initial_hash: str = "",
        debounce: float = 0.2,
        force_polling: bool = False,
    ) -> None:
        self.path = Path(path)
        self.directory = self.path.absolute().parent
        self.on_change = on_change
        self.last_hash = initial_hash
        self.debounce = debounce
        self.force_polling = force_polling
        self._stop = asyncio.Event()
        self._kick = asyncio.Event()
        #: set once the filesystem watch is attached (changes after this are seen)
        self.ready = asyncio.Event()

    def trigger(self) -> None:
        """Re-read the file now (e.g. on SIGHUP), even without a filesystem event."""
        self._kick.set()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Watch until `stop()`; errors reading the file are logged and retried on the next change."""
        kick_task = asyncio.create_task(self._kick_loop(), name="config-watcher-kick")
        attached = False
        try:
            async for _changes in watchfiles.awatch(
                self.directory,
                debounce=int(self.debounce * 1000),
                step=50,
                stop_event=self._stop,
                recursive=False,
                force_polling=self.force_polling,
                rust_timeout=200,
                yield_on_timeout=True,
            ):
                self.ready.set()
                if _changes or not attached:
                    # once attached, compare with what was loaded: an edit made before the watch
                    # existed (during start-up) raised no event
                    attached = True
                    await self._check()
        finally:
            kick_task.cancel()

    async def _kick_loop(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            await self._check(force=True)

    async def _check(self, force: bool = False) -> None:
        try:
            data = await asyncio.to_thread(self.path.read_bytes)
        except OSError as exc:
            # between the removal of the old ..<ts> dir and the new link there is no window, but a
            # hand-edited setup can have one; the next event re-reads
            log.warning("config file %s is unreadable: %s (keeping the running config)", self.path, exc)
            return
        digest = content_hash(data)
        if digest == self.last_hash and not force:
            return
        if digest == self.last_hash:
            log.info("config reload requested; %s is unchanged (sha256 %s)", self.path, digest[:12])
        self.last_hash = digest
        await self.on_change(data)
