"""The `core-metrics-extractor` plugin: turns a scraped page into `EndpointMetrics`, engine by engine.

The engine of an endpoint is the value of its `engineLabelKey` label (default
`inference.networking.k8s.io/engine-type`); a missing or unknown value uses `defaultEngine`. Each engine
has an `EngineMapping` (built-in ones from `metric_spec.BUILTIN_ENGINES`; a configured entry replaces the
built-in one of that name, no merge).

Extraction is partial by design: a signal whose series is missing or not a finite number keeps its last
good value, and the metrics count as fresh (a new `update_time`) when at least one load signal was read.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from epp.datalayer.metric_spec import (
    BUILTIN_ENGINES,
    DEFAULT_ENGINE,
    ENGINE_LABEL_KEY,
    EngineMapping,
    MetricOverrides,
    MetricSpec,
)
from epp.datalayer.promtext import Sample
from epp.framework.types import EndpointMetrics, TypedName

__all__ = ["CORE_METRICS_EXTRACTOR_TYPE", "CoreMetricsExtractor", "Extraction"]

CORE_METRICS_EXTRACTOR_TYPE = "core-metrics-extractor"

log = logging.getLogger(__name__)

LORA_RUNNING_LABEL = "running_lora_adapters"
LORA_WAITING_LABEL = "waiting_lora_adapters"
LORA_MAX_LABEL = "max_lora"


@dataclass(frozen=True, slots=True)
class Extraction:
    """The result of reading one page: the new metrics, whether they are fresh, and what was missing."""

    metrics: EndpointMetrics
    fresh: bool
    missing: tuple[str, ...] = ()


class CoreMetricsExtractor:
    """Maps Prometheus samples to `EndpointMetrics` with a per-engine `EngineMapping`."""

    def __init__(
        self,
        name: str = CORE_METRICS_EXTRACTOR_TYPE,
        *,
        engines: Mapping[str, EngineMapping] | None = None,
        default_engine: str = DEFAULT_ENGINE,
        engine_label_key: str = ENGINE_LABEL_KEY,
        overrides: MetricOverrides | None = None,
    ) -> None:
        table = dict(BUILTIN_ENGINES)
        table.update(engines or {})
        if default_engine not in table:
            raise ValueError(
                f"defaultEngine {default_engine!r} is not a known engine; known: {', '.join(sorted(table))}"
            )
        if overrides is not None and overrides.any():
            table[default_engine] = table[default_engine].with_overrides(overrides)
        self._name = name
        self.engines: Mapping[str, EngineMapping] = table
        self.default_engine = default_engine
        self.engine_label_key = engine_label_key or ENGINE_LABEL_KEY
        self._warned: set[str] = set()

    @property
    def typed_name(self) -> TypedName:
        return TypedName(CORE_METRICS_EXTRACTOR_TYPE, self._name)

    def with_overrides(self, overrides: MetricOverrides) -> CoreMetricsExtractor:
        """A copy whose default engine has the deprecated flag specs applied."""
        return CoreMetricsExtractor(
            self._name,
            engines=self.engines,
            default_engine=self.default_engine,
            engine_label_key=self.engine_label_key,
            overrides=overrides,
        )

    def mapping_for(self, labels: Mapping[str, str]) -> EngineMapping:
        """The mapping of the engine named by the endpoint's engine label (default engine otherwise)."""
        engine = labels.get(self.engine_label_key)
        if not engine:
            return self.engines[self.default_engine]
        mapping = self.engines.get(engine)
        if mapping is None:
            if engine not in self._warned:
                self._warned.add(engine)
                log.warning(
                    "endpoint engine type %r is not configured; using the default engine %r",
                    engine,
                    self.default_engine,
                )
            return self.engines[self.default_engine]
        return mapping

    def extract(
        self,
        mapping: EngineMapping,
        samples: Mapping[str, Sequence[Sample]],
        previous: EndpointMetrics,
        now: float,
    ) -> Extraction:
        """New metrics from the samples of one page; signals not found keep their `previous` values."""
        missing: list[str] = []
        core = 0

        def value(specs: Sequence[MetricSpec], signal: str) -> float | None:
            for spec in specs:
                s = spec.select(samples.get(spec.name, ()))
                if s is not None and math.isfinite(s.value):
                    return s.value
            if specs:
                missing.append(signal)
            return None

        waiting = previous.waiting_queue_size
        running = previous.running_requests_size
        kv = previous.kv_cache_usage
        v = value(mapping.queued, "queued")
        if v is not None:
            waiting, core = max(0, int(v)), core + 1
        v = value(mapping.running, "running")
        if v is not None:
            running, core = max(0, int(v)), core + 1
        v = value(mapping.kv_usage, "kv_usage")
        if v is not None:
            kv, core = max(0.0, v), core + 1

        active, waiting_models, max_active = (
            previous.active_models,
            previous.waiting_models,
            previous.max_active_models,
        )
        if mapping.lora is not None:
            lora = _latest_lora(mapping.lora, samples.get(mapping.lora.name, ()))
            if lora is not None:
                active = _adapters(lora.labels.get(LORA_RUNNING_LABEL, ""))
                waiting_models = _adapters(lora.labels.get(LORA_WAITING_LABEL, ""))
                max_active = _int_label(lora.labels, LORA_MAX_LABEL, max_active)

        block_size, num_blocks = previous.cache_block_size, previous.cache_num_blocks
        info = None
        if mapping.cache_info is not None:
            info = mapping.cache_info.select(samples.get(mapping.cache_info.name, ()))
        if mapping.cache_block_size is not None:
            block_size = _int_value(mapping.cache_block_size, samples, block_size)
        elif info is not None:
            block_size = _int_label(info.labels, mapping.cache_block_size_label, block_size)
        if mapping.cache_num_blocks is not None:
            num_blocks = _int_value(mapping.cache_num_blocks, samples, num_blocks)
        elif info is not None:
            num_blocks = _int_label(info.labels, mapping.cache_num_blocks_label, num_blocks)

        fresh = core > 0 or not mapping.has_core
        metrics = EndpointMetrics(
            waiting_queue_size=waiting,
            running_requests_size=running,
            kv_cache_usage=kv,
            active_models=active,
            waiting_models=waiting_models,
            max_active_models=max_active,
            cache_block_size=block_size,
            cache_num_blocks=num_blocks,
            update_time=now if fresh else previous.update_time,
        )
        return Extraction(metrics, fresh, tuple(missing))


