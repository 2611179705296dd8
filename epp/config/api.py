"""The EndpointPickerConfig document as pydantic models (upstream `apix/config/v1alpha1`).

Field names in YAML are upstream's camelCase keys, exactly. Every model forbids unknown keys and is strict
about types (a quoted number is not a number), as upstream's strict decoder is; plugin `parameters` stay a
raw mapping here and are validated against each plugin type's own model by the loader.

Two older spellings are accepted and translated by the loader (with a deprecation warning): the v1.2
inline `saturationDetector: {queueDepthThreshold, kvCacheUtilThreshold, metricsStalenessThreshold}` and
the v1.3/v1.4 key `data` for `dataLayer`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel

from epp.units import (
    DURATION_PATTERN,
    QUANTITY_PATTERN,
    format_duration,
    parse_duration,
    parse_quantity,
)

__all__ = [
    "API_VERSION",
    "DEFAULT_BAND_MAX_BYTES",
    "KIND",
    "LEGACY_TYPE_NAMES",
    "LLMD_API_VERSION",
    "UNAVAILABLE_TYPES",
    "DataLayerConfig",
    "DataSourceConfig",
    "DefaultPriorityBandConfig",
    "Duration",
    "EndpointPickerConfig",
    "ExtractorRef",
    "FlowControlConfig",
    "PluginRef",
    "PluginSpec",
    "PriorityBandConfig",
    "ProfilePluginRef",
    "Quantity",
    "SaturationDetectorConfig",
    "SchedulingProfile",
    "describe_value",
]

API_VERSION = "inference.networking.x-k8s.io/v1alpha1"
#: llm-d-router's group for the same document (its configs load unchanged; see docs/configuration.md).
LLMD_API_VERSION = "llm-d.ai/v1alpha1"
KIND = "EndpointPickerConfig"

#: Plugin types renamed upstream: an old config still loads, with a warning, when the new type exists.
LEGACY_TYPE_NAMES: Mapping[str, str] = {
    "kv-cache-scorer": "kv-cache-utilization-scorer",
    "model-server-protocol-metrics": "core-metrics-extractor",
}

#: Upstream plugin types this EPP refuses at load time, with what to use instead.
UNAVAILABLE_TYPES: Mapping[str, str] = {
    "vllmgrpc-parser": (
        "this EPP does not parse vLLM's gRPC API (gRPC-framed protobuf bodies of vLLM's grpc_server, "
        "whose protos it does not ship); serve the model over vLLM's OpenAI-compatible HTTP API and use "
        "openai-parser (the default), or passthrough-parser to route gRPC bodies without reading them "
        "(no prefix-cache affinity)"
    ),
}

#: Upstream `defaultPriorityBandMaxBytes`: a band's byte capacity when its config leaves it unset.
DEFAULT_BAND_MAX_BYTES = 1_000_000_000


def describe_value(value: Any) -> str:
    """How a YAML value reads in an error message: `a string 'abc'`, `a list`, `null`, ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a number ({value})"
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return f"a string {shown!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__  # pragma: no cover - YAML gives only the types above


def _duration(value: Any) -> float:
    if isinstance(value, str):
        seconds = parse_duration(value)
        if seconds < 0:
            raise ValueError(f"a duration must not be negative (got {value!r})")
        return seconds
    raise ValueError(f"expected a duration string such as '30s' or '200ms', got {describe_value(value)}")


def _quantity(value: Any) -> int:
    if isinstance(value, str | int) and not isinstance(value, bool):
        return parse_quantity(value)
    raise ValueError(f"expected an integer or a quantity string such as '10Gi', got {describe_value(value)}")


#: A Go duration string (`30s`, `200ms`, `1h30m`), held as float seconds, written back as a string.
Duration = Annotated[
    float,
    BeforeValidator(_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": DURATION_PATTERN,
            "description": "a Go duration such as 30s, 200ms or 1h30m",
        }
    ),
]

