"""The inference-perf cross-check's config and summary parsing (the run itself is in docs/benchmarks.md)."""

from __future__ import annotations

from pathlib import Path

from epp.tools.bench.crosscheck import (
    CrossOptions,
    CrossResult,
    CrossRow,
    ip_config,
    parse_ip_summary,
    render_markdown,
)


def test_config_is_shared_prefix_poisson_streaming_completions_on_loopback(tmp_path) -> None:
    o = CrossOptions(rate=10.0, duration_s=7, groups=4)
    cfg = ip_config(o, "http://127.0.0.1:1234", "m", Path("/tok"), tmp_path)
    assert cfg["api"] == {"type": "completion", "streaming": True}
    sp = cfg["data"]["shared_prefix"]
    assert cfg["data"]["type"] == "shared_prefix"
    assert sp["num_groups"] * sp["num_prompts_per_group"] >= 70
    assert cfg["load"]["type"] == "poisson" and cfg["load"]["stages"] == [{"rate": 10.0, "duration": 7}]
    assert cfg["server"]["base_url"].startswith("http://127.0.0.1:")
    assert cfg["server"]["ignore_eos"] is True
    assert cfg["tokenizer"]["pretrained_model_name_or_path"] == "/tok"


def test_summary_parsing_and_ranking() -> None:
    doc = {
        "successes": {
            "count": 40,
            "latency": {
                "time_to_first_token": {"median": 0.0166, "p90": 0.0212, "p99": 0.0273},
                "request_latency": {"p90": 0.135},
            },
            "throughput": {"output_tokens_per_sec": 338.7},
        },
        "failures": {"count": 2},
    }
    got = parse_ip_summary(doc)
    assert got == {
        "ok": 40,
        "failed": 2,
        "ttft_p50_ms": 16.6,
        "ttft_p90_ms": 21.2,
        "ttft_p99_ms": 27.3,
        "e2e_p90_ms": 135.0,
        "output_tokens_per_s": 338.7,
    }
    assert parse_ip_summary({})["ok"] == 0
    result = CrossResult(options=CrossOptions())
    for router, client, p90 in (
        ("a", "inference-perf", 5.0),
        ("b", "inference-perf", 3.0),
        ("a", "epp loadgen", 4.0),
        ("b", "epp loadgen", 2.0),
    ):
        result.rows.append(CrossRow(router, client, 1, 0, 1.0, p90, 9.0, 9.0, 1.0, 0.5, 1.0))
    assert result.ranking("inference-perf") == result.ranking("epp loadgen") == ["b", "a"]
    assert "Same order: yes" in render_markdown(result)
