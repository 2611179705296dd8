"""What the daemon is made of: the built-in plugin types, the default registry, the default flow-control
policies. The one place (with `epp.app`) that names concrete plugins, as upstream's runner does, so the
config loader, the scheduling engine and flow control stay free of them.
"""

from __future__ import annotations

from epp.datalayer.k8s_notifications import K8S_NOTIFICATION_SOURCE
from epp.datalayer.notifications import ENDPOINT_NOTIFICATION_SOURCE
from epp.datalayer.plugin_types import CORE_METRICS_EXTRACTOR, METRICS_DATA_SOURCE
from epp.framework.flowcontrol import DefaultPolicies
from epp.plugins import register_builtins
from epp.plugins.flowcontrol.fairness import GlobalStrictFairness
from epp.plugins.flowcontrol.ordering import FcfsOrdering
from epp.plugins.flowcontrol.usage_limit import StaticUsageLimit
from epp.plugins.reporters.attribute_reporter import REQUEST_ATTRIBUTE_REPORTER
from epp.registry import PluginRegistry

__all__ = ["builtin_registry", "default_flow_policies", "default_registry"]


def builtin_registry() -> PluginRegistry:
    """A new registry with the in-tree plugin types only (no entry points)."""
    registry = PluginRegistry()
    register_builtins(registry)
    for entry in (
        METRICS_DATA_SOURCE,
        CORE_METRICS_EXTRACTOR,
        ENDPOINT_NOTIFICATION_SOURCE,
        K8S_NOTIFICATION_SOURCE,
        REQUEST_ATTRIBUTE_REPORTER,
    ):
        if entry.type_name not in registry:
            registry.register(entry)
    return registry


def default_registry(*, entry_points: bool = True) -> PluginRegistry:
    """A new registry with the built-in plugin types and those of the `epp.plugins` entry-point group."""
    registry = builtin_registry()
    if entry_points:
        registry.load_entry_points()
    return registry


def default_flow_policies() -> DefaultPolicies:
    """Fresh instances of the policies flow control falls back on (upstream's defaults)."""
    return DefaultPolicies(GlobalStrictFairness(), FcfsOrdering(), StaticUsageLimit())
