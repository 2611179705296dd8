"""Registry entries of the data-layer plugins: `metrics-data-source` and `core-metrics-extractor`.

Parameter names, defaults and semantics are upstream's (documented in docs/plugins/metrics-data-source.md,
docs/plugins/core-metrics-extractor.md and docs/datalayer.md). Unlike upstream, unknown parameter keys and
bad metric specs are errors at load time, not silently ignored.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from epp.datalayer.data_source import METRICS_DATA_SOURCE_TYPE, MetricsDataSource
from epp.datalayer.extractor import CORE_METRICS_EXTRACTOR_TYPE, CoreMetricsExtractor
from epp.datalayer.metric_spec import (
    BUILTIN_ENGINES,
    DEFAULT_ENGINE,
    ENGINE_LABEL_KEY,
    EngineMapping,
    parse_spec,
)
from epp.framework.handle import Handle
from epp.framework.plugins import PluginKind
from epp.registry import PluginType

__all__ = [
    "CORE_METRICS_EXTRACTOR",
    "METRICS_DATA_SOURCE",
    "CoreMetricsExtractorParams",
    "EngineConfigParams",
    "MetricsDataSourceParams",
]

_MODEL = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class MetricsDataSourceParams(BaseModel):
    """Where model servers publish their Prometheus metrics."""

    model_config = _MODEL

    scheme: Literal["http", "https"] = Field("http", description="URL scheme of the metrics endpoint.")
    path: str = Field("/metrics", description="URL path of the metrics endpoint.", min_length=1)
    insecure_skip_verify: bool = Field(
        True, alias="insecureSkipVerify", description="With https, do not verify the server certificate."
    )


class EngineConfigParams(BaseModel):
    """Metric specs of one engine; an entry replaces the built-in engine of the same name entirely.

    A spec is `name` or `name{label=value,...}`; an empty string disables that signal.
    """

    model_config = _MODEL

    name: str = Field(min_length=1, description="Engine type, matched against the endpoint's engine label.")
    queued_requests_spec: str = Field("", alias="queuedRequestsSpec", description="Waiting requests gauge.")
    running_requests_spec: str = Field("", alias="runningRequestsSpec", description="Running requests gauge.")
    kv_usage_spec: str = Field("", alias="kvUsageSpec", description="KV-cache utilization gauge (0..1).")
    lora_spec: str = Field(
        "", alias="loraSpec", description="LoRA info series (vLLM lora_requests_info form)."
    )
    cache_info_spec: str = Field(
        "", alias="cacheInfoSpec", description="Series whose labels give cache config."
    )
    cache_block_size_label_name: str = Field(
        "block_size",
        alias="cacheBlockSizeLabelName",
        description="Label of cacheInfoSpec with the block size.",
    )
    cache_num_blocks_label_name: str = Field(
        "num_gpu_blocks",
        alias="cacheNumBlocksLabelName",
        description="Label of cacheInfoSpec with the number of GPU blocks.",
    )
    cache_block_size_spec: str = Field(
        "",
        alias="cacheBlockSizeSpec",
        description="Series whose value is the block size (overrides the label).",
    )
    cache_num_blocks_spec: str = Field(
        "",
        alias="cacheNumBlocksSpec",
        description="Series whose value is the block count (overrides the label).",
    )

    @field_validator(
        "queued_requests_spec",
        "running_requests_spec",
        "kv_usage_spec",
        "lora_spec",
        "cache_info_spec",
        "cache_block_size_spec",
        "cache_num_blocks_spec",
    )
    @classmethod
    def _valid_spec(cls, value: str) -> str:
        parse_spec(value)  # raises ValueError with the reason
        return value

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value == "default":
            raise ValueError("engine name 'default' is reserved")
        return value

    def to_mapping(self) -> EngineMapping:
        return EngineMapping.from_specs(
            self.name,
            queued=self.queued_requests_spec,
            running=self.running_requests_spec,
            kv_usage=self.kv_usage_spec,
            lora=self.lora_spec,
            cache_info=self.cache_info_spec,
            cache_block_size_label=self.cache_block_size_label_name,
            cache_num_blocks_label=self.cache_num_blocks_label_name,
            cache_block_size=self.cache_block_size_spec,
            cache_num_blocks=self.cache_num_blocks_spec,
        )


class CoreMetricsExtractorParams(BaseModel):
    """Which metrics to read from each engine; built-ins: vllm, sglang, trtllm-serve, triton-tensorrt-llm."""

    model_config = _MODEL

    engine_label_key: str = Field(
        ENGINE_LABEL_KEY, alias="engineLabelKey", description="Endpoint (pod) label naming its engine type."
    )
    default_engine: str = Field(
        DEFAULT_ENGINE,
        alias="defaultEngine",
        description="Engine for endpoints without (or with an unknown) label.",
    )
    engine_configs: tuple[EngineConfigParams, ...] = Field(
        (),
        alias="engineConfigs",
        description="Engine metric mappings; an entry replaces the built-in of its name.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> CoreMetricsExtractorParams:
        names = [e.name for e in self.engine_configs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"engineConfigs names must be unique; repeated: {', '.join(dupes)}")
        known = set(BUILTIN_ENGINES) | set(names)
        if self.default_engine not in known:
            raise ValueError(
                f"defaultEngine {self.default_engine!r} is neither built in nor in engineConfigs "
                f"(known: {', '.join(sorted(known))})"
            )
        return self


def _build_source(name: str, params: MetricsDataSourceParams, handle: Handle) -> MetricsDataSource:
    return MetricsDataSource(
        name,
        scheme=params.scheme,
        path=params.path,
        insecure_skip_verify=params.insecure_skip_verify,
        explicit=frozenset(params.model_fields_set),
    )


def _build_extractor(name: str, params: CoreMetricsExtractorParams, handle: Handle) -> CoreMetricsExtractor:
    return CoreMetricsExtractor(
        name,
        engines={e.name: e.to_mapping() for e in params.engine_configs},
        default_engine=params.default_engine,
        engine_label_key=params.engine_label_key,
    )


METRICS_DATA_SOURCE: PluginType[MetricsDataSourceParams] = PluginType(
    type_name=METRICS_DATA_SOURCE_TYPE,
    params_model=MetricsDataSourceParams,
    factory=_build_source,
    kinds=frozenset({PluginKind.DATA_SOURCE}),
    description="Scrapes each endpoint's Prometheus metrics page over HTTP(S).",
)

CORE_METRICS_EXTRACTOR: PluginType[CoreMetricsExtractorParams] = PluginType(
    type_name=CORE_METRICS_EXTRACTOR_TYPE,
    params_model=CoreMetricsExtractorParams,
    factory=_build_extractor,
    kinds=frozenset({PluginKind.METRICS_EXTRACTOR}),
    description="Reads queue, running, KV-cache, LoRA and cache-config signals per engine type.",
)
