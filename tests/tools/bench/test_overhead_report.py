"""`epp bench overhead` without running anything: its flags, the EPP metrics it reads, the numbers it
derives (CPU per request net of idle, CPU per streamed token, the goals) and the report."""

from __future__ import annotations

import pytest

from epp.tools.bench.overhead import (
    SMOKE,
    HttpRun,
    OverheadOptions,
    OverheadResult,
    build_parser,
    options_from_args,
    parse_epp_metrics,
    render_markdown,
)
from epp.tools.bench.routers import parse_router


def _options(*argv: str) -> OverheadOptions:
    return options_from_args(build_parser().parse_args(list(argv)))


def test_defaults_smoke_and_flags() -> None:
    full = _options()
    assert full.tokens == (1, 128, 512) and full.usage == (False, True) and full.rates == (20.0,)
    assert full.routers == ("envoy-rr", "epp:default", "epp-duplex:default", "sglang")
    smoke = _options("--smoke")
    assert smoke.smoke and smoke.tokens == (1, 16) and len(smoke.rates) == 1 and smoke.duration_s <= 2
    assert smoke == SMOKE
    o = _options(
        "--tokens", "512,1,64", "--usage", "on", "--rates", "60,20", "--token-interval-ms", "0.5",
        "--epp-args=--workers=1 --v=2", "--routers", "epp-duplex:default,envoy-rr",
    )  # fmt: skip
    assert o.tokens == (1, 64, 512) and o.usage == (True,) and o.rates == (60.0, 20.0)
    assert o.token_interval_ms == 0.5 and o.epp_args == ("--workers=1", "--v=2")
    assert o.routers == ("epp-duplex:default", "envoy-rr")
    assert _options("--usage", "off").usage == (False,)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tokens", "0,1"], "--tokens must be"),
        (["--tokens", "1,x"], "--tokens must be"),
        (["--tokens", "1,1"], "must not repeat"),
        (["--rates", "-5"], "--rates must be"),
        (["--token-interval-ms", "-1"], "--token-interval-ms must be >= 0"),
        (["--routers", "epp-duplexx:default"], "unknown router"),
    ],
)
def test_bad_flags(argv, message) -> None:
    with pytest.raises(ValueError, match=message):
        _options(*argv)


def test_the_duplex_router_is_the_same_daemon_behind_upstreams_envoy_config() -> None:
    after, before, plain = (
        parse_router("epp:default"),
        parse_router("epp-duplex:default"),
        parse_router("epp-plaintext:default"),
    )
    assert (after.kind, after.body_mode, after.observer) == ("epp", "ON_DEMAND", True)
    assert (before.name, before.kind) == ("epp-duplex:default", "epp")
    assert (before.body_mode, before.observer, before.profile) == (
        "FULL_DUPLEX_STREAMED",
        False,
        after.profile,
    )
    assert (plain.body_mode, plain.observer, plain.policy) == ("ON_DEMAND", True, "plaintext")
    assert parse_router("epp-duplex:recommended").name == "epp-duplex:recommended"


def test_parse_epp_metrics_sums_the_series_it_reports_over_their_labels() -> None:
    text = """# HELP epp_response_body_total Responses by who read their body
# TYPE epp_response_body_total counter
epp_response_body_total{path="observer"} 40.0
epp_response_body_total{path="none"} 2.0
epp_response_body_created{path="observer"} 1.7e9
inference_objective_request_total{model_name="m",target_model_name="m",priority="0"} 30.0
inference_objective_request_total{model_name="n",target_model_name="n",priority="0"} 12.0
inference_objective_request_duration_seconds_count{model_name="m",target_model_name="m"} 41.0
inference_objective_request_duration_seconds_bucket{model_name="m",target_model_name="m",le="1"} 41.0
inference_objective_request_ttft_seconds_count{model_name="m",target_model_name="m"} 40.0
inference_objective_output_tokens_count{model_name="m",target_model_name="m"} 20.0
inference_objective_output_tokens_sum{model_name="m",target_model_name="m"} 2560.0
inference_objective_input_tokens_count{model_name="m",target_model_name="m"} 20.0
"""
    assert parse_epp_metrics(text) == {
        "body:observer": 40.0,
        "body:none": 2.0,
        "requests": 42.0,
        "completed": 41.0,
        "ttft": 40.0,
        "usage_responses": 20.0,
        "usage_tokens": 2560.0,
    }


