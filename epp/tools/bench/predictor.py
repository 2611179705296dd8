"""Benchmark of the latency predictor on the request path: `python -m epp.tools.bench.predictor`.

The setting of `bench schedule`: 64 endpoints with varied metrics and 4,000-character prompts from a
shared-prefix workload (the prefix producer runs first, untimed, as in the daemon). The
`predicted-latency-producer` has a trained model (one per endpoint, or one per hardware class with
`--classes N`), fitted on samples from a synthetic engine. Each iteration is one request's
`prepare_data` (TTFT and TPOT for every candidate, the SLO headroom, the metrics it records), with
the churn of a loaded fleet between requests: `--dispatches` requests dispatched and completed on random
endpoints (each changes that endpoint's in-flight features) and `--scrapes` endpoints with new metrics
(a new scrape), per request, and the background loop's first-byte sweep every 10 requests (untimed: it
runs on the event loop, not in a request). Reported:

- `predict`: prepare_data with that churn (what a request pays; the daemon's metrics record its duration
  from the background loop, as here every 10 requests, untimed);
- `cold`: prepare_data right after a model swap (every endpoint's cached terms recomputed; once per
  retrain interval);
- `consumers`: latency-scorer + slo-headroom-tier-filter + latency-slo-admitter on the predictions;
- `fit`: one retrain of every group (off the request path, in the background loop);
- `baseline`: `bench schedule`'s baseline (a picker-only `schedule()`), measured in the same run, so the
  numbers can be compared across machines and loads.

Timing is `time.perf_counter_ns` per call, on one thread; GC stays enabled (as in the daemon).
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

from prometheus_client import CollectorRegistry

from epp.framework.cycle import CycleState
from epp.framework.handle import SimpleHandle
from epp.framework.types import (
    Endpoint,
    EndpointMetrics,
    InferenceRequest,
    ProfileRunResult,
    ResponseInfo,
    SchedulingResult,
)
from epp.observability.metrics import EppMetrics
from epp.plugins.latency.admitter import LATENCY_SLO_ADMITTER
from epp.plugins.latency.model import feature_row
from epp.plugins.latency.producer import PREDICTED_LATENCY_PRODUCER, PredictedLatencyProducer
from epp.plugins.latency.scorer import LATENCY_SCORER
from epp.plugins.latency.tier_filter import SLO_HEADROOM_TIER_FILTER
from epp.plugins.pickers.max_score import MAX_SCORE_PICKER
from epp.plugins.producers.approx_prefix import APPROX_PREFIX_CACHE_PRODUCER
from epp.plugins.profile.single_profile import SINGLE_PROFILE_HANDLER
from epp.scheduling.profile import SchedulerProfile
from epp.scheduling.scheduler import Scheduler
from epp.tools.bench.schedule import Stats, _workload

__all__ = ["PredictorBenchResult", "main", "run"]

SLO_HEADERS = {"x-slo-ttft-ms": "500", "x-slo-tpot-ms": "50"}


@dataclass(frozen=True)
class PredictorBenchResult:
    endpoints: int
    classes: int
    iterations: int
    dispatches: float
    scrapes: float
    predict: Stats
    cold: Stats
    consumers: Stats
    baseline: Stats
    fit_ms: float

    def as_text(self) -> str:
        scope = f"{self.classes} hardware classes" if self.classes else "one model per endpoint"
        lines = [
            f"predictor benchmark: {self.endpoints} endpoints, {scope}, {self.iterations} requests, "
            f"{self.dispatches:g} dispatches and {self.scrapes:g} scrapes per request",
            f"{'':10} {'median':>10} {'p99':>10} {'mean':>10}",
        ]
        for name in ("predict", "cold", "consumers", "baseline"):
            s: Stats = getattr(self, name)
            lines.append(f"{name:10} {s.median_us:8.1f}us {s.p99_us:8.1f}us {s.mean_us:8.1f}us")
        lines.append(f"fit        {self.fit_ms:8.1f}ms (every group, background loop)")
        return "\n".join(lines)


def _endpoint(i: int, rng: random.Random, classes: int) -> Endpoint:
    labels = {"gpu": f"class-{i % classes}"} if classes else {}
    return Endpoint(
        key=f"pod-{i}-rank-0",
        ip=f"10.0.{i // 250}.{i % 250 + 1}",
        port=8000,
        labels=labels,
        metrics=_metrics(rng),
    )


def _metrics(rng: random.Random) -> EndpointMetrics:
    return EndpointMetrics(
        waiting_queue_size=rng.randrange(0, 12),
        running_requests_size=rng.randrange(0, 64),
        kv_cache_usage=rng.random(),
        cache_block_size=16,
        cache_num_blocks=31_250,
        update_time=time.monotonic(),
    )


def _train(producer: PredictedLatencyProducer, eps: list[Endpoint], rng: random.Random, n: int) -> None:
    """`n` samples from a synthetic engine (TTFT and TPOT linear in the features, with noise)."""
    for _ in range(n):
        e = rng.choice(eps)
        m = e.metrics
        tokens = rng.randrange(10, 2000)
        load = (float(m.waiting_queue_size), float(m.running_requests_size), m.kv_cache_usage, 0.0)
        row = feature_row(float(tokens), float(tokens), 16.0, 0.0, *load)
        ttft = (10.0 + 0.05 * tokens + 3.0 * m.waiting_queue_size) * rng.uniform(0.9, 1.1)
        tpot = (5.0 + 0.2 * m.running_requests_size) * rng.uniform(0.9, 1.1)
        producer.buffers.add(producer.group_of(e), row, ttft, tpot)
    producer.retrain()


def run(
    endpoints: int = 64,
    prompt_chars: int = 4000,
    iterations: int = 5000,
    seed: int = 1,
    classes: int = 0,
    dispatches: float = 1.0,
    scrapes: float = 1.0,
) -> PredictorBenchResult:
    rng = random.Random(seed)
    # the daemon's metrics: recording the prediction's duration is part of what a request pays
    handle = SimpleHandle(rng=random.Random(seed), metrics=EppMetrics(CollectorRegistry()))
    eps = [_endpoint(i, rng, classes) for i in range(endpoints)]
    prefix = APPROX_PREFIX_CACHE_PRODUCER.build("prefix", None, handle)
    params = {"streamingMode": True, "hardwareClassLabel": "gpu" if classes else ""}
    producer: PredictedLatencyProducer = PREDICTED_LATENCY_PRODUCER.build("predictor", params, handle)
    scorer = LATENCY_SCORER.build("scorer", None, handle)
    tier = SLO_HEADROOM_TIER_FILTER.build("tier", None, handle)
    admitter = LATENCY_SLO_ADMITTER.build("admitter", None, handle)
    bare = SchedulerProfile(
        name="default", filters=(), scorers=(), picker=MAX_SCORE_PICKER.build("picker", None, handle)
    )
    baseline = Scheduler(SINGLE_PROFILE_HANDLER.build("handler", None, handle), {"default": bare})
    make = _workload(rng, prompt_chars, prefixes=16)
    requests = [
        replace(make(i), headers=SLO_HEADERS, stream=True, priority=-1) for i in range(iterations + 256)
    ]
    for req in requests[:256]:  # warm the prefix index
        cycle = CycleState()
        prefix.prepare_data(cycle, req, eps)
        target = rng.choice(eps)
        prefix.pre_request(cycle, req, SchedulingResult("default", {"default": ProfileRunResult((target,))}))
    requests = requests[256:]
    _train(producer, eps, rng, 2048 * max(1, classes or endpoints // 8))
    producer._sweeping = True  # as in the daemon: the background loop sweeps and records the metrics
    # measure the fit alone: mark every group stale again
    for group in producer.buffers.groups():
        producer.buffers.add(group, feature_row(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0), 10.0, 5.0)
    t0 = time.perf_counter()
    producer.retrain()
    fit_ms = (time.perf_counter() - t0) * 1000.0

    perf = time.perf_counter_ns
    predict: list[int] = []
    cold: list[int] = []
    consumers: list[int] = []
    bare_ns: list[int] = []
    in_flight: list[tuple[CycleState, InferenceRequest, SchedulingResult]] = []
    owed_dispatch = owed_scrape = 0.0
    gc.collect()
    for i, req in enumerate(requests):
        cycle = CycleState()
        prefix.prepare_data(cycle, req, eps)
        t0 = perf()
        producer.prepare_data(cycle, req, eps)
        t1 = perf()
        admitter.admit(cycle, req, eps)
        kept = tier.filter(cycle, req, eps)
        scorer.score(cycle, req, kept)
        t2 = perf()
        predict.append(t1 - t0)
        consumers.append(t2 - t1)
        t4 = perf()
        baseline.schedule(req, eps, CycleState())
        bare_ns.append(perf() - t4)
        if i % 50 == 0:  # a model swap: every endpoint's cached terms go
            producer._cols = None
            t3 = perf()
            producer.prepare_data(CycleState(), req, eps)
            cold.append(perf() - t3)
        # the churn of a loaded fleet, untimed
        owed_dispatch += dispatches
        while owed_dispatch >= 1.0:
            owed_dispatch -= 1.0
            result = SchedulingResult("default", {"default": ProfileRunResult((rng.choice(eps),))})
            producer.pre_request(cycle, req, result)
            in_flight.append((cycle, req, result))
            cycle = CycleState()
        while len(in_flight) > 4 * endpoints:
            done_cycle, done_req, done_result = in_flight.pop(rng.randrange(len(in_flight)))
            producer.response_complete(
                done_cycle,
                done_req,
                ResponseInfo(status=200, complete=True),
                done_result,
            )
        if i % 10 == 0:  # the background loop's work (every 5 ms in the daemon)
            producer.tracker.sweep()
            producer.flush_metrics()
        owed_scrape += scrapes
        while owed_scrape >= 1.0:
            owed_scrape -= 1.0
            j = rng.randrange(len(eps))
            eps[j] = replace(eps[j], metrics=_metrics(rng))
    return PredictorBenchResult(
        endpoints=endpoints,
        classes=classes,
        iterations=iterations,
        dispatches=dispatches,
        scrapes=scrapes,
        predict=Stats.of(predict),
        cold=Stats.of(cold),
        consumers=Stats.of(consumers),
        baseline=Stats.of(bare_ns),
        fit_ms=fit_ms,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m epp.tools.bench.predictor", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--endpoints", type=int, default=64)
    parser.add_argument("--prompt-chars", type=int, default=4000)
    parser.add_argument("--iterations", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--classes", type=int, default=0, help="hardware classes (0: a model per endpoint)")
    parser.add_argument("--dispatches", type=float, default=1.0, help="requests dispatched per request")
    parser.add_argument("--scrapes", type=float, default=1.0, help="endpoints re-scraped per request")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    result = run(
        args.endpoints,
        args.prompt_chars,
        args.iterations,
        args.seed,
        args.classes,
        args.dispatches,
        args.scrapes,
    )
    print(json.dumps(asdict(result), indent=2) if args.json else result.as_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
