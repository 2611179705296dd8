"""Loading an EndpointPickerConfig: text → located YAML → validated models → defaults → EffectiveConfig.

Upstream semantics (reference §2): strict decode of the document, plugin name defaulting to its type,
default profile / profile handler / picker / parser / saturation detector / data layer, missing data
producers created with defaults. Beyond upstream: every plugin's `parameters` are validated against the
type's own model, every problem carries `FILE:LINE: path`, and a load reports all the problems it can
find instead of the first one. The generated JSON schema is checked too, so the committed schema file can
never accept less than the loader (its findings are merged, one message per problem).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from epp.config import defaults as d
from epp.config import validate as v
from epp.config.api import (
    UNAVAILABLE_TYPES,
    DataLayerConfig,
    EndpointPickerConfig,
    FlowControlConfig,
    PluginRef,
    PluginSpec,
    ProfilePluginRef,
    SaturationDetectorConfig,
)
from epp.config.context import LoadContext, decorate_param_issue
from epp.config.effective import EffectiveConfig, PluginDecl, ProfileDecl
from epp.config.problems import Issue, issues_from_jsonschema, issues_from_pydantic, unknown_key_message
from epp.config.schema import schema_validator
from epp.config.yamlpos import LineMap, YamlPath, parse_yaml
from epp.errors import ConfigError, ConfigProblem
from epp.registry import PluginRegistry

__all__ = [
    "DEFAULT_SOURCE",
    "TEXT_SOURCE",
    "load_config",
    "load_config_file",
    "load_config_source",
    "load_default_config",
]

log = logging.getLogger(__name__)

#: `source` of the built-in default config and of `--config-text`.
DEFAULT_SOURCE = "<default>"
TEXT_SOURCE = "<config-text>"

_APIVERSION_HINTS = {
    "config.x-k8s.io/v1alpha1": "this apiVersion appears in upstream guides, but upstream rejects it too",
    "config.apix.gateway-api-inference-extension.sigs.k8s.io/v1alpha1": (
        "this apiVersion appears in an upstream README, but upstream rejects it too"
    ),
}


def load_config_file(
    path: str | os.PathLike[str],
    *,
    registry: PluginRegistry,
    environ: Mapping[str, str] | None = None,
    log_warnings: bool = True,
) -> EffectiveConfig:
    """Load a config file; the path as given names it in every problem."""
    name = os.fspath(path)
    try:
        data = Path(name).read_bytes()
    except OSError as exc:
        raise ConfigError(
            [ConfigProblem(name, 1, "", f"cannot read the config file: {exc.strerror or exc}")]
        ) from None
    return load_config(data, registry=registry, source=name, environ=environ, log_warnings=log_warnings)


def load_config_source(
    config_file: str | os.PathLike[str] | None,
    config_text: str | None,
    *,
    registry: PluginRegistry,
    environ: Mapping[str, str] | None = None,
    log_warnings: bool = True,
) -> EffectiveConfig:
    """What the daemon loads: `--config-file`, else `--config-text`, else the built-in default."""
    if config_file:
        return load_config_file(config_file, registry=registry, environ=environ, log_warnings=log_warnings)
    text = config_text or None
    source = TEXT_SOURCE if text else DEFAULT_SOURCE
    return load_config(text, registry=registry, source=source, environ=environ, log_warnings=log_warnings)


def load_default_config(
    registry: PluginRegistry, environ: Mapping[str, str] | None = None, *, log_warnings: bool = True
) -> EffectiveConfig:
    """The built-in default config (no `--config-file` or `--config-text`)."""
    return load_config(None, registry=registry, environ=environ, log_warnings=log_warnings)


def load_config(
    text: str | bytes | None,
    *,
    registry: PluginRegistry,
    source: str = TEXT_SOURCE,
    environ: Mapping[str, str] | None = None,
    log_warnings: bool = True,
) -> EffectiveConfig:
    """Load config text (None = the built-in default); raises ConfigError listing every problem.

    Warnings (deprecated keys, ignored parameters ...) are in `EffectiveConfig.warnings` and, unless
    `log_warnings` is False, also logged at WARNING as `FILE:LINE: path: message`.
    """
    config = _load_text(text, registry, source, os.environ if environ is None else environ)
    if log_warnings:
        for warning in config.warnings:
            log.warning("%s", warning)
    return config


def _load_text(
    text: str | bytes | None, registry: PluginRegistry, source: str, env: Mapping[str, str]
) -> EffectiveConfig:
    if text is None:
        doc = d.default_document(registry)
        digest = hashlib.sha256(repr(sorted(doc.items())).encode()).hexdigest()
        return _load(doc, LineMap({(): 1}), DEFAULT_SOURCE, digest, registry, env, is_default=True)
    raw = text.encode() if isinstance(text, str) else text
    digest = hashlib.sha256(raw).hexdigest()
    try:
        decoded = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError([ConfigProblem(source, line, "", "the config is not valid UTF-8 text")]) from None
    if not decoded.strip():
        return _load(
            d.default_document(registry), LineMap({(): 1}), source, digest, registry, env, is_default=True
        )
    parsed = parse_yaml(decoded, source)
    if parsed.data is None:  # comments only: as upstream's empty input, the default config
        return _load(
            d.default_document(registry), parsed.lines, source, digest, registry, env, is_default=True
        )
    if not isinstance(parsed.data, dict):
        raise ConfigError(
            [
                ConfigProblem(
                    source,
                    _first_content_line(decoded),
                    "",
                    "the config must be a mapping (apiVersion, kind, plugins, ...), "
                    f"not {_kind_of(parsed.data)}",
                )
            ]
        )
    return _load(parsed.data, parsed.lines, source, digest, registry, env, is_default=False)


def _first_content_line(text: str) -> int:
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and stripped != "---":
            return number
    return 1


def _kind_of(value: Any) -> str:
    return "a list" if isinstance(value, list) else f"a {type(value).__name__} value"


# ---- the document as far as it is valid ----------------------------------------------------------


class _View:
    """The parts of a document that validate on their own, with their original indexes, so one bad item
    does not hide the problems of the others."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.gates = [(i, g) for i, g in enumerate(_list(data, "featureGates") or []) if isinstance(g, str)]
        self.plugin_items = _list(data, "plugins")
        self.profile_items = _list(data, "schedulingProfiles")
        self.saturation, self.saturation_ok = _section(data, "saturationDetector", SaturationDetectorConfig)
        self.data_key = (
            "data" if data.get("data") is not None and data.get("dataLayer") is None else "dataLayer"
        )
        self.data_layer, self.data_ok = _section(data, self.data_key, DataLayerConfig)
        self.flow, self.flow_ok = _section(data, "flowControl", FlowControlConfig)
        self.parser, self.parser_ok = _section(data, "parser", PluginRef)

    def profiles(self) -> list[v.ProfileView]:
        out: list[v.ProfileView] = []
        for i, item in enumerate(self.profile_items or []):
            if not isinstance(item, dict):
                continue
            name = item.get("name")
            view = v.ProfileView(i, name if isinstance(name, str) and name else None)
            refs = item.get("plugins")
            for j, ref in enumerate(refs if isinstance(refs, list) else []):
                model = _model(ProfilePluginRef, ref)
                if model is None and isinstance(ref, dict) and isinstance(ref.get("pluginRef"), str):
                    # the entry is broken elsewhere (e.g. its weight); its reference can still be checked
                    model = ProfilePluginRef.model_construct(plugin_ref=ref["pluginRef"], weight=None)
                if model is not None and model.plugin_ref:
                    view.refs.append((j, model))
            out.append(view)
        return out


