"""precise-prefix-cache-producer without sockets: events fed to its index, history fallback, the agreement
guard, speculative entries, and the data it writes for the existing consumers."""

from __future__ import annotations

import pydantic
import pytest

from epp.datalayer.kvevents.events import AllCleared, EventBatch, Stored
from epp.datalayer.kvevents.index import PreciseIndex
from epp.datalayer.kvevents.subscription import KVEventSubscription
from epp.framework.cycle import CycleState
from epp.framework.types import ApiKind, Endpoint, EndpointMetrics, InferenceRequest
from epp.plugins.datakeys import PREFIX_CACHE_MATCH_INFO_KEY
from epp.plugins.kvevents.params import PrecisePrefixParams
from epp.plugins.kvevents.producer import (
    PRECISE_PREFIX_CACHE_MATCH_INFO_KEY,
    PRECISE_PREFIX_CACHE_PRODUCER,
    PrecisePrefixCacheProducer,
)
from epp.plugins.kvevents.scorer import PRECISE_PREFIX_CACHE_SCORER
from epp.plugins.kvevents.tokens import char4_tokens
from epp.tools.sim.kvcache import chain_block_hashes

from .._kit import handle, response, result, tn

BS = 16
M = EndpointMetrics(cache_block_size=BS, cache_num_blocks=1000, update_time=1.0)
A = Endpoint("a", "10.0.0.1", 8000, metrics=M)
B = Endpoint("b", "10.0.0.2", 8000, metrics=M)
C = Endpoint("c", "10.0.0.3", 8000, metrics=M)
TEXT = "the quick brown fox jumps over the lazy dog. " * 8  # 360 chars = 90 tokens = 5 full blocks


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(**params) -> tuple[PrecisePrefixCacheProducer, Clock]:
    clock = Clock()
    return PrecisePrefixCacheProducer(
        tn("precise-prefix-cache-producer"), PrecisePrefixParams(**params), clock=clock
    ), clock


def request(text: str = TEXT, rid: str = "r", **kw) -> InferenceRequest:
    return InferenceRequest(rid, "m", "m", ApiKind.COMPLETIONS, text.encode(), prompt=text, **kw)


def engine_store(p: PrecisePrefixCacheProducer, endpoint: str, tokens) -> None:
    """What the engine publishes after prefilling `tokens` (its own chain hashes, token ids)."""
    n = len(tokens) // BS
    hashes = chain_block_hashes(tokens, BS)[:n]
    p.index.apply(endpoint, EventBatch(0.0, (Stored(tuple(hashes), None, tuple(tokens[: n * BS]), BS),)))


def prepare(p, req, endpoints=(A, B, C)):
    cycle = CycleState()
    p.prepare_data(cycle, req, list(endpoints))
    return cycle


def test_live_endpoints_match_from_events_and_others_from_history() -> None:
    p, _ = make()
    tokens = char4_tokens(TEXT)
    engine_store(p, "a", tokens)  # a reports the blocks
    p.history.add("b", p.match(request(), [B])[1][BS], 1000)  # b: we once routed it there
    info = prepare(p, request()).read(PREFIX_CACHE_MATCH_INFO_KEY)
    assert info.match_blocks("a") == 5 and info.match_blocks("b") == 5 and info.match_blocks("c") == 0
    assert info.scores == {"a": 1.0, "b": 1.0}
    # the engine evicts: a's score follows the events, b's (no events) stays on the history
    engine_store(p, "a", [])  # a batch without blocks keeps it live
    p.index.apply("a", EventBatch(0.0, (AllCleared(),)))
    info = prepare(p, request()).read(PREFIX_CACHE_MATCH_INFO_KEY)
    assert info.match_blocks("a") == 0 and info.match_blocks("b") == 5


def test_both_data_keys_carry_the_same_match_and_the_scorer_reads_it() -> None:
    p, _ = make()
    engine_store(p, "a", char4_tokens(TEXT))
    cycle = prepare(p, request())
    assert cycle.read(PRECISE_PREFIX_CACHE_MATCH_INFO_KEY) is cycle.read(PREFIX_CACHE_MATCH_INFO_KEY)
    scorer = PRECISE_PREFIX_CACHE_SCORER.build("s", None, handle())
    assert scorer.score(cycle, request(), [A, B]) == {"a": 1.0, "b": 0.0}
    assert scorer.score(CycleState(), request(), [A]) == {"a": 0.0}


