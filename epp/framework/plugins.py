"""Plugin contracts: one small protocol per extension point.

A plugin implements one or more of these and declares which ones in its registry entry
(`epp.registry.PluginType.kinds`); the config builder slots it by those declared kinds. All methods are
synchronous and must not do I/O: they run on the request path. Anything that needs I/O runs in a
`BackgroundTask` and publishes immutable state the synchronous methods read.

Contracts the engine relies on:
- `Filter.filter` returns a subset of its input (possibly empty); it never invents endpoints.
- `Scorer.score` returns a score per endpoint key, nominally in [0, 1]; the engine clamps, then weights.
  An endpoint missing from the map scores 0.
- `Picker.pick` returns targets drawn from the scored endpoints, primary first, without duplicates.
- `ProfileHandler.pick_profiles` is called in a loop until it returns no profile names;
  `process_results` chooses the primary profile or raises `SchedulingError`.
- Request hooks receive the same `CycleState` from scheduling to response completion, so a plugin can
  carry per-request data from `prepare_data` to `response_complete`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from epp.framework.cycle import CycleState
from epp.framework.types import (
    Endpoint,
    InferenceRequest,
    ProfileRunResult,
    ResponseInfo,
    SchedulingResult,
    ScoredEndpoint,
    TypedName,
)

__all__ = [
    "Admitter",
    "BackgroundTask",
    "DataProducer",
    "EndpointEvent",
    "EndpointExtractor",
    "EndpointObserver",
    "Filter",
    "NotificationEvent",
    "NotificationEventType",
    "NotificationExtractor",
    "Picker",
    "Plugin",
    "PluginKind",
    "PreRequest",
    "ProfileHandler",
    "RequestParser",
    "ResponseComplete",
    "ResponseReader",
    "ResponseReceived",
    "ResponseWatcher",
    "SaturationDetector",
    "Scorer",
    "ScorerCategory",
    "SharedSnapshot",
    "SharedState",
]


class PluginKind(StrEnum):
    """The extension points a plugin type can fill."""

    FILTER = "filter"
    SCORER = "scorer"
    PICKER = "picker"
    PROFILE_HANDLER = "profile-handler"
    PARSER = "parser"
    DATA_PRODUCER = "data-producer"
    PRE_REQUEST = "pre-request"
    RESPONSE_RECEIVED = "response-received"
    RESPONSE_COMPLETE = "response-complete"
    ADMITTER = "admitter"
    SATURATION_DETECTOR = "saturation-detector"
    DATA_SOURCE = "data-source"
    METRICS_EXTRACTOR = "metrics-extractor"
    #: a data source of endpoint lifecycle events; its extractors are ENDPOINT_EXTRACTORs
    ENDPOINT_EVENT_SOURCE = "endpoint-event-source"
    ENDPOINT_EXTRACTOR = "endpoint-extractor"
    #: a data source of Kubernetes object events (`k8s-notification-source`); its extractors are
    #: NOTIFICATION_EXTRACTORs
    NOTIFICATION_SOURCE = "notification-source"
    NOTIFICATION_EXTRACTOR = "notification-extractor"
    FAIRNESS_POLICY = "fairness-policy"
    ORDERING_POLICY = "ordering-policy"
    USAGE_LIMIT_POLICY = "usage-limit-policy"


class ScorerCategory(StrEnum):
    """What a scorer is for; documents intent (upstream's Affinity / Distribution / Balance)."""

    AFFINITY = "affinity"
    DISTRIBUTION = "distribution"
    BALANCE = "balance"


class Plugin(Protocol):
    """Every plugin has a typed name (its registered type and its configured name)."""

    @property
    def typed_name(self) -> TypedName: ...


class Filter(Plugin, Protocol):
    def filter(
        self, cycle: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Sequence[Endpoint]: ...


class Scorer(Plugin, Protocol):
    @property
    def category(self) -> ScorerCategory: ...

    def score(
        self, cycle: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]: ...


class Picker(Plugin, Protocol):
    def pick(
        self, cycle: CycleState, request: InferenceRequest, scored: Sequence[ScoredEndpoint]
    ) -> ProfileRunResult: ...


class ProfileHandler(Plugin, Protocol):
    def pick_profiles(
        self,
        cycle: CycleState,
        request: InferenceRequest,
        profiles: Sequence[str],
        results: Mapping[str, ProfileRunResult | None],
    ) -> Sequence[str]: ...

    def process_results(
        self,
        cycle: CycleState,
        request: InferenceRequest,
        results: Mapping[str, ProfileRunResult | None],
    ) -> SchedulingResult: ...


class RequestParser(Plugin, Protocol):
    """Turns a request body into an `InferenceRequest`; raises `RequestError(BAD_REQUEST)` on bad input."""

    def parse(
        self, request_id: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> InferenceRequest: ...


class DataProducer(Plugin, Protocol):
    """Runs before scheduling and writes per-request data into the cycle state for scorers to read."""

    def prepare_data(
        self, cycle: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> None: ...


class Admitter(Plugin, Protocol):
    """Returns None to admit, or a reason string to deny (the request gets a 429)."""

    def admit(
        self, cycle: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> str | None: ...


class PreRequest(Plugin, Protocol):
    """Runs once a target is chosen, before the request is forwarded."""

    def pre_request(self, cycle: CycleState, request: InferenceRequest, result: SchedulingResult) -> None: ...


class ResponseReceived(Plugin, Protocol):
    """Runs when the response headers arrive."""

    def response_received(
        self, cycle: CycleState, request: InferenceRequest, response: ResponseInfo, result: SchedulingResult
    ) -> None: ...


class ResponseComplete(Plugin, Protocol):
    """Runs exactly once per scheduled request: on end of response, error, or client disconnect."""

    def response_complete(
        self, cycle: CycleState, request: InferenceRequest, response: ResponseInfo, result: SchedulingResult
    ) -> None: ...


class SaturationDetector(Plugin, Protocol):
    """0.0 = idle, >= 1.0 = saturated, for the given endpoints at monotonic time `now`."""

    def saturation(self, endpoints: Sequence[Endpoint], now: float) -> float: ...


@dataclass(frozen=True, slots=True)
class EndpointEvent:
    """An endpoint joined or changed (`deleted` False) or left the pool (`deleted` True)."""

    endpoint: Endpoint
    deleted: bool = False


@runtime_checkable
class EndpointExtractor(Protocol):
    """Wired under an `endpoint-notification-source` in `dataLayer`: told each endpoint event, off the
    request path (in the data layer's loop), and every current endpoint when its pipeline goes live."""

    def extract_endpoint(self, event: EndpointEvent) -> None: ...


class NotificationEventType(StrEnum):
    """What happened to a watched Kubernetes object (upstream `EventAddOrUpdate` / `EventDelete`)."""

    ADD_OR_UPDATE = "add-or-update"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class NotificationEvent:
    """A watched Kubernetes object was created or changed (`ADD_OR_UPDATE`, its new state), or deleted
    (`DELETE`, its last known state; only `metadata.name` and `metadata.namespace` are sure to be there).

    `object` is the object as the API server sends it (plain JSON: `apiVersion`, `kind`, `metadata`,
    `spec`, `status`, ...), read-only: a copy of its own, never shared with another extractor.
    """

    type: NotificationEventType
    object: Mapping[str, Any]

    @property
    def deleted(self) -> bool:
        return self.type is NotificationEventType.DELETE

    @property
    def name(self) -> str:
        return str((self.object.get("metadata") or {}).get("name") or "")

    @property
    def namespace(self) -> str:
        return str((self.object.get("metadata") or {}).get("namespace") or "")


@runtime_checkable
class NotificationExtractor(Protocol):
    """Wired under a `k8s-notification-source` in `dataLayer`: told each add/update and delete of the
    objects that source watches, in order, off the request path (in the event loop, from the data layer's
    watch); and every current object, as an add, when its pipeline goes live while the watch runs."""

    def extract_notification(self, event: NotificationEvent) -> None: ...


@runtime_checkable
class EndpointObserver(Protocol):
    """Optional: told the current endpoint keys whenever pool membership changes (to purge state)."""

    def endpoints_changed(self, keys: frozenset[str]) -> None: ...


@runtime_checkable
class ResponseReader(Protocol):
    """Optional: a response hook (ResponseReceived / ResponseComplete) that only reads `ResponseInfo`: it
    sets no response header and no dynamic metadata. When every hook says so, the proxy need not show the
    routing stream the response at all (docs/protocol.md section 5): the observer stream reads it."""

    @property
    def reads_response_only(self) -> bool: ...


@runtime_checkable
class ResponseWatcher(Protocol):
    """Optional: a response hook that reads `ResponseInfo.first_byte_at` (the moment the first response
    byte passed the proxy, e.g. a streamed response's first token).

    Stamping it needs the response body to be observed, which costs the EPP a message per chunk: the
    pipeline asks for the body only when a plugin says `reads_first_byte` is True (see docs/protocol.md).
    """

    @property
    def reads_first_byte(self) -> bool: ...


@runtime_checkable
class SharedState(Protocol):
    """Optional: a plugin whose state the other processes routing for the same pool must also see (the
    workers of one pod, see `epp.workers.statebus`): routing history, in-flight load.

    Nothing is shared until `start_sharing()`; from then on the plugin keeps what changed locally and hands
    it over in `export_changes()` (called shortly after the director reports a change, never on the
    request path of another plugin), as plain data (msgpack: None, bool, int, float, str, bytes, lists,
    dicts). Another process's changes arrive in `import_changes(origin, changes)`; delivery is
    best effort (a change may be lost, never reordered within one origin), so absolute values are better
    than increments where they fit. `forget_origin` drops what a process that is gone contributed.
    """

    def start_sharing(self) -> None: ...

    def export_changes(self) -> Any | None: ...

    def import_changes(self, origin: str, changes: Any) -> None: ...

    def forget_origin(self, origin: str) -> None: ...


@runtime_checkable
class SharedSnapshot(Protocol):
    """Optional, beside `SharedState`: a plugin whose whole shared state a replica that starts can take
    from a running one (`--ha-mode active-active`), so it does not route cold: e.g. the prefix index.

    `export_snapshot()` returns plain data (as `export_changes`); `import_snapshot(origin, data)` merges it
    into what the plugin holds. Transient state (in-flight counts) need not be in it: it is refreshed by
    the changes that follow within milliseconds under load.
    """

    def export_snapshot(self) -> Any: ...

    def import_snapshot(self, origin: str, snapshot: Any) -> None: ...


@runtime_checkable
class BackgroundTask(Protocol):
    """Optional: a plugin that needs a background loop (I/O about the fleet belongs to the datalayer).

    `run` is started when the pipeline holding the plugin goes live and cancelled when it is retired.
    """

    async def run(self) -> None: ...