def _list(data: dict[str, Any], key: str) -> list[Any] | None:
    value = data.get(key)
    if value is None:
        return []
    return value if isinstance(value, list) else None


def _model(model: type[BaseModel], value: Any) -> Any:
    try:
        return model.model_validate(value)
    except ValidationError:
        return None


def _section(data: dict[str, Any], key: str, model: type[BaseModel]) -> tuple[Any, bool]:
    value = data.get(key)
    if value is None:
        return None, True
    try:
        return TypeAdapter(model).validate_python(value), True
    except ValidationError:
        return None, False


# ---- the load ------------------------------------------------------------------------------------


def _declare_plugins(ctx: LoadContext, items: list[Any]) -> None:
    first_line: dict[str, int] = {}
    for i, item in enumerate(items):
        path: YamlPath = ("plugins", i)
        spec = _model(PluginSpec, item)
        if spec is None:  # reported by the document validation; remember the name to avoid follow-ups
            if isinstance(item, dict):
                name, type_name = item.get("name"), item.get("type")
                name = name if isinstance(name, str) and name else type_name
                if isinstance(name, str) and name and name not in first_line:
                    first_line[name] = ctx.line(path)
                    ctx.declared.append(name)
                    ctx.broken[name] = type_name if isinstance(type_name, str) else None
            continue
        name = spec.name or spec.type
        if name in first_line:
            ctx.error(
                (*path, "name" if spec.name else "type"),
                f"duplicate plugin name '{name}' (first declared at line {first_line[name]})"
                + ("" if spec.name else "; give one of them a name"),
            )
            continue
        first_line[name] = ctx.line(path)
        ctx.declared.append(name)
        type_name = spec.type
        renamed = d.LEGACY_TYPE_NAMES.get(type_name)
        if type_name not in ctx.registry and renamed is not None and renamed in ctx.registry:
            ctx.warn(
                (*path, "type"),
                f"plugin type '{type_name}' was renamed '{renamed}' upstream; using {renamed}",
            )
            type_name = renamed
        unavailable = ctx.registry.unavailable_reason(type_name) or UNAVAILABLE_TYPES.get(type_name)
        if type_name not in ctx.registry and unavailable:
            ctx.error((*path, "type"), f"plugin type '{type_name}' is not available: {unavailable}")
            ctx.broken[name] = None
            continue
        if type_name not in ctx.registry:
            ctx.error(
                (*path, "type"),
                unknown_key_message("plugin type", type_name, ctx.registry.names()).replace(
                    "unknown plugin type", f"unknown plugin type '{type_name}'", 1
                ),
            )
            ctx.broken[name] = type_name
            continue
        params = ctx.validate_params(
            ctx.registry.get(type_name), name, spec.parameters, (*path, "parameters")
        )
        if params is None:
            ctx.broken[name] = type_name
            continue
        ctx.plugins[name] = PluginDecl(
            name, type_name, params, ctx.line(path), path, raw_params=spec.parameters
        )


