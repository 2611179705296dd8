"""`python -m epp.tools.bench.predictor` runs (a few requests) and reports each line."""

from __future__ import annotations

import json

from epp.tools.bench import predictor


def test_runs_and_reports(capsys) -> None:  # type: ignore[no-untyped-def]
    result = predictor.run(endpoints=16, iterations=60, classes=2)
    assert result.predict.median_us > 0 and result.cold.median_us > 0 and result.fit_ms > 0
    text = result.as_text()
    for name in ("predict", "cold", "consumers", "baseline", "fit"):
        assert name in text
    assert predictor.main(["--endpoints", "8", "--iterations", "20", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["endpoints"] == 8


def test_offline_comparison_prefers_the_model_to_the_mean() -> None:
    import random

    from epp.plugins.latency.model import feature_row
    from epp.tools.bench.predictor_accuracy import _compare

    rng = random.Random(0)
    samples = []
    for i in range(400):
        uncached, running = rng.randint(10, 3000), rng.randint(0, 40)
        row = feature_row(float(uncached), float(uncached), 16.0, 0.0, 0.0, float(running), 0.5, 1.0)
        ttft = (10.0 + 0.04 * uncached + 0.5 * running) * rng.uniform(0.95, 1.05)
        samples.append((f"e{i % 4}", row, ttft, 7.0 + 0.1 * running))
    results = _compare(samples)
    ours = results["ridge per group, relative (ours)"]
    assert ours["ttft_mdape"] < 0.05 < results["per-endpoint mean"]["ttft_mdape"]
