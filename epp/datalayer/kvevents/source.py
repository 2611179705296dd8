"""The KV-event source: the I/O that keeps a `PreciseIndex` true to what each engine's KV cache holds.

`KVEventSource` serves one `KVEventSubscription`. It follows the datastore's endpoints (membership changes
wake it at once; addresses are re-read at every `resync_seconds` round), finds each endpoint's publisher
(configured address or template, else `GET /kv_event_sources` in a discovery loop, retried every 10 s per
endpoint), keeps one ZMQ SUB socket per endpoint (`subscriber.KVEventSubscriber`: decode, count gaps and
malformed messages, reconnect) and applies every batch to its index. It forgets an endpoint's blocks
when the endpoint leaves the pool, or when its key reappears at another address (another engine: the
discovered publisher is dropped and rediscovered). Nothing else writes the index; plugins read it.

`KVEventSources` holds the sources of one process (the daemon, or each worker of `--workers N`), one per
distinct subscription, shared by the plugins that declare it: `acquire` starts the source for the first
user, `release` cancels it after the last. `epp.plugin_runtime.PluginRuntime` calls them for the live
pipeline's `KVEventConsumer` plugins, acquiring for the new pipeline before releasing the old one's, so
a reload that keeps a subscription keeps its sockets and index.

Runs on the event loop thread (as the datastore's writers and listeners do).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from epp.datalayer.datastore import Datastore
from epp.datalayer.kvevents.discovery import discover, discovery_session
from epp.datalayer.kvevents.index import PreciseIndex
from epp.datalayer.kvevents.subscriber import KVEventSubscriber, sleep_or_wake
from epp.datalayer.kvevents.subscription import KVEventSubscription
from epp.framework.types import Endpoint

__all__ = ["KVEventSource", "KVEventSources"]

log = logging.getLogger(__name__)

#: Seconds between discovery attempts for one endpoint.
DISCOVERY_RETRY = 10.0


class KVEventSource:
    def __init__(self, subscription: KVEventSubscription, datastore: Datastore) -> None:
        self.subscription = subscription
        self.index = PreciseIndex(max_blocks_per_endpoint=subscription.max_blocks_per_endpoint)
        self.subscriber = KVEventSubscriber(self.index, topic_filter=subscription.topic_filter)
        self._datastore = datastore
        self._addresses: dict[str, str] = {}  # endpoint key -> its serving address when last looked at
        self._discovered: dict[str, str] = {}  # endpoint key -> publisher address from discovery
        self._discovery_due: dict[str, float] = {}  # endpoint key -> loop time of the next attempt
        # set when endpoints appear or leave, so subscriptions start at once rather than at the next
        # resync (events published before a subscription connects are lost to the index)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._discover_wake = asyncio.Event()
        self._subscribe_wake = asyncio.Event()

    # ---- which endpoints, at which addresses ---------------------------------------------------------

    def _endpoints(self) -> tuple[Endpoint, ...]:
        """The datastore's endpoints; a key now at another address is another engine: what was learnt
        about the old one (its blocks, its discovered publisher) is forgotten."""
        endpoints = self._datastore.snapshot()
        seen = self._addresses
        moved = False
        for e in endpoints:
            before = seen.get(e.key)
            if before is not None and before != e.address:
                self._discovered.pop(e.key, None)
                self._discovery_due.pop(e.key, None)
                self.index.remove_endpoint(e.key)
                log.info("KV events of %s: moved from %s to %s", e.key, before, e.address)
                moved = True
            seen[e.key] = e.address
        if moved:
            self._poke()  # resubscribe (and rediscover) now
        return endpoints

    def desired_sources(self) -> dict[str, str]:
        """Endpoint key → publisher address, for every endpoint whose publisher is known."""
        out: dict[str, str] = {}
        for e in self._endpoints():
            address = self.subscription.address_of(e) or self._discovered.get(e.key)
            if address:
                out[e.key] = address
        return out

    def _on_membership(self, keys: frozenset[str]) -> None:
        self.index.retain(keys)
        for gone in [k for k in self._addresses if k not in keys]:
            del self._addresses[gone]
            self._discovered.pop(gone, None)
            self._discovery_due.pop(gone, None)
        self._poke()

    def _poke(self) -> None:
        """Wake the discovery and subscription loops now (callable from any thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        for wake in (self._discover_wake, self._subscribe_wake):
            loop.call_soon_threadsafe(wake.set)

    # ---- the loops -----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Subscribe and discover until cancelled."""
        # fresh events: an asyncio.Event is bound to the loop it is first awaited in
        self._discover_wake = asyncio.Event()
        self._subscribe_wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._datastore.subscribe_membership(self._on_membership)
        self._on_membership(self._datastore.keys())
        sub = self.subscription
        tasks = [
            asyncio.create_task(
                self.subscriber.run(self.desired_sources, sub.resync_seconds, self._subscribe_wake)
            )
        ]
        if sub.discover:
            tasks.append(asyncio.create_task(self._discover_loop()))
        try:
            await asyncio.gather(*tasks)
        finally:
            self._datastore.unsubscribe_membership(self._on_membership)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _discover_loop(self) -> None:
        loop = asyncio.get_running_loop()
        async with discovery_session() as session:
            while True:
                now = loop.time()
                todo = [
                    e
                    for e in self._endpoints()
                    if e.key not in self._discovered
                    and self._discovery_due.get(e.key, 0.0) <= now
                    and not self.subscription.address_of(e)
                ]
                for e in todo:
                    self._discovery_due[e.key] = now + DISCOVERY_RETRY
                    address = await discover(session, e)
                    current = self._datastore.get(e.key)
                    if not address or current is None or current.address != e.address:
                        continue  # nothing found, or the endpoint left or moved during the request
                    self._discovered[e.key] = address
                    log.info("KV events of %s: discovered %s", e.key, address)
                    self._subscribe_wake.set()
                await sleep_or_wake(self._discover_wake, self.subscription.resync_seconds)

    def describe(self) -> Mapping[str, Any]:
        """Subscription state, for debugging and tests."""
        sub = self.subscriber
        return {
            "connected": dict(sub.connected),
            "discovered": dict(self._discovered),
            "received": dict(sub.received),
            "gaps": dict(sub.gaps),
            "malformed": dict(sub.malformed),
        }


@dataclass(slots=True)
class _Running:
    source: KVEventSource
    task: asyncio.Task[None]
    users: set[int] = field(default_factory=set)


class KVEventSources:
    """The KV-event sources of one process, one per distinct subscription (see the module docstring)."""

    def __init__(self, datastore: Datastore) -> None:
        self._datastore = datastore
        self._running: dict[KVEventSubscription, _Running] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        self._started = 0

    def acquire(self, subscription: KVEventSubscription, user: object) -> PreciseIndex:
        """The index `subscription`'s source feeds, starting the source if `user` is its first (call on
        the event loop). `user` is remembered by identity until `release`."""
        running = self._running.get(subscription)
        if running is None:
            source = KVEventSource(subscription, self._datastore)
            self._started += 1
            task = asyncio.create_task(source.run(), name=f"kv-event-source-{self._started}")
            task.add_done_callback(_log_source_end)
            running = self._running[subscription] = _Running(source, task)
        running.users.add(id(user))
        return running.source.index

    def release(self, subscription: KVEventSubscription, user: object) -> None:
        """`user` no longer reads `subscription`'s index; the last one out stops the source."""
        running = self._running.get(subscription)
        if running is None:
            return
        running.users.discard(id(user))
        if running.users:
            return
        del self._running[subscription]
        running.task.cancel()
        self._stopping.add(running.task)  # awaited by stop() if it has not finished by then
        running.task.add_done_callback(self._stopping.discard)

    def source(self, subscription: KVEventSubscription) -> KVEventSource | None:
        running = self._running.get(subscription)
        return running.source if running is not None else None

    def sources(self) -> list[KVEventSource]:
        return [r.source for r in self._running.values()]

    async def stop(self) -> None:
        tasks = [*(r.task for r in self._running.values()), *self._stopping]
        self._running.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _log_source_end(task: asyncio.Task[None]) -> None:
    """A source runs until cancelled: say so when one ends on its own (its index is no longer fed)."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("%s died: %r; its KV-event index is no longer updated", task.get_name(), exc, exc_info=exc)
    else:
        log.warning("%s returned; its KV-event index is no longer updated", task.get_name())