def test_pre_request_records_history_and_speculates_on_live_endpoints() -> None:
    p, clock = make(speculativeTtlSeconds=10.0)
    engine_store(p, "a", char4_tokens("unrelated text " * 10))  # a is live
    req = request()
    cycle = prepare(p, req)
    p.pre_request(cycle, req, result(A))
    # the next request of the same prefix sees a speculatively, before any BlockStored
    assert prepare(p, request(rid="r2")).read(PREFIX_CACHE_MATCH_INFO_KEY).match_blocks("a") == 5
    clock.now += 9.0  # still queued: still speculative
    assert prepare(p, request(rid="r3")).read(PREFIX_CACHE_MATCH_INFO_KEY).match_blocks("a") == 5
    p.response_complete(cycle, req, response(status=200), result(A))  # done, never confirmed
    clock.now += 2.5
    assert prepare(p, request(rid="r3")).read(PREFIX_CACHE_MATCH_INFO_KEY).match_blocks("a") == 0
    # without completion the TTL bounds it
    cycle = prepare(p, req)
    p.pre_request(cycle, req, result(A))
    clock.now += 10.5
    assert prepare(p, request(rid="r5")).read(PREFIX_CACHE_MATCH_INFO_KEY).match_blocks("a") == 0
    # b is not live: the history records it
    cycle = prepare(p, req)
    p.pre_request(cycle, req, result(B))
    assert prepare(p, request(rid="r4")).read(PREFIX_CACHE_MATCH_INFO_KEY).match_blocks("b") == 5


def test_an_endpoint_whose_events_never_match_falls_back_to_history() -> None:
    """A tokenizer mismatch: the engine stores blocks, but never the ones our keys predict."""
    p, clock = make()
    engine_store(p, "a", list(range(1000, 1016)))
    assert p.live("a")
    for i in range(10):
        text = f"request number {i} " * 10
        req = request(text, rid=f"r{i}")
        cycle = prepare(p, req)
        p.pre_request(cycle, req, result(A))
        clock.now += 20.0  # a long queue: no verdict while the request is in flight
        assert p.agreement.pending("a")
        engine_store(p, "a", list(range(2000 + 100 * i, 2000 + 100 * i + 32)))  # blocks of other tokens
        p.response_complete(cycle, req, response(status=200), result(A))
        clock.now += 2.5  # the grace after completion passes unconfirmed
    assert not p.live("a")
    # matches for a now come from the routing history
    assert (
        prepare(p, request("request number 3 " * 10)).read(PREFIX_CACHE_MATCH_INFO_KEY).match_blocks("a") > 0
    )


def test_confirmed_expectations_keep_the_endpoint_live() -> None:
    p, clock = make()
    engine_store(p, "a", list(range(1000, 1016)))
    for i in range(12):
        text = f"request number {i} " * 10
        req = request(text, rid=f"r{i}")
        cycle = prepare(p, req)
        p.pre_request(cycle, req, result(A))
        engine_store(p, "a", char4_tokens(text))
        p.response_complete(cycle, req, response(status=200), result(A))
        clock.now += 3.0
    assert p.live("a")
    assert p.agreement.outcomes("a") and all(p.agreement.outcomes("a"))


@pytest.mark.parametrize(
    ("kw", "precise"),
    [
        ({}, True),
        ({"cache_salt": "tenant-1"}, False),  # a salt changes the engine's hashes, not its token ids
    ],
)
def test_salted_requests_are_matched_on_history_only(kw, precise) -> None:
    p, _ = make()
    engine_store(p, "a", char4_tokens(TEXT))
    info, _keys, is_precise = p.match(request(**kw), [A])
    assert is_precise is precise
    assert info.match_blocks("a") == (5 if precise else 0)


def test_request_tokenizer_mode_keys_text_by_characters() -> None:
    p, _ = make(tokenizer="request")
    engine_store(p, "a", char4_tokens(TEXT))
    info, _, precise = p.match(request(), [A])
    assert not precise and info.match_blocks("a") == 0
    tokens = char4_tokens(TEXT)
    req = InferenceRequest("t", "m", "m", token_ids=tuple(tokens), prefix_material=b"x")
    info, _, precise = p.match(req, [A])
    assert precise and info.match_blocks("a") == 5


