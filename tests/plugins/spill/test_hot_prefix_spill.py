"""hot-prefix-spill-filter: holders kept while cool, spill in a stable order when hot, shrink back."""

from __future__ import annotations

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from epp.framework.cycle import CycleState
from epp.framework.types import Endpoint, EndpointMetrics, InferenceRequest
from epp.plugins.datakeys import (
    INFLIGHT_LOAD_KEY,
    PREFIX_CACHE_MATCH_INFO_KEY,
    InFlightLoad,
    PrefixCacheMatchInfo,
    PrefixGroup,
)
from epp.plugins.filters.hot_prefix_spill import (
    HOT_PREFIX_SPILL_FILTER,
    HotPrefixSpillFilter,
    HotPrefixSpillParams,
    rendezvous,
)
from epp.plugins.producers.prefill_ledger import EndpointLoad
from epp.plugins.producers.prefill_load import PREFILL_LOAD_KEY, PrefillLoadSnapshot

from .._kit import handle, tn

REQ = InferenceRequest("r", "m", "m")
TOTAL = 10
HASHES = tuple(range(1000, 1000 + TOTAL))


def ep(key: str, running: int = 0, waiting: int = 0) -> Endpoint:
    return Endpoint(
        key,
        "10.0.0.1",
        8000,
        metrics=EndpointMetrics(running_requests_size=running, waiting_queue_size=waiting),
    )


def cycle(
    matches: dict[str, int], inflight: dict[str, int] | None = None, pending: dict[str, int] | None = None
):
    c = CycleState()
    group = PrefixGroup(16, HASHES, matches)
    c.write(
        PREFIX_CACHE_MATCH_INFO_KEY,
        PrefixCacheMatchInfo({16: group}, 16, {}, {k: v / TOTAL for k, v in matches.items()}),
    )
    if inflight is not None:
        c.write(INFLIGHT_LOAD_KEY, {k: InFlightLoad(v, 0) for k, v in inflight.items()})
    if pending is not None:
        c.write(
            PREFILL_LOAD_KEY,
            PrefillLoadSnapshot({k: EndpointLoad(0, v, 0) for k, v in pending.items()}, 0.0, {}),
        )
    return c


def spill(**params) -> HotPrefixSpillFilter:
    return HotPrefixSpillFilter(tn("hot-prefix-spill-filter"), HotPrefixSpillParams(**params))


def keys(endpoints) -> list[str]:
    return [e.key for e in endpoints]


FLEET = [ep(k) for k in "abcdefgh"]


def by_rank(group: int, names: str) -> list[str]:
    return sorted(names, key=lambda k: -rendezvous(group, k))


def test_no_match_or_no_holder_passes_everything() -> None:
    f = spill()
    assert f.filter(CycleState(), REQ, FLEET) == FLEET
    assert f.filter(cycle({}), REQ, FLEET) == FLEET
    assert f.filter(cycle({"a": 4}), REQ, FLEET) == FLEET  # 0.4 < affinityThreshold 0.5
    assert f.filter(cycle({"a": 10}), REQ, FLEET[:1]) == FLEET[:1]


def test_a_cool_holder_keeps_the_request() -> None:
    inflight = dict.fromkeys("abcdefgh", 4)
    assert keys(spill().filter(cycle({"c": 10}, inflight), REQ, FLEET)) == ["c"]


def test_a_hot_holder_spills_to_the_groups_next_endpoint_and_it_becomes_a_holder() -> None:
    inflight = dict.fromkeys("abcdefgh", 4) | {"c": 20}  # mean 6, limit 1.5 x 6 + 2 = 11
    first = keys(spill().filter(cycle({"c": 10}, inflight), REQ, FLEET))
    group = HASHES[TOTAL - 1]
    assert first == by_rank(group, "abdefgh")[:1]
    # the next request sees two holders; c is still hot, the new one is kept
    again = keys(spill().filter(cycle({"c": 10, first[0]: 10}, inflight), REQ, FLEET))
    assert again == first


def test_partial_matches_come_first_when_spilling() -> None:
    inflight = dict.fromkeys("abcdefgh", 4) | {"c": 20}
    assert keys(spill(spillWidth=2).filter(cycle({"c": 10, "g": 3}, inflight), REQ, FLEET))[0] == "g"


