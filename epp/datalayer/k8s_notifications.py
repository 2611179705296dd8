"""`k8s-notification-source`: add/update and delete events of one Kubernetes kind for the extractors wired
under it.

Upstream's Kubernetes notification data source (GIE `datalayer/source/notifications`, bound to the
controller manager by `BindNotificationSource`): parameters `group` (empty for the core group), `version`
and `kind`; every create or change of an object of that kind reaches the source's `NotificationExtractor`s
as an add-or-update with the object, every deletion as a delete. Here:

- the plugin is a value (`K8sNotificationSource`): what to watch, no I/O;
- `NotificationFeed` turns the raw list+watch stream of that kind (a listing, then ADDED / MODIFIED /
  DELETED) into those events: it keeps the current objects, skips a change whose `resourceVersion` did
  not move (upstream's `ResourceVersionChangedPredicate`), and after a relist (a watch that broke) tells
  the changes the listing shows, deletions included, so nothing is told twice and nothing is missed;
- the watch itself (discovery, list, watch, retries with backoff) is an `ObjectWatcher` the daemon passes
  to the plugin runtime in Kubernetes mode (`epp.k8s.notifications`); the runtime starts one watch per
  watched kind while a live pipeline wires a source for it, and dispatches the events in the event loop.

A daemon without Kubernetes (`--static-endpoints`) refuses a config with this plugin type at load.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from epp.framework.handle import Handle
from epp.framework.plugins import NotificationEvent, NotificationEventType, PluginKind
from epp.framework.types import TypedName
from epp.registry import PluginType

__all__ = [
    "K8S_NOTIFICATION_SOURCE",
    "K8S_NOTIFICATION_SOURCE_TYPE",
    "STATIC_MODE_REASON",
    "K8sNotificationSource",
    "K8sNotificationSourceParams",
    "LazyObjectWatcher",
    "NotificationFeed",
    "ObjectWatch",
    "ObjectWatcher",
    "RawWatchEvent",
    "WatchTarget",
    "private_copy",
]

K8S_NOTIFICATION_SOURCE_TYPE = "k8s-notification-source"

#: Why the type is withheld from a daemon that runs without Kubernetes (see `PluginRegistry.without`).
STATIC_MODE_REASON = (
    "it watches Kubernetes objects, and this EPP runs without Kubernetes (--static-endpoints); run it "
    "with --pool-name or --endpoint-selector, or remove the plugin and its dataLayer source"
)

Obj = Mapping[str, Any]


class K8sNotificationSourceParams(BaseModel):
    """The kind of Kubernetes object to watch (upstream's group / version / kind)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    group: str = Field(
        "", description="API group of the kind; empty for the core group (Pod, ConfigMap, ...)."
    )
    version: str = Field(..., min_length=1, description="API version, e.g. v1 or v1beta1.")
    kind: str = Field(..., min_length=1, description="Kind, e.g. ConfigMap or InferenceObjective.")
    namespace: str = Field(
        "",
        description="Watch this namespace only (not upstream: its watch covers every namespace the EPP "
        "may read); empty: all namespaces. Ignored for cluster-scoped kinds.",
    )

    @field_validator("group", "version", "kind", "namespace")
    @classmethod
    def _no_slash_or_blank(cls, value: str) -> str:
        if value != value.strip() or "/" in value:
            raise ValueError(f"{value!r} must be a bare name (no '/', no surrounding blanks)")
        return value


@dataclass(frozen=True, slots=True)
class WatchTarget:
    """What one watch covers; equal targets share one watch."""

    group: str
    version: str
    kind: str
    namespace: str = ""

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def describe(self) -> str:
        where = f" in namespace {self.namespace}" if self.namespace else ""
        return f"{self.kind}.{self.api_version}{where}"


@dataclass(frozen=True, slots=True)
class K8sNotificationSource:
    typed_name: TypedName
    target: WatchTarget


def _factory(name: str, params: K8sNotificationSourceParams, handle: Handle) -> K8sNotificationSource:
    target = WatchTarget(params.group, params.version, params.kind, params.namespace)
    return K8sNotificationSource(TypedName(K8S_NOTIFICATION_SOURCE_TYPE, name), target)


