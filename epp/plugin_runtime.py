"""What every decision process does for the live pipeline's plugins, besides calling their hooks.

- `BackgroundTask` plugins: their loop starts when the pipeline holding them goes live and is cancelled
  when a reload drops them (awaited on stop); a loop that dies or returns is logged.
- `KVEventConsumer` plugins (`epp.datalayer.kvevents`, e.g. `precise-prefix-cache-producer`): the data
  layer's KV-event source for the subscription each declares is started (`KVEventSources.acquire`) when
  its pipeline goes live, and the plugin is handed the source's index to read; when a reload drops the
  plugin it is detached and the source released, stopped once no live plugin declares its subscription.
  A swap acquires for the new pipeline before releasing the old one's, so a subscription both keep goes
  on without a gap (same sockets, same index) even when the plugin itself was rebuilt.
- `EndpointObserver` plugins: told the endpoint keys at every membership change and at every swap.
- `EndpointExtractor` plugins wired under an `endpoint-notification-source` in the live pipeline's
  `dataLayer`: told an `EndpointEvent` for each endpoint that joins or leaves, and every current endpoint
  when their pipeline goes live (`epp.datalayer.notifications`).
- `NotificationExtractor` plugins wired under a `k8s-notification-source` in the live pipeline's
  `dataLayer`: one watch per watched kind (`WatchTarget`) runs while a live pipeline wires a source for
  it, started through the `ObjectWatcher` the daemon passes in Kubernetes mode, stopped when a reload
  drops the last such source; each add/update and delete reaches the extractors wired under it, in order,
  each with its own copy of the object; an extractor new to a pipeline that goes live is first told every
  current object (`epp.datalayer.k8s_notifications`).

Each decision process (the daemon, or each worker of `--workers N`) has its own runtime, and so its own
KV-event subscriptions.
"""

from __future__ import annotations

import asyncio
import logging

from epp.datalayer.datastore import Datastore
from epp.datalayer.k8s_notifications import (
    K8sNotificationSource,
    NotificationFeed,
    ObjectWatch,
    ObjectWatcher,
    RawWatchEvent,
    WatchTarget,
    private_copy,
)
from epp.datalayer.kvevents.source import KVEventSources
from epp.datalayer.kvevents.subscription import KVEventConsumer, KVEventSubscription
from epp.datalayer.notifications import EndpointNotificationSource
from epp.framework.plugins import (
    BackgroundTask,
    EndpointEvent,
    EndpointExtractor,
    EndpointObserver,
    NotificationEvent,
    NotificationExtractor,
)
from epp.framework.types import Endpoint
from epp.scheduling.pipeline import Pipeline, PipelineHolder

__all__ = ["PluginRuntime"]

log = logging.getLogger("epp")


def _names(keys: frozenset[str], limit: int = 20) -> str:
    """Endpoint names for a log line, at most `limit` of them."""
    names = sorted(keys)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


