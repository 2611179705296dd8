"""`precise-prefix-cache-producer`: prefix matches from the engines' own KV-cache events.

Per request (`prepare_data`, no I/O): the prompt's token ids (see `tokens.py`) are cut into
chained block keys at each candidate's block size, and matched
- for endpoints with a *live* event feed, against the precise index (what the engine reported it holds,
  plus unexpired speculative entries, `speculation.py`), counting the leading blocks held without a gap;
- for the others, against an approximate index of this EPP's own routing history, keyed the same way
  (exactly what `approx-prefix-cache-producer` does, but over token keys).
The result is written as `PrefixCacheMatchInfo` (so `prefix-cache-scorer`, `prefix-cache-affinity-filter`,
`hot-prefix-spill-filter` and `prefill-cost-scorer` all read it unchanged) and under its own data key
`PrecisePrefixCacheMatchInfo` (read by `precise-prefix-cache-scorer`). Requests whose tokens cannot be told
(text with `tokenizer: request`, salted requests) are keyed by characters like the approximate producer and
matched against the history only.

Once a target is picked (`pre_request`) its keys are added to the history, and for a live endpoint as
speculative entries (`speculativeTtlSeconds`) that the engine's `BlockStored` later confirms.

Live = the endpoint's event feed has delivered at least one batch and its events agree with our keys
(`agreement.py`: the guard against a tokenizer mismatch, which falls the endpoint back to the history).

The events themselves are the data layer's: this plugin declares the subscription its parameters describe
(`kv_event_subscription`: addresses, template, discovery, topic, resync, cap) and the plugin runtime starts
the `epp.datalayer.kvevents` source for it when the pipeline goes live and hands over the source's
`PreciseIndex` (`attach_kv_events`); the subscriptions, discovery, decoding and applying happen there, in
background loops. Here the index is only read, plus told (a listener, called after each applied batch)
the keys each `BlockStored` carried, which settle expectations and speculative entries. Until attached
(or with nowhere to subscribe) the producer reads an index of its own that nothing feeds, so every
endpoint is matched against the history (tests and the quality probe feed that index directly).
Several EPP replicas subscribed to the same publishers build the same index, so they agree on cache state
without talking to each other.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from epp.datalayer.kvevents.index import PreciseIndex
from epp.datalayer.kvevents.subscription import KVEventSubscription
from epp.framework.cycle import CycleState, StateKey
from epp.framework.handle import Handle
from epp.framework.plugins import PluginKind
from epp.framework.types import Endpoint, InferenceRequest, ResponseInfo, SchedulingResult, TypedName
from epp.plugins.datakeys import (
    PREFIX_CACHE_MATCH_INFO,
    PREFIX_CACHE_MATCH_INFO_KEY,
    PrefixCacheMatchInfo,
    PrefixGroup,
)
from epp.plugins.kvevents.agreement import AgreementGuard
from epp.plugins.kvevents.params import PrecisePrefixParams
from epp.plugins.kvevents.speculation import SpeculativeEntries
from epp.plugins.kvevents.tokens import BASE_SEED, Char4BlockKeys, block_keys, lora_seed, render_llama3_chat
from epp.plugins.prefix.hashing import AVERAGE_CHARS_PER_TOKEN, block_hashes, seed_hash
from epp.plugins.prefix.index import PrefixIndex
from epp.registry import PluginType

__all__ = [
    "PRECISE_PREFIX_CACHE_MATCH_INFO",
    "PRECISE_PREFIX_CACHE_MATCH_INFO_KEY",
    "PRECISE_PREFIX_CACHE_PRODUCER",
    "PrecisePrefixCacheProducer",
]

TYPE_NAME = "precise-prefix-cache-producer"
#: Data-key name of the match written by this producer (also written as `PrefixCacheMatchInfo`).
PRECISE_PREFIX_CACHE_MATCH_INFO = "PrecisePrefixCacheMatchInfo"
PRECISE_PREFIX_CACHE_MATCH_INFO_KEY: StateKey[PrefixCacheMatchInfo] = StateKey(
    PRECISE_PREFIX_CACHE_MATCH_INFO
)

#: An expectation is settled at the latest this long after routing, or this long after the response ended.
_EXPECTATION_HORIZON = 120.0
_COMPLETION_GRACE = 2.0


@dataclass(slots=True)
class _Request:
    """What the producer remembers about one request between its hooks."""

    keys: dict[int, tuple[int, ...]]  # block size -> keys
    precise: bool  # token keys (matchable against events) or character keys (history only)
    info: PrefixCacheMatchInfo
    target: str = ""
    speculated: tuple[int, ...] = ()
    expected: int | None = None  # the deepest new key the engine should report


class PrecisePrefixCacheProducer:
    """DataProducer + PreRequest + ResponseComplete + EndpointObserver + KVEventConsumer, reading a
    `PreciseIndex` the data layer's KV-event source feeds."""

    def __init__(
        self,
        typed_name: TypedName,
        params: PrecisePrefixParams | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.typed_name = typed_name
        self.params = params or PrecisePrefixParams()
        self._clock = clock
        #: what the engines reported they hold (read only); see `attach_kv_events`
        self.index = self._own_index()
        self.index.add_stored_listener(self._stored)
        self.history = PrefixIndex()
        self.speculative = SpeculativeEntries()
        self.agreement = AgreementGuard()
        self._char4 = Char4BlockKeys()
        self._state_key: StateKey[_Request] = StateKey(f"{TYPE_NAME}/{typed_name.name}")

    # ---- the event index ---------------------------------------------------------------------------

    def kv_event_subscription(self) -> KVEventSubscription | None:
        """What the data layer must subscribe to for this producer (None: its parameters give no way to
        find a publisher, so no source is started)."""
        p = self.params
        subscription = KVEventSubscription(
            addresses=tuple(sorted(p.kvEventsAddresses.items())),
            template=p.kvEventsAddress,
            port_offset=p.kvEventsPortOffset,
            discover=p.discoverKvEventSources,
            topic_filter=p.topicFilter,
            resync_seconds=p.resyncSeconds,
            max_blocks_per_endpoint=p.maxBlocksPerEndpoint,
        )
        return subscription if subscription.finds_publishers else None

    def attach_kv_events(self, index: PreciseIndex | None) -> None:
        """Read `index` from now on (None: an index of its own again, which nothing feeds)."""
        new = index if index is not None else self._own_index()
        old = self.index
        if new is old:
            return
        new.add_stored_listener(self._stored)
        self.index = new
        old.remove_stored_listener(self._stored)

    def _own_index(self) -> PreciseIndex:
        return PreciseIndex(max_blocks_per_endpoint=self.params.maxBlocksPerEndpoint)

    # ---- which endpoints are precise ---------------------------------------------------------------

    def live(self, key: str) -> bool:
        """Whether `key`'s matches come from its events (else from the routing history)."""
        if self.index.batches(key) == 0:
            return False
        return not self.agreement.mismatched(key)

    def _stored(self, endpoint: str, keys: Sequence[int]) -> None:
        """Told by the index the keys a BlockStored carried: they confirm guesses and expectations."""
        self.speculative.confirm(endpoint, keys)
        self.agreement.confirm(endpoint, keys)

    # ---- keys ----------------------------------------------------------------------------------------

    def _block_size(self, endpoint: Endpoint) -> int:
        return (
            self.index.block_size(endpoint.key)
            or endpoint.metrics.cache_block_size
            or self.params.blockSizeTokens
        )

    def _keys(self, request: InferenceRequest, sizes: set[int]) -> tuple[dict[int, tuple[int, ...]], bool]:
        p = self.params
        if not request.cache_salt:
            lora = request.target_model if request.target_model in self.index.lora_names else None
            seed = lora_seed(lora) if lora else BASE_SEED
            if request.token_ids is not None:
                tokens = request.token_ids
                return {s: block_keys(tokens, s, seed, p.maxPrefixBlocksToMatch) for s in sizes}, True
            if p.tokenizer == "char4":
                text = request.prompt
                if text is None and request.messages is not None:
                    text = render_llama3_chat(request.messages)
                if text is not None:
                    return {s: self._char4.keys(text, s, seed, p.maxPrefixBlocksToMatch) for s in sizes}, True
        seed = seed_hash(request.target_model, request.cache_salt)
        material = request.prefix_material
        return {
            s: block_hashes(material, seed, s * AVERAGE_CHARS_PER_TOKEN, p.maxPrefixBlocksToMatch)
            for s in sizes
        }, False

    # ---- hooks ---------------------------------------------------------------------------------------

    def prepare_data(
        self, cycle: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> None:
        info, keys, precise = self.match(request, endpoints)
        cycle.write(PREFIX_CACHE_MATCH_INFO_KEY, info)
        cycle.write(PRECISE_PREFIX_CACHE_MATCH_INFO_KEY, info)
        cycle.write(self._state_key, _Request(keys, precise, info))

    def match(
        self, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> tuple[PrefixCacheMatchInfo, dict[int, tuple[int, ...]], bool]:
        sizes_by_key = {e.key: self._block_size(e) for e in endpoints}
        counts: dict[int, int] = {}
        for size in sizes_by_key.values():
            counts[size] = counts.get(size, 0) + 1
        default = (
            min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0] if counts else self.params.blockSizeTokens
        )
        overrides = {k: s for k, s in sizes_by_key.items() if s != default}
        keys, precise = self._keys(request, set(counts) or {default})
        now = self._clock()
        groups: dict[int, PrefixGroup] = {}
        scores: dict[str, float] = {}
        for size, size_keys in keys.items():
            members = [k for k, s in sizes_by_key.items() if s == size]
            live = [k for k in members if precise and self.live(k)] if size_keys else []
            matches: dict[str, int] = {}
            if live:
                found = self.speculative.match(self.index, size_keys, live, now, self.params.otherTierWeight)
                matches.update(found.blocks)
                for k, w in found.weighted.items():
                    scores[k] = w / len(size_keys)
            if size_keys:
                rest = set(members) - set(live)
                if rest:
                    for k, n in self.history.match(size_keys).items():
                        if k in rest:
                            matches[k] = n
                            scores[k] = n / len(size_keys)
            groups[size] = PrefixGroup(size, size_keys, matches)
        return PrefixCacheMatchInfo(groups, default, overrides, scores), keys, precise

    def pre_request(self, cycle: CycleState, request: InferenceRequest, result: SchedulingResult) -> None:
        targets = result.targets
        if not targets:
            return
        state = cycle.read(self._state_key)
        if state is None:
            state = _Request(*_reorder(self.match(request, targets)))
            cycle.write(self._state_key, state)
        target = targets[0]
        size = self._block_size(target)
        found = state.keys.get(size)
        keys = found if found is not None else self._keys(request, {size})[0][size]
        if not keys:
            return
        capacity = target.metrics.cache_num_blocks or self.params.lruCapacityPerServer
        self.history.add(target.key, keys, capacity)
        if not state.precise or self.index.batches(target.key) == 0:
            return
        now = self._clock()
        ttl = self.params.speculativeTtlSeconds
        state.target = target.key
        if not self.index.holds(target.key, keys[-1]):
            # settled when a BlockStored carries it, else when the request has ended (plus a grace)
            state.expected = keys[-1]
            self.agreement.expect(target.key, keys[-1], now + max(ttl, _EXPECTATION_HORIZON), now)
        if ttl > 0 and self.live(target.key):
            self.speculative.add(self.index, target.key, keys, now + ttl, now)
            state.speculated = keys

    @property
    def reads_response_only(self) -> bool:
        """Its response hooks only read (ResponseReader)."""
        return True

    def response_complete(
        self, cycle: CycleState, request: InferenceRequest, response: ResponseInfo, result: SchedulingResult
    ) -> None:
        """The engine has prefilled (or dropped) the request: its blocks must show up in events soon."""
        state = cycle.read(self._state_key)
        if state is None or not state.target:
            return
        now = self._clock()
        deadline = now + _COMPLETION_GRACE
        if state.speculated:
            self.speculative.shorten(state.target, state.speculated, deadline)
        if state.expected is not None:
            failed = bool(response.status) and response.status != 200
            self.agreement.settle(state.target, state.expected, deadline, failed=failed)

    def endpoints_changed(self, keys: frozenset[str]) -> None:
        """Forget what this plugin holds about endpoints that left (the index is the source's to purge)."""
        self.history.retain(keys)
        self.speculative.retain(keys)
        self.agreement.retain(keys)

    def index_size(self) -> int:
        return self.index.size() + self.history.size()


def _reorder(
    matched: tuple[PrefixCacheMatchInfo, dict[int, tuple[int, ...]], bool],
) -> tuple[dict[int, tuple[int, ...]], bool, PrefixCacheMatchInfo]:
    info, keys, precise = matched
    return keys, precise, info


def _factory(name: str, params: PrecisePrefixParams, handle: Handle) -> PrecisePrefixCacheProducer:
    return PrecisePrefixCacheProducer(TypedName(TYPE_NAME, name), params, clock=handle.clock)


PRECISE_PREFIX_CACHE_PRODUCER = PluginType(
    type_name=TYPE_NAME,
    params_model=PrecisePrefixParams,
    factory=_factory,
    kinds=frozenset({PluginKind.DATA_PRODUCER, PluginKind.PRE_REQUEST, PluginKind.RESPONSE_COMPLETE}),
    description="Prefix matches from the engines' KV-cache events over ZMQ (approximate routing history for "
    "endpoints without events); writes PrefixCacheMatchInfo.",
    produces=frozenset({PREFIX_CACHE_MATCH_INFO, PRECISE_PREFIX_CACHE_MATCH_INFO}),
    stateful=True,
)
