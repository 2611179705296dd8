"""Upstream's defaults: the built-in config and the plugins the loader adds when a config leaves them out.

Each `ensure_*` step mirrors one function of upstream's `pkg/epp/config/loader/defaults.go` and reports
what it cannot do as a located problem. Steps only add plugins whose types are registered, so a build
without (say) a saturation detector still loads configs that do not ask for one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from epp.config.api import (
    API_VERSION,
    KIND,
    LEGACY_TYPE_NAMES,
    DataLayerConfig,
    FlowControlConfig,
    SaturationDetectorConfig,
)
from epp.config.context import LoadContext
from epp.config.effective import ProfileDecl, ProfileEntry
from epp.config.yamlpos import YamlPath
from epp.framework.plugins import PluginKind
from epp.registry import PluginRegistry

__all__ = [
    "DEFAULT_PARSER",
    "DEFAULT_PICKER",
    "DEFAULT_PROFILE",
    "DEFAULT_PROFILE_HANDLER",
    "DEFAULT_SATURATION_DETECTOR",
    "DEFAULT_WEIGHT",
    "FEATURE_GATES",
    "LEGACY_TYPE_NAMES",
    "default_document",
    "default_profile",
    "ensure_data_layer",
    "ensure_flow_control",
    "ensure_parser",
    "ensure_pickers",
    "ensure_producers",
    "ensure_profile_handler",
    "ensure_saturation_detector",
    "translate_inline_saturation_detector",
]

DEFAULT_WEIGHT = 1.0
DEFAULT_PROFILE = "default"
DEFAULT_PROFILE_HANDLER = "single-profile-handler"
DEFAULT_PICKER = "max-score-picker"
DEFAULT_PARSER = "openai-parser"
DEFAULT_SATURATION_DETECTOR = "utilization-detector"
DEFAULT_DATA_SOURCE = "metrics-data-source"
DEFAULT_METRICS_EXTRACTOR = "core-metrics-extractor"
DEFAULT_FAIRNESS_POLICY = "global-strict-fairness-policy"
DEFAULT_ORDERING_POLICY = "fcfs-ordering-policy"
DEFAULT_USAGE_LIMIT_POLICY = "static-usage-limit-policy"

#: Feature gates upstream registers, and what each means here.
FEATURE_GATES: Mapping[str, str] = {
    "dataLayer": "deprecated no-op: the data layer is always on (opt out with enableLegacyMetrics)",
    "enableLegacyMetrics": "collect metrics without the configurable data layer (dataLayer is ignored)",
    "flowControl": "queue requests by priority and fairness (the flowControl section)",
    "prepareDataPlugins": "deprecated no-op (upstream and llm-d before v1.0 gated data producers on it): "
    "producers always run",
}


#: Flow-control policy types upstream has; a reference to one this build lacks is a warning, not an error.
_UPSTREAM_POLICY_TYPES = frozenset(
    {
        "global-strict-fairness-policy",
        "round-robin-fairness-policy",
        "fcfs-ordering-policy",
        "edf-ordering-policy",
        "slo-deadline-ordering-policy",
        "static-usage-limit-policy",
    }
)


def default_document(registry: PluginRegistry) -> dict[str, Any]:
    """Upstream's `loadDefaultConfig`: queue 2, kv-cache 2, prefix 3, and the metrics data layer."""
    doc: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "plugins": [
            {"type": "queue-scorer"},
            {"type": "kv-cache-utilization-scorer"},
            {"type": "prefix-cache-scorer"},
        ],
        "schedulingProfiles": [
            {
                "name": DEFAULT_PROFILE,
                "plugins": [
                    {"pluginRef": "queue-scorer", "weight": 2},
                    {"pluginRef": "kv-cache-utilization-scorer", "weight": 2},
                    {"pluginRef": "prefix-cache-scorer", "weight": 3},
                ],
            }
        ],
    }
    if DEFAULT_DATA_SOURCE in registry and DEFAULT_METRICS_EXTRACTOR in registry:
        doc["plugins"] += [{"type": DEFAULT_DATA_SOURCE}, {"type": DEFAULT_METRICS_EXTRACTOR}]
        doc["dataLayer"] = {
            "sources": [
                {"pluginRef": DEFAULT_DATA_SOURCE, "extractors": [{"pluginRef": DEFAULT_METRICS_EXTRACTOR}]}
            ]
        }
    return doc


