"""Filters: the conformance header filter, prefix affinity, and the v0.5 filters incl. the decision tree."""

from __future__ import annotations

from collections import Counter

import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from epp.plugins.datakeys import PREFIX_CACHE_MATCH_INFO_KEY, PrefixCacheMatchInfo

from ._kit import build, cycle, ep, handle, req


def keys(endpoints) -> list[str]:
    return [e.key for e in endpoints]


# ---- header-based-testing-filter --------------------------------------------------------------------------

HEADER_FLEET = [
    ep("a", ip="10.0.0.1", port=8000),
    ep("a1", ip="10.0.0.1", port=8001),  # a second data-parallel rank on the same pod IP
    ep("b", ip="10.0.0.2"),
    ep("c", ip="fd00::1", port=3000),
]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param("10.0.0.2", ["b"], id="ip"),
        pytest.param("10.0.0.2:8000", ["b"], id="ip-port"),
        pytest.param("10.0.0.2:9999", ["b"], id="matches-on-ip-only"),
        pytest.param("10.0.0.1", ["a", "a1"], id="all-ranks-of-an-ip"),
        pytest.param(" 10.0.0.2 , 10.0.0.1 ", ["a", "a1", "b"], id="list-in-candidate-order"),
        pytest.param("[fd00::1]:3000", ["c"], id="bracketed-v6-port"),
        pytest.param("fd00:0:0::1", ["c"], id="bare-v6-non-canonical"),
        pytest.param("[fd00::1]", ["c"], id="bracketed-v6"),
        pytest.param("10.9.9.9", [], id="unknown"),
        pytest.param("", [], id="empty"),
        pytest.param(",,", [], id="only-commas"),
    ],
)
def test_header_based_testing_filter(header: str, expected: list[str]) -> None:
    flt = build("header-based-testing-filter")
    got = flt.filter(cycle(), req(headers={"test-epp-endpoint-selection": header}), HEADER_FLEET)
    assert keys(got) == expected


def test_header_based_testing_filter_without_the_header_keeps_nothing() -> None:
    assert build("header-based-testing-filter").filter(cycle(), req(), HEADER_FLEET) == []


def test_header_name_is_case_insensitive() -> None:
    got = build("header-based-testing-filter").filter(
        cycle(), req(headers={"Test-EPP-Endpoint-Selection": "10.0.0.2"}), HEADER_FLEET
    )
    assert keys(got) == ["b"]


# ---- prefix-cache-affinity-filter -------------------------------------------------------------------------


def with_prefix_scores(scores: dict[str, float]):
    c = cycle()
    c.write(PREFIX_CACHE_MATCH_INFO_KEY, PrefixCacheMatchInfo({}, 16, {}, scores))
    return c


AFFINITY_FLEET = [ep("a"), ep("b"), ep("c")]


@pytest.mark.parametrize(
    ("scores", "threshold", "expected"),
    [
        pytest.param({"a": 0.9, "b": 0.5}, 0.8, ["a"], id="sticky"),
        pytest.param({"a": 0.8, "b": 0.85}, 0.8, ["a", "b"], id="at-threshold"),
        pytest.param({"a": 0.5}, 0.8, ["a", "b", "c"], id="none-pass-keeps-all"),
        pytest.param({}, 0.8, ["a", "b", "c"], id="no-matches"),
        pytest.param({"c": 0.3}, 0.2, ["c"], id="custom-threshold"),
    ],
)
def test_prefix_cache_affinity_filter(
    scores: dict[str, float], threshold: float, expected: list[str]
) -> None:
    flt = build("prefix-cache-affinity-filter", {"affinityThreshold": threshold, "explorationProbability": 0})
    assert keys(flt.filter(with_prefix_scores(scores), req(), AFFINITY_FLEET)) == expected


def test_prefix_cache_affinity_without_match_info_keeps_all() -> None:
    flt = build("prefix-cache-affinity-filter")
    assert keys(flt.filter(cycle(), req(), AFFINITY_FLEET)) == ["a", "b", "c"]


def test_prefix_cache_affinity_explores_with_the_configured_probability() -> None:
    flt = build(
        "prefix-cache-affinity-filter",
        {"explorationProbability": 0.25, "maxTTFTPenaltyMs": 100},
        h=handle(seed=4),
    )
    sizes = Counter(
        len(flt.filter(with_prefix_scores({"a": 1.0}), req(), AFFINITY_FLEET)) for _ in range(2000)
    )
    assert set(sizes) == {1, 3}
    assert sizes[3] / 2000 == pytest.approx(0.25, abs=0.04)


@pytest.mark.parametrize("bad", [{"affinityThreshold": 1.5}, {"explorationProbability": -0.1}])
def test_prefix_cache_affinity_rejects_out_of_range_parameters(bad: dict) -> None:
    with pytest.raises(pydantic.ValidationError):
        build("prefix-cache-affinity-filter", bad)