class PluginRuntime:
    def __init__(
        self,
        holder: PipelineHolder,
        datastore: Datastore,
        *,
        log_membership: bool = True,
        object_watcher: ObjectWatcher | None = None,
    ) -> None:
        self.holder = holder
        self.datastore = datastore
        self.log_membership = log_membership
        self.object_watcher = object_watcher
        self._feeds: dict[WatchTarget, tuple[NotificationFeed, ObjectWatch | None]] = {}
        self._stopping: set[asyncio.Task[None]] = set()  # watches a reload dropped, being stopped
        self._wiring_of: tuple[Pipeline | None, dict[WatchTarget, list[NotificationExtractor]]] = (None, {})
        self.kv_events = KVEventSources(datastore)
        self._members: frozenset[str] = frozenset()
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._retired: set[asyncio.Task[None]] = set()  # of plugins a reload dropped
        self._consumers: dict[int, tuple[KVEventConsumer, KVEventSubscription]] = {}
        self._known: dict[str, Endpoint] = {}  # the endpoints the extractors were last told of

    def start(self) -> None:
        self.holder.subscribe(self._on_swap)
        self.datastore.subscribe_membership(self._on_membership)
        self._tell_extractors_all(self.holder.current)
        self._attach_kv_events(self.holder.current)
        self._sync_watches(self.holder.current, None)
        self._start_tasks(self.holder.current)

    def tell_membership(self) -> None:
        """Tell the observers the current keys now (endpoints that arrived before `start`)."""
        self._on_membership(self.datastore.keys())

    async def stop(self) -> None:
        tasks = [*self._tasks.values(), *self._retired]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.kv_events.stop()
        feeds, self._feeds = self._feeds, {}
        stops = [w.stop() for _, w in feeds.values() if w is not None]
        await asyncio.gather(*stops, *self._stopping, return_exceptions=True)

    def watched(self) -> dict[WatchTarget, NotificationFeed]:
        """The running Kubernetes object watches and their current objects (for tests and debugging)."""
        return {t: feed for t, (feed, _) in self._feeds.items()}

    def _on_membership(self, keys: frozenset[str]) -> None:
        added, removed = keys - self._members, self._members - keys
        self._members = keys
        if self.log_membership and (added or removed):
            log.info(
                "endpoints changed: %d in the pool%s%s",
                len(keys),
                f"; added {_names(added)}" if added else "",
                f"; removed {_names(removed)}" if removed else "",
            )
        for plugin in self.holder.current.plugins.values():
            if isinstance(plugin, EndpointObserver):
                plugin.endpoints_changed(keys)
        self._tell_extractors_changes(keys)

    def _on_swap(self, old: Pipeline, new: Pipeline) -> None:
        keys = self.datastore.keys()
        for plugin in new.plugins.values():
            if isinstance(plugin, EndpointObserver):
                plugin.endpoints_changed(keys)
        old_extractors = {id(p) for p in _endpoint_extractors(old)}
        self._tell_extractors_all(new, skip=old_extractors)
        self._attach_kv_events(new)  # before the release below: a subscription both keep goes on
        self._sync_watches(new, old)
        live = {id(p) for p in new.plugins.values()}
        for pid in [pid for pid in self._consumers if pid not in live]:
            plugin, subscription = self._consumers.pop(pid)
            plugin.attach_kv_events(None)
            self.kv_events.release(subscription, plugin)
        for pid in [pid for pid in self._tasks if pid not in live]:
            retired = self._tasks.pop(pid)
            retired.cancel()
            self._retired.add(retired)  # awaited by stop() if it has not finished by then
            retired.add_done_callback(self._retired.discard)
        self._start_tasks(new)

    def _tell_extractors_all(self, pipeline: Pipeline, skip: set[int] | frozenset[int] = frozenset()) -> None:
        """Every current endpoint, as an add, to the pipeline's endpoint extractors not in `skip`."""
        self._known = {e.key: e for e in self.datastore.snapshot()}
        extractors = [x for x in _endpoint_extractors(pipeline) if id(x) not in skip]
        _tell(extractors, [EndpointEvent(e) for e in self._known.values()])

    def _tell_extractors_changes(self, keys: frozenset[str]) -> None:
        events = [EndpointEvent(e, deleted=True) for k, e in self._known.items() if k not in keys]
        for key in keys:
            endpoint = self.datastore.get(key)
            known = self._known.get(key)
            if endpoint is not None and (known is None or known.address != endpoint.address):
                events.append(EndpointEvent(endpoint))
        self._known = {k: e for k in keys if (e := self.datastore.get(k)) is not None}
        if events:
            _tell(_endpoint_extractors(self.holder.current), events)

    def _notification_wiring(self, pipeline: Pipeline) -> dict[WatchTarget, list[NotificationExtractor]]:
        cached_for, wiring = self._wiring_of
        if cached_for is not pipeline:
            wiring = _notification_extractors(pipeline)
            self._wiring_of = (pipeline, wiring)
        return wiring

    def _sync_watches(self, new: Pipeline, old: Pipeline | None) -> None:
        """Start the watches `new` wires and `old` did not, stop those it no longer wires; extractors new
        to a running watch are told its current objects."""
        wiring = self._notification_wiring(new)
        before = _notification_extractors(old) if old is not None else {}
        for target, extractors in wiring.items():
            running = self._feeds.get(target)
            if running is None:
                self._start_watch(target)
                continue
            known = {id(x) for x in before.get(target, ())}
            joined = [x for x in extractors if id(x) not in known]
            if joined:
                _notify(joined, running[0].current())
        for target in [t for t in self._feeds if t not in wiring]:
            _, watch = self._feeds.pop(target)
            log.info(
                "k8s-notification-source: stopping the watch of %s (no longer configured)", target.describe()
            )
            if watch is not None:
                task = asyncio.ensure_future(watch.stop())
                self._stopping.add(task)
                task.add_done_callback(self._stopping.discard)

    def _start_watch(self, target: WatchTarget) -> None:
        feed = NotificationFeed(target)
        if self.object_watcher is None:
            log.warning(
                "k8s-notification-source: no Kubernetes client in this process; %s is not watched",
                target.describe(),
            )
            self._feeds[target] = (feed, None)
            return

        def on_event(raw: RawWatchEvent) -> None:
            self._on_object_event(target, feed, raw)

        log.info("k8s-notification-source: watching %s", target.describe())
        self._feeds[target] = (feed, self.object_watcher.watch(target, on_event))

    def _on_object_event(self, target: WatchTarget, feed: NotificationFeed, raw: RawWatchEvent) -> None:
        running = self._feeds.get(target)
        if running is None or running[0] is not feed:  # a watch being stopped: late events are dropped
            return
        events = feed.apply(raw)
        if events:
            _notify(self._notification_wiring(self.holder.current).get(target, []), events)

    def _attach_kv_events(self, pipeline: Pipeline) -> None:
        for plugin in pipeline.plugins.values():
            if isinstance(plugin, KVEventConsumer) and id(plugin) not in self._consumers:
                subscription = plugin.kv_event_subscription()
                if subscription is None:
                    continue
                plugin.attach_kv_events(self.kv_events.acquire(subscription, plugin))
                self._consumers[id(plugin)] = (plugin, subscription)

    def _start_tasks(self, pipeline: Pipeline) -> None:
        for name, plugin in pipeline.plugins.items():
            if isinstance(plugin, BackgroundTask) and id(plugin) not in self._tasks:
                task = asyncio.create_task(plugin.run(), name=f"plugin-{name}")
                task.add_done_callback(_log_plugin_task_end)
                self._tasks[id(plugin)] = task


