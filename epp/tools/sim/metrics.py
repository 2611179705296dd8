"""The simulator's Prometheus exposition, with vLLM's (or SGLang's) metric names and labels.

A custom collector on a private registry reads the engine state at scrape time, so every scrape
is current and test overrides (`/admin/metrics-override`) can pin the load gauges. Latency
histograms are observed from finished requests in wall-clock seconds (what clients see).

vLLM specifics kept on purpose: series carry `model_name` and `engine` labels; `vllm:cache_config_info`
and `vllm:lora_requests_info` carry only their own labels; the LoRA info gauge's value is the time
of its last update and old label sets stay exported (the EPP must pick the newest one).
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from epp.tools.sim.config import EngineKind, SimConfig
from epp.tools.sim.engine import Engine

__all__ = [
    "CONTENT_TYPE",
    "Histogram",
    "LatencyHistograms",
    "LoraInfoHistory",
    "MetricsOverride",
    "SimMetrics",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
               20.0, 40.0, 80.0)  # fmt: skip
REQUEST_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                   240.0, 480.0, 960.0, 1920.0, 7680.0)  # fmt: skip


class Histogram:
    """A cumulative-bucket histogram kept by hand (so it can be exported under any name)."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*self.buckets, float("inf")), self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), float(running)))
        return out


@dataclass(slots=True)
class LatencyHistograms:
    ttft: Histogram
    e2e: Histogram
    queue: Histogram
    itl: Histogram

    @classmethod
    def new(cls) -> LatencyHistograms:
        return cls(
            Histogram(TTFT_BUCKETS),
            Histogram(REQUEST_BUCKETS),
            Histogram(REQUEST_BUCKETS),
            Histogram(ITL_BUCKETS),
        )


@dataclass(slots=True)
class MetricsOverride:
    """Values pinned by a test; None leaves the real value."""

    waiting: int | None = None
    running: int | None = None
    kv: float | None = None

    def is_empty(self) -> bool:
        return self.waiting is None and self.running is None and self.kv is None


class LoraInfoHistory:
    """`vllm:lora_requests_info` label sets with the time each was last current (bounded)."""

    def __init__(self, limit: int = 32) -> None:
        self._limit = limit
        self._series: dict[tuple[str, str], float] = {}

    def update(self, running: Sequence[str], waiting: Sequence[str], now: float) -> None:
        key = (",".join(running), ",".join(waiting))
        self._series.pop(key, None)
        self._series[key] = now
        while len(self._series) > self._limit:
            del self._series[next(iter(self._series))]

    def series(self) -> list[tuple[str, str, float]]:
        return [(r, w, t) for (r, w), t in self._series.items()]


