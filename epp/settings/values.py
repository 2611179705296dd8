"""The value syntax of settings, the same from a flag or the environment: Go booleans and durations, lists.

Each parser takes a string (from a flag or a variable) or an already typed value (from Python code) and
is attached to a field type of `EppSettings` as a pydantic `BeforeValidator`.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field

from epp.units import parse_duration

__all__ = [
    "GO_FALSE",
    "GO_TRUE",
    "Bool",
    "Port",
    "Seconds",
    "parse_csv",
    "parse_objectives",
    "parse_port_list",
]

#: What Go's `strconv.ParseBool` accepts, hence the upstream flags.
GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def _duration(value: Any) -> Any:
    if isinstance(value, str):
        return parse_duration(value)
    return value  # a number of seconds from Python code


def parse_csv(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


def parse_objectives(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    out: dict[str, int] = {}
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        name, sep, prio = part.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"expected name=priority, got {part!r} (e.g. 'chat=10,batch=-1')")
        try:
            out[name.strip()] = int(prio.strip())
        except ValueError:
            raise ValueError(
                f"the priority of {name.strip()!r} must be an integer, got {prio.strip()!r}"
            ) from None
    return out


def parse_endpoint_labels(value: Any) -> Any:
    """`host:port=key=value,...` (an endpoint may repeat, once per label) → {host:port: {key: value}}."""
    if not isinstance(value, str):
        return value
    out: dict[str, dict[str, str]] = {}
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        address, sep, label = part.partition("=")
        key, sep2, val = label.partition("=")
        if not sep or not sep2 or not address.strip() or not key.strip():
            raise ValueError(
                f"expected host:port=key=value, got {part!r} (e.g. '10.0.0.1:8000=llm-d.ai/role=prefill')"
            )
        out.setdefault(address.strip(), {})[key.strip()] = val.strip()
    return out


def _bool(value: Any) -> Any:
    if isinstance(value, str):
        if value in GO_TRUE or value.lower() in ("yes", "on", "y"):
            return True
        if value in GO_FALSE or value.lower() in ("no", "off", "n"):
            return False
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def parse_port_list(value: Any) -> Any:
    value = parse_csv(value)
    if isinstance(value, tuple | list):
        try:
            return tuple(int(v) for v in value)
        except ValueError:
            raise ValueError(
                f"expected comma-separated port numbers, got {','.join(map(str, value))!r}"
            ) from None
    return value


Seconds = Annotated[float, BeforeValidator(_duration), Field(json_schema_extra={"flag_type": "duration"})]
Bool = Annotated[bool, BeforeValidator(_bool)]
Port = Annotated[int, Field(ge=0, le=65535)]  # 0 = any free port (tests, demos)
