"""Semantic checks of a config: feature gates, profiles and their references, producer order.

Upstream validates little here (`validation.go`): profile names and references. We also reject what
upstream silently accepts (quirks #14, #15 of the reference): duplicate references in a profile, negative
weights, more than one picker, and warn about plugins in a profile that do nothing there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from epp.config.api import ProfilePluginRef
from epp.config.context import LoadContext
from epp.config.defaults import DEFAULT_WEIGHT, FEATURE_GATES
from epp.config.effective import ProfileDecl, ProfileEntry
from epp.config.yamlpos import YamlPath
from epp.framework.plugins import PluginKind

__all__ = [
    "ProfileView",
    "check_default_profile_pickers",
    "check_feature_gates",
    "check_profiles",
    "order_producers",
]

_SLOTS = frozenset({PluginKind.FILTER, PluginKind.SCORER, PluginKind.PICKER})
_GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})


@dataclass
class ProfileView:
    """A scheduling profile as far as it could be validated (`name` None when its name is bad)."""

    index: int
    name: str | None
    refs: list[tuple[int, ProfilePluginRef]] = field(default_factory=list)


def check_feature_gates(
    ctx: LoadContext, gates: Sequence[tuple[int, str]], environ: Mapping[str, str]
) -> frozenset[str]:
    """Known gates only; `ENABLE_EXPERIMENTAL_FLOW_CONTROL_LAYER=true` adds `flowControl` (deprecated)."""
    out: set[str] = set()
    for i, gate in gates:
        path: YamlPath = ("featureGates", i)
        if gate not in FEATURE_GATES:
            ctx.error(path, f"unknown feature gate '{gate}' (known: {', '.join(FEATURE_GATES)})")
            continue
        if gate == "dataLayer":
            ctx.warn(
                path, "feature gate 'dataLayer' is deprecated and has no effect: the data layer is always on"
            )
        elif gate == "prepareDataPlugins":
            ctx.warn(
                path,
                "feature gate 'prepareDataPlugins' is deprecated and has no effect: producers always run",
            )
        out.add(gate)
    if environ.get("ENABLE_EXPERIMENTAL_FLOW_CONTROL_LAYER", "") in _GO_TRUE:
        ctx.warn(
            ("featureGates",),
            "ENABLE_EXPERIMENTAL_FLOW_CONTROL_LAYER is deprecated: add 'flowControl' to featureGates instead",
        )
        out.add("flowControl")
    return frozenset(out)


def check_profiles(ctx: LoadContext, views: Sequence[ProfileView]) -> list[ProfileDecl]:
    """Profiles as declared, with every reference checked; weights default to 1.0."""
    out: list[ProfileDecl] = []
    names: dict[str, int] = {}
    for view in views:
        ppath: YamlPath = ("schedulingProfiles", view.index)
        if view.name is not None:
            if view.name in names:
                ctx.error(
                    (*ppath, "name"),
                    f"duplicate profile name '{view.name}' (first at line {names[view.name]})",
                )
            else:
                names[view.name] = ctx.line((*ppath, "name"))
        entries = _check_refs(ctx, view, ppath)
        out.append(ProfileDecl(view.name or f"#{view.index}", tuple(entries), ctx.line(ppath), ppath))
    return out


def _check_refs(ctx: LoadContext, view: ProfileView, ppath: YamlPath) -> list[ProfileEntry]:
    entries: list[ProfileEntry] = []
    seen: dict[str, int] = {}
    picker: str | None = None
    for j, ref in view.refs:
        rpath: YamlPath = (*ppath, "plugins", j)
        name = ref.plugin_ref
        if not ctx.is_known(name):
            ctx.error((*rpath, "pluginRef"), ctx.undefined_ref_message(name))
            continue
        if name in seen:
            ctx.error(
                (*rpath, "pluginRef"), f"plugin '{name}' is already in this profile (line {seen[name]})"
            )
            continue
        seen[name] = ctx.line(rpath)
        if ref.weight is not None and ref.weight < 0:
            ctx.error((*rpath, "weight"), f"weight must not be negative (got {ref.weight:g})")
        elif ref.weight is not None and not math.isfinite(ref.weight):
            ctx.error((*rpath, "weight"), f"weight must be a finite number (got {ref.weight})")
        kinds = ctx.kinds(name)
        if kinds is not None:
            if not kinds & _SLOTS:
                ctx.warn(
                    rpath,
                    f"{ctx.describe(name)} is not a filter, scorer or picker, so it does nothing in a "
                    "profile (its request hooks run whether or not it is listed)",
                )
            if PluginKind.PICKER in kinds:
                if picker is not None:
                    ctx.error(
                        (*rpath, "pluginRef"),
                        f"a profile has at most one picker; '{picker}' is already its picker",
                    )
                picker = picker or name
            if ref.weight is not None and PluginKind.SCORER not in kinds:
                ctx.warn((*rpath, "weight"), f"weight has no effect: {ctx.describe(name)} is not a scorer")
            elif ref.weight == 0:
                ctx.warn((*rpath, "weight"), "weight 0: this scorer does not count")
        if name in ctx.plugins:
            weight = DEFAULT_WEIGHT if ref.weight is None else ref.weight
            scorer = kinds is not None and PluginKind.SCORER in kinds
            entries.append(ProfileEntry(name, weight, ctx.line(rpath), rpath, scorer=scorer))
    return entries


def check_default_profile_pickers(ctx: LoadContext, profile: ProfileDecl) -> None:
    """The implicit default profile takes every picker; more than one cannot work."""
    pickers = [e for e in profile.entries if PluginKind.PICKER in (ctx.kinds(e.plugin) or ())]
    for extra in pickers[1:]:
        ctx.error(
            (*extra.path, "type"),
            f"without schedulingProfiles every picker joins the 'default' profile, which can have only one; "
            f"'{pickers[0].plugin}' is already its picker (declare schedulingProfiles)",
        )


def order_producers(ctx: LoadContext) -> list[str]:
    """Data producers in dependency order (a producer runs after those it consumes from); ties keep
    build order. A cycle is an error."""
    producers = [
        d for d in ctx.plugins.values() if PluginKind.DATA_PRODUCER in ctx.registry.get(d.type).kinds
    ]
    produces = {d.name: ctx.registry.get(d.type).produces for d in producers}
    deps = {
        d.name: {
            other.name
            for other in producers
            if other.name != d.name and produces[other.name] & ctx.registry.get(d.type).consumes
        }
        for d in producers
    }
    ordered: list[str] = []
    pending = [d.name for d in producers]
    while pending:
        ready = [n for n in pending if not deps[n] - set(ordered)]
        if not ready:
            for name in pending:
                decl = ctx.plugins[name]
                ctx.error(
                    (*decl.path, "type") if decl.declared else decl.path,
                    f"{decl.describe()} is in a data dependency cycle with "
                    f"{', '.join(sorted(deps[name] - set(ordered)))}",
                )
            break
        ordered.append(ready[0])
        pending.remove(ready[0])
    return ordered
