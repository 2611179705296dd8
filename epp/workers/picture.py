"""The pod process's side of the fleet picture: every change of its datastore, sent to the workers.

Changes are collected for `delay` seconds (20 ms: a scrape round completes endpoint by endpoint) and sent
as one message: the whole membership when an endpoint came, went or changed otherwise (address, labels),
else the new metrics and health of those scraped since (most messages). Objectives, rewrite rules and the
synced flag follow when they change. A worker that (re)connects gets `snapshot()`: everything as it is
now; what it already has and is sent again later is applied again harmlessly (values travel whole).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from epp.datalayer.datastore import Datastore, ModelRewriteRule
from epp.framework.types import Endpoint
from epp.workers import control as c
from epp.workers.codec import encode_endpoint, encode_metrics, encode_rules, pack

__all__ = ["PicturePublisher"]


def _same_but_metrics(old: Endpoint | None, new: Endpoint) -> bool:
    return (
        old is not None
        and old.ip == new.ip
        and old.port == new.port
        and old.labels == new.labels
        and old.namespace == new.namespace
        and old.pod_name == new.pod_name
        and old.rank == new.rank
    )


class PicturePublisher:
    def __init__(self, datastore: Datastore, broadcast: Callable[[bytes], None], delay: float = 0.02) -> None:
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
        changed = [e for e in snapshot if sent.get(e.key) is not e]
        if len(snapshot) != len(sent) or any(not _same_but_metrics(sent.get(e.key), e) for e in changed):
            self._send([c.ENDPOINTS, [encode_endpoint(e) for e in snapshot]])
        elif changed:
            self._send([c.UPDATE, [[e.key, encode_metrics(e.metrics), e.healthy] for e in changed]])
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