def _default_ref(
    ctx: LoadContext, ref: str, kind: PluginKind, what: str, path: YamlPath, reason: str
) -> str | None:
    """Resolve a slot reference: a declared plugin of the right kind, or a registered type of that name
    created with default parameters (upstream does this for the parser and the saturation detector)."""
    if ctx.is_known(ref):
        kinds = ctx.kinds(ref)
        if kinds is not None and kind not in kinds:
            article = "an" if what[:1] in "aeiou" else "a"
            ctx.error(path, f"{ctx.describe(ref)} is not {article} {what}")
            return None
        return ref if ref in ctx.plugins else None
    if ref in ctx.registry and kind in ctx.registry.get(ref).kinds:
        return ctx.add_default(ref, reason=reason, path=path)
    ctx.error(path, ctx.undefined_ref_message(ref))
    return None


# ---- saturation detector -------------------------------------------------------------------------


def translate_inline_saturation_detector(ctx: LoadContext, spec: SaturationDetectorConfig) -> str | None:
    """The v1.2 inline thresholds become a utilization-detector plugin with those parameters."""
    path: YamlPath = ("saturationDetector",)
    if DEFAULT_SATURATION_DETECTOR not in ctx.registry:
        ctx.warn(
            path,
            "the inline saturationDetector thresholds are ignored: this build has no "
            f"{DEFAULT_SATURATION_DETECTOR} plugin type",
        )
        return None
    ctx.warn(
        path,
        "deprecated inline thresholds (v1.2 format): translated into a utilization-detector plugin; "
        "declare it under plugins and set saturationDetector.pluginRef instead",
    )
    return ctx.add_default(
        DEFAULT_SATURATION_DETECTOR,
        reason="translated from the inline saturationDetector thresholds",
        path=path,
        params=spec.inline,
        params_path=path,
    )


def ensure_saturation_detector(ctx: LoadContext, spec: SaturationDetectorConfig | None) -> str | None:
    """Upstream `ensureSaturationDetector`: default `utilization-detector`, when this build has it."""
    if spec is not None and spec.plugin_ref is not None:
        return _default_ref(
            ctx,
            spec.plugin_ref,
            PluginKind.SATURATION_DETECTOR,
            "saturation detector",
            ("saturationDetector", "pluginRef"),
            "referenced by saturationDetector.pluginRef",
        )
    if spec is not None:
        return translate_inline_saturation_detector(ctx, spec)
    name = DEFAULT_SATURATION_DETECTOR
    if ctx.is_known(name):
        kinds = ctx.kinds(name)
        if kinds is not None and PluginKind.SATURATION_DETECTOR not in kinds:
            return None  # a plugin merely named so; upstream would fail, we run without a detector
        return name if name in ctx.plugins else None
    others = [d.name for d in ctx.of_kind(PluginKind.SATURATION_DETECTOR) if d.declared]
    if others:
        ctx.warn(
            ("saturationDetector",),
            f"saturation detector plugin '{others[0]}' is declared but not used as the saturation "
            f"detector (the default {name} is); set saturationDetector.pluginRef: {others[0]}",
        )
    if name not in ctx.registry:
        return None
    return ctx.add_default(name, reason="the default saturation detector", path=("saturationDetector",))


# ---- scheduling layer ----------------------------------------------------------------------------


def default_profile(ctx: LoadContext) -> ProfileDecl:
    """No profiles: one `default` profile with every declared filter, scorer and picker, in file order."""
    path: YamlPath = ("schedulingProfiles",)
    slots = {PluginKind.FILTER, PluginKind.SCORER, PluginKind.PICKER}
    entries = tuple(
        ProfileEntry(
            d.name,
            DEFAULT_WEIGHT,
            d.line,
            d.path,
            scorer=PluginKind.SCORER in ctx.registry.get(d.type).kinds,
            default_reason="default profile",
        )
        for d in ctx.plugins.values()
        if d.declared and slots & ctx.registry.get(d.type).kinds
    )
    return ProfileDecl(DEFAULT_PROFILE, entries, ctx.line(path), path, default_reason="no schedulingProfiles")


