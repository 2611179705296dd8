"""`inflight-load-producer`: counts the requests and estimated tokens the EPP has in flight per endpoint.

PreRequest adds the request to each profile's first target; ResponseComplete (which runs exactly once per
scheduled request, also on errors and disconnects) takes exactly that back out. PrepareData publishes a
snapshot (`InFlightLoad` per endpoint key) for `token-load-scorer` and the concurrency detector. Endpoints
that leave the pool are forgotten (EndpointObserver).

Token estimate (upstream's SimpleTokenEstimator): input = request bytes / 4 (at least 1), output = 1.5 x
input, total = input + output.

Shared (SharedState): each process exports its own per-endpoint counts when they change (absolute
values) and adds the other processes' counts to what it publishes.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

from epp.framework.cycle import CycleState, StateKey
from epp.framework.handle import Handle
from epp.framework.plugins import PluginKind
from epp.framework.types import Endpoint, InferenceRequest, ResponseInfo, SchedulingResult, TypedName
from epp.plugins.datakeys import INFLIGHT_LOAD, INFLIGHT_LOAD_KEY, NO_LOAD, InFlightLoad
from epp.plugins.origin_totals import OriginTotals, changed_rows
from epp.registry import EmptyParams, PluginType

__all__ = ["INFLIGHT_LOAD_PRODUCER", "InFlightLoadProducer", "estimate_tokens"]

TYPE_NAME = "inflight-load-producer"

OUTPUT_TO_INPUT_RATIO = 1.5


def estimate_tokens(request: InferenceRequest) -> int:
    """Estimated input + output tokens of a request."""
    if request.size_bytes > 0:
        tokens_in = max(1, request.size_bytes // 4)
    else:
        tokens_in = request.estimated_input_tokens
    return tokens_in + int(tokens_in * OUTPUT_TO_INPUT_RATIO)


class InFlightLoadProducer:
    """DataProducer + PreRequest + ResponseComplete + EndpointObserver over per-endpoint counters."""

    __slots__ = (
        "_epochs",
        "_exported",
        "_loads",
        "_lock",
        "_remote",
        "_state_key",
        "typed_name",
    )

    def __init__(self, typed_name: TypedName) -> None:
        self.typed_name = typed_name
        self._lock = threading.Lock()
        self._loads: dict[str, InFlightLoad] = {}
        # bumped when an endpoint leaves the pool, so a late completion cannot release a newer count
        self._epochs: dict[str, int] = {}
        # what this request added: (endpoint key, tokens, epoch), so completion releases exactly that
        self._state_key: StateKey[list[tuple[str, int, int]]] = StateKey(f"{TYPE_NAME}/{typed_name.name}")
        # other processes' counts, summed per endpoint
        self._remote: OriginTotals[InFlightLoad] = OriginTotals(_plus, _some)
        self._exported: dict[str, InFlightLoad] = {}

    def load(self, key: str) -> InFlightLoad:
        local = self._loads.get(key)
        remote = self._remote.total.get(key)
        if remote is None:
            return local or NO_LOAD
        return remote if local is None else _plus(local, remote)

    def snapshot(self) -> Mapping[str, InFlightLoad]:
        with self._lock:
            if not self._remote:
                return dict(self._loads)
            out = dict(self._remote.total)
            for key, local in self._loads.items():
                remote = out.get(key)
                out[key] = local if remote is None else _plus(local, remote)
            return out

    def prepare_data(
        self, cycle: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> None:
        cycle.write(INFLIGHT_LOAD_KEY, self.snapshot())

    def pre_request(self, cycle: CycleState, request: InferenceRequest, result: SchedulingResult) -> None:
        if cycle.read(self._state_key) is not None:
            return  # already counted
        tokens = estimate_tokens(request)
        keys: list[str] = []
        for profile_result in result.profile_results.values():
            if profile_result is not None and profile_result.targets:
                key = profile_result.targets[0].key
                if key not in keys:
                    keys.append(key)
        with self._lock:
            added = [(k, tokens, self._epochs.get(k, 0)) for k in keys]
            for key, t, _epoch in added:
                old = self._loads.get(key)
                if old is None:
                    self._loads[key] = InFlightLoad(1, t)
                else:
                    self._loads[key] = InFlightLoad(old.requests + 1, old.tokens + t)
        cycle.write(self._state_key, added)

    @property
    def reads_response_only(self) -> bool:
        """Its response hooks only read (ResponseReader)."""
        return True

    def response_complete(
        self, cycle: CycleState, request: InferenceRequest, response: ResponseInfo, result: SchedulingResult
    ) -> None:
        added = cycle.read(self._state_key)
        if not added:
            return
        cycle.write(self._state_key, [])  # a second call releases nothing
        with self._lock:
            for key, t, epoch in added:
                old = self._loads.get(key)
                if old is None or self._epochs.get(key, 0) != epoch:
                    continue  # the endpoint left the pool meanwhile
                requests, tokens = old.requests - 1, old.tokens - t
                if requests <= 0:
                    del self._loads[key]
                else:
                    self._loads[key] = InFlightLoad(requests, max(0, tokens))

    def endpoints_changed(self, keys: frozenset[str]) -> None:
        with self._lock:
            for key in [k for k in self._loads if k not in keys]:
                del self._loads[key]
                self._epochs[key] = self._epochs.get(key, 0) + 1
            self._remote.retain(keys)

    # ---- SharedState: per-endpoint counts ----------------------------------------------------------------

    def start_sharing(self) -> None:
        """Nothing extra to keep: the counts are exported when asked."""

    def export_changes(self) -> list[list[Any]] | None:
        """Local counts that changed since the last export: `[endpoint, requests, tokens]` (0, 0: none)."""
        with self._lock:
            current = dict(self._loads)
            changed = changed_rows(self._exported, current, lambda v: (v.requests, v.tokens), (0, 0))
            self._exported = current
        return changed or None

    def import_changes(self, origin: str, changes: Any) -> None:
        with self._lock:
            for key, requests, tokens in changes:
                self._remote.set(origin, key, InFlightLoad(requests, tokens))

    def forget_origin(self, origin: str) -> None:
        with self._lock:
            self._remote.forget(origin)


def _some(load: InFlightLoad) -> bool:
    return load.requests > 0


def _plus(a: InFlightLoad, b: InFlightLoad) -> InFlightLoad:
    return InFlightLoad(a.requests + b.requests, a.tokens + b.tokens)


def _factory(name: str, params: EmptyParams, handle: Handle) -> InFlightLoadProducer:
    return InFlightLoadProducer(TypedName(TYPE_NAME, name))


INFLIGHT_LOAD_PRODUCER = PluginType(
    type_name=TYPE_NAME,
    params_model=EmptyParams,
    factory=_factory,
    kinds=frozenset({PluginKind.DATA_PRODUCER, PluginKind.PRE_REQUEST, PluginKind.RESPONSE_COMPLETE}),
    description="Counts in-flight requests and estimated tokens per endpoint (InFlightLoad).",
    produces=frozenset({INFLIGHT_LOAD}),
    stateful=True,
)
