"""The plugin author's API: value types, the cycle state, plugin protocols, the factory handle and the
flow-control policy contracts.

This package imports nothing from the rest of `epp` (an import-linter contract, docs/architecture.md).
"""

from epp.framework.cycle import CycleState, StateKey
from epp.framework.handle import Handle, NullPluginMetrics, PluginMetrics, SimpleHandle
from epp.framework.plugins import (
    Admitter,
    BackgroundTask,
    DataProducer,
    EndpointObserver,
    Filter,
    Picker,
    Plugin,
    PluginKind,
    PreRequest,
    ProfileHandler,
    RequestParser,
    ResponseComplete,
    ResponseReceived,
    SaturationDetector,
    Scorer,
    ScorerCategory,
)
from epp.framework.types import (
    ApiKind,
    Endpoint,
    EndpointMetrics,
    InferenceRequest,
    ProfileRunResult,
    ResponseInfo,
    SchedulingResult,
    ScoredEndpoint,
    TypedName,
    format_address,
)

__all__ = [
    "Admitter",
    "ApiKind",
    "BackgroundTask",
    "CycleState",
    "DataProducer",
    "Endpoint",
    "EndpointMetrics",
    "EndpointObserver",
    "Filter",
    "Handle",
    "InferenceRequest",
    "NullPluginMetrics",
    "Picker",
    "Plugin",
    "PluginKind",
    "PluginMetrics",
    "PreRequest",
    "ProfileHandler",
    "ProfileRunResult",
    "RequestParser",
    "ResponseComplete",
    "ResponseInfo",
    "ResponseReceived",
    "SaturationDetector",
    "SchedulingResult",
    "ScoredEndpoint",
    "Scorer",
    "ScorerCategory",
    "SimpleHandle",
    "StateKey",
    "TypedName",
    "format_address",
]