def ensure_profile_handler(ctx: LoadContext, profiles: list[ProfileDecl], profiles_known: bool) -> str | None:
    """Exactly one handler; `single-profile-handler` is added when there is one profile and none."""
    handlers = ctx.of_kind(PluginKind.PROFILE_HANDLER)
    for extra in handlers[1:]:
        ctx.error(
            (*extra.path, "type"),
            f"only one profile handler is allowed; {handlers[0].describe()} is already the profile handler",
        )
    if handlers:
        handler = handlers[0]
        if handler.type == DEFAULT_PROFILE_HANDLER and len(profiles) > 1:
            ctx.error(
                (*handler.path, "type"),
                f"{DEFAULT_PROFILE_HANDLER} runs exactly one scheduling profile, but {len(profiles)} are "
                f"declared ({', '.join(p.name for p in profiles)}); use a multi-profile handler",
            )
        return handler.name
    if any(k == PluginKind.PROFILE_HANDLER for n in ctx.broken for k in (ctx.kinds(n) or ())):
        return None  # the declared handler is broken and already reported
    if not profiles_known:
        return None
    if len(profiles) > 1:
        ctx.error(
            ("schedulingProfiles",),
            f"{len(profiles)} scheduling profiles need a profile handler plugin that chooses among them "
            f"({DEFAULT_PROFILE_HANDLER} runs only one); none is declared",
        )
        return None
    name = ctx.add_default(
        DEFAULT_PROFILE_HANDLER, reason="one profile and no profile handler", path=("schedulingProfiles",)
    )
    if name is None and DEFAULT_PROFILE_HANDLER not in ctx.registry:
        ctx.error(
            ("plugins",), f"no profile handler is declared and this build has no {DEFAULT_PROFILE_HANDLER}"
        )
    return name


def ensure_pickers(ctx: LoadContext, profiles: list[ProfileDecl]) -> list[ProfileDecl]:
    """Every profile without a picker gets the first picker declared in the file (as upstream, which takes
    whichever its map yields first), else an added `max-score-picker`."""
    out: list[ProfileDecl] = []
    picker: str | None = None
    for prof in profiles:
        has_picker = any(
            PluginKind.PICKER in (ctx.kinds(e.plugin) or ()) or e.plugin in ctx.broken for e in prof.entries
        )
        if has_picker:
            out.append(prof)
            continue
        if picker is None:
            declared = [
                d.name
                for d in ctx.plugins.values()
                if d.declared and PluginKind.PICKER in (ctx.kinds(d.name) or ())
            ]
            picker = declared[0] if declared else None
        if picker is None:
            picker = ctx.add_default(
                DEFAULT_PICKER, reason=f"profile '{prof.name}' has no picker", path=prof.path
            )
            if picker is None:
                if DEFAULT_PICKER not in ctx.registry:
                    ctx.error(
                        prof.path,
                        f"profile '{prof.name}' has no picker and this build has no {DEFAULT_PICKER}",
                    )
                out.append(prof)
                continue
        entry = ProfileEntry(
            picker, DEFAULT_WEIGHT, prof.line, prof.path, scorer=False, default_reason="profile has no picker"
        )
        out.append(ProfileDecl(prof.name, (*prof.entries, entry), prof.line, prof.path, prof.default_reason))
    return out


# ---- parser, data layer, flow control ------------------------------------------------------------


def ensure_parser(ctx: LoadContext, ref: str | None) -> str | None:
    """Upstream `ensureParser`: default `openai-parser`; a reference to a missing name is an error."""
    if ref is not None:
        return _default_ref(
            ctx, ref, PluginKind.PARSER, "parser", ("parser", "pluginRef"), "referenced by parser.pluginRef"
        )
    if DEFAULT_PARSER not in ctx.registry and not ctx.is_known(DEFAULT_PARSER):
        ctx.error(("parser",), f"no parser is configured and this build has no {DEFAULT_PARSER}")
        return None
    return _default_ref(ctx, DEFAULT_PARSER, PluginKind.PARSER, "parser", ("parser",), "the default parser")