def _log_plugin_task_end(task: asyncio.Task[None]) -> None:
    """A plugin's background loop is meant to run until cancelled: say so when one ends on its own."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("%s died: %r; what it feeds is no longer updated", task.get_name(), exc, exc_info=exc)
    else:
        log.warning("%s returned; what it feeds is no longer updated", task.get_name())


def _endpoint_extractors(pipeline: Pipeline) -> list[EndpointExtractor]:
    """The extractors wired under an endpoint-notification-source in the pipeline's dataLayer, once each."""
    section = pipeline.extras.get("dataLayer") if pipeline.extras else None
    out: dict[int, EndpointExtractor] = {}
    for source_spec in getattr(section, "sources", None) or ():
        if not isinstance(pipeline.plugins.get(source_spec.plugin_ref), EndpointNotificationSource):
            continue
        for ext in source_spec.extractors:
            plugin = pipeline.plugins.get(ext.plugin_ref)
            if isinstance(plugin, EndpointExtractor):
                out.setdefault(id(plugin), plugin)
    return list(out.values())


def _tell(extractors: list[EndpointExtractor], events: list[EndpointEvent]) -> None:
    for extractor in extractors:
        for event in events:
            try:
                extractor.extract_endpoint(event)
            except Exception:
                log.exception("endpoint extractor %r failed on %s", extractor, event)


def _notification_extractors(pipeline: Pipeline) -> dict[WatchTarget, list[NotificationExtractor]]:
    """Per watched kind, the extractors wired under a k8s-notification-source for it, once each."""
    section = pipeline.extras.get("dataLayer") if pipeline.extras else None
    out: dict[WatchTarget, dict[int, NotificationExtractor]] = {}
    for source_spec in getattr(section, "sources", None) or ():
        source = pipeline.plugins.get(source_spec.plugin_ref)
        if not isinstance(source, K8sNotificationSource):
            continue
        wired = out.setdefault(source.target, {})
        for ext in source_spec.extractors:
            plugin = pipeline.plugins.get(ext.plugin_ref)
            if isinstance(plugin, NotificationExtractor):
                wired.setdefault(id(plugin), plugin)
    return {target: list(wired.values()) for target, wired in out.items()}


def _notify(extractors: list[NotificationExtractor], events: list[NotificationEvent]) -> None:
    for event in events:
        for extractor in extractors:
            try:
                extractor.extract_notification(private_copy(event))
            except Exception:
                log.exception(
                    "notification extractor %r failed on %s of %s/%s",
                    extractor,
                    event.type,
                    event.namespace,
                    event.name,
                )
