"""Go durations and Kubernetes quantities."""

from __future__ import annotations

import pytest

from epp.units import format_duration, parse_duration, parse_quantity


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("50ms", 0.05),
        ("2s", 2.0),
        ("1m", 60.0),
        ("1h30m", 5400.0),
        ("1.5s", 1.5),
        ("100us", 0.0001),
        ("100µs", 0.0001),
        ("250ns", 2.5e-7),
        ("0", 0.0),
        ("-1s", -1.0),
        ("1h2m3.5s", 3723.5),
        (".5s", 0.5),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("text", ["5", "", "s", "1x", "1 s", "ms", "1.2.3s", "--1s"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.05, "50ms"), (2.0, "2s"), (90.0, "1m30s"), (5400.0, "1h30m"), (0.0, "0s"), (1e-4, "100us")],
)
def test_format_duration_round_trips(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "number"),
    [
        ("10Gi", 10 * 2**30),
        ("1k", 1000),
        ("1.5Gi", 3 * 2**29),
        ("1e3", 1000),
        ("500", 500),
        ("500M", 500_000_000),
        ("100m", 1),  # 0.1, rounded up as Quantity.Value() does
        (7, 7),
    ],
)
def test_parse_quantity(value: str | int, number: int) -> None:
    assert parse_quantity(value) == number


@pytest.mark.parametrize("value", ["10GB", "ten", "", "-1", "1Kb"])
def test_parse_quantity_rejects(value: str) -> None:
    with pytest.raises(ValueError, match="quantity"):
        parse_quantity(value)


def test_parse_quantity_rejects_negative_int_and_bool() -> None:
    with pytest.raises(ValueError):
        parse_quantity(-1)
    with pytest.raises(ValueError):
        parse_quantity(True)
