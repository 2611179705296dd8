"""The datastore: the current picture of the fleet, published as immutable snapshots.

Writers (an endpoint source, the scrape loops, the Kubernetes watches) replace whole `Endpoint` values;
readers call `snapshot()` and get a tuple that never changes under them. The snapshot is rebuilt lazily,
at most once per change, so a request costs one attribute read when nothing changed.

All writes happen on the event-loop thread (Kubernetes watch threads hand their events over to it).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from epp.framework.notify import notify_all
from epp.framework.types import Endpoint, EndpointMetrics

__all__ = ["Datastore", "ModelRewriteRule", "RewriteTarget"]


@dataclass(frozen=True, slots=True)
class RewriteTarget:
    model: str
    weight: int


@dataclass(frozen=True, slots=True)
class ModelRewriteRule:
    """One InferenceModelRewrite rule: `matches` empty means "every model" (the generic rule)."""

    name: str
    matches: tuple[str, ...]
    targets: tuple[RewriteTarget, ...]
    created: float = 0.0
    order: int = 0


class Datastore:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._endpoints: dict[str, Endpoint] = {}
        self._snapshot: tuple[Endpoint, ...] = ()
        self._dirty = False
        self.version = 0
        self._membership_listeners: list[Callable[[frozenset[str]], None]] = []
        self._sync_listeners: list[Callable[[], None]] = []
        self._change_listeners: list[Callable[[], None]] = []
        self._synced = False
        self.objectives: Mapping[str, int] = {}
        self.rewrite_rules: tuple[ModelRewriteRule, ...] = ()

    # ---- reads -------------------------------------------------------------------------------------

    def snapshot(self) -> tuple[Endpoint, ...]:
        """All endpoints with their latest metrics, in a stable (key) order."""
        if self._dirty:
            self._snapshot = tuple(self._endpoints[k] for k in sorted(self._endpoints))
            self._dirty = False
        return self._snapshot

    def get(self, key: str) -> Endpoint | None:
        return self._endpoints.get(key)

    def keys(self) -> frozenset[str]:
        return frozenset(self._endpoints)

    def __len__(self) -> int:
        return len(self._endpoints)

    @property
    def synced(self) -> bool:
        """True once the endpoint source has delivered its first complete listing."""
        return self._synced

    def candidates(self, staleness: float, now: float | None = None) -> tuple[Endpoint, ...]:
        """Endpoints fit to be picked: healthy and scraped within `staleness` seconds.

        Fails open: when no endpoint qualifies (e.g. the scrape path is broken but serving works) every
        endpoint is a candidate, so a metrics outage does not become a traffic outage.
        """
        snap = self.snapshot()
        if now is None:
            now = self.clock()
        fit = tuple(e for e in snap if e.healthy and e.metrics.age(now) <= staleness)
        return fit if fit else snap

    # ---- writes ------------------------------------------------------------------------------------

    def subscribe_membership(self, listener: Callable[[frozenset[str]], None]) -> None:
        """Call `listener(keys)` whenever the set of endpoint keys changes."""
        self._membership_listeners.append(listener)

    def unsubscribe_membership(self, listener: Callable[[frozenset[str]], None]) -> None:
        if listener in self._membership_listeners:
            self._membership_listeners.remove(listener)

    def subscribe_synced(self, listener: Callable[[], None]) -> None:
        """Call `listener()` once, when the endpoint source first marks the datastore synced."""
        self._sync_listeners.append(listener)

    def subscribe_changes(self, listener: Callable[[], None]) -> None:
        """Call `listener()` after every change of anything here (endpoints, metrics, objectives, rules,
        the synced flag): cheap, and called often (every scrape), so it should only note the change."""
        self._change_listeners.append(listener)

    def mark_synced(self) -> None:
        if self._synced:
            return
        self._synced = True
        listeners, self._sync_listeners = self._sync_listeners, []
        notify_all(listeners, what="the first endpoint sync")
        self._notify_changes()

    def set_endpoints(self, endpoints: Iterable[Endpoint]) -> None:
        """Replace the membership; endpoints whose key and address are unchanged keep their metrics."""
        new: dict[str, Endpoint] = {}
        for ep in endpoints:
            old = self._endpoints.get(ep.key)
            if old is not None and old.ip == ep.ip and old.port == ep.port:
                ep = dataclasses.replace(ep, metrics=old.metrics, healthy=old.healthy)
            new[ep.key] = ep
        membership_changed = new.keys() != self._endpoints.keys()
        self._endpoints = new
        self._changed()
        if membership_changed:
            self._notify_membership()

    def upsert(self, endpoint: Endpoint) -> None:
        merged = dict(self._endpoints)
        merged[endpoint.key] = endpoint
        self.set_endpoints(merged.values())

    def remove(self, key: str) -> None:
        if key in self._endpoints:
            self.set_endpoints(e for k, e in self._endpoints.items() if k != key)

    def mirror(self, upserts: Iterable[Endpoint], removed: Iterable[str] = ()) -> None:
        """Take another process's picture as it is: each endpoint replaces the one with its key (metrics
        included), `removed` keys go. One change, one membership notification when keys changed."""
        before = frozenset(self._endpoints)
        for ep in upserts:
            self._endpoints[ep.key] = ep
        for key in removed:
            self._endpoints.pop(key, None)
        self._changed()
        if frozenset(self._endpoints) != before:
            self._notify_membership()

    def refresh(self, updates: Iterable[tuple[str, EndpointMetrics, bool]]) -> None:
        """New metrics and health for several endpoints at once (another process's scrapes): one change.
        Keys not here (any more) are ignored."""
        endpoints = self._endpoints
        for key, metrics, healthy in updates:
            old = endpoints.get(key)
            if old is not None:
                endpoints[key] = Endpoint(
                    old.key,
                    old.ip,
                    old.port,
                    old.labels,
                    metrics,
                    old.namespace,
                    old.pod_name,
                    old.rank,
                    healthy,
                )
        self._changed()

    def update_metrics(self, key: str, metrics: EndpointMetrics, healthy: bool = True) -> None:
        """Publish new metrics for an endpoint (ignored if it left the pool meanwhile)."""
        old = self._endpoints.get(key)
        if old is None:
            return
        self._endpoints[key] = dataclasses.replace(old, metrics=metrics, healthy=healthy)
        self._changed()

    def set_healthy(self, key: str, healthy: bool) -> None:
        old = self._endpoints.get(key)
        if old is None or old.healthy == healthy:
            return
        self._endpoints[key] = dataclasses.replace(old, healthy=healthy)
        self._changed()

    def set_objectives(self, objectives: Mapping[str, int]) -> None:
        """Replace the InferenceObjective priorities (objective name → priority)."""
        self.objectives = dict(objectives)
        self._notify_changes()

    def set_rewrite_rules(self, rules: Sequence[ModelRewriteRule]) -> None:
        self.rewrite_rules = tuple(rules)
        self._notify_changes()

    def _changed(self) -> None:
        self._dirty = True
        self.version += 1
        self._notify_changes()

    def _notify_changes(self) -> None:
        if self._change_listeners:
            notify_all(self._change_listeners, what="a datastore change")

    def _notify_membership(self) -> None:
        notify_all(
            self._membership_listeners, frozenset(self._endpoints), what="an endpoint membership change"
        )