def _profiles(ctx: LoadContext, view: _View) -> tuple[list[ProfileDecl], bool]:
    """The profiles (declared or the default one) and whether their number is known for sure."""
    if view.profile_items is None:
        return [], False
    if not view.profile_items:
        profile = d.default_profile(ctx)
        v.check_default_profile_pickers(ctx, profile)
        return [profile], True
    views = view.profiles()
    profiles = v.check_profiles(ctx, views)
    return profiles, len(views) == len(view.profile_items)


def _load(
    data: dict[str, Any],
    lines: LineMap,
    source: str,
    config_hash: str,
    registry: PluginRegistry,
    environ: Mapping[str, str],
    *,
    is_default: bool,
) -> EffectiveConfig:
    ctx = LoadContext(source, lines, registry)
    try:
        document: EndpointPickerConfig | None = EndpointPickerConfig.model_validate(data)
        structural: list[Issue] = []
    except ValidationError as exc:
        document = None
        structural = issues_from_pydantic(exc, EndpointPickerConfig)
    view = _View(data)

    gates = v.check_feature_gates(ctx, view.gates, environ)
    if view.plugin_items is None:
        ctx.plugins_unknown = True
    else:
        _declare_plugins(ctx, view.plugin_items)
    profiles, profiles_known = _profiles(ctx, view)
    handler = d.ensure_profile_handler(ctx, profiles, profiles_known)
    profiles = d.ensure_pickers(ctx, profiles)
    parser = d.ensure_parser(ctx, view.parser.plugin_ref if view.parser else None) if view.parser_ok else None
    saturation = d.ensure_saturation_detector(ctx, view.saturation) if view.saturation_ok else None
    if view.data_key == "data":
        ctx.warn(("data",), "'data' is the deprecated v1.3/v1.4 name of 'dataLayer'; rename it")
    data_layer = (
        d.ensure_data_layer(ctx, view.data_layer, view.data_key, "enableLegacyMetrics" in gates)
        if view.data_ok
        else None
    )
    flow = d.ensure_flow_control(ctx, view.flow, "flowControl" in gates) if view.flow_ok else None
    if not ctx.plugins_unknown:
        d.ensure_producers(ctx)
    producers = v.order_producers(ctx)

    issues = _merge(_hint(structural, data), ctx.issues, _schema_issues(ctx, data, view))
    if not issues and (handler is None or parser is None):  # pragma: no cover - always reported above
        issues.append(Issue((), "the config has no usable profile handler or parser"))
    if issues:
        raise ConfigError(sorted((ctx.problem(i) for i in issues), key=lambda p: (p.line, p.path)))
    assert handler is not None and parser is not None
    return EffectiveConfig(
        source=source,
        config_hash=config_hash,
        plugins=tuple(ctx.plugins.values()),
        profiles=tuple(profiles),
        profile_handler=handler,
        parser=parser,
        saturation_detector=saturation,
        producers=tuple(producers),
        feature_gates=gates,
        data_layer=data_layer,
        flow_control=flow,
        document=None if is_default and source == DEFAULT_SOURCE else document,
        warnings=tuple(sorted((ctx.problem(w) for w in ctx.warning_issues), key=lambda p: (p.line, p.path))),
        is_default=is_default,
    )