class SimMetrics(Collector):
    """Collects the engine's gauges and counters plus the latency histograms."""

    def __init__(self, config: SimConfig, engine: Engine, latency: LatencyHistograms) -> None:
        self.config = config
        self.engine = engine
        self.latency = latency
        self.override = MetricsOverride()
        self.lora_info = LoraInfoHistory()
        self.finished_by_reason: dict[str, int] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def note_lora_state(self) -> None:
        if self.config.lora_adapters:
            self.lora_info.update(self.engine.running_adapters(), self.engine.waiting_adapters(), time.time())

    # ---- values with overrides ---------------------------------------------------------------

    def waiting(self) -> int:
        o = self.override.waiting
        return len(self.engine.waiting) if o is None else o

    def running(self) -> int:
        o = self.override.running
        return len(self.engine.running) if o is None else o

    def kv_usage(self) -> float:
        o = self.override.kv
        return self.engine.pool.usage if o is None else o

    # ---- collection --------------------------------------------------------------------------

    def collect(self) -> Iterable[Metric]:
        self.note_lora_state()
        if self.config.engine is EngineKind.SGLANG:
            yield from self._sglang()
        else:
            yield from self._vllm()

    def _vllm(self) -> Iterable[Metric]:
        cfg, stats = self.config, self.engine.stats
        names, values = ["model_name", "engine"], [cfg.model, "0"]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=names)
            g.add_metric(values, value)
            return g

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc, labels=names)
            c.add_metric(values, value)
            return c

        yield gauge(
            "vllm:num_requests_running", "Number of requests in model execution batches.", self.running()
        )
        yield gauge(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed.", self.waiting()
        )
        kv = self.kv_usage()
        yield gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", kv)
        yield gauge("vllm:gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent usage.", kv)
        yield counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            stats.prefix_cache_queries,
        )
        yield counter(
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens.",
            stats.prefix_cache_hits,
        )
        yield counter(
            "vllm:num_preemptions", "Cumulative number of preemption from the engine.", stats.preemptions
        )
        yield counter("vllm:prompt_tokens", "Number of prefill tokens processed.", stats.prompt_tokens)
        yield counter(
            "vllm:generation_tokens", "Number of generation tokens processed.", stats.generation_tokens
        )
        success = CounterMetricFamily(
            "vllm:request_success",
            "Count of successfully processed requests.",
            labels=[*names, "finished_reason"],
        )
        for reason in ("stop", "length", "abort"):
            success.add_metric([*values, reason], self.finished_by_reason.get(reason, 0))
        yield success
        yield from self._histograms("vllm", names, values, queue_name="request_queue_time_seconds")
        info = GaugeMetricFamily(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig",
            labels=[
                "block_size",
                "cache_dtype",
                "enable_prefix_caching",
                "gpu_memory_utilization",
                "num_cpu_blocks",
                "num_gpu_blocks",
                "engine",
            ],
        )
        info.add_metric([str(cfg.block_size), "auto", "True", "0.9", "0", str(cfg.kv_blocks), "0"], 1.0)
        yield info
        if cfg.lora_adapters:
            lora = GaugeMetricFamily(
                "vllm:lora_requests_info",
                "Running stats on lora requests.",
                labels=["max_lora", "waiting_lora_adapters", "running_lora_adapters"],
            )
            for running, waiting, stamp in self.lora_info.series():
                lora.add_metric([str(cfg.max_loras), waiting, running], stamp)
            yield lora

    def _sglang(self) -> Iterable[Metric]:
        cfg, stats = self.config, self.engine.stats
        names = ["model_name", "engine_type", "tp_rank", "pp_rank"]
        values = [cfg.model, "unified", "0", "0"]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=names)
            g.add_metric(values, value)
            return g

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc, labels=names)
            c.add_metric(values, value)
            return c

        capacity = cfg.kv_blocks * cfg.block_size
        usage = self.kv_usage()
        yield gauge("sglang:num_running_reqs", "The number of running requests.", self.running())
        yield gauge("sglang:num_queue_reqs", "The number of requests in the waiting queue.", self.waiting())
        yield gauge("sglang:token_usage", "The token usage.", usage)
        yield gauge("sglang:num_used_tokens", "The number of used tokens.", round(usage * capacity))
        yield gauge(
            "sglang:max_total_num_tokens", "Maximum total number of tokens in the KV cache pool.", capacity
        )
        queries = stats.prefix_cache_queries
        yield gauge(
            "sglang:cache_hit_rate",
            "The prefix cache hit rate.",
            stats.prefix_cache_hits / queries if queries else 0.0,
        )
        yield counter("sglang:prompt_tokens", "Number of prefill tokens processed.", stats.prompt_tokens)
        yield counter(
            "sglang:generation_tokens", "Number of generation tokens processed.", stats.generation_tokens
        )
        yield counter("sglang:cached_tokens", "Number of cached prompt tokens.", stats.prefix_cache_hits)
        yield counter("sglang:num_requests", "Number of requests processed.", stats.requests_finished)
        yield from self._histograms("sglang", names, values, queue_name="queue_time_seconds")
        info = GaugeMetricFamily(
            "sglang:cache_config_info",
            "KV cache configuration.",
            labels=["model_name", "page_size", "num_pages"],
        )
        info.add_metric([cfg.model, str(cfg.block_size), str(cfg.kv_blocks)], 1.0)
        yield info

    def _histograms(
        self, prefix: str, names: list[str], values: list[str], *, queue_name: str
    ) -> Iterable[Metric]:
        lat = self.latency
        for suffix, doc, hist in (
            ("time_to_first_token_seconds", "Histogram of time to first token in seconds.", lat.ttft),
            ("e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", lat.e2e),
            (queue_name, "Histogram of time spent in the waiting queue in seconds.", lat.queue),
            ("inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", lat.itl),
        ):
            h = HistogramMetricFamily(f"{prefix}:{suffix}", doc, labels=names)
            h.add_metric(values, hist.cumulative(), sum_value=hist.total)
            yield h
