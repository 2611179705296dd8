"""What `epp --help` prints: usage, every flag with its type word, description and default.

The text is generated from `EppSettings` (descriptions, defaults) and the flag parser's table of ignored
upstream flags, so it cannot drift from what the parser accepts.
"""

from __future__ import annotations

import textwrap
from enum import StrEnum
from typing import Annotated, get_args, get_origin

from pydantic.fields import FieldInfo

from epp.settings.env import ENV_PREFIX
from epp.settings.flags import IGNORED_FLAGS, flag_name, is_bool_field
from epp.settings.model import EppSettings
from epp.units import format_duration

__all__ = ["HelpRequested", "flag_help"]


class HelpRequested(Exception):
    """`--help` was given; `text` is what to print."""

    def __init__(self, text: str) -> None:
        super().__init__("help requested")
        self.text = text


def _type_word(info: FieldInfo) -> str:
    annotation = info.annotation
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    for meta in info.metadata:
        if isinstance(meta, FieldInfo) and isinstance(meta.json_schema_extra, dict):
            extra = {**extra, **meta.json_schema_extra}
    if extra.get("flag_type") == "duration":
        return "duration"
    if is_bool_field(info):
        return ""
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if annotation is int:
        return "int"
    if isinstance(annotation, type) and issubclass(annotation, StrEnum):
        values = "|".join(m.value for m in annotation)
        return values if len(values) <= 16 else "string"
    if get_origin(annotation) in (tuple, dict):
        return "list"
    return "string"


def _default_text(field: str, info: FieldInfo) -> str:
    if field == "pool_namespace":
        return "$NAMESPACE or default"
    default = info.get_default(call_default_factory=True)
    if default in (None, "", (), {}):
        return "none"
    if _type_word(info) == "duration":
        return format_duration(float(default))
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, StrEnum):
        return default.value
    return str(default)


def flag_help() -> str:
    """What `epp --help` prints: usage, then every flag with its default."""
    lines = [
        "usage: epp [serve] [FLAGS]        run the Endpoint Picker daemon",
        "       epp validate [--effective] FILE...  check EndpointPickerConfig files",
        "       epp schema                 print the JSON schema of EndpointPickerConfig",
        "       epp sim | demo | bench ... simulator, local demo, benchmarks (see their --help)",
        "",
        f"Flags (each also from the environment as {ENV_PREFIX}<FLAG_IN_UPPER_SNAKE>, e.g. "
        f"{ENV_PREFIX}GRPC_PORT; a flag wins).",
        "Exactly one endpoint source: --static-endpoints, --pool-name or --endpoint-selector.",
        "",
    ]
    rows = []
    for field, info in EppSettings.model_fields.items():
        name = "-v, --v" if field == "v" else f"--{flag_name(field)}"
        word = _type_word(info)
        left = f"  {name} {word}".rstrip()
        rows.append((left, f"{info.description or ''} (default {_default_text(field, info)})"))
    width = 42
    for left, right in rows:
        if len(left) < width:
            lines.append(f"{left.ljust(width)}{right}")
        else:
            lines += [left, f"{'':{width}}{right}"]
    lines += [
        "",
        "Accepted for compatibility with the upstream chart and ignored (--zap-encoder sets --log-format):",
    ]
    lines += textwrap.wrap(
        ", ".join(f"--{n}" for n in IGNORED_FLAGS), width=100, initial_indent="  ", subsequent_indent="  "
    )
    lines.append("")
    return "\n".join(lines)