K8S_NOTIFICATION_SOURCE: PluginType[K8sNotificationSourceParams] = PluginType(
    type_name=K8S_NOTIFICATION_SOURCE_TYPE,
    params_model=K8sNotificationSourceParams,
    factory=_factory,
    kinds=frozenset({PluginKind.DATA_SOURCE, PluginKind.NOTIFICATION_SOURCE}),
    description="Watches one Kubernetes kind and delivers add/update and delete events of its objects to "
    "the notification extractors wired under it.",
)


# ---- the stream of one watch -----------------------------------------------------------------------


class RawWatchEvent(Protocol):
    """A list+watch event: `SYNC` (a complete listing in `objects`), `ADDED`, `MODIFIED`, `DELETED`."""

    @property
    def type(self) -> str: ...

    @property
    def objects(self) -> tuple[Obj, ...]: ...


class ObjectWatch(Protocol):
    """A running watch; `stop` ends it (no event is delivered once it returns)."""

    async def stop(self) -> None: ...


class ObjectWatcher(Protocol):
    """Starts watches (the daemon's Kubernetes client); `on_event` is called in the event loop."""

    def watch(self, target: WatchTarget, on_event: Callable[[RawWatchEvent], None]) -> ObjectWatch: ...


class LazyObjectWatcher:
    """An `ObjectWatcher` made on first use (so a daemon whose config watches nothing never builds a
    Kubernetes client for it)."""

    def __init__(self, factory: Callable[[], ObjectWatcher]) -> None:
        self._factory = factory
        self._watcher: ObjectWatcher | None = None

    def watch(self, target: WatchTarget, on_event: Callable[[RawWatchEvent], None]) -> ObjectWatch:
        if self._watcher is None:
            self._watcher = self._factory()
        return self._watcher.watch(target, on_event)


def _key(obj: Obj) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def _unchanged(old: Obj, new: Obj) -> bool:
    old_rv = (old.get("metadata") or {}).get("resourceVersion")
    new_rv = (new.get("metadata") or {}).get("resourceVersion")
    if old_rv and new_rv:
        return bool(old_rv == new_rv)
    return old == new  # a server without resourceVersions: compare the objects


class NotificationFeed:
    """The current objects of one watch and the events each raw watch event makes."""

    def __init__(self, target: WatchTarget) -> None:
        self.target = target
        self.objects: dict[tuple[str, str], Obj] = {}
        self.synced = False
        self.events = 0

    def apply(self, raw: RawWatchEvent) -> list[NotificationEvent]:
        out: list[tuple[NotificationEventType, Obj]] = []
        if raw.type == "SYNC":
            listed = {_key(o): o for o in raw.objects if _key(o)[1]}
            for key, old in self.objects.items():
                if key not in listed:
                    out.append((NotificationEventType.DELETE, old))
            for key, obj in listed.items():
                known = self.objects.get(key)
                if known is None or not _unchanged(known, obj):
                    out.append((NotificationEventType.ADD_OR_UPDATE, obj))
            self.objects = listed
            self.synced = True
        elif raw.objects:
            obj = raw.objects[0]
            key = _key(obj)
            if not key[1]:
                return []
            if raw.type == "DELETED":
                self.objects.pop(key, None)
                out.append((NotificationEventType.DELETE, obj))
            elif raw.type in ("ADDED", "MODIFIED"):
                known = self.objects.get(key)
                self.objects[key] = obj
                if known is None or not _unchanged(known, obj):
                    out.append((NotificationEventType.ADD_OR_UPDATE, obj))
        self.events += len(out)
        return [NotificationEvent(kind, obj) for kind, obj in out]

    def current(self) -> list[NotificationEvent]:
        """Every current object as an add (for an extractor that joins a running watch)."""
        return [NotificationEvent(NotificationEventType.ADD_OR_UPDATE, o) for o in self.objects.values()]


def private_copy(event: NotificationEvent) -> NotificationEvent:
    """The event with an object of its own (upstream deep-copies before delivery)."""
    return NotificationEvent(event.type, copy.deepcopy(dict(event.object)))
