"""The schedule benchmark runs and reports (a smoke test; the figures live in docs/benchmarks.md)."""

from __future__ import annotations

import json

from epp.tools.bench import schedule


def test_run_reports_all_three_measurements() -> None:
    result = schedule.run(endpoints=8, prompt_chars=500, iterations=40)
    assert (result.endpoints, result.prompt_chars, result.iterations) == (8, 500, 40)
    for stats in (result.decision, result.schedule, result.baseline):
        assert 0 < stats.median_us <= stats.p99_us
    assert result.decision.median_us >= result.schedule.median_us
    assert "median" in result.as_text() and "baseline" in result.as_text()


def test_main_prints_json(capsys) -> None:  # type: ignore[no-untyped-def]
    assert schedule.main(["--endpoints", "4", "--iterations", "20", "--prompt-chars", "300", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["endpoints"] == 4 and set(data) >= {"decision", "schedule", "baseline"}