#: A Kubernetes quantity (`10Gi`, `1k`, `500`), held as int.
Quantity = Annotated[
    int,
    BeforeValidator(_quantity),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": QUANTITY_PATTERN},
            ],
            "description": "a Kubernetes quantity such as 10Gi, 500M, 1k or a plain integer",
        }
    ),
]


def _none_to_empty(value: Any) -> Any:
    return [] if value is None else value


def _allow_null(schema: dict[str, Any]) -> None:
    """JSON-schema hook: a list key may be present with no value (`plugins:`), as upstream accepts."""
    inner = {k: v for k, v in schema.items() if k not in ("title", "description", "default")}
    for key in list(inner):
        schema.pop(key)
    schema["anyOf"] = [inner, {"type": "null"}]


def _nullable_list(description: str) -> Any:
    return Field(default_factory=list, description=description, json_schema_extra=_allow_null)


class _Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        alias_generator=to_camel,
        validate_by_name=False,
        validate_by_alias=True,
        serialize_by_alias=True,
    )


class PluginSpec(_Strict):
    """One plugin instance: its type, an optional name (defaults to the type) and its parameters."""

    name: str | None = Field(default=None, min_length=1, description="defaults to the type")
    type: str = Field(min_length=1, description="a registered plugin type")
    parameters: dict[str, Any] | None = Field(
        default=None, description="validated against the plugin type's own parameters"
    )


class ProfilePluginRef(_Strict):
    """A plugin used by a scheduling profile; `weight` applies to scorers (default 1.0)."""

    plugin_ref: str = Field(min_length=1)
    # The rule itself (>= 0, finite) is checked with the profile, which reports every problem at once;
    # `minimum` tells schema-driven tools the same.
    weight: float | None = Field(
        default=None, description="scorer weight; default 1.0", json_schema_extra={"minimum": 0}
    )


class SchedulingProfile(_Strict):
    """A named set of filters, weighted scorers and one picker."""

    name: str = Field(min_length=1)
    plugins: Annotated[list[ProfilePluginRef], BeforeValidator(_none_to_empty)] = _nullable_list(
        "filters, scorers and at most one picker, in order"
    )


class PluginRef(_Strict):
    """A reference to a declared plugin by name."""

    plugin_ref: str = Field(min_length=1)


class ExtractorRef(PluginRef):
    """A metrics extractor fed by a data source."""


class DataSourceConfig(_Strict):
    """A data source (e.g. the metrics scraper) and the extractors that read what it fetches."""

    plugin_ref: str = Field(min_length=1)
    extractors: Annotated[list[ExtractorRef], BeforeValidator(_none_to_empty)] = _nullable_list(
        "extractors fed by this source"
    )


class DataLayerConfig(_Strict):
    """How endpoint data is collected (upstream `dataLayer`, v1.5+)."""

    sources: Annotated[list[DataSourceConfig], BeforeValidator(_none_to_empty)] = _nullable_list(
        "data sources; an empty list collects no model-server metrics"
    )


class SaturationDetectorConfig(_Strict):
    """`{pluginRef}` (v1.5+), or the deprecated v1.2 inline utilization thresholds."""

    plugin_ref: str | None = Field(default=None, min_length=1)
    queue_depth_threshold: int | None = Field(default=None, json_schema_extra={"deprecated": True})
    kv_cache_util_threshold: float | None = Field(default=None, json_schema_extra={"deprecated": True})
    metrics_staleness_threshold: Duration | None = Field(default=None, json_schema_extra={"deprecated": True})

    @property
    def inline(self) -> dict[str, Any]:
        """The v1.2 inline thresholds that are set, as utilization-detector parameters."""
        return self.model_dump(mode="json", exclude={"plugin_ref"}, exclude_none=True)

    @model_validator(mode="after")
    def _one_form(self) -> SaturationDetectorConfig:
        if self.plugin_ref is None and not self.inline:
            raise ValueError("missing required key 'pluginRef' (the saturation detector plugin to use)")
        if self.plugin_ref is not None and self.inline:
            raise ValueError(
                "use either pluginRef or the deprecated inline thresholds "
                f"({', '.join(self.inline)}), not both"
            )
        return self