def ensure_data_layer(
    ctx: LoadContext, spec: DataLayerConfig | None, key: str, legacy_metrics: bool
) -> DataLayerConfig | None:
    """Upstream `ensureDataLayer` plus the checks of `buildDataLayerConfig` (with the right names)."""
    if legacy_metrics:
        if spec is not None:
            ctx.warn((key,), f"{key} is ignored: the enableLegacyMetrics feature gate is set")
        return None
    if spec is None:
        if DEFAULT_DATA_SOURCE not in ctx.registry or DEFAULT_METRICS_EXTRACTOR not in ctx.registry:
            return None
        source = ctx.add_default(DEFAULT_DATA_SOURCE, reason="the default data layer", path=("dataLayer",))
        extractor = ctx.add_default(
            DEFAULT_METRICS_EXTRACTOR, reason="the default data layer", path=("dataLayer",)
        )
        if source is None or extractor is None:
            return None
        return DataLayerConfig.model_validate(
            {"sources": [{"pluginRef": source, "extractors": [{"pluginRef": extractor}]}]}
        )
    if not spec.sources:
        ctx.warn((key, "sources"), "no data sources: no model-server metrics will be collected")
    watched: dict[str, str] = {}  # notification sources: their parameters -> the first source's name
    for i, source_spec in enumerate(spec.sources):
        path: YamlPath = (key, "sources", i, "pluginRef")
        _default_ref(
            ctx, source_spec.plugin_ref, PluginKind.DATA_SOURCE, "data source", path, "a data source"
        )
        kinds = ctx.kinds(source_spec.plugin_ref) or frozenset()
        decl = ctx.plugins.get(source_spec.plugin_ref)
        if PluginKind.NOTIFICATION_SOURCE in kinds and decl is not None:
            first = watched.setdefault(decl.spec, decl.name)
            if first != decl.name:  # upstream: one notification source per watched kind
                ctx.error(path, f"{ctx.describe(decl.name)} watches the same objects as source '{first}'")
        if PluginKind.ENDPOINT_EVENT_SOURCE in kinds:  # endpoint-notification-source
            ext_kind, what = PluginKind.ENDPOINT_EXTRACTOR, "endpoint extractor"
        elif PluginKind.NOTIFICATION_SOURCE in kinds:  # k8s-notification-source
            ext_kind, what = PluginKind.NOTIFICATION_EXTRACTOR, "notification extractor"
        else:
            ext_kind, what = PluginKind.METRICS_EXTRACTOR, "metrics extractor"
        for j, ext in enumerate(source_spec.extractors):
            _default_ref(
                ctx,
                ext.plugin_ref,
                ext_kind,
                what,
                (key, "sources", i, "extractors", j, "pluginRef"),
                f"a {what}" if what[0] not in "aeiou" else f"an {what}",
            )
    return spec


def _policy_ref(ctx: LoadContext, ref: str, kind: PluginKind, what: str, path: YamlPath) -> None:
    if not ctx.is_known(ref) and ref not in ctx.registry and ref in _UPSTREAM_POLICY_TYPES:
        ctx.warn(path, f"flow-control policy '{ref}' is not available in this build; its default applies")
        return
    _default_ref(ctx, ref, kind, what, path, f"referenced by {path[-1]}")


