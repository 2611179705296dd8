"""`parse_settings`: command-line flags and `EPP_*` variables to a validated `EppSettings`.

A flag wins over the environment. Every problem becomes one SettingsError naming where the bad value came
from (`--grpc-port: ...` or `EPP_GRPC_PORT: ...`); ignored, unknown and deprecated inputs are logged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from epp.errors import SettingsError
from epp.settings.env import ENV_PREFIX, environment, unknown_variables
from epp.settings.flags import DEPRECATED_METRIC_FLAGS, flag_name, parse_flags
from epp.settings.help import HelpRequested, flag_help
from epp.settings.model import EppSettings

__all__ = ["parse_settings"]

# The package's name, as before `epp.settings` became a package (log filters and tests match on it).
log = logging.getLogger("epp.settings")


def _describe_error(exc: ValidationError, from_flags: Mapping[str, Any]) -> str:
    lines = []
    for err in exc.errors(include_url=False):
        field = str(err["loc"][0]) if err["loc"] else ""
        where = f"--{flag_name(field)}" if field in from_flags else f"{ENV_PREFIX}{field.upper()}"
        if field == "v":
            where = "-v" if field in from_flags else f"{ENV_PREFIX}V"
        ctx = err.get("ctx") or {}
        msg = str(ctx["error"]) if err["type"] == "value_error" and "error" in ctx else err["msg"]
        if msg.startswith("Input should be "):
            msg = "must be " + msg[len("Input should be ") :]
        value = err.get("input")
        shown = f" (got {value!r})" if isinstance(value, str | int | float) and repr(value) not in msg else ""
        lines.append(f"{where}: {msg}{shown}")
    return "; ".join(lines)


def parse_settings(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> EppSettings:
    """Settings from command-line flags and the environment (`environ`, default os.environ).

    Raises HelpRequested for `--help` and SettingsError (exit status 2) for anything wrong.
    """
    parsed = parse_flags(argv)
    if parsed.help:
        raise HelpRequested(flag_help())
    values = parsed.values
    zap_encoder = parsed.zap_encoder
    if zap_encoder is not None and "log_format" not in values:
        if zap_encoder in ("json", "console"):
            values["log_format"] = zap_encoder
        else:
            log.warning("--zap-encoder=%s is not json or console; ignored", zap_encoder)
    for flag in parsed.ignored:
        log.debug("ignoring upstream flag %s (it has no meaning in this EPP)", flag)
    env = os.environ if environ is None else environ
    for name in unknown_variables(env, EppSettings.model_fields):
        log.warning("environment variable %s is not a setting of epp; ignored", name)
    with environment(env):
        try:
            settings = EppSettings(**values)
        except ValidationError as exc:
            raise SettingsError(_describe_error(exc, values)) from None
    for flag in DEPRECATED_METRIC_FLAGS:
        if getattr(settings, flag.replace("-", "_")):
            log.warning(
                "--%s is deprecated (upstream rejects it): it overrides the metric name of the default "
                "engine mapping; configure engineConfigs on core-metrics-extractor instead",
                flag,
            )
    return settings
