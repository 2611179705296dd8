"""The pod process's side of the fleet picture: every change of its datastore, sent to the workers.

Changes are collected for `delay` seconds (a scrape round completes endpoint by endpoint) and sent as
one message: the whole membership when keys came or went, else the endpoints whose value changed (new
metrics, health, labels). Objectives, rewrite rules and the synced flag follow when they change. A worker
that (re)connects gets `snapshot()`: everything as it is now; what it already has and is sent again
later is applied again harmlessly (every endpoint travels whole).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from epp.datalayer.datastore import Datastore, ModelRewriteRule
from epp.framework.types import Endpoint
from epp.workers import control as c
from epp.workers.codec import encode_endpoint, encode_rules, pack

__all__ = ["PicturePublisher"]


class PicturePublisher:
    def __init__(
        self, datastore: Datastore, broadcast: Callable[[bytes], None], delay: float = 0.002
    ) -> None:
        self.datastore = datastore
        self.broadcast = broadcast
        self.delay = delay
        self._sent: dict[str, Endpoint] = {}
        self._objectives: object = None
        self._rules: tuple[ModelRewriteRule, ...] | None = None
        self._synced = False
        self._pending = False
        self.messages = 0

    def start(self) -> None:
        self.datastore.subscribe_changes(self._changed)

    def snapshot(self) -> dict[str, Any]:
        ds = self.datastore
        return {
            "endpoints": [encode_endpoint(e) for e in ds.snapshot()],
            "synced": ds.synced,
            "objectives": dict(ds.objectives),
            "rules": encode_rules(ds.rewrite_rules),
        }

    def _changed(self) -> None:
        if not self._pending:
            self._pending = True
            asyncio.get_running_loop().call_later(self.delay, self.flush)

    def flush(self) -> None:
        self._pending = False
        ds = self.datastore
        snapshot = ds.snapshot()
        sent = self._sent
        if len(snapshot) != len(sent) or any(e.key not in sent for e in snapshot):
            self._send([c.ENDPOINTS, [encode_endpoint(e) for e in snapshot]])
        else:
            changed = [encode_endpoint(e) for e in snapshot if sent[e.key] is not e]
            if changed:
                self._send([c.UPDATE, changed])
        self._sent = {e.key: e for e in snapshot}
        if ds.objectives is not self._objectives:
            self._objectives = ds.objectives
            self._send([c.OBJECTIVES, dict(ds.objectives)])
        if ds.rewrite_rules is not self._rules:
            self._rules = ds.rewrite_rules
            self._send([c.RULES, encode_rules(ds.rewrite_rules)])
        if ds.synced and not self._synced:
            self._synced = True
            self._send([c.SYNCED])

    def _send(self, message: list[Any]) -> None:
        self.messages += 1
        self.broadcast(pack(message))