def _latest_lora(spec: MetricSpec, samples: Sequence[Sample]) -> Sample | None:
    """The LoRA info series to use: the largest value (an update timestamp) among series that list a
    running or waiting adapter, or among all matching series when none does (to still read max_lora)."""
    best: Sample | None = None
    best_any: Sample | None = None
    for s in samples:
        if not spec.matches(s.labels) or math.isnan(s.value):
            continue
        if best_any is None or s.value > best_any.value:
            best_any = s
        if (s.labels.get(LORA_RUNNING_LABEL) or s.labels.get(LORA_WAITING_LABEL)) and (
            best is None or s.value > best.value
        ):
            best = s
    return best if best is not None else best_any


def _adapters(csv: str) -> frozenset[str]:
    """Adapter names from a comma list, trimmed (upstream forgets to trim " b" in "a, b")."""
    return frozenset(part.strip() for part in csv.split(",") if part.strip())


def _int_label(labels: Mapping[str, str], key: str, default: int) -> int:
    raw = labels.get(key, "")
    try:
        return int(raw)
    except ValueError:
        try:
            f = float(raw)
        except ValueError:
            return default
        return int(f) if math.isfinite(f) and f >= 0 else default


def _int_value(spec: MetricSpec, samples: Mapping[str, Sequence[Sample]], default: int) -> int:
    s = spec.select(samples.get(spec.name, ()))
    if s is None or not math.isfinite(s.value) or s.value < 0:
        return default
    return int(s.value)