# ---- legacy v0.5 filters ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("queues", "params", "expected"),
    [
        ([0, 128, 129], None, ["e0", "e1"]),
        ([5, 6], {"threshold": 5}, ["e0"]),
        ([200, 300], None, []),
        ([], None, []),
    ],
)
def test_low_queue_filter(queues: list[int], params: dict | None, expected: list[str]) -> None:
    eps = [ep(f"e{i}", waiting_queue_size=q) for i, q in enumerate(queues)]
    assert keys(build("low-queue-filter", params).filter(cycle(), req(), eps)) == expected


@pytest.mark.parametrize(
    ("queues", "expected"),
    [
        ([0, 10, 20, 30], ["e0"]),  # band = 0 + 30 // 4 = 7
        ([0, 4, 8], ["e0"]),  # band = 0 + 8 // 3 = 2
        ([0, 1, 9], ["e0", "e1"]),  # band = 3
        ([5, 5, 5], ["e0", "e1", "e2"]),  # all equal
        ([], []),
    ],
)
def test_least_queue_filter(queues: list[int], expected: list[str]) -> None:
    eps = [ep(f"e{i}", waiting_queue_size=q) for i, q in enumerate(queues)]
    assert keys(build("least-queue-filter").filter(cycle(), req(), eps)) == expected


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        ([0.0, 0.5, 1.0], ["e0"]),  # band = 1/3
        ([0.1, 0.2, 0.9, 0.9], ["e0", "e1"]),  # band = 0.1 + 0.2
        ([0.4, 0.4], ["e0", "e1"]),
        ([], []),
    ],
)
def test_least_kv_cache_filter(usage: list[float], expected: list[str]) -> None:
    eps = [ep(f"e{i}", kv_cache_usage=u) for i, u in enumerate(usage)]
    assert keys(build("least-kv-cache-filter").filter(cycle(), req(), eps)) == expected


LORA_FLEET = [
    ep("active", active_models={"ad"}, max_active_models=2),
    ep("waiting", waiting_models={"ad"}, max_active_models=1),
    ep("room", active_models={"x"}, max_active_models=2),
    ep("full", active_models={"x", "y"}, max_active_models=2),
    ep("no-lora"),
]


def test_lora_affinity_filter_prefers_endpoints_with_the_adapter() -> None:
    flt = build("lora-affinity-filter", {"threshold": 1.0})
    assert keys(flt.filter(cycle(), req(target="ad"), LORA_FLEET)) == ["active", "waiting"]


def test_lora_affinity_filter_falls_back_to_endpoints_with_room() -> None:
    flt = build("lora-affinity-filter", {"threshold": 0.0})
    assert keys(flt.filter(cycle(), req(target="ad"), LORA_FLEET)) == ["room"]
    assert keys(flt.filter(cycle(), req(target="new"), LORA_FLEET)) == ["active", "room"]


def test_lora_affinity_filter_threshold_is_a_probability() -> None:
    flt = build("lora-affinity-filter", {"threshold": 0.7}, h=handle(seed=9))
    picks = Counter(keys(flt.filter(cycle(), req(target="ad"), LORA_FLEET))[0] for _ in range(2000))
    assert picks["active"] / 2000 == pytest.approx(0.7, abs=0.04)


def test_lora_affinity_filter_with_no_lora_info_keeps_nothing() -> None:
    assert build("lora-affinity-filter").filter(cycle(), req(target="ad"), [ep("a"), ep("b")]) == []


# ---- decision-tree-filter ---------------------------------------------------------------------------------


def legacy_handle():
    """The v0.5 default chain's building blocks, declared before the tree."""
    h = handle(seed=1)
    h.plugins["low-queue-filter"] = build("low-queue-filter", {"threshold": 10})
    h.plugins["least-queue-filter"] = build("least-queue-filter")
    h.plugins["least-kv-cache-filter"] = build("least-kv-cache-filter")
    h.plugins["lora-affinity-filter"] = build("lora-affinity-filter", {"threshold": 1.0})
    h.plugins["queue-scorer"] = build("queue-scorer")
    return h


def chain(*refs: str) -> dict:
    node: dict = {"current": {"pluginRef": refs[-1]}}
    for ref in reversed(refs[:-1]):
        node = {"current": {"pluginRef": ref}, "nextOnSuccessOrFailure": {"decisionTree": node}}
    return node


V05_TREE = {
    "current": {"pluginRef": "low-queue-filter"},
    "nextOnSuccess": {
        "decisionTree": chain("lora-affinity-filter", "least-queue-filter", "least-kv-cache-filter")
    },
    "nextOnFailure": {
        "decisionTree": chain("least-queue-filter", "lora-affinity-filter", "least-kv-cache-filter")
    },
}


def test_decision_tree_success_path_runs_on_the_filtered_endpoints() -> None:
    eps = [
        ep("short-lora", waiting_queue_size=2, active_models={"ad"}, max_active_models=1, kv_cache_usage=0.9),
        ep("short", waiting_queue_size=1, max_active_models=1, kv_cache_usage=0.1),
        ep("long-lora", waiting_queue_size=50, active_models={"ad"}, max_active_models=1),
    ]
    tree = build("decision-tree-filter", V05_TREE, h=legacy_handle())
    assert keys(tree.filter(cycle(), req(target="ad"), eps)) == ["short-lora"]


