"""Drive `predicted-latency-producer` through its hooks with a fake clock and a synthetic engine."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from epp.framework.cycle import CycleState
from epp.framework.types import Endpoint, ProfileRunResult, ResponseInfo, SchedulingResult
from epp.plugins.datakeys import PREFIX_CACHE_MATCH_INFO_KEY, PrefixCacheMatchInfo, PrefixGroup
from epp.plugins.latency.info import LATENCY_PREDICTION_INFO_KEY, LatencyPredictionInfo
from epp.plugins.latency.producer import PredictedLatencyProducer

from .._kit import ep, req


@dataclass
class Clock:
    now: float = 100.0

    def __call__(self) -> float:
        return self.now


def true_ttft_ms(endpoint: Endpoint, prompt_tokens: int) -> float:
    m = endpoint.metrics
    return 10.0 + 0.05 * prompt_tokens + 3.0 * m.waiting_queue_size + 0.5 * m.running_requests_size


def true_tpot_ms(endpoint: Endpoint) -> float:
    return 5.0 + 0.2 * endpoint.metrics.running_requests_size + 4.0 * endpoint.metrics.kv_cache_usage


def random_endpoint(rng: random.Random, key: str, **labels: str) -> Endpoint:
    e = ep(
        key,
        waiting_queue_size=rng.randint(0, 10),
        running_requests_size=rng.randint(0, 40),
        kv_cache_usage=rng.random(),
    )
    return Endpoint(key=e.key, ip=e.ip, port=e.port, metrics=e.metrics, labels=labels)


def prefix_info(prompt_tokens: int, cached_blocks: dict[str, int]) -> PrefixCacheMatchInfo:
    group = PrefixGroup(16, tuple(range(prompt_tokens // 16)), {k: v for k, v in cached_blocks.items() if v})
    return PrefixCacheMatchInfo({16: group}, 16)


def serve(
    producer: PredictedLatencyProducer,
    clock: Clock,
    endpoints: Sequence[Endpoint],
    target: Endpoint,
    prompt_tokens: int,
    *,
    ttft_ms: Callable[[Endpoint, int], float] = true_ttft_ms,
    tpot_ms: Callable[[Endpoint], float] = true_tpot_ms,
    output_tokens: int = 11,
    headers: dict[str, str] | None = None,
    priority: int = 0,
    cached_blocks: dict[str, int] | None = None,
) -> LatencyPredictionInfo | None:
    """One streamed request through the hooks: predictions for `endpoints`, served by `target`;
    `cached_blocks`: 16-token blocks of the prompt each endpoint holds (the TTFT function gets the
    uncached tokens on the target)."""
    request = req("x" * (4 * prompt_tokens), headers=headers, stream=True, priority=priority)
    cycle = CycleState()
    if cached_blocks:
        cycle.write(PREFIX_CACHE_MATCH_INFO_KEY, prefix_info(prompt_tokens, cached_blocks))
        prompt_tokens -= min(prompt_tokens, 16 * cached_blocks.get(target.key, 0))
    producer.prepare_data(cycle, request, endpoints)
    result = SchedulingResult("default", {"default": ProfileRunResult((target,))})
    producer.pre_request(cycle, request, result)
    response = ResponseInfo(status=200, streaming=True)
    producer.response_received(cycle, request, response, result)
    start = clock.now
    response.first_byte_at = start + ttft_ms(target, prompt_tokens) / 1000.0
    clock.now = response.first_byte_at + (output_tokens - 1) * tpot_ms(target) / 1000.0
    response.completion_tokens = output_tokens
    response.complete = True
    producer.response_complete(cycle, request, response, result)
    clock.now += 0.001
    return cycle.read(LATENCY_PREDICTION_INFO_KEY)
