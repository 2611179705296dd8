"""The Go-style command-line parser: upstream's flag names and spellings, to raw values by settings field.

`--flag=value` and `--flag value`, booleans as `--flag`, `--flag=true|false` (also `--flag false`),
`-v`/`--v`/`-v5` for verbosity; repeating a list flag appends to it. Flags the upstream chart passes that
mean nothing here (zap logging, pprof, ...) are accepted and ignored. Values stay strings: the
model (`epp.settings.model`) validates them, as it does the environment's.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, get_args, get_origin

from pydantic.fields import FieldInfo

from epp.errors import SettingsError
from epp.settings.model import EppSettings
from epp.settings.values import GO_FALSE, GO_TRUE

__all__ = [
    "DEPRECATED_METRIC_FLAGS",
    "IGNORED_FLAGS",
    "ParsedFlags",
    "flag_name",
    "is_bool_field",
    "parse_flags",
]


@dataclass(frozen=True)
class _Flag:
    name: str  # without dashes
    field: str
    is_bool: bool
    repeatable: bool


@dataclass
class ParsedFlags:
    """What the command line said: raw values by settings field, and what was accepted but ignored."""

    values: dict[str, Any] = field(default_factory=dict)  # strings, typed by the model
    ignored: list[str] = field(default_factory=list)  # `--name=value` of each ignored upstream flag
    zap_encoder: str | None = None  # the first --zap-encoder (it sets --log-format unless that is given)
    help: bool = False  # -h/--help was given (parsing stopped there)


def flag_name(field: str) -> str:
    return field.replace("_", "-")


def is_bool_field(info: FieldInfo) -> bool:
    annotation = info.annotation
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation is bool


def _flags() -> dict[str, _Flag]:
    out: dict[str, _Flag] = {}
    for field_, info in EppSettings.model_fields.items():
        repeatable = field_ in (
            "static_endpoints",
            "static_objectives",
            "static_endpoint_labels",
            "endpoint_target_ports",
        )
        out[flag_name(field_)] = _Flag(flag_name(field_), field_, is_bool_field(info), repeatable)
    return out


#: Upstream flags accepted for compatibility and ignored; True = boolean flag.
IGNORED_FLAGS: Mapping[str, bool] = {
    "zap-encoder": False,
    "zap-devel": True,
    "zap-log-level": False,
    "zap-stacktrace-level": False,
    "zap-time-encoding": False,
    "enable-pprof": True,
    "health-checking": True,
}

#: Upstream's deprecated metric-name flags: kept, with a warning (upstream rejects them).
DEPRECATED_METRIC_FLAGS = (
    "total-queued-requests-metric",
    "total-running-requests-metric",
    "kv-cache-usage-percentage-metric",
    "lora-info-metric",
    "cache-info-metric",
)


def _split(arg: str) -> tuple[str, str | None]:
    body = arg[2:] if arg.startswith("--") else arg[1:]
    name, sep, value = body.partition("=")
    return name, (value if sep else None)


def _unknown(name: str, known: Sequence[str]) -> SettingsError:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.7)
    hint = f"; did you mean --{close[0]}?" if close else "; see epp --help"
    return SettingsError(f"unknown flag --{name}{hint}")


def _looks_like_flag(arg: str) -> bool:
    """`--known-flag...` or `-h`/`-v`: taking it as the previous flag's value would only hide a mistake."""
    if arg in ("-h", "-v") or arg.startswith(("-v=", "--help")):
        return True
    name = arg[2:].partition("=")[0] if arg.startswith("--") else ""
    return bool(name) and (name in _flags() or name in IGNORED_FLAGS or name == "v")


def _flag_value(name: str, inline: str | None, is_bool: bool, args: list[str], i: int) -> tuple[str, int]:
    """The value of flag `name` (inline, or the next argument) and the index after it."""
    if inline is None:
        nxt = args[i] if i < len(args) else None
        if is_bool:
            if nxt is not None and (nxt in GO_TRUE or nxt in GO_FALSE):
                return nxt, i + 1  # `--flag false`: safe, the daemon takes no positionals
            return "true", i
        if nxt is None or _looks_like_flag(nxt):
            raise SettingsError(f"flag --{name} needs a value (--{name}=VALUE or --{name} VALUE)")
        return nxt, i + 1
    if is_bool and inline not in GO_TRUE and inline not in GO_FALSE:
        raise SettingsError(f"flag --{name}: expected true or false, got {inline!r}")
    return inline, i


def parse_flags(argv: Sequence[str]) -> ParsedFlags:
    """Flag values by field (as strings, validated later by the model) and the ignored flags seen.

    Raises SettingsError for anything that is not a known flag with a value; stops at -h/--help.
    """
    flags = _flags()
    known = [*flags, *IGNORED_FLAGS]
    out = ParsedFlags()
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg in ("-h", "--help", "-help"):
            out.help = True
            return out
        if arg == "--":
            if i < len(args):
                raise SettingsError(f"unexpected argument {args[i]!r}: the daemon takes only flags")
            break
        if not arg.startswith("-") or arg == "-":
            raise SettingsError(f"unexpected argument {arg!r}: the daemon takes only flags (see epp --help)")
        name, inline = _split(arg)
        if arg.startswith("-v") and not arg.startswith("--") and len(arg) > 2 and arg[2:].isdigit():
            name, inline = "v", arg[2:]  # -v5
        if not arg.startswith("--") and name != "v":
            raise SettingsError(f"unknown flag {arg}: long flags take two dashes (--{name})")
        flag = flags.get(name)
        is_bool = flag.is_bool if flag else IGNORED_FLAGS.get(name)
        if flag is None and name not in IGNORED_FLAGS:
            raise _unknown(name, known)
        inline, i = _flag_value(name, inline, bool(is_bool), args, i)
        if flag is None:
            out.ignored.append(f"--{name}={inline}")
            if name == "zap-encoder" and out.zap_encoder is None:
                out.zap_encoder = inline
            continue
        if flag.repeatable and flag.field in out.values:
            out.values[flag.field] = f"{out.values[flag.field]},{inline}"
        else:
            out.values[flag.field] = inline
    return out