def test_decision_tree_failure_path_runs_on_the_original_endpoints() -> None:
    eps = [
        ep("a", waiting_queue_size=40, kv_cache_usage=0.2, max_active_models=1),
        ep("b", waiting_queue_size=20, kv_cache_usage=0.9, max_active_models=1),
        ep("c", waiting_queue_size=21, kv_cache_usage=0.1, max_active_models=1),
    ]
    tree = build("decision-tree-filter", V05_TREE, h=legacy_handle())
    # low-queue keeps none -> least-queue (band 20 + 20 // 3 = 26) -> lora (room) -> least-kv
    assert keys(tree.filter(cycle(), req(target="ad"), eps)) == ["c"]


def test_decision_tree_without_next_step_returns_the_current_result() -> None:
    tree = build("decision-tree-filter", {"current": {"pluginRef": "low-queue-filter"}}, h=legacy_handle())
    eps = [ep("a", waiting_queue_size=50)]
    assert tree.filter(cycle(), req(), eps) == []


def test_specific_branch_wins_over_success_or_failure() -> None:
    params = {
        "current": {"pluginRef": "low-queue-filter"},
        "nextOnFailure": {"pluginRef": "least-kv-cache-filter"},
        "nextOnSuccessOrFailure": {"pluginRef": "least-queue-filter"},
    }
    tree = build("decision-tree-filter", params, h=legacy_handle())
    eps = [
        ep("a", waiting_queue_size=50, kv_cache_usage=0.9),
        ep("b", waiting_queue_size=90, kv_cache_usage=0.1),
    ]
    assert keys(tree.filter(cycle(), req(), eps)) == ["b"]  # failure -> least-kv, not least-queue
    eps = [ep("a", waiting_queue_size=1), ep("b", waiting_queue_size=9)]
    assert keys(tree.filter(cycle(), req(), eps)) == ["a"]  # success -> least-queue


@pytest.mark.parametrize(
    ("params", "message"),
    [
        pytest.param({}, "current", id="missing-current"),
        pytest.param(
            {"current": {"pluginRef": "low-queue-filter", "decisionTree": {"current": {"pluginRef": "x"}}}},
            "both pluginRef and decisionTree may not be specified",
            id="both",
        ),
        pytest.param({"current": {}}, "one of pluginRef or decisionTree must be specified", id="neither"),
        pytest.param({"current": {"pluginRef": "low-queue-filter", "extra": 1}}, "extra", id="unknown-key"),
    ],
)
def test_decision_tree_parameter_errors(params: dict, message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        build("decision-tree-filter", params, h=legacy_handle())


def test_decision_tree_reference_must_be_declared_earlier() -> None:
    params = {"current": {"pluginRef": "low-queue-filter"}, "nextOnSuccess": {"pluginRef": "later-filter"}}
    with pytest.raises(
        ValueError, match=r"parameters\.nextOnSuccess\.pluginRef: no plugin named 'later-filter'"
    ):
        build("decision-tree-filter", params, h=legacy_handle())


def test_decision_tree_reference_must_be_a_filter() -> None:
    params = {"current": {"decisionTree": {"current": {"pluginRef": "queue-scorer"}}}}
    with pytest.raises(
        ValueError, match=r"current\.decisionTree\.current\.pluginRef: 'queue-scorer' is not a filter"
    ):
        build("decision-tree-filter", params, h=legacy_handle())


# ---- properties -------------------------------------------------------------------------------------------

FILTERS = [
    ("low-queue-filter", None),
    ("least-queue-filter", None),
    ("least-kv-cache-filter", None),
    ("lora-affinity-filter", None),
    ("prefix-cache-affinity-filter", None),
    ("header-based-testing-filter", None),
]


@given(
    queues=st.lists(st.integers(0, 500), max_size=10),
    kv=st.floats(0, 1),
    header=st.sampled_from(["", "127.0.1.1", "127.0.1.2,127.0.1.3"]),
)
def test_filters_return_a_subset_in_candidate_order(queues: list[int], kv: float, header: str) -> None:
    eps = [
        ep(
            f"e{i}",
            ip=f"127.0.1.{i + 1}",
            waiting_queue_size=q,
            kv_cache_usage=kv * (i % 3),
            max_active_models=i % 2,
        )
        for i, q in enumerate(queues)
    ]
    c = with_prefix_scores({f"e{i}": (i % 4) / 3 for i in range(len(eps))})
    for type_name, params in FILTERS:
        got = keys(
            build(type_name, params).filter(
                c, req(target="ad", headers={"test-epp-endpoint-selection": header}), eps
            )
        )
        all_keys = keys(eps)
        assert got == [k for k in all_keys if k in set(got)], type_name
