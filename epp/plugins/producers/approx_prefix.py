"""`approx-prefix-cache-producer`: estimates, per candidate, how much of the prompt is already cached.

Before scheduling it hashes the prompt into chained blocks and matches them against the index of what was
sent where (`PrefixCacheMatchInfo` in the cycle state, read by `prefix-cache-scorer` and
`prefix-cache-affinity-filter`). Once a target is chosen (PreRequest) it records the blocks for the primary
target and for a "prefill" profile's target. When the proxy reports that another endpoint of the list
served the request (ResponseReceived), the record moves to that endpoint. Endpoints that leave the pool are
purged (EndpointObserver). Shared (SharedState): every record and correction is replayed by the other
processes routing for the pool, so their indexes see this process's routing too.

Block size: with `autoTune`, an endpoint that reports `cache_block_size` uses it; others use the size most
candidates report; without reports, the configured size. Each distinct size hashes the prompt once.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from epp.framework.cycle import CycleState, StateKey
from epp.framework.handle import Handle, PluginMetrics
from epp.framework.plugins import PluginKind
from epp.framework.types import Endpoint, InferenceRequest, ResponseInfo, SchedulingResult, TypedName
from epp.plugins.common import same_address
from epp.plugins.datakeys import (
    PREFIX_CACHE_MATCH_INFO,
    PREFIX_CACHE_MATCH_INFO_KEY,
    PrefixCacheMatchInfo,
    PrefixGroup,
)
from epp.plugins.prefix.hashing import AVERAGE_CHARS_PER_TOKEN, block_hashes, seed_hash
from epp.plugins.prefix.index import PrefixIndex
from epp.plugins.prefix.params import PrefixCacheParams
from epp.registry import PluginType

__all__ = ["APPROX_PREFIX_CACHE_PRODUCER", "PREFILL_PROFILE", "ApproxPrefixCacheProducer"]

log = logging.getLogger(__name__)

TYPE_NAME = "approx-prefix-cache-producer"
#: The profile name upstream hard-codes for the prefill half of P/D disaggregation.
PREFILL_PROFILE = "prefill"


@dataclass(slots=True)
class _RequestState:
    """What the producer remembers about one request between its hooks."""

    info: PrefixCacheMatchInfo
    seed: int
    candidates: Sequence[Endpoint]
    # endpoint key -> hashes this request added for it (to undo when another endpoint served)
    added: dict[str, list[int]] = field(default_factory=dict)
    corrected: bool = False


class ApproxPrefixCacheProducer:
    """DataProducer + PreRequest + ResponseReceived + EndpointObserver over one `PrefixIndex`."""

    __slots__ = ("_known", "_metrics", "_outbox", "_state_key", "index", "params", "typed_name")

    def __init__(
        self,
        typed_name: TypedName,
        params: PrefixCacheParams | None = None,
        metrics: PluginMetrics | None = None,
        index: PrefixIndex | None = None,
    ) -> None:
        self.typed_name = typed_name
        self.params = params or PrefixCacheParams()
        self.index = index or PrefixIndex()
        self._metrics = metrics
        self._state_key: StateKey[_RequestState] = StateKey(f"{TYPE_NAME}/{typed_name.name}")
        self._outbox: list[list[Any]] | None = None  # local changes not yet exported (when shared)
        self._known: frozenset[str] | None = None  # pool membership, once told

    # ---- block sizes and hashing --------------------------------------------------------------------

    def block_size_for(self, endpoint: Endpoint, default: int) -> int:
        if self.params.autoTune:
            size = endpoint.metrics.cache_block_size
            if size > 0:
                return size
        return default

    def _default_block_size(self, endpoints: Sequence[Endpoint]) -> tuple[int, dict[str, int]]:
        """The consensus block size of the candidates, and the endpoints that report another size."""
        configured = self.params.block_size_tokens
        if not self.params.autoTune or not endpoints:
            return configured, {}
        sizes = [e.metrics.cache_block_size for e in endpoints]
        first = sizes[0]
        if sizes.count(first) == len(sizes):
            return (first if first > 0 else configured), {}
        counts = Counter(s for s in sizes if s > 0)
        # most common reported size; ties go to the smaller size so the choice is deterministic
        default = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        overrides = {e.key: s for e, s in zip(endpoints, sizes, strict=True) if s > 0 and s != default}
        return default, overrides

    def _hashes(self, request: InferenceRequest, seed: int, block_size: int) -> tuple[int, ...]:
        return block_hashes(
            request.prefix_material,
            seed,
            block_size * AVERAGE_CHARS_PER_TOKEN,
            self.params.max_blocks(block_size),
        )

    def match(self, request: InferenceRequest, endpoints: Sequence[Endpoint]) -> PrefixCacheMatchInfo:
        """Hash the prompt and match it against the index for `endpoints`."""
        seed = seed_hash(request.target_model, request.cache_salt)
        return self._match(request, endpoints, seed)

    def _match(
        self, request: InferenceRequest, endpoints: Sequence[Endpoint], seed: int
    ) -> PrefixCacheMatchInfo:
        default, overrides = self._default_block_size(endpoints)
        groups: dict[int, PrefixGroup] = {}
        scores: dict[str, float] = {}
        for size in {default, *overrides.values()}:
            hashes = self._hashes(request, seed, size)
            matches = self.index.match(hashes) if hashes else {}
            if overrides:
                matches = {k: n for k, n in matches.items() if overrides.get(k, default) == size}
            groups[size] = PrefixGroup(size, hashes, matches)
            if matches:
                total = float(len(hashes))
                for k, n in matches.items():
                    scores[k] = n / total
        return PrefixCacheMatchInfo(groups, default, overrides, scores)

    # ---- hooks --------------------------------------------------------------------------------------

    def prepare_data(
        self, cycle: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> None:
        seed = seed_hash(request.target_model, request.cache_salt)
        info = self._match(request, endpoints, seed)
        cycle.write(PREFIX_CACHE_MATCH_INFO_KEY, info)
        cycle.write(self._state_key, _RequestState(info, seed, endpoints))

    def pre_request(self, cycle: CycleState, request: InferenceRequest, result: SchedulingResult) -> None:
        targets = result.targets
        if not targets:
            return
        state = cycle.read(self._state_key)
        if state is None:  # prepare_data did not run for this request: hash now
            seed = seed_hash(request.target_model, request.cache_salt)
            state = _RequestState(self._match(request, targets, seed), seed, targets)
            cycle.write(self._state_key, state)
        record = [targets[0]]
        prefill = result.profile_results.get(PREFILL_PROFILE)
        if prefill is not None and prefill.targets and prefill.targets[0].key != targets[0].key:
            record.append(prefill.targets[0])
        for endpoint in record:
            state.added[endpoint.key] = self._record(request, state, endpoint)
        self._report(state.info, targets[0])

    @property
    def reads_response_only(self) -> bool:
        """Its response hooks only read (ResponseReader)."""
        return True

    def response_received(
        self, cycle: CycleState, request: InferenceRequest, response: ResponseInfo, result: SchedulingResult
    ) -> None:
        served = response.served_endpoint
        targets = result.targets
        if not served or not targets or same_address(served, targets[0]):
            return
        state = cycle.read(self._state_key)
        if state is None or state.corrected:
            return
        endpoint = _find(served, targets) or _find(served, state.candidates)
        if endpoint is None:
            log.debug("served endpoint %s is not a candidate of request %s", served, request.request_id)
            return
        state.corrected = True
        picked = targets[0]
        removed = state.added.pop(picked.key, ())
        self.index.remove(picked.key, removed)
        if self._outbox is not None and removed:
            self._outbox.append(["r", picked.key, list(removed)])
        state.added[endpoint.key] = self._record(request, state, endpoint)

    def endpoints_changed(self, keys: frozenset[str]) -> None:
        self._known = keys
        purged = self.index.retain(keys)
        if purged:
            log.debug("prefix index purged endpoints %s", purged)

    # ---- SharedState --------------------------------------------------------------------------------

    def start_sharing(self) -> None:
        if self._outbox is None:
            self._outbox = []

    def export_changes(self) -> list[list[Any]] | None:
        """Records (`["a", endpoint, hashes, capacity]`) and corrections (`["r", endpoint, hashes]`)."""
        out = self._outbox
        if not out:
            return None
        self._outbox = []
        return out

    def import_changes(self, origin: str, changes: Any) -> None:
        known = self._known
        for change in changes:
            kind, key = change[0], change[1]
            if known is not None and key not in known:
                continue  # left the pool here already (or not yet known): nothing to hint at
            if kind == "a":
                self.index.add(key, change[2], change[3])
            elif kind == "r":
                self.index.remove(key, change[2])

    def forget_origin(self, origin: str) -> None:
        """Nothing to forget: what another process routed is still in the engines' caches."""

    # ---- SharedSnapshot -------------------------------------------------------------------------------

    def export_snapshot(self) -> list[list[Any]]:
        """The whole index: `[endpoint, hashes most recently used first, capacity]` per endpoint."""
        index = self.index
        out: list[list[Any]] = []
        for key in sorted(index.endpoints()):
            capacity = index.capacity(key)
            blocks = index.blocks(key)
            if capacity and blocks:
                out.append([key, blocks[::-1], capacity])
        return out

    def import_snapshot(self, origin: str, snapshot: Any) -> None:
        self.import_changes(origin, [["a", key, hashes, capacity] for key, hashes, capacity in snapshot])

    def index_size(self) -> int:
        return self.index.size()

    # ---- internals ----------------------------------------------------------------------------------

    def _record(self, request: InferenceRequest, state: _RequestState, endpoint: Endpoint) -> list[int]:
        size = self.block_size_for(endpoint, state.info.default_block_size)
        group = state.info.groups.get(size)
        hashes = group.hashes if group is not None else self._hashes(request, state.seed, size)
        if not hashes:
            return []
        capacity = self.params.lruCapacityPerServer
        if self.params.autoTune and endpoint.metrics.cache_num_blocks > 0:
            capacity = endpoint.metrics.cache_num_blocks
        if self._outbox is not None:
            self._outbox.append(["a", endpoint.key, list(hashes), capacity])
        return self.index.add(endpoint.key, hashes, capacity)

    def _report(self, info: PrefixCacheMatchInfo, endpoint: Endpoint) -> None:
        if self._metrics is None:
            return
        size = self.block_size_for(endpoint, info.default_block_size)
        group = info.groups.get(size)
        if group is None or not group.hashes:
            return
        matched = group.matches.get(endpoint.key, 0)
        self._metrics.record_prefix_match(
            matched / len(group.hashes), matched * size * AVERAGE_CHARS_PER_TOKEN
        )


def _find(address: str, endpoints: Sequence[Endpoint]) -> Endpoint | None:
    for e in endpoints:
        if same_address(address, e):
            return e
    return None


def _factory(name: str, params: PrefixCacheParams, handle: Handle) -> ApproxPrefixCacheProducer:
    return ApproxPrefixCacheProducer(TypedName(TYPE_NAME, name), params, handle.metrics)


APPROX_PREFIX_CACHE_PRODUCER = PluginType(
    type_name=TYPE_NAME,
    params_model=PrefixCacheParams,
    factory=_factory,
    kinds=frozenset({PluginKind.DATA_PRODUCER, PluginKind.PRE_REQUEST, PluginKind.RESPONSE_RECEIVED}),
    description="Approximate prefix-cache index: matches the prompt's chained block hashes per endpoint.",
    produces=frozenset({PREFIX_CACHE_MATCH_INFO}),
    stateful=True,
)
