"""Loading, validating and building EndpointPickerConfig documents.

    text ──load_config──▶ EffectiveConfig ──build_pipeline──▶ Pipeline

`load_config` / `load_config_file` / `load_default_config` raise `ConfigError` listing every problem as
`FILE:LINE: yaml.path: message`; `build_pipeline` raises it for plugin factory failures. `default_registry()`
is the registry the daemon and the tools use: the built-in plugin types plus third-party entry points.
"""

from __future__ import annotations

import importlib
import logging

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
from epp.registry import PluginRegistry, PluginType

__all__ = [
    "DEFAULT_SOURCE",
    "TEXT_SOURCE",
    "EffectiveConfig",
    "PluginDecl",
    "ProfileDecl",
    "ProfileEntry",
    "build_pipeline",
    "builtin_registry",
    "config_schema",
    "default_registry",
    "load_config",
    "load_config_file",
    "load_config_source",
    "load_default_config",
    "schema_text",
]

log = logging.getLogger(__name__)


#: Modules outside `epp.plugins` whose `PLUGIN_TYPES`-style constants are built-in types too.
_EXTRA_BUILTINS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("epp.datalayer.plugin_types", ("METRICS_DATA_SOURCE", "CORE_METRICS_EXTRACTOR")),
)


def builtin_registry() -> PluginRegistry:
    """A new registry with the in-tree plugin types only (no entry points)."""
    registry = PluginRegistry()
    plugins = importlib.import_module("epp.plugins")
    register = getattr(plugins, "register_builtins", None)
    if register is None:
        log.debug("epp.plugins has no register_builtins yet: no built-in plugin types")
    else:
        register(registry)
    for module_name, names in _EXTRA_BUILTINS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        for attr in names:
            entry = getattr(module, attr, None)
            if isinstance(entry, PluginType) and entry.type_name not in registry:
                registry.register(entry)
    return registry


def default_registry(*, entry_points: bool = True) -> PluginRegistry:
    """A new registry with the built-in plugin types and those of the `epp.plugins` entry-point group."""
    registry = builtin_registry()
    if entry_points:
        registry.load_entry_points()
    return registry