def ensure_flow_control(
    ctx: LoadContext, spec: FlowControlConfig | None, enabled: bool
) -> FlowControlConfig | None:
    """Upstream `ensureFlowControlLayer`: the default policies, and every policy reference resolved."""
    if not enabled:
        if spec is not None:
            ctx.warn(("flowControl",), "flowControl is ignored: the flowControl feature gate is not set")
        return None
    spec = spec or FlowControlConfig()
    for type_name in (DEFAULT_FAIRNESS_POLICY, DEFAULT_ORDERING_POLICY, DEFAULT_USAGE_LIMIT_POLICY):
        if type_name in ctx.registry and not ctx.is_known(type_name):
            ctx.add_default(type_name, reason="a default flow-control policy", path=("flowControl",))
    if spec.usage_limit_policy_plugin_ref is not None:
        _policy_ref(
            ctx,
            spec.usage_limit_policy_plugin_ref,
            PluginKind.USAGE_LIMIT_POLICY,
            "usage-limit policy",
            ("flowControl", "usageLimitPolicyPluginRef"),
        )
    bands: list[tuple[YamlPath, Any]] = [(("flowControl", "defaultPriorityBand"), spec.default_priority_band)]
    bands += [(("flowControl", "priorityBands", i), b) for i, b in enumerate(spec.priority_bands)]
    seen: dict[int, int] = {}
    for path, band in bands:
        if band is None:
            continue
        if band.fairness_policy_ref is not None:
            _policy_ref(
                ctx,
                band.fairness_policy_ref,
                PluginKind.FAIRNESS_POLICY,
                "fairness policy",
                (*path, "fairnessPolicyRef"),
            )
        if band.ordering_policy_ref is not None:
            _policy_ref(
                ctx,
                band.ordering_policy_ref,
                PluginKind.ORDERING_POLICY,
                "ordering policy",
                (*path, "orderingPolicyRef"),
            )
        if path[1] == "priorityBands":
            if band.priority in seen:
                ctx.error(
                    (*path, "priority"),
                    f"duplicate priority {band.priority} (also priorityBands[{seen[band.priority]}])",
                )
            else:
                seen[band.priority] = int(path[2])
    return spec


# ---- data producers ------------------------------------------------------------------------------


def _forwarded_params(ctx: LoadContext, name: str) -> dict[str, Any] | None:
    decl = ctx.plugins[name]
    method = getattr(decl.params, "producer_parameters", None)
    if not callable(method):
        return None
    try:
        result = method()
    except Exception as exc:
        ctx.error((*decl.path, "parameters"), f"{decl.describe()}: cannot derive producer parameters: {exc}")
        return None
    return dict(result) if result is not None else None


def ensure_producers(ctx: LoadContext) -> None:
    """Upstream `CreateMissingDataProducers`: a consumed data key nobody produces gets its default producer.

    A consumer's parameters model may offer `producer_parameters()`; the producer created for it gets those
    parameters (upstream quirk #1: they were silently ignored). When a producer is declared explicitly,
    forwarded parameters that differ from its own are reported as ignored.
    """
    forwarded_by: dict[str, str] = {}
    changed = True
    while changed:  # new producers may consume data themselves
        changed = False
        produced = {key for d in ctx.plugins.values() for key in ctx.registry.get(d.type).produces}
        for decl in list(ctx.plugins.values()):
            ptype = ctx.registry.get(decl.type)
            for key in sorted(ptype.consumes):
                producer_type = ctx.registry.default_producer(key)
                params = _forwarded_params(ctx, decl.name) if producer_type else None
                if key in produced:
                    if producer_type and params is not None:
                        _check_ignored_params(ctx, decl.name, producer_type, params, forwarded_by)
                    continue
                if producer_type is None:
                    ctx.error(
                        (*decl.path, "type") if decl.declared else decl.path,
                        f"{decl.describe()} needs data '{key}' that no plugin produces, and no default "
                        "producer is registered for it",
                    )
                    produced.add(key)
                    continue
                made = ctx.add_default(
                    producer_type,
                    reason=f"produces '{key}' for {decl.describe()}",
                    path=decl.path,
                    params=params,
                    params_path=(*decl.path, "parameters"),
                )
                if made is not None and params is not None:
                    forwarded_by[made] = decl.name
                produced.add(key)
                changed = changed or made is not None


def _check_ignored_params(
    ctx: LoadContext, consumer: str, producer_type: str, params: dict[str, Any], forwarded_by: dict[str, str]
) -> None:
    decl = ctx.plugins[consumer]
    for producer in (d for d in ctx.plugins.values() if d.type == producer_type):
        if forwarded_by.get(producer.name) == consumer:
            return
        model = ctx.registry.get(producer_type).params_model
        try:
            wanted = model.model_validate(params)
        except Exception:
            wanted = None
        if wanted is not None and wanted == producer.params:
            return
        whose = "declared" if producer.declared else f"created for '{forwarded_by.get(producer.name, '?')}'"
        ctx.warn(
            (*decl.path, "parameters"),
            f"{decl.describe()}: its producer parameters ({', '.join(sorted(params))}) are ignored: the "
            f"{whose} {producer.describe()} is used; set them there",
        )
        return
