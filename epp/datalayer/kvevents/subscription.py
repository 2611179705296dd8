"""What a plugin asks the data layer to subscribe to, and how the plugin runtime recognizes such a plugin.

`KVEventSubscription` is a value: where each endpoint publishes its KV events (explicit addresses, an
address template, discovery), the ZMQ topic prefix, how often to reconcile, and the per-endpoint cap of the
index. Plugins that declare equal subscriptions share one source (and so one index and one ZMQ socket per
endpoint): a config reload that rebuilds a plugin but keeps its subscription keeps the source running.

A `KVEventConsumer` (e.g. `precise-prefix-cache-producer`) declares its subscription
(`kv_event_subscription`, None: it has nowhere to subscribe) and is handed the source's index to read
(`attach_kv_events`) by the plugin runtime when its pipeline goes live, and None when it is retired.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from epp.datalayer.kvevents.addresses import resolve_address
from epp.datalayer.kvevents.index import PreciseIndex
from epp.framework.types import Endpoint

__all__ = ["KVEventConsumer", "KVEventSubscription"]


@dataclass(frozen=True, slots=True)
class KVEventSubscription:
    """Where and how to subscribe to the endpoints' KV events (hashable: equal ones share a source).

    addresses: endpoint key or `ip:port` → ZMQ address, as sorted pairs (`addresses_map` is the mapping).
    template: address template with `{ip}`, `{port}`, `{eventPort}` (= port + `port_offset`); "" = none.
    discover: ask endpoints without a configured address for `GET /kv_event_sources`.
    topic_filter: ZMQ subscription prefix ("" = every topic).
    resync_seconds: how often subscriptions are reconciled with the endpoints (and discovery retried).
    max_blocks_per_endpoint: cap on the index's blocks per endpoint.
    """

    addresses: tuple[tuple[str, str], ...] = ()
    template: str = ""
    port_offset: int = 0
    discover: bool = False
    topic_filter: str = ""
    resync_seconds: float = 1.0
    max_blocks_per_endpoint: int = 1 << 20

    @property
    def finds_publishers(self) -> bool:
        """Whether any endpoint could ever be subscribed (an address, a template or discovery)."""
        return bool(self.addresses or self.template or self.discover)

    @property
    def addresses_map(self) -> Mapping[str, str]:
        return dict(self.addresses)

    def address_of(self, endpoint: Endpoint) -> str | None:
        """The configured address of `endpoint`'s publisher (None: discover it, or go without)."""
        return resolve_address(endpoint, self.addresses_map, self.template, self.port_offset)


@runtime_checkable
class KVEventConsumer(Protocol):
    """A plugin that reads the index a KV-event source feeds (started for it by `epp.plugin_runtime`)."""

    def kv_event_subscription(self) -> KVEventSubscription | None: ...

    def attach_kv_events(self, index: PreciseIndex | None) -> None: ...