def _run(router: str, tokens: int, usage: bool, cpu: dict[str, float], **kw: object) -> HttpRun:
    run = HttpRun(router, 20.0, tokens, usage, sent=200, completed=200, seconds=10.0, **kw)  # type: ignore[arg-type]
    run.cpu_s = cpu
    run.ttft_ms = [1.0 + tokens / 1000] * 200 if router != "envoy-rr" else [0.5] * 200
    return run


def test_cpu_per_request_net_of_idle_per_token_slopes_and_goals() -> None:
    options = OverheadOptions(tokens=(1, 128, 512), usage=(False, True), rates=(20.0,))
    result = OverheadResult(options)
    idle = {"epp": 0.05, "envoy": 0.0}  # the EPP idles at 5 % of a core: 0.5 s over a 10 s window
    for usage in (False, True):
        per_token_epp = 20e-6 if usage else 0.0
        for n in options.tokens:
            epp_s = 0.5 + 200 * (1e-3 + per_token_epp * (n - 1))
            envoy_s = 200 * (0.5e-3 + 15e-6 * (n - 1))
            for run in (
                _run("epp:default", n, usage, {"epp": epp_s, "envoy": envoy_s}, idle=idle),
                _run("envoy-rr", n, usage, {"envoy": envoy_s}),
                _run("sglang-router", n, usage, {"router": 200 * (1e-3 + 15e-6 * (n - 1))}),
            ):
                result.http[run.key] = run
    epp = result.http["epp:default", 1, False, 20.0]
    assert epp.cpu_us(net=False)["epp"] == pytest.approx(3500)  # 1 ms + 0.5 s of idle / 200 requests
    assert epp.cpu_us()["epp"] == pytest.approx(1000)
    assert result.per_token("epp:default", False, 20.0, "epp", 512) == pytest.approx(0.0, abs=1e-9)
    assert result.per_token("epp:default", True, 20.0, "epp", 128) == pytest.approx(20.0)
    assert result.per_token("epp:default", True, 20.0, "envoy", 512) == pytest.approx(15.0)
    assert result.per_token("epp:default", True, 20.0, None, 512) == pytest.approx(35.0)
    rows = {(r["router"], r["usage"], r["process"]): r["cpu_us_per_token"] for r in result.per_token_rows()}
    assert rows["epp:default", True, "epp"] == {"128v1": 20.0, "512v1": 20.0}
    assert rows["sglang-router", False, "router"] == {"128v1": 15.0, "512v1": 15.0}
    assert ("envoy-rr", False, "total") not in rows  # one process: no total row

    goals = {(g["usage"], g["goal"], g["at"]): g for g in result.goals() if g["router"] == "epp:default"}
    assert goals[False, "epp_cpu_us_per_token", "512v1"]["met"] is True
    assert goals[True, "epp_cpu_us_per_token", "512v1"]["met"] is True  # 20 <= 30
    # at 128 tokens: EPP 1 ms + Envoy 0.5 ms + 127 * 15 µs over sglang-router's 1 ms + 127 * 15 µs
    ratio = goals[False, "cpu_vs_sglang", "128 tokens"]
    assert ratio["value"] == pytest.approx((1000 + 500 + 127 * 15) / (1000 + 127 * 15), abs=1e-3)
    assert ratio["met"] is True
    assert goals[False, "cpu_vs_sglang_raw", "128 tokens"]["value"] > ratio["value"]
    assert goals[True, "cpu_vs_sglang", "128 tokens"]["met"] is False  # + 127 * 20 µs of usage reading
    assert goals[False, "ttft_p50_added_ms", "1 tokens"]["value"] == pytest.approx(0.501)
    assert goals[False, "ttft_p50_added_ms", "1 tokens"]["met"] is True

    md = render_markdown(result)
    assert (
        "### 512 output tokens per request" in md and "| 20 | epp:default | on | epp | 20.00 | 20.00 |" in md
    )
    assert "EPP CPU per streamed token, epp:default, 20/s at 512v1: usage off: **0.00** (met" in md


def test_goals_without_sglang_router_are_not_measured() -> None:
    result = OverheadResult(OverheadOptions(tokens=(1, 16), usage=(False,), rates=(20.0,)))
    for n in (1, 16):
        run = _run("epp-duplex:default", n, False, {"epp": 0.2 * n, "envoy": 0.1 * n})
        result.http[run.key] = run
    goals = {g["goal"]: g for g in result.goals()}
    assert goals["cpu_vs_sglang"]["met"] is None and goals["cpu_vs_sglang"]["at"] == "16 tokens"
    assert goals["epp_cpu_us_per_token"]["value"] == pytest.approx(1e6 * 0.2 * 15 / 200 / 15)
    assert "not measured" in render_markdown(result)
