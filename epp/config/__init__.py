"""Loading, validating and building EndpointPickerConfig documents.

    text ──load_config──▶ EffectiveConfig ──build_pipeline──▶ Pipeline

`load_config` / `load_config_file` / `load_default_config` raise `ConfigError` listing every problem as
`FILE:LINE: yaml.path: message`; `build_pipeline` raises it for plugin factory failures. Every step takes
the plugin registry it works with (`epp.builtins.default_registry()` in the daemon and the tools): this
package names no concrete plugin.
"""

from __future__ import annotations

from epp.config.build import build_pipeline
from epp.config.effective import EffectiveConfig, PluginDecl, ProfileDecl, ProfileEntry
from epp.config.loader import (
    DEFAULT_SOURCE,
    TEXT_SOURCE,
    load_config,
    load_config_file,
    load_config_source,
    load_default_config,
)
from epp.config.schema import config_schema, schema_text

__all__ = [
    "DEFAULT_SOURCE",
    "TEXT_SOURCE",
    "EffectiveConfig",
    "PluginDecl",
    "ProfileDecl",
    "ProfileEntry",
    "build_pipeline",
    "config_schema",
    "load_config",
    "load_config_file",
    "load_config_source",
    "load_default_config",
    "schema_text",
]
