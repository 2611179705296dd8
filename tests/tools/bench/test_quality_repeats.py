"""`python -m epp.tools.bench.quality_repeats`: medians over repeated quality reports, ratios per repeat."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from epp.tools.bench.quality_repeats import main, summarise


def _run(workload: str, router: str, p90: float, met: float, multiplier: float = 1.0) -> dict[str, object]:
    return {
        "purpose": "sweep",
        "multiplier": multiplier,
        "workload": workload,
        "router": router,
        "ttft_p90_ms": p90,
        "slo_attainment": met,
        "hit_ratio": 0.5,
        "prediction_error": {"ttft_after_median_pct": 20.0},
    }


def _report(ours: float, sglang: float, vllm: float) -> dict[str, object]:
    return {
        "runs": [
            _run("zipf", "epp:slo-aware", ours, 0.9),
            _run("zipf", "sglang-router", sglang, 0.8),
            _run("zipf", "vllm-router", vllm, 0.7),
            _run("zipf", "epp:slo-aware", 99999.0, 0.1, multiplier=1.2),  # another rate: not counted
            {**_run("zipf", "sglang-router", 1.0, 1.0), "purpose": "search"},  # a saturation probe
        ]
    }


def test_medians_and_per_repeat_ratios_against_the_best_rival() -> None:
    reports = [_report(500, 1000, 2000), _report(900, 1500, 1200), _report(700, 1400, 1400)]
    s = summarise(reports, ours="epp:slo-aware")
    assert s.cells["zipf"]["epp:slo-aware"].p90_ms == [500, 900, 700]
    assert s.ratios["zipf"] == pytest.approx([0.5, 0.75, 0.5])
    assert s.attainment_gain["zipf"] == pytest.approx([10.0, 10.0, 10.0])
    text = s.as_markdown("epp:slo-aware")
    assert "| zipf | **epp:slo-aware** | 700 (500-900) | 0.900 |" in text
    assert "| zipf | 0.50, 0.75, 0.50 | 0.50 |" in text


def test_the_command_reads_directories_and_refuses_a_missing_one(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    for i, numbers in enumerate([(500, 1000, 2000), (900, 1500, 1200)]):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "quality.json").write_text(json.dumps(_report(*numbers)))
    assert main([str(tmp_path / "0"), str(tmp_path / "1"), "--ours", "epp:slo-aware"]) == 0
    assert "0.50, 0.75 | 0.62 |" in capsys.readouterr().out
    assert main([str(tmp_path / "missing")]) == 2
    assert "quality_repeats:" in capsys.readouterr().err
