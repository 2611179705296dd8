"""The effective config: what a loaded document means once every default is filled in.

The loader turns a document into an `EffectiveConfig`; the builder turns that into a `Pipeline`. Every
plugin here has a validated parameters model and knows where it came from (a line in the file, or the
default that created it), so later errors and the effective-config dump can say so.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from epp.config.api import API_VERSION, KIND, DataLayerConfig, EndpointPickerConfig, FlowControlConfig
from epp.config.yamlpos import YamlPath
from epp.errors import ConfigProblem

__all__ = ["EffectiveConfig", "PluginDecl", "ProfileDecl", "ProfileEntry", "canonical_spec"]


def canonical_spec(type_name: str, params: BaseModel) -> str:
    """Canonical JSON of (type, validated parameters): equal specs build equal plugins."""
    try:
        dumped: Any = params.model_dump(mode="json", by_alias=True)
    except Exception:  # a parameters model that cannot be dumped as JSON still gets a stable identity
        dumped = repr(params)
    return json.dumps({"type": type_name, "parameters": dumped}, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class PluginDecl:
    """One plugin instance to build.

    `path`/`line` locate its declaration, or for a defaulted plugin what made the loader add it;
    `default_reason` is None for declared plugins.
    """

    name: str
    type: str
    params: BaseModel
    line: int
    path: YamlPath
    default_reason: str | None = None
    raw_params: Mapping[str, Any] | None = None

    @property
    def declared(self) -> bool:
        return self.default_reason is None

    @property
    def spec(self) -> str:
        return canonical_spec(self.type, self.params)

    def describe(self) -> str:
        return f"plugin '{self.name}' (type: {self.type})"


@dataclass(frozen=True)
class ProfileEntry:
    """A plugin in a profile; `weight` counts only for scorers (default 1.0)."""

    plugin: str
    weight: float
    line: int
    path: YamlPath
    scorer: bool = True
    default_reason: str | None = None


@dataclass(frozen=True)
class ProfileDecl:
    name: str
    entries: tuple[ProfileEntry, ...]
    line: int
    path: YamlPath
    default_reason: str | None = None


@dataclass(frozen=True)
class EffectiveConfig:
    """A validated config with upstream's defaults applied; ready for `build_pipeline`.

    Attributes:
        plugins: every plugin in build order (declared ones first, in file order, then defaults).
        producers: names of data producers, each after the producers it consumes from.
        document: the validated document as written (None for the built-in default config).
        warnings: problems that do not stop loading (deprecated keys, ignored parameters ...).
    """

    source: str
    config_hash: str
    plugins: tuple[PluginDecl, ...]
    profiles: tuple[ProfileDecl, ...]
    profile_handler: str
    parser: str
    saturation_detector: str | None
    producers: tuple[str, ...]
    feature_gates: frozenset[str]
    data_layer: DataLayerConfig | None
    flow_control: FlowControlConfig | None
    document: EndpointPickerConfig | None
    warnings: tuple[ConfigProblem, ...] = ()
    is_default: bool = False
    _by_name: dict[str, PluginDecl] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_name.update((p.name, p) for p in self.plugins)

    def plugin(self, name: str) -> PluginDecl:
        return self._by_name[name]

    @property
    def declared_plugins(self) -> tuple[PluginDecl, ...]:
        return tuple(p for p in self.plugins if p.declared)

    def summary(self) -> str:
        """One line for `epp validate`: `3 plugins, profiles: default`."""
        n = len(self.declared_plugins)
        text = f"{n} plugin{'' if n == 1 else 's'}, profiles: {', '.join(p.name for p in self.profiles)}"
        return f"{text} (built-in default config)" if self.is_default else text

    def to_document(self) -> dict[str, Any]:
        """The effective config as an EndpointPickerConfig document (defaults written out)."""
        doc: dict[str, Any] = {"apiVersion": API_VERSION, "kind": KIND}
        if self.feature_gates:
            doc["featureGates"] = sorted(self.feature_gates)
        doc["plugins"] = [_plugin_doc(p) for p in self.plugins]
        doc["schedulingProfiles"] = [
            {
                "name": prof.name,
                "plugins": [
                    {"pluginRef": e.plugin, "weight": e.weight} if e.scorer else {"pluginRef": e.plugin}
                    for e in prof.entries
                ],
            }
            for prof in self.profiles
        ]
        if self.saturation_detector is not None:
            doc["saturationDetector"] = {"pluginRef": self.saturation_detector}
        if self.data_layer is not None:
            doc["dataLayer"] = self.data_layer.model_dump(mode="json", exclude_none=True)
        if self.flow_control is not None:
            doc["flowControl"] = self.flow_control.model_dump(mode="json", exclude_none=True)
        doc["parser"] = {"pluginRef": self.parser}
        return doc


def _plugin_doc(decl: PluginDecl) -> dict[str, Any]:
    out: dict[str, Any] = {"name": decl.name, "type": decl.type}
    try:
        params = decl.params.model_dump(mode="json", by_alias=True, exclude_unset=True)
    except Exception:
        params = dict(decl.raw_params or {})
    if params:
        out["parameters"] = params
    return out
