"""The quality report: tables per workload, goal checks against the best rival, plots and JSON."""

from __future__ import annotations

import json

from epp.tools.bench.quality import FULL, QualityOptions, QualityResult, RunRecord
from epp.tools.bench.quality_report import check_goals, render_markdown, write_outputs
from epp.tools.bench.saturation import SaturationSearch


def _run(workload: str, router: str, mult: float, p90: float, hit: float = 0.8, **kw) -> RunRecord:
    base = dict(
        workload=workload,
        router=router,
        rate=round(40 * mult, 2),
        multiplier=mult,
        purpose="sweep",
        requests=100,
        ok=100,
        errors=0,
        unfinished=0,
        ttft_p50_ms=p90 / 2,
        ttft_p90_ms=p90,
        ttft_p99_ms=p90 * 2,
        e2e_p90_ms=p90 * 3,
        output_tokens_per_s=500.0,
        hit_ratio=hit,
        oracle_hit_ratio=0.9,
        balance_requests=1.5,
        balance_busy=1.2,
        duration_s=8.0,
        server_ttft_p90_ms=p90 * 0.9,
        ttft_p90_warm_ms=p90 * 0.8,
    )
    base.update(kw)
    return RunRecord(**base)


def _result() -> QualityResult:
    options = QualityOptions(
        sizing=FULL,
        workloads=("zipf", "mixed"),
        routers=("epp:default", "envoy-rr", "sglang", "vllm"),
    )
    result = QualityResult(options=options, machine={"nproc": 2, "cpu_model": "x", "load_average": [1, 1, 1]})
    result.saturation = {
        "zipf": SaturationSearch.given("zipf", 40.0),
        "mixed": SaturationSearch.given("mixed", 40.0),
    }
    for mult in (1.0, 1.2):
        result.runs += [
            _run("zipf", "epp:default", mult, 100.0 * mult, hit=0.85),
            _run("zipf", "envoy-rr", mult, 900.0 * mult, hit=0.3),
            _run("zipf", "sglang-router", mult, 300.0 * mult, hit=0.8),
            _run("zipf", "vllm-router", mult, 250.0 * mult, hit=0.9),
        ]
    result.runs += [
        _run(
            "mixed",
            "epp:default",
            1.0,
            190.0,
            errors=1,
            ok=99,
            ttft_p90_ms_by_kind={"shared": 50.0, "unique": 400.0},
        ),
        _run("mixed", "sglang-router", 1.0, 200.0),
        _run("mixed", "vllm-router", 1.0, 210.0),
        _run("mixed", "sglang-router", 1.0, 1.0, purpose="search", multiplier=None),
    ]
    return result


def test_goals_compare_with_the_faster_rival_and_need_no_errors_and_hits() -> None:
    checks = {(c.workload, c.multiplier): c for c in check_goals(_result())}
    z = checks["zipf", 1.0]
    assert z.rival == "vllm-router" and z.ratio == 100 / 250
    assert not z.met and "hit 0.850 vs 0.900" in z.note  # fast enough, but fewer hits than vllm-router
    m = checks["mixed", 1.0]
    assert m.rival == "sglang-router" and m.ratio == 190 / 200
    assert not m.met and "1 errors" in m.note
    assert ("shared_prefix", 0.5) not in checks  # not measured: not judged


def test_markdown_and_files(tmp_path) -> None:
    result = _result()
    text = render_markdown(result)
    assert "## zipf" in text and "## mixed" in text and "## Goals (issue 10)" in text
    assert (
        "| 40 (1x) | epp:default | 50 | 100 | 80 | 200 | 90 | 300 | 500 | 0.850 / 0.900 | 1.50 | 1.20 "
        "| 0 / 0 |" in text
    )
    assert "| 50 / 400 |" in text  # mixed: p90 of the shared-prefix and of the unique requests
    assert text.count("| 40 (1x) | sglang-router") == 2  # the search probe is not in the tables
    doc = write_outputs(result, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {
        "quality.json",
        "quality.md",
        "quality-zipf.png",
        "quality-mixed.png",
    }
    assert (tmp_path / "quality-zipf.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    loaded = json.loads((tmp_path / "quality.json").read_text())
    assert loaded == json.loads(json.dumps(doc))
    assert len(loaded["runs"]) == 12 and loaded["saturation"]["zipf"]["rate"] == 40.0
    assert {g["workload"] for g in loaded["goals"]} == {"zipf", "mixed"}


def test_merge_keeps_earlier_rows_of_other_routers_and_their_saturation(tmp_path) -> None:
    earlier = _result()
    earlier.saturation["zipf"] = SaturationSearch("zipf", 40.0, "sglang-router", 3.0, {"sglang-router": 40.0})
    doc = json.loads(json.dumps(earlier.to_json()))
    now = QualityResult(options=QualityOptions(sizing=FULL, workloads=("zipf",), routers=("epp:default",)))
    now.saturation = {"zipf": SaturationSearch.given("zipf", 40.0)}
    now.runs = [_run("zipf", "epp:default", 1.0, 42.0)]
    now.merge(doc, "earlier.json")
    zipf = [(r.router, r.multiplier) for r in now.runs if r.workload == "zipf"]
    assert ("epp:default", 1.0) in zipf and ("envoy-rr", 1.2) in zipf
    assert ("epp:default", 1.2) not in zipf  # re-measured routers lose all their earlier rows
    mine = [r for r in now.runs if r.router == "epp:default" and r.workload == "zipf"]
    assert [r.ttft_p90_ms for r in mine] == [42.0]
    assert any(r.router == "epp:default" for r in now.runs if r.workload == "mixed")  # not re-measured
    assert now.saturation["zipf"].best == "sglang-router"
    text = render_markdown(now)
    assert "## mixed" in text and "come from earlier.json" in text
    assert now.merged["routers"] == ["envoy-rr", "epp:default", "sglang-router", "vllm-router"]


def test_warm_p90_counts_only_requests_sent_after_the_cold_start_window() -> None:
    from epp.tools.bench.quality import WARM_AFTER_S, _record
    from epp.tools.bench.routers import parse_router
    from epp.tools.loadgen.client import RequestResult
    from epp.tools.loadgen.fleet import fleet_stats
    from epp.tools.loadgen.runner import RunResult

    def result(start: float, ttft: float, error: str | None = None) -> RequestResult:
        return RequestResult("s", "g", 0, start, 200, ttft, ttft + 0.1, "b", error=error)

    cold = [result(0.1 * i, 5.0) for i in range(20)]  # all before the window ends
    warm = [result(WARM_AFTER_S + 0.1 * i, 0.01 * (i + 1)) for i in range(10)]
    failed = [result(WARM_AFTER_S + 1.0, 9.0, error="status 503")]
    run = RunResult("zipf", cold + warm + failed, duration_s=5.0)
    server = {"name": "s0", "prefix_cache_queries": 10, "prefix_cache_hits": 5, "requests_finished": 30}
    record = _record("zipf", parse_router("envoy-rr"), 10.0, 1.0, "sweep", run, fleet_stats([server]), 0.5)
    assert record.ttft_p90_ms == 5000.0
    # interpolated between the 9th and 10th of the 10 warm ones (90, 100 ms); the failed one is not counted
    assert record.ttft_p90_warm_ms == 91.0
