"""An informer: a `ListWatch` plus the current objects of one resource, kept on the event-loop thread.

`accept` filters objects on the client side as well (real API servers filter by label and field selectors;
test servers such as kmock do not, and a selector change must drop objects that stopped matching).
`on_change` runs on the loop after every applied event; `synced` turns true with the first listing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from epp.k8s.listwatch import DEFAULT_WATCH_OPTIONS, ListWatch, WatchEvent, WatchOptions

__all__ = ["Informer", "object_key"]

Obj = Mapping[str, Any]


def object_key(obj: Obj) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


class Informer:
    def __init__(
        self,
        name: str,
        list_fn: Callable[..., Any],
        *,
        on_change: Callable[[], None],
        accept: Callable[[Obj], bool] | None = None,
        selectors: Mapping[str, str] | None = None,
        options: WatchOptions = DEFAULT_WATCH_OPTIONS,
    ) -> None:
        self.name = name
        self._list_fn = list_fn
        self._on_change = on_change
        self._accept = accept or (lambda _obj: True)
        self._selectors = dict(selectors or {})
        self._options = options
        self._objects: dict[tuple[str, str], Obj] = {}
        self._lw: ListWatch | None = None
        self.synced = False

    def start(self) -> None:
        if self._lw is not None:
            return
        self._lw = ListWatch(
            self.name,
            self._list_fn,
            self._apply,
            asyncio.get_running_loop(),
            selectors=self._selectors,
            options=self._options,
        )
        self._lw.start()

    async def stop(self) -> None:
        lw, self._lw = self._lw, None
        if lw is not None:
            await lw.close()

    @property
    def list_watch(self) -> ListWatch | None:
        return self._lw

    def objects(self) -> list[Obj]:
        return list(self._objects.values())

    def _apply(self, event: WatchEvent) -> None:
        if self._lw is None:  # stopped: late events from the thread are dropped
            return
        if event.type == "SYNC":
            self._objects = {object_key(o): o for o in event.objects if self._accept(o)}
            self.synced = True
        else:
            obj = event.objects[0]
            key = object_key(obj)
            if event.type == "DELETED" or not self._accept(obj):
                self._objects.pop(key, None)
            else:
                self._objects[key] = obj
        self._on_change()