class _BandFields(_Strict):
    max_bytes: Quantity | None = Field(default=None, description=f"default {DEFAULT_BAND_MAX_BYTES}")
    max_requests: Quantity | None = Field(default=None, description="0 or absent = unlimited")
    fairness_policy_ref: str | None = Field(default=None, description="default global-strict-fairness-policy")
    ordering_policy_ref: str | None = Field(default=None, description="default fcfs-ordering-policy")


class PriorityBandConfig(_BandFields):
    """The queues of one priority level (higher = more important)."""

    priority: int


class DefaultPriorityBandConfig(_BandFields):
    """The template for priorities that have no band of their own."""

    priority: int | None = Field(default=None, description="ignored in the template")


class FlowControlConfig(_Strict):
    """Queueing by priority and fairness (honoured only with the `flowControl` feature gate)."""

    max_bytes: Quantity | None = Field(default=None, description="global byte limit; absent or 0 = none")
    max_requests: Quantity | None = Field(
        default=None, description="global request limit; absent or 0 = none"
    )
    default_request_ttl: Duration | None = Field(
        default=None, alias="defaultRequestTTL", description="absent = the client's deadline applies"
    )
    default_priority_band: DefaultPriorityBandConfig | None = None
    priority_bands: Annotated[list[PriorityBandConfig], BeforeValidator(_none_to_empty)] = _nullable_list(
        "one entry per priority level"
    )
    usage_limit_policy_plugin_ref: str | None = Field(
        default=None, description="default static-usage-limit-policy"
    )

    def band_for(self, priority: int) -> PriorityBandConfig:
        """The effective band of `priority`: its own entry, else the template, with upstream defaults."""
        for band in self.priority_bands:
            if band.priority == priority:
                own = band.model_dump(exclude_none=True)
                break
        else:
            own = {}
        template = (
            self.default_priority_band.model_dump(exclude_none=True) if self.default_priority_band else {}
        )
        merged = {**template, **own, "priority": priority}
        merged.setdefault("max_bytes", DEFAULT_BAND_MAX_BYTES)
        merged.setdefault("max_requests", 0)
        return PriorityBandConfig.model_construct(**merged)


class EndpointPickerConfig(_Strict):
    """The whole document: `apiVersion`/`kind` envelope and the top-level sections."""

    api_version: Literal["inference.networking.x-k8s.io/v1alpha1", "llm-d.ai/v1alpha1"] = Field(
        description="inference.networking.x-k8s.io/v1alpha1, or llm-d-router's llm-d.ai/v1alpha1 (the same "
        "document)"
    )
    kind: Literal["EndpointPickerConfig"]
    feature_gates: Annotated[list[str], BeforeValidator(_none_to_empty)] = _nullable_list(
        "dataLayer (deprecated no-op), enableLegacyMetrics, flowControl, prepareDataPlugins (deprecated "
        "no-op)"
    )
    plugins: Annotated[list[PluginSpec], BeforeValidator(_none_to_empty)] = _nullable_list(
        "plugin instances, created in this order"
    )
    scheduling_profiles: Annotated[list[SchedulingProfile], BeforeValidator(_none_to_empty)] = _nullable_list(
        "absent = one 'default' profile with every filter, scorer and picker"
    )
    saturation_detector: SaturationDetectorConfig | None = None
    data_layer: DataLayerConfig | None = None
    data: DataLayerConfig | None = Field(
        default=None,
        description="deprecated (v1.3/v1.4 name of dataLayer)",
        json_schema_extra={"deprecated": True},
    )
    flow_control: FlowControlConfig | None = None
    parser: PluginRef | None = Field(default=None, description="default openai-parser")

    @model_validator(mode="after")
    def _one_data_layer_key(self) -> EndpointPickerConfig:
        if self.data is not None and self.data_layer is not None:
            raise ValueError("both 'dataLayer' and its deprecated name 'data' are set; keep only 'dataLayer'")
        return self