def test_endpoints_with_other_block_sizes_are_keyed_at_their_size() -> None:
    p, _ = make()
    big = Endpoint("big", "10.0.0.9", 8000, metrics=EndpointMetrics(cache_block_size=32, update_time=1.0))
    info, keys, _ = p.match(request(), [A, B, big])
    assert set(keys) == {16, 32} and len(keys[32]) == 2 and info.block_size("big") == 32
    assert info.default_block_size == 16


def test_membership_purges_the_plugins_own_state() -> None:
    p, _ = make(speculativeTtlSeconds=10.0)
    engine_store(p, "a", char4_tokens("unrelated text " * 10))  # a is live
    req = request()
    p.pre_request(prepare(p, req), req, result(A))
    assert p.history.size() and p.speculative.size() and p.agreement.pending("a")
    p.endpoints_changed(frozenset({"b"}))
    assert p.history.size() == 0 and p.speculative.size() == 0 and p.agreement.pending("a") == 0


def test_the_subscription_it_declares_follows_its_parameters() -> None:
    assert make()[0].kv_event_subscription() is None  # nowhere to subscribe: no source is started
    params = {
        "kvEventsAddress": "tcp://{ip}:{eventPort}",
        "kvEventsPortOffset": 100,
        "kvEventsAddresses": {"c": "ipc:///x", "b": "tcp://1.2.3.4:1"},
        "topicFilter": "kv@",
        "resyncSeconds": 0.5,
        "maxBlocksPerEndpoint": 64,
    }
    subscription = make(**params)[0].kv_event_subscription()
    assert subscription == KVEventSubscription(
        addresses=(("b", "tcp://1.2.3.4:1"), ("c", "ipc:///x")),
        template="tcp://{ip}:{eventPort}",
        port_offset=100,
        topic_filter="kv@",
        resync_seconds=0.5,
        max_blocks_per_endpoint=64,
    )
    # the request-side parameters are not part of it: producers differing only there share one source
    assert make(**params, speculativeTtlSeconds=1.0, tokenizer="request")[0].kv_event_subscription() == (
        subscription
    )
    assert make(discoverKvEventSources=True)[0].kv_event_subscription() == KVEventSubscription(discover=True)


def test_an_attached_index_is_read_and_listened_to_until_detached() -> None:
    p, _ = make()
    shared = PreciseIndex()
    p.attach_kv_events(shared)
    assert p.index is shared
    engine_store(p, "a", list(range(1000, 1016)))  # a's feed is live
    req = request()
    p.pre_request(prepare(p, req), req, result(A))
    assert p.agreement.pending("a") == 1 and p.speculative.size() == 5
    p.attach_kv_events(None)  # retired: reads an index of its own, the shared one no longer tells it
    assert p.index is not shared and not p.live("a")
    tokens = char4_tokens(TEXT)
    n = len(tokens) // BS
    stored = Stored(tuple(chain_block_hashes(tokens, BS)[:n]), None, tuple(tokens[: n * BS]), BS)
    shared.apply("a", EventBatch(0.0, (stored,)))
    assert p.agreement.pending("a") == 1 and p.speculative.size() == 5
    p.attach_kv_events(shared)  # attached again: its BlockStored events confirm
    shared.apply("a", EventBatch(0.0, (stored,)))
    assert p.agreement.pending("a") == 0 and p.speculative.size() == 0


@pytest.mark.parametrize("template", ["tcp://{host}:5557", "tcp://{ip}:{0}", "tcp://{ip"])
def test_bad_templates_are_config_errors(template: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="kvEventsAddress"):
        PRECISE_PREFIX_CACHE_PRODUCER.build("p", {"kvEventsAddress": template}, handle())


def test_scorer_parameters_are_forwarded_and_validated() -> None:
    scorer = PRECISE_PREFIX_CACHE_SCORER.build("s", {"tokenizer": "request", "blockSizeTokens": 64}, handle())
    assert scorer.producer_parameters() == {"tokenizer": "request", "blockSizeTokens": 64}
    assert PRECISE_PREFIX_CACHE_SCORER.build("s", None, handle()).producer_parameters() is None
    with pytest.raises(pydantic.ValidationError):
        PRECISE_PREFIX_CACHE_SCORER.build("s", {"blockSizeTokens": 0}, handle())
