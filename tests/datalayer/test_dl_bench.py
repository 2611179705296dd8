"""The scrape benchmark still runs and still shows the scanner far cheaper than the library parser."""

from __future__ import annotations

from epp.tools.bench.scrape import measure_parse, template_page


def test_parse_benchmark_smoke():
    assert 40_000 < len(template_page()) < 80_000  # a realistic vLLM page size
    result = measure_parse(60)
    assert result["ours"].cpu_us * 10 < result["library"].cpu_us