def test_shrinks_back_to_the_first_holder_when_it_has_spare_capacity() -> None:
    matches = {"c": 10, "f": 10, "h": 10}
    order = by_rank(HASHES[TOTAL - 1], "cfh")
    busy = dict.fromkeys("abcdefgh", 4) | {order[0]: 8, order[1]: 3}  # first above the mean, not hot
    assert keys(spill().filter(cycle(matches, busy), REQ, FLEET)) == order[:2]
    quiet = dict.fromkeys("abcdefgh", 4) | {order[0]: 2}
    assert keys(spill().filter(cycle(matches, quiet), REQ, FLEET)) == order[:1]
    # preferFewest off: every cool holder, for the scorers to balance
    assert keys(spill(preferFewest=False).filter(cycle(matches, quiet), REQ, FLEET)) == order


def test_when_everyone_is_hot_the_holders_stay() -> None:
    few = [ep("a"), ep("b")]
    c = cycle({"a": 10}, {"a": 100, "b": 100})
    assert keys(spill(loadFactor=1.0, loadHeadroom=0.0).filter(c, REQ, few)) == ["a"]


def test_scraped_metrics_count_when_larger_than_the_epps_own_view() -> None:
    fleet = [ep("a", running=30), ep("b"), ep("c")]
    assert keys(spill().filter(cycle({"a": 10}, {"a": 1}), REQ, fleet)) != ["a"]
    assert keys(spill().filter(cycle({"a": 10}), REQ, [ep("a", running=1), ep("b")])) == ["a"]


@pytest.mark.parametrize(
    ("pending", "waiting", "hot"),
    [
        ({"a": 10, "b": 0, "c": 0}, 0, True),  # 10 > 1.5 x 3.3 + 2
        ({"a": 4, "b": 0, "c": 0}, 0, False),  # 4 <= 1.5 x 1.33 + 2
        ({"a": 0, "b": 0, "c": 0}, 10, True),  # scraped waiting counts too
    ],
)
def test_waiting_signal(pending, waiting, hot) -> None:
    fleet = [ep("a", waiting=waiting), ep("b"), ep("c")]
    kept = keys(spill(loadSignal="waiting").filter(cycle({"a": 10}, pending=pending), REQ, fleet))
    assert (kept != ["a"]) is hot


def test_max_waiting_queue_makes_an_endpoint_hot_regardless_of_the_mean() -> None:
    fleet = [ep("a", waiting=8), ep("b", waiting=8), ep("c", waiting=8)]
    c = cycle({"a": 10}, {"a": 10, "b": 10, "c": 10})
    assert keys(spill().filter(c, REQ, fleet)) == ["a"]
    assert keys(spill(maxWaitingQueue=8).filter(c, REQ, fleet)) == ["a"]  # everyone hot: holders stay
    fleet[1] = ep("b")
    assert keys(spill(maxWaitingQueue=8).filter(c, REQ, fleet)) == ["b"]


def test_registry_entry_and_parameters() -> None:
    built = HOT_PREFIX_SPILL_FILTER.build("s", {"loadFactor": 2, "preferFewest": False}, handle())
    assert built.params.loadFactor == 2 and not built.params.preferFewest
    assert HOT_PREFIX_SPILL_FILTER.consumes == {"PrefixCacheMatchInfo", "InFlightLoad", "PrefillLoad"}
    for bad in ({"loadFactor": 0.5}, {"affinityThreshold": 0}, {"spillWidth": 0}, {"loadSignal": "tokens"}):
        with pytest.raises(pydantic.ValidationError):
            HOT_PREFIX_SPILL_FILTER.build("s", bad, handle())


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from("abcdefgh"), st.integers(1, TOTAL), max_size=8),
    st.lists(st.integers(0, 60), min_size=8, max_size=8),
    st.booleans(),
    st.sampled_from(["inflight", "waiting"]),
)
def test_properties(matches, loads, fewest, signal) -> None:
    """A non-empty subset of the input, deterministic, and holders are kept whenever one is cool."""
    inflight = dict(zip("abcdefgh", loads, strict=True))
    f = spill(preferFewest=fewest, loadSignal=signal)
    out = f.filter(cycle(matches, inflight, inflight), REQ, FLEET)
    assert out and set(keys(out)) <= set("abcdefgh")
    assert keys(f.filter(cycle(matches, inflight, inflight), REQ, FLEET)) == keys(out)
    holders = {k for k, v in matches.items() if v / TOTAL >= 0.5}
    mean = sum(loads) / 8
    cool_holders = {k for k in holders if inflight[k] <= 1.5 * mean + 2}
    if cool_holders:
        assert set(keys(out)) <= cool_holders
    elif holders:
        assert set(keys(out)).isdisjoint(holders) or set(keys(out)) == holders
