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
