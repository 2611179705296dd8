"""Run summaries: percentiles like numpy's default, errors and unfinished requests kept apart."""

from __future__ import annotations

import pytest

from epp.tools.loadgen.client import RequestResult
from epp.tools.loadgen.runner import RunResult
from epp.tools.loadgen.stats import percentile, summarize


def test_percentile_interpolates_linearly() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 90) == 3.0
    data = [10.0, 1.0, 4.0, 2.0, 3.0]  # sorted: 1 2 3 4 10
    assert percentile(data, 0) == 1.0
    assert percentile(data, 50) == 3.0
    assert percentile(data, 90) == pytest.approx(4 + 0.6 * 6)  # numpy.percentile(data, 90) == 7.6
    assert percentile(data, 100) == 10.0
    with pytest.raises(ValueError):
        percentile(data, 101)


def _r(i: int, ttft: float | None, backend: str | None, error: str | None = None) -> RequestResult:
    return RequestResult(
        session_id=f"s{i}",
        group="g",
        turn=0,
        start_s=0.0,
        status=200 if error is None else 503,
        ttft_s=ttft,
        e2e_s=(ttft or 0.0) + 0.1,
        backend=backend,
        error=error,
        prompt_tokens=100,
        output_tokens=10 if error is None else 0,
        cached_tokens=50 if error is None else 0,
    )


def test_summarize_counts_and_percentiles_over_successes() -> None:
    results = [_r(i, 0.01 * (i + 1), f"b{i % 2}") for i in range(10)]
    results += [_r(10, None, "b0", "HTTP 503: overloaded"), _r(11, None, None, "timeout after 1s")]
    s = summarize(RunResult(workload="w", results=results, duration_s=2.0, unfinished=3))
    assert (s.requests, s.ok, s.errors, s.unfinished) == (15, 10, 2, 3)
    assert s.by_backend == {"b0": 5, "b1": 5}
    assert s.error_kinds == {"HTTP 503": 1, "timeout after 1s": 1}
    assert s.ttft_p50_s == pytest.approx(0.055)
    assert s.ttft_p90_s == pytest.approx(0.091)
    assert s.e2e_p90_s == pytest.approx(0.191)
    assert s.output_tokens == 100 and s.output_tokens_per_s == 50.0
    assert s.client_hit_ratio == 0.5


def test_summarize_empty_run() -> None:
    s = summarize(RunResult(workload="w", unfinished=4))
    assert s.ok == 0 and s.unfinished == 4 and s.ttft_p90_s is None and s.output_tokens_per_s == 0.0