def _hint(issues: list[Issue], data: dict[str, Any]) -> list[Issue]:
    """Point document-level findings at the key they are about, and explain known wrong apiVersions."""
    hint = _APIVERSION_HINTS.get(str(data.get("apiVersion")))
    out: list[Issue] = []
    for issue in issues:
        if issue.path == () and data.get("data") is not None and "'data'" in issue.message:
            issue = Issue(("data",), issue.message)
        if hint is not None and issue.path == ("apiVersion",):
            issue = Issue(issue.path, f"{issue.message}; {hint}")
        out.append(issue)
    return out


def _noun_for(path: YamlPath) -> str:
    return "parameter" if len(path) >= 3 and path[0] == "plugins" and path[2] == "parameters" else "key"


def _schema_issues(ctx: LoadContext, data: dict[str, Any], view: _View) -> list[Issue]:
    validator = schema_validator(ctx.registry)
    out: list[Issue] = []
    for issue in issues_from_jsonschema(validator.iter_errors(data), noun_for=_noun_for):
        path = issue.path
        if _noun_for(path) == "parameter" and isinstance(path[1], int) and view.plugin_items is not None:
            item = view.plugin_items[path[1]]
            if isinstance(item, dict) and isinstance(item.get("type"), str):
                name = item.get("name") if isinstance(item.get("name"), str) else item["type"]
                issue = decorate_param_issue(str(name), item["type"], issue, 2)
        out.append(issue)
    return out


def _related(a: YamlPath, b: YamlPath) -> bool:
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def _merge(structural: list[Issue], semantic: list[Issue], schema: list[Issue]) -> list[Issue]:
    """The loader's own issues, plus schema findings about parts of the document it said nothing about.

    A structural or parameter issue covers everything above and below its path; other issues only their
    own path (a profile-level problem must not hide a schema finding inside the profile).
    """
    out = list(dict.fromkeys(structural + semantic))
    broad = [i.path for i in structural if i.path] + [i.path for i in semantic if "parameters" in i.path]
    exact = {i.path for i in out}
    for issue in schema:
        if issue.path not in exact and not any(_related(issue.path, p) for p in broad):
            out.append(issue)
            exact.add(issue.path)
    return out
