"""Parameter field types shared by the saturation detectors."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

from epp.units import DURATION_PATTERN, format_duration, parse_duration

__all__ = ["GoDuration"]


def _coerce(value: Any) -> Any:
    if isinstance(value, str):
        return parse_duration(value)
    # a bare number is ambiguous (Go reads nanoseconds); refuse rather than guess
    raise ValueError(f"invalid duration {value!r}: use a string with a unit, such as '200ms' or '1s'")


#: A Go duration string ("200ms", "1.5s", "1m30s"), validated into float seconds.
GoDuration = Annotated[
    float,
    BeforeValidator(_coerce),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN}),
]
