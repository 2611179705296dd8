"""Process settings of the daemon: command-line flags and `EPP_*` environment variables.

*Settings* are how the process runs (ports, endpoint source, intervals); the *config* is the
EndpointPickerConfig document (see `epp.config`), which can be reloaded while settings cannot.

Flag names and defaults are the upstream EPP's, so the upstream Helm chart's arguments work unchanged:
`--flag=value` and `--flag value`, booleans as `--flag`, `--flag=true|false` (also `--flag false`),
Go-style durations (`50ms`, `2s`, `1m30s`), `-v`/`--v` for verbosity. Every flag can also be set as
`EPP_<FLAG_IN_UPPER_SNAKE>` (e.g. `EPP_GRPC_PORT=9002`); a flag wins over the environment. Flags the
upstream chart passes that mean nothing here (zap logging, pprof, ...) are accepted and ignored.

The modules, by job: `model` (EppSettings and its checks), `values` (the value syntax shared by flags and
the environment), `flags` (the Go-style command-line parser), `env` (the environment source), `help`
(the `--help` text) and `parse` (`parse_settings`, putting them together).
"""

from __future__ import annotations

from epp.settings.env import ENV_PREFIX
from epp.settings.help import HelpRequested, flag_help
from epp.settings.model import EppSettings, HaMode, LogFormat, ModelServerType
from epp.settings.parse import parse_settings

__all__ = [
    "ENV_PREFIX",
    "EppSettings",
    "HaMode",
    "HelpRequested",
    "LogFormat",
    "ModelServerType",
    "flag_help",
    "parse_settings",
]
