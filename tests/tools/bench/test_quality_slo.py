"""`epp bench quality`'s latency-SLO measurements (issue 20): configuration, counting and the report only
(nothing is benchmarked; one request goes to a local stub server)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from epp.observability.families import PREDICTION_ERROR_BUCKETS
from epp.tools.bench.harness import Children
from epp.tools.bench.quality import FULL, Bench, QualityOptions, QualityResult, RunRecord
from epp.tools.bench.quality_cli import _line, build_parser, options_from_args
from epp.tools.bench.quality_report import check_goals, render_markdown, render_slo_table, write_outputs
from epp.tools.bench.quality_slo import (
    CRITICAL,
    SHEDDABLE,
    SloOptions,
    SloTarget,
    attainment,
    error_buckets,
    histogram_quantile,
    parse_ttft_slo,
    prediction_error,
    request_class,
    session_classes,
    session_turns,
    slo_from_light,
    tag_workload,
)
from epp.tools.bench.saturation import SaturationSearch
from epp.tools.loadgen.client import LoadClient, RequestResult
from epp.tools.loadgen.workloads import multiturn, shared_prefix

ROUTERS = ["--routers", "epp:default,sglang,vllm"]


def options(*argv: str) -> QualityOptions:
    return options_from_args(build_parser().parse_args([*argv, *ROUTERS]))


# ---- options ---------------------------------------------------------------------------------------


def test_ttft_slo_values() -> None:
    assert parse_ttft_slo("auto") == "auto" and parse_ttft_slo("OFF") == "off"
    assert parse_ttft_slo("850") == "850" and parse_ttft_slo("1200ms") == "1200"
    for bad in ("0", "-5", "fast", "nan"):
        with pytest.raises(ValueError):
            parse_ttft_slo(bad)
    assert SloOptions(ttft="850").fixed_ms == 850.0 and SloOptions(ttft="auto").fixed_ms is None


def test_off_by_default_changes_nothing(tmp_path: Path) -> None:
    opts = options("--saturation", "zipf=30,mixed=20,shared_prefix=30,multiturn=50")
    assert not opts.slo.enabled and not opts.slo.mixed
    assert opts.slo_light_router is None
    assert [s.name for s in opts.specs_to_start] == ["epp:default", "sglang-router", "vllm-router"]
    assert "--static-objectives" not in Bench(opts, lambda _: None, Children(), tmp_path).epp_args()


def test_auto_slo_needs_the_light_load_router_even_with_given_rates() -> None:
    opts = options("--saturation", "zipf=30", "--workloads", "zipf", "--ttft-slo", "auto")
    assert opts.slo.auto and opts.slo_light_router == "sglang"
    assert [s.name for s in opts.specs_to_start][-1] == "sglang-router"
    opts = options(
        "--workloads", "zipf", "--ttft-slo", "auto", "--slo-router", "envoy-rr", "--search-with", "vllm"
    )
    assert opts.slo_light_router == "envoy-rr"
    # a fixed SLO needs no light-load run
    assert (
        options("--saturation", "zipf=30", "--workloads", "zipf", "--ttft-slo", "900").slo_light_router
        is None
    )


def test_auto_reuses_the_slos_of_an_earlier_run(tmp_path: Path) -> None:
    earlier = tmp_path / "quality.json"
    earlier.write_text(
        json.dumps(
            {
                "options": {"fleet": "default"},
                "saturation": {"zipf": {"rate": 30.0}},
                "slo": {"zipf": SloTarget("zipf", 1234.0, "auto").to_json()},
            }
        )
    )
    opts = options("--saturation-from", str(earlier), "--workloads", "zipf", "--ttft-slo", "auto")
    assert opts.slo.given == {"zipf": 1234.0}
    assert opts.slo_light_router is None  # every workload has its SLO: no light-load run


def test_sheddable_mix_needs_an_slo_and_gives_the_epp_both_objectives(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--sheddable needs --ttft-slo"):
        options("--sheddable", "0.5")
    with pytest.raises(SystemExit):
        options("--sheddable", "1.5", "--ttft-slo", "auto")
    opts = options("--sheddable", "0.3", "--ttft-slo", "auto", "--slo-header")
    assert opts.slo.mixed and opts.slo.header and opts.slo.sheddable_share == 0.3
    args = Bench(opts, lambda _: None, Children(), tmp_path).epp_args()
    assert args[args.index("--static-objectives") + 1] == "critical=10,sheddable=-1"
    assert opts.slo.to_json()["sheddable_share"] == 0.3


# ---- SLO, classes, headers -------------------------------------------------------------------------


def test_auto_slo_is_twice_the_light_load_p90() -> None:
    assert slo_from_light(412.4, 2.0) == 825.0
    assert slo_from_light(None, 2.0) is None
    target = SloTarget("zipf", 825.0, "auto", "sglang-router", 6.0, 412.4, 2.0)
    assert "2 x the p90 TTFT 412.4 ms of sglang-router at 6/s" in target.describe()


def test_classes_are_seeded_per_session_and_near_the_share() -> None:
    ids = [f"s{i}" for i in range(2000)]
    classes = [request_class(0, i, 0.3) for i in ids]
    assert classes == [request_class(0, i, 0.3) for i in ids]  # the same for every router
    assert 0.26 < classes.count(SHEDDABLE) / len(ids) < 0.34
    assert {request_class(0, i, 0.0) for i in ids} == {CRITICAL}


def test_headers_go_on_every_turn_of_a_session() -> None:
    w = multiturn(sessions=20, groups=2, turns=3, system_prompt_len=20, question_len=5, output_len=2, seed=0)
    slo = SloOptions(ttft="auto", header=True, sheddable_share=0.5)
    tagged = tag_workload(w, slo, 0, 825.0)
    classes = session_classes(tagged, slo, 0)
    for s in tagged.sessions:
        h = dict(s.headers)
        assert h["x-slo-ttft-ms"] == "825"
        assert h["x-gateway-inference-objective"] == classes[s.id]
    assert set(classes.values()) == {CRITICAL, SHEDDABLE}
    turns = session_turns(tagged, classes)
    assert turns[tagged.sessions[0].id] == (classes[tagged.sessions[0].id], 3)
    # without --slo-header and without a mix, requests go out as they always did
    assert tag_workload(w, SloOptions(ttft="auto"), 0, 825.0) is w
    only_class = tag_workload(w, SloOptions(ttft="auto", sheddable_share=0.5), 0, 825.0)
    assert all("x-slo-ttft-ms" not in dict(s.headers) for s in only_class.sessions)


async def test_the_client_sends_the_session_headers() -> None:
    seen: list[Any] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.copy())
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"choices": [{"text": "hi"}]}\n\ndata: [DONE]\n\n')
        return resp

    app = web.Application()
    app.router.add_post("/v1/completions", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        w = shared_prefix(groups=1, prompts_per_group=1, system_prompt_len=8, question_len=4, output_len=2)
        w = tag_workload(w, SloOptions(ttft="700", header=True, sheddable_share=0.999), 0, 700.0)
        async with LoadClient(f"http://127.0.0.1:{port}", headers={"x-run": "1"}) as client:
            result, _ = await client.send(w.sessions[0], 0)
    finally:
        await runner.cleanup()
    assert result.ok
    assert seen[0]["x-slo-ttft-ms"] == "700"
    assert seen[0]["x-gateway-inference-objective"] == SHEDDABLE
    assert seen[0]["x-run"] == "1" and seen[0]["x-request-id"] == f"{w.sessions[0].id}-t0"


# ---- attainment ------------------------------------------------------------------------------------


def _r(session: str, ttft: float | None, status: int = 200, error: str | None = None) -> RequestResult:
    return RequestResult(session, "g", 0, 0.0, status, ttft, (ttft or 0) + 0.1, "b", error=error)


def test_attainment_counts_failed_and_unfinished_requests_as_missed() -> None:
    sessions = {name: (cls, 1) for name, cls in (("c1", CRITICAL), ("c2", CRITICAL), ("c3", CRITICAL))}
    sessions |= {name: (SHEDDABLE, 1) for name in ("s1", "s2", "s3")}
    results = [
        _r("c1", 0.5),  # met
        _r("c2", 0.9),  # late
        _r("c3", None, 503, "HTTP 503: x"),  # failed
        _r("s1", 0.8),  # met (the SLO is inclusive)
        _r("s2", None, 429, "HTTP 429: shed"),  # refused
        # s3 never finished
    ]
    out = attainment(results, sessions, 800.0)
    crit, shed = out[CRITICAL], out[SHEDDABLE]
    assert (crit.met, crit.late, crit.failed, crit.rejected) == (1, 1, 1, 0)
    assert (shed.met, shed.rejected, shed.failed) == (1, 1, 1)
    assert out["all"].requests == 6 and out["all"].met == 2
    assert out["all"].attainment == pytest.approx(2 / 6)
    assert out[SHEDDABLE].to_json() == {
        "requests": 3, "met": 1, "rejected": 1, "late": 0, "failed": 1, "attainment": 0.3333,
    }  # fmt: skip


def test_a_refused_conversation_counts_its_unsent_turns_as_refused() -> None:
    sessions = {"chat": (SHEDDABLE, 3), "other": (CRITICAL, 2)}
    results = [_r("chat", 0.1), _r("chat", None, 429, "HTTP 429: shed"), _r("other", 0.1)]
    out = attainment(results, sessions, 500.0)
    assert (out[SHEDDABLE].requests, out[SHEDDABLE].met, out[SHEDDABLE].rejected) == (3, 1, 2)
    assert (out[CRITICAL].requests, out[CRITICAL].met, out[CRITICAL].failed) == (2, 1, 1)  # one unfinished
    assert out["all"].attainment == pytest.approx(2 / 5)


# ---- prediction error ------------------------------------------------------------------------------


def _page(errors: list[float], tpot: tuple[float, ...] = ()) -> str:
    registry = CollectorRegistry()
    h = Histogram(
        "epp_latency_prediction_error_ratio",
        "drift",
        ["type"],
        buckets=PREDICTION_ERROR_BUCKETS,
        registry=registry,
    )
    for e in errors:
        h.labels("ttft").observe(e)
    for e in tpot:
        h.labels("tpot").observe(e)
    return generate_latest(registry).decode()


def test_histogram_median_interpolates_like_prometheus() -> None:
    buckets = [(0.1, 0.0), (0.2, 10.0), (0.3, 20.0), (float("inf"), 20.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.2)
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.15)
    assert histogram_quantile(0.5, [(0.1, 0.0), (float("inf"), 4.0)]) == 0.1  # in +Inf: the last bound
    assert histogram_quantile(0.5, [(0.1, 0.0), (float("inf"), 0.0)]) is None


def test_prediction_error_over_the_run_and_after_its_first_seconds() -> None:
    assert error_buckets("# no predictor\nepp_requests_total 3\n") is None
    assert error_buckets(_page([])) == {}  # a predictor that has not predicted yet
    before = error_buckets(_page([0.9] * 50))  # the warm-up's, before the run
    middle = error_buckets(_page([0.9] * 50 + [0.8] * 10))  # early in the run: a young model
    after = error_buckets(_page([0.9] * 50 + [0.8] * 10 + [0.15] * 30, tpot=(0.04,) * 5))
    err = prediction_error(before, middle, after, 10.0)
    assert err["ttft_count"] == 40 and err["ttft_after_count"] == 30
    assert 10 < err["ttft_median_pct"] < 20  # 30 of 40 within (0.1, 0.2]
    assert 10 < err["ttft_after_median_pct"] < 20 and err["ttft_after_median_pct"] < err["ttft_median_pct"]
    assert err["tpot_count"] == 5 and err["tpot_median_pct"] == pytest.approx(2.5)
    # the mid-run scrape missed (a short run): whole-run figures only
    assert "ttft_after_count" not in prediction_error(before, None, after, 10.0)
    assert prediction_error(None, None, None, 10.0) == {}  # no predictor
    assert prediction_error({}, {}, {}, 10.0) == {"after_s": 10.0, "ttft_count": 0}  # no prediction yet


async def test_the_bench_reads_the_prediction_error_from_the_epp_metrics(tmp_path: Path) -> None:
    pages = [_page([0.9] * 4), _page([0.9] * 4 + [0.15] * 8)]

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=pages.pop(0) if len(pages) > 1 else pages[0])

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/metrics"
    b = Bench(options(), lambda _: None, Children(), tmp_path)
    try:
        before = await b._error_buckets(url)
        after = await b._error_buckets(url, 0.01)
        assert await b._error_buckets(None) is None  # Envoy and the rivals have no EPP
    finally:
        await runner.cleanup()
    assert await b._error_buckets(url) is None  # gone: no figures rather than an error
    err = prediction_error(before, None, after, 10.0)
    assert err["ttft_count"] == 8 and 10 < err["ttft_median_pct"] < 20


# ---- report ----------------------------------------------------------------------------------------


def _record(router: str, att: float, shed_429: int, **kw: Any) -> RunRecord:
    classes = {
        "all": {"requests": 100, "met": int(att * 100), "rejected": shed_429, "late": 3, "attainment": att},
        CRITICAL: {"requests": 70, "met": 68, "rejected": 0, "late": 2, "attainment": 68 / 70},
        SHEDDABLE: {"requests": 30, "met": 20, "rejected": shed_429, "late": 1, "attainment": 20 / 30},
    }  # fmt: skip
    return RunRecord(
        workload="zipf", router=router, rate=36.0, multiplier=1.2, purpose="sweep", requests=100,
        ok=100 - shed_429, errors=shed_429, unfinished=0, ttft_p50_ms=100.0, ttft_p90_ms=500.0,
        ttft_p99_ms=900.0, e2e_p90_ms=1000.0, output_tokens_per_s=400.0, hit_ratio=0.6,
        oracle_hit_ratio=0.7, balance_requests=1.2, balance_busy=1.1, duration_s=10.0,
        error_kinds={"HTTP 429": shed_429} if shed_429 else {}, ttft_slo_ms=825.0, slo_attainment=att,
        slo_classes=classes, **kw,
    )  # fmt: skip


def _result() -> QualityResult:
    slo = SloOptions(ttft="auto", header=True, sheddable_share=0.3)
    opts = QualityOptions(sizing=FULL, workloads=("zipf",), routers=("epp:default", "sglang"), slo=slo)
    result = QualityResult(options=opts, machine={"nproc": 2})
    result.saturation = {"zipf": SaturationSearch.given("zipf", 30.0)}
    result.slo = {"zipf": SloTarget("zipf", 825.0, "auto", "sglang-router", 6.0, 412.4, 2.0)}
    err = {"after_s": 10.0, "ttft_count": 300, "ttft_median_pct": 23.4, "ttft_after_count": 120}
    err["ttft_after_median_pct"] = 17.9
    result.runs = [_record("epp:default", 0.9, 9, prediction_error=err), _record("sglang-router", 0.8, 0)]
    return result


def test_report_has_the_slo_columns_and_json(tmp_path: Path) -> None:
    result = _result()
    table = render_slo_table(result, "zipf")
    head = table.splitlines()[0]
    for column in (
        "SLO ms",
        "met",
        "critical met",
        "sheddable met",
        "sheddable 429 / late",
        "TTFT pred. err.",
    ):
        assert column in head
    assert "after 10 s (n)" in head
    assert (
        "| 36 (1.2x) | epp:default | 825 | 0.900 | 0.971 | 0.667 | 9 / 1 | 0 / 2 | 23 % (300) | 18 % (120) |"
        in table
    )
    assert "| sglang-router | 825 | 0.800 |" in table and table.splitlines()[-1].endswith("| - | - |")
    result.runs[1].prediction_error = {"after_s": 10.0, "ttft_count": 0}  # a predictor without predictions
    assert render_slo_table(result, "zipf").splitlines()[-1].endswith("| - (0) | - (0) |")
    # the 9 sheddable requests refused with 429 are not failures in the goal checks
    (goal,) = [c for c in check_goals(result) if c.workload == "zipf"]
    assert "errors" not in goal.note
    md = render_markdown(result)
    assert "TTFT SLO: 825 ms = 2 x the p90 TTFT 412.4 ms of sglang-router at 6/s (light load)." in md
    assert "30% of the sessions are sent as objective `sheddable`" in md
    doc = write_outputs(result, tmp_path)
    assert doc["slo"]["zipf"]["ttft_ms"] == 825.0 and doc["options"]["slo"]["header"] is True
    run = doc["runs"][0]
    assert run["slo_attainment"] == 0.9 and run["slo_classes"][SHEDDABLE]["rejected"] == 9
    assert run["prediction_error"]["ttft_after_median_pct"] == 17.9
    # an older quality.json without the SLO fields still loads; a merge keeps the earlier SLOs
    old = {
        k: v
        for k, v in run.items()
        if k not in ("ttft_slo_ms", "slo_attainment", "slo_classes", "prediction_error")
    }
    assert RunRecord.from_json(old).slo_classes == {}
    assert RunRecord.from_json(run).shed == 9
    fresh = QualityResult(options=result.options)
    fresh.merge(json.loads((tmp_path / "quality.json").read_text()))
    assert fresh.slo["zipf"].ttft_ms == 825.0


def test_report_without_slos_is_unchanged() -> None:
    result = _result()
    result.slo = {}
    for r in result.runs:
        r.ttft_slo_ms, r.slo_attainment, r.slo_classes, r.prediction_error = None, None, {}, {}
    result.options = QualityOptions(sizing=FULL, workloads=("zipf",), routers=("epp:default", "sglang"))
    assert render_slo_table(result, "zipf") == ""
    md = render_markdown(result)
    assert "TTFT SLO" not in md and "Latency SLOs" not in md


def test_console_line_shows_attainment_per_class_and_prediction_error() -> None:
    line = _line(_result().runs[0])
    assert "SLO 825 ms met 0.900 (critical 0.971, sheddable 0.667, 9 refused with 429)" in line
    assert "TTFT prediction error median 23 % (18 % after 10 s)" in line
    assert "SLO" not in _line(RunRecord.from_json(_plain()))


def _plain() -> dict[str, object]:
    r = _record("envoy-rr", 0.5, 0)
    doc = {f: getattr(r, f) for f in RunRecord.__dataclass_fields__}
    doc.update(ttft_slo_ms=None, slo_attainment=None, slo_classes={}, prediction_error={})
    return doc
