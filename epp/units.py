"""Go-style durations and Kubernetes quantities, as they appear in flags and in the config.

Durations use Go's `time.ParseDuration` grammar (`50ms`, `2s`, `1m`, `1h30m`, `1.5s`, `100us`, `-1s`,
`0`) and are held as float seconds. Quantities use Kubernetes' grammar (`10Gi`, `1k`, `500M`, `1.5Gi`,
`1e3`, plain integers) and are held as int (rounded up, as `Quantity.Value()` does).
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

__all__ = [
    "DURATION_PATTERN",
    "QUANTITY_PATTERN",
    "format_duration",
    "parse_duration",
    "parse_quantity",
]

_UNIT_NS: dict[str, int] = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # U+00B5 micro sign
    "μs": 1_000,  # U+03BC greek mu
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}

_PART = r"(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|μs|ms|s|m|h)"
#: A JSON-schema pattern for Go durations (also accepts "0").
DURATION_PATTERN = rf"^[-+]?(?:0|(?:{_PART})+)$"
_PART_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_RE = re.compile(DURATION_PATTERN)

_SUFFIXES: dict[str, int] = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}
#: A JSON-schema pattern for Kubernetes quantities.
QUANTITY_PATTERN = r"^[+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+|m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
_QUANTITY_RE = re.compile(r"^\+?((?:\d+(?:\.\d*)?|\.\d+))([eE][+-]?\d+|m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


def parse_duration(text: str) -> float:
    """Seconds in a Go duration string; raises ValueError with a message naming the accepted forms."""
    s = text.strip()
    if not _DURATION_RE.match(s):
        raise ValueError(f"invalid duration {text!r} (use a number with a unit: 50ms, 2s, 1m, 1h30m, 100us)")
    sign = -1.0 if s.startswith("-") else 1.0
    s = s.lstrip("+-")
    if s == "0":
        return 0.0
    total_ns = sum(Decimal(num) * _UNIT_NS[unit] for num, unit in _PART_RE.findall(s))
    return sign * float(total_ns) / 1e9


def format_duration(seconds: float) -> str:
    """The shortest exact Go-style spelling of `seconds` (`0.05` → `50ms`, `90` → `1m30s`)."""
    if seconds == 0:
        return "0s"
    sign = "-" if seconds < 0 else ""
    ns = round(abs(seconds) * 1e9)
    if ns % 1_000_000_000 == 0:
        secs = ns // 1_000_000_000
        h, rem = divmod(secs, 3600)
        m, s = divmod(rem, 60)
        out = (f"{h}h" if h else "") + (f"{m}m" if m else "") + (f"{s}s" if s or not (h or m) else "")
        return sign + out
    for unit, scale in (("ms", 1_000_000), ("us", 1_000), ("ns", 1)):
        if ns % scale == 0:
            return f"{sign}{ns // scale}{unit}"
    return f"{sign}{ns}ns"  # pragma: no cover - the ns branch always matches


def parse_quantity(value: str | int) -> int:
    """The integer value of a Kubernetes quantity (`10Gi`, `1k`, `1.5G`, `1e3`, `500`), rounded up."""
    if isinstance(value, bool):
        raise ValueError(f"invalid quantity {value!r} (use an integer or a string like 10Gi, 500M, 1k)")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a quantity must not be negative (got {value})")
        return value
    m = _QUANTITY_RE.match(value.strip())
    if not m:
        raise ValueError(f"invalid quantity {value!r} (use an integer or a string like 10Gi, 500M, 1k)")
    number, suffix = m.group(1), m.group(2) or ""
    try:
        amount = Decimal(number)
        if suffix[:1] in ("e", "E"):
            amount = amount.scaleb(int(suffix[1:]))
        elif suffix == "m":
            amount = amount / 1000
        else:
            amount = amount * _SUFFIXES[suffix]
    except (InvalidOperation, KeyError) as exc:  # pragma: no cover - the regex admits only valid input
        raise ValueError(f"invalid quantity {value!r}") from exc
    return math.ceil(amount)
