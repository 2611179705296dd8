"""P/D disaggregation (llm-d's handlers, deciders, role filters, prefill header) and data parallel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydantic
import pytest

from epp.builtins import default_registry
from epp.config import build_pipeline, load_config_file
from epp.errors import ConfigError, SchedulingError
from epp.framework.cycle import CycleState
from epp.framework.types import Endpoint, InferenceRequest, ProfileRunResult, SchedulingResult
from epp.plugins.datakeys import PREFIX_CACHE_MATCH_INFO_KEY, PrefixCacheMatchInfo, PrefixGroup
from epp.plugins.profile.deciders import input_tokens

from .._kit import build, cycle, ep, handle, req

LLMD = Path(__file__).resolve().parents[2] / "config" / "llmd"
ROLE = "llm-d.ai/role"


def role(key: str, value: str | None, port: int = 8000) -> Endpoint:
    e = ep(key, port=port)
    return Endpoint(e.key, e.ip, e.port, labels={ROLE: value} if value is not None else {}, metrics=e.metrics)


def matched(endpoint: Endpoint, blocks: int, block_size: int = 16, total: int = 100) -> CycleState:
    c = cycle()
    group = PrefixGroup(block_size, tuple(range(total)), {endpoint.key: blocks} if blocks else {})
    c.write(PREFIX_CACHE_MATCH_INFO_KEY, PrefixCacheMatchInfo({block_size: group}, block_size))
    return c


def handler_with(decider: str = "always-disagg-pd-decider", params: Any = None, type_name: str = "") -> Any:
    h = handle()
    h.plugins["d"] = build(decider, None, name="d", h=h)
    params = {"deciders": {"prefill": "d"}} if params is None else params
    return build(type_name or "disagg-profile-handler", params, h=h)


# ---- role filters -------------------------------------------------------------------------------------


def test_role_filters_follow_llmd_roles() -> None:
    eps = [
        role("p", "prefill"),
        role("d", "decode"),
        role("b", "both"),
        role("pd", "prefill-decode"),
        role("ep", "encode-prefill"),
        role("epd", "encode-prefill-decode"),
        role("e", "encode"),
        role("none", None),
        role("odd", "Decode"),
    ]
    keep = lambda t: [e.key for e in build(t).filter(cycle(), req(), eps)]  # noqa: E731
    assert keep("decode-filter") == ["d", "b", "pd", "epd", "none"]
    assert keep("prefill-filter") == ["p", "b", "pd", "ep", "epd"]


def test_role_filters_take_no_parameters() -> None:
    with pytest.raises(pydantic.ValidationError):
        build("prefill-filter", {"label": "x"})


# ---- deciders -----------------------------------------------------------------------------------------


def test_input_tokens_is_llmd_estimate() -> None:
    assert input_tokens(req("x" * 403)) == 100
    chat = InferenceRequest("r", "m", "m", messages=[{"role": "user", "content": "hi"}])
    assert input_tokens(chat) == len('[{"role":"user","content":"hi"}]') // 4


def test_prefix_decider_thresholds_on_uncached_tokens() -> None:
    decode = role("d", "decode")
    decider = build("prefix-based-pd-decider", {"nonCachedTokens": 100})
    long = req("x" * 4000)  # 1000 tokens
    assert decider.disaggregate(matched(decode, 0), long, decode)
    assert decider.disaggregate(matched(decode, 56), long, decode)  # 1000 - 896 = 104 uncached
    assert not decider.disaggregate(matched(decode, 57), long, decode)  # 1000 - 912 = 88
    assert not decider.disaggregate(matched(decode, 0), req("x" * 396), decode)  # 99 tokens in all
    assert not decider.disaggregate(cycle(), long, decode)  # no prefix match: llm-d declines


def test_prefix_decider_zero_disables_and_negative_is_rejected() -> None:
    decode = role("d", "decode")
    assert not build("prefix-based-pd-decider").disaggregate(matched(decode, 0), req("x" * 9999), decode)
    with pytest.raises(pydantic.ValidationError):
        build("prefix-based-pd-decider", {"nonCachedTokens": -1})


def test_always_decider() -> None:
    assert build("always-disagg-pd-decider").disaggregate(cycle(), req(), role("d", "decode"))


# ---- the disagg handler -------------------------------------------------------------------------------

PROFILES = ("prefill", "decode")


def run(handler: Any, outcomes: dict[str, ProfileRunResult | None], c: CycleState | None = None) -> Any:
    """Drive pick_profiles as the scheduler does; returns (profiles run in order, result or error)."""
    c = c or cycle()
    results: dict[str, ProfileRunResult | None] = {}
    order: list[str] = []
    while names := handler.pick_profiles(c, req("x" * 4000), PROFILES, results):
        for n in names:
            order.append(n)
            results[n] = outcomes[n]
    try:
        return order, handler.process_results(c, req(), results)
    except SchedulingError as exc:
        return order, exc


def test_decode_first_then_prefill_when_the_decider_says_so() -> None:
    d, p = role("d", "decode"), role("p", "prefill")
    outcomes = {"decode": ProfileRunResult((d,)), "prefill": ProfileRunResult((p,))}
    order, result = run(handler_with(), outcomes)
    assert order == ["decode", "prefill"]
    assert result.primary_profile == "decode" and result.targets == (d,)
    assert result.profile_results["prefill"].targets == (p,)


def test_no_prefill_without_a_decider_or_when_it_declines() -> None:
    d = role("d", "decode")
    outcomes = {"decode": ProfileRunResult((d,)), "prefill": None}
    order, result = run(build("disagg-profile-handler"), outcomes)
    assert order == ["decode"] and set(result.profile_results) == {"decode"}
    order, _ = run(handler_with("prefix-based-pd-decider", {"deciders": {"prefill": "d"}}), outcomes)
    assert order == ["decode"]  # nonCachedTokens 0: disabled


def test_decode_failure_fails_the_request_and_skips_prefill() -> None:
    order, err = run(handler_with(), {"decode": None, "prefill": ProfileRunResult((role("p", "prefill"),))})
    assert order == ["decode"]
    assert isinstance(err, SchedulingError) and "failed to find available decode workers" in err.message


def test_failed_prefill_still_routes_to_decode() -> None:
    d = role("d", "decode")
    order, result = run(handler_with(), {"decode": ProfileRunResult((d,)), "prefill": None})
    assert order == ["decode", "prefill"] and result.targets == (d,)
    assert "prefill" not in result.profile_results


def test_custom_profile_names_nested_and_flat() -> None:
    nested = handler_with(params={"profiles": {"decode": "D", "prefill": "P"}, "deciders": {"prefill": "d"}})
    flat = handler_with(params={"decodeProfile": "D", "prefillProfile": "P", "deciderPluginName": "d"})
    for handler in (nested, flat):
        assert (handler.decode_profile, handler.prefill_profile) == ("D", "P")
        assert handler.decider is not None


def test_mixing_flat_and_nested_parameters_is_an_error() -> None:
    with pytest.raises(pydantic.ValidationError, match="cannot mix"):
        handler_with(params={"deciders": {"prefill": "d"}, "decodeProfile": "D"})


def test_decider_must_exist_and_be_a_decider() -> None:
    h = handle()
    with pytest.raises(KeyError):
        build("disagg-profile-handler", {"deciders": {"prefill": "missing"}}, h=h)
    h.plugins["q"] = build("queue-scorer")
    with pytest.raises(ValueError, match="not a P/D decider"):
        build("disagg-profile-handler", {"deciders": {"prefill": "q"}}, h=h)
    with pytest.raises(ValueError, match="not supported"):
        build("disagg-profile-handler", {"deciders": {"encode": "q"}}, h=h)


def test_prefill_header_set_or_removed() -> None:
    d, p = role("d", "decode"), role("p", "prefill", port=8200)
    for plugin in (handler_with(), build("prefill-header-handler"), build("disagg-headers-handler")):
        with_prefill = SchedulingResult(
            "decode", {"decode": ProfileRunResult((d,)), "prefill": ProfileRunResult((p,))}
        )
        plugin.pre_request(cycle(), req(), with_prefill)
        assert with_prefill.request_headers["x-prefiller-host-port"] == p.address
        decode_only = SchedulingResult("decode", {"decode": ProfileRunResult((d,))})
        plugin.pre_request(cycle(), req(), decode_only)
        assert decode_only.request_headers["x-prefiller-host-port"] is None  # a client's copy is removed


def test_pd_profile_handler_with_primary_port_routes_to_the_pod() -> None:
    d = role("d", "decode", port=8003)
    params = {"deciderPluginName": "d", "primaryPort": 8000}
    handler = handler_with(params=params, type_name="pd-profile-handler")
    _, result = run(handler, {"decode": ProfileRunResult((d,)), "prefill": None})
    assert result.targets[0].port == 8000 and result.targets[0].key == d.key
    assert result.request_headers["x-data-parallel-host-port"] == d.address


def test_pd_profile_handler_needs_its_decider() -> None:
    with pytest.raises(KeyError):
        build("pd-profile-handler")  # deciderPluginName defaults to prefix-based-pd-decider


# ---- data parallel ------------------------------------------------------------------------------------


def test_data_parallel_sends_to_the_primary_port_and_names_the_rank() -> None:
    ranks = [ep("pod-rank-0", ip="10.0.0.5", port=8000), ep("pod-rank-1", ip="10.0.0.5", port=8001)]
    handler = build("data-parallel-profile-handler", {"primaryPort": 8080})
    assert list(handler.pick_profiles(cycle(), req(), ("default",), {})) == ["default"]
    assert not handler.pick_profiles(cycle(), req(), ("default",), {"default": None})
    result = handler.process_results(cycle(), req(), {"default": ProfileRunResult((ranks[1], ranks[0]))})
    assert [(e.key, e.address) for e in result.targets] == [
        ("pod-rank-1", "10.0.0.5:8080"),
        ("pod-rank-0", "10.0.0.5:8080"),
    ]
    assert result.request_headers == {"x-data-parallel-host-port": "10.0.0.5:8001"}
    with pytest.raises(SchedulingError):
        handler.process_results(cycle(), req(), {"default": None})
    assert not handler.pick_profiles(cycle(), req(), ("a", "b"), {})  # exactly one profile, as llm-d
    with pytest.raises(pydantic.ValidationError):
        build("data-parallel-profile-handler", {"primaryPort": 70000})


# ---- llm-d's config shapes, end to end through the scheduler ------------------------------------------


def schedule(path: Path, endpoints: list[Endpoint], prompt: str) -> SchedulingResult:
    registry = default_registry()
    config = load_config_file(path, registry=registry, environ={})
    pipeline = build_pipeline(config, registry)
    request = req(prompt)
    c = cycle()
    for producer in pipeline.producers:
        producer.prepare_data(c, request, endpoints)
    result = pipeline.scheduler.schedule(request, endpoints, c)
    for hook in pipeline.pre_request:
        hook.pre_request(c, request, result)
    return result


def test_llmd_pd_config_disaggregates_a_long_uncached_prompt_only() -> None:
    fleet = [role("p0", "prefill", 8100), role("d0", "decode", 8200), role("d1", "decode", 8201)]
    result = schedule(LLMD / "pd-disaggregation.yaml", fleet, "x" * 4000)
    assert result.targets[0].key in {"d0", "d1"}
    assert result.request_headers["x-prefiller-host-port"] == fleet[0].address
    short = schedule(LLMD / "pd-disaggregation.yaml", fleet, "hello")  # 1 token < nonCachedTokens 16
    assert short.request_headers["x-prefiller-host-port"] is None


def test_llmd_legacy_pd_config_sets_both_headers() -> None:
    fleet = [role("p0", "prefill", 8100), role("d0", "decode", 8201)]
    result = schedule(LLMD / "pd-profile-handler.yaml", fleet, "x" * 4000)
    assert result.targets[0].port == 8000
    assert result.request_headers["x-data-parallel-host-port"] == fleet[1].address
    assert result.request_headers["x-prefiller-host-port"] == fleet[0].address


def test_llmd_data_parallel_config() -> None:
    ranks = [role(f"pod-rank-{i}", None, 8000 + i) for i in range(4)]
    result = schedule(LLMD / "data-parallel.yaml", ranks, "x" * 400)
    assert result.targets[0].port == 8000
    rank = result.request_headers["x-data-parallel-host-port"]
    assert rank in {e.address for e in ranks}


def test_a_missing_decider_is_a_located_config_error(tmp_path: Path) -> None:
    text = (LLMD / "pd-disaggregation.yaml").read_text()
    text = text.replace("prefill: prefix-based-pd-decider", "prefill: nope")
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    registry = default_registry()
    with pytest.raises(ConfigError, match="no plugin named 'nope'"):
        build_pipeline(load_config_file(path, registry=registry, environ={}), registry)
