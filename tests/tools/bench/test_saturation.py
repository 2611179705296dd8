"""The saturation search: finds the knee of a modelled router, and stops early for a weaker second one."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from epp.tools.bench.saturation import SaturationSearch, is_saturated, search_saturation


@dataclass
class Outcome:
    ttft_p90_ms: float | None
    failed: int = 0
    requests: int = 100


def queue_model(capacity: float, base_ms: float = 100.0):
    """p90 TTFT of an M/M/1-like queue: base / (1 - rate/capacity); overload fails requests."""
    calls: list[float] = []

    async def probe(rate: float) -> Outcome:
        calls.append(rate)
        if rate >= capacity:
            return Outcome(ttft_p90_ms=60_000.0, failed=20)
        return Outcome(ttft_p90_ms=base_ms / (1 - rate / capacity))

    return probe, calls


def test_saturated_means_failures_no_ttft_or_slow_p90() -> None:
    assert not is_saturated(Outcome(250.0), 100.0, 3.0)
    assert is_saturated(Outcome(301.0), 100.0, 3.0)
    assert is_saturated(Outcome(100.0, failed=2), 100.0, 3.0)
    assert not is_saturated(Outcome(100.0, failed=1), 100.0, 3.0)  # 1 % is tolerated
    assert is_saturated(Outcome(None), 100.0, 3.0)
    assert not is_saturated(Outcome(10_000.0), None, 3.0)  # the light-load probe has no reference


async def test_search_brackets_the_knee_within_the_precision() -> None:
    # p90 > 3 x light-load p90 (light = 0.3 x start) happens above rate ~ 0.7 x capacity
    probe, calls = queue_model(capacity=100.0)
    out = await search_saturation("w", [("a", probe)], start=20.0, factor=3.0, precision=1.2, max_probes=8)
    light_p90 = 100.0 / (1 - 6.0 / 100.0)
    knee = 100.0 * (1 - 100.0 / (3 * light_p90))
    assert out.best == "a"
    assert knee / 1.2 <= out.rate <= knee
    assert calls[0] == pytest.approx(6.0)  # the light-load probe comes first
    assert out.points[0].light and not out.points[0].saturated
    assert len(calls) <= 9


async def test_a_weaker_second_router_costs_one_probe_and_a_stronger_one_wins() -> None:
    strong, _ = queue_model(capacity=100.0)
    weak, weak_calls = queue_model(capacity=40.0)
    out = await search_saturation("w", [("strong", strong), ("weak", weak)], start=20.0, max_probes=8)
    assert out.best == "strong"
    assert len(weak_calls) == 2  # light load, then where "strong" saturated: saturated too, stop
    assert out.per_router["weak"] < out.per_router["strong"]

    weak, _ = queue_model(capacity=40.0)
    strong, _ = queue_model(capacity=100.0)
    flipped = await search_saturation("w", [("weak", weak), ("strong", strong)], start=20.0, max_probes=8)
    assert flipped.best == "strong"
    assert flipped.rate == pytest.approx(out.rate, rel=0.25)
    assert "weak >=" in flipped.describe()


async def test_search_steps_down_when_the_start_is_already_saturated() -> None:
    probe, calls = queue_model(capacity=10.0)
    out = await search_saturation("w", [("a", probe)], start=40.0, max_probes=8)
    assert 0 < out.rate < 10.0
    assert calls[0] == 12.0 and all(c < 12.0 for c in calls[1:])


async def test_search_rejects_nonsense() -> None:
    probe, _ = queue_model(capacity=10.0)
    with pytest.raises(ValueError, match="no router"):
        await search_saturation("w", [], start=1.0)
    with pytest.raises(ValueError, match="factor"):
        await search_saturation("w", [("a", probe)], start=1.0, factor=1.0)
    assert SaturationSearch.given("w", 12.0).describe() == "given"
