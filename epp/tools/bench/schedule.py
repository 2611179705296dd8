"""Benchmark of one scheduling decision: `python -m epp.tools.bench.schedule`.

The setting is the one the issue fixes: 64 endpoints with varied metrics, the default profile (queue-scorer
x2, kv-cache-utilization-scorer x2, prefix-cache-scorer x3, max-score-picker, single-profile-handler) and
4,000-character prompts from a shared-prefix workload, with a warm prefix index. Each iteration is a new
request through the path the EPP runs per request: `prepare_data` (prefix hashing + index match),
`Scheduler.schedule`, then `pre_request` (index update). Reported separately:

- `decision`: prepare_data + schedule + pre_request (what a request costs the EPP);
- `schedule`: `Scheduler.schedule()` alone;
- `baseline`: `schedule()` of a profile with no scorers (picker only), measured in the same run, so the
  numbers can be compared across machines.

Timing is `time.perf_counter_ns` per call, on one thread; GC stays enabled (as in the daemon).

`--tracing` measures the cost of `--tracing` (OpenTelemetry SDK, batch span processor, an exporter that
drops the spans): `off` (no tracer), `unsampled` (the sampler drops every request: the per-request decision
only) and `sampled` (every request traced: the request span and a child per profile and plugin). With a
tracer, `decision` also includes starting and ending the request span, as the director does.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from epp.framework.cycle import CycleState
from epp.framework.handle import SimpleHandle
from epp.framework.types import ApiKind, Endpoint, EndpointMetrics, InferenceRequest
from epp.plugins.pickers.max_score import MAX_SCORE_PICKER
from epp.plugins.producers.approx_prefix import APPROX_PREFIX_CACHE_PRODUCER, ApproxPrefixCacheProducer
from epp.plugins.profile.single_profile import SINGLE_PROFILE_HANDLER
from epp.plugins.scorers.kv_cache_utilization import KV_CACHE_UTILIZATION_SCORER
from epp.plugins.scorers.prefix_cache import PREFIX_CACHE_SCORER
from epp.plugins.scorers.queue import QUEUE_SCORER
from epp.scheduling.profile import SchedulerProfile, WeightedScorer
from epp.scheduling.scheduler import Scheduler
from epp.scheduling.spans import SCHEDULING, RequestTracer

__all__ = ["BenchResult", "Stats", "main", "run"]


@dataclass(frozen=True)
class Stats:
    median_us: float
    p99_us: float
    mean_us: float

    @staticmethod
    def of(samples_ns: Sequence[int]) -> Stats:
        ordered = sorted(samples_ns)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        return Stats(
            median_us=statistics.median(ordered) / 1000.0,
            p99_us=p99 / 1000.0,
            mean_us=statistics.fmean(ordered) / 1000.0,
        )


TRACING_MODES = ("off", "unsampled", "sampled")


@dataclass(frozen=True)
class BenchResult:
    endpoints: int
    prompt_chars: int
    iterations: int
    decision: Stats
    schedule: Stats
    baseline: Stats
    tracing: str = "off"

    def as_text(self) -> str:
        lines = [
            f"schedule benchmark: {self.endpoints} endpoints, {self.prompt_chars}-char prompts, "
            f"{self.iterations} requests, default profile (queue 2, kv 2, prefix 3), tracing {self.tracing}",
            f"{'':10} {'median':>10} {'p99':>10} {'mean':>10}",
        ]
        for name in ("decision", "schedule", "baseline"):
            s: Stats = getattr(self, name)
            lines.append(f"{name:10} {s.median_us:8.1f}us {s.p99_us:8.1f}us {s.mean_us:8.1f}us")
        return "\n".join(lines)


def _endpoints(n: int, rng: random.Random, now: float) -> list[Endpoint]:
    out = []
    for i in range(n):
        metrics = EndpointMetrics(
            waiting_queue_size=rng.randrange(0, 12),
            running_requests_size=rng.randrange(0, 64),
            kv_cache_usage=rng.random(),
            cache_block_size=16,
            cache_num_blocks=31_250,
            update_time=now,
        )
        out.append(
            Endpoint(key=f"pod-{i}-rank-0", ip=f"10.0.{i // 250}.{i % 250 + 1}", port=8000, metrics=metrics)
        )
    return out


def _workload(rng: random.Random, prompt_chars: int, prefixes: int) -> Callable[[int], InferenceRequest]:
    """Requests sharing one of `prefixes` system prompts (3/4 of the prompt), each with its own tail."""
    alphabet = "abcdefghijklmnopqrstuvwxyz      "
    shared = ["".join(rng.choice(alphabet) for _ in range(prompt_chars * 3 // 4)) for _ in range(prefixes)]
    tail_len = prompt_chars - len(shared[0])

    def make(i: int) -> InferenceRequest:
        tail = "".join(rng.choice(alphabet) for _ in range(tail_len))
        prompt = shared[i % prefixes] + tail
        return InferenceRequest(
            request_id=f"req-{i}",
            model="llama",
            target_model="llama",
            api=ApiKind.COMPLETIONS,
            prompt=prompt,
            prefix_material=prompt.encode(),
            size_bytes=len(prompt) + 40,
        )

    return make


def _tracer(mode: str) -> tuple[RequestTracer | None, Callable[[], None]]:
    """The tracer of a `--tracing` mode (the daemon's, with a dropping exporter) and how to stop it."""
    if mode == "off":
        return None, lambda: None
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON

    from epp.observability.tracing import OtelTracing

    class Drop(SpanExporter):
        def export(self, spans: object) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider(sampler=ALWAYS_ON if mode == "sampled" else ALWAYS_OFF)
    processor = BatchSpanProcessor(Drop())
    provider.add_span_processor(processor)
    tracing = OtelTracing(provider, [processor])
    return tracing, tracing.shutdown


def run(
    endpoints: int = 64, prompt_chars: int = 4000, iterations: int = 5000, seed: int = 1, tracing: str = "off"
) -> BenchResult:
    if tracing not in TRACING_MODES:
        raise ValueError(f"tracing must be one of {TRACING_MODES}, got {tracing!r}")
    tracer, stop_tracer = _tracer(tracing)
    headers = {"content-type": "application/json"}
    rng = random.Random(seed)
    handle = SimpleHandle(rng=random.Random(seed))
    eps = _endpoints(endpoints, rng, time.monotonic())
    producer: ApproxPrefixCacheProducer = APPROX_PREFIX_CACHE_PRODUCER.build("prefix", None, handle)
    picker = MAX_SCORE_PICKER.build("picker", None, handle)
    handler = SINGLE_PROFILE_HANDLER.build("handler", None, handle)
    default = SchedulerProfile(
        name="default",
        filters=(),
        scorers=(
            WeightedScorer(QUEUE_SCORER.build("queue", None, handle), 2.0),
            WeightedScorer(KV_CACHE_UTILIZATION_SCORER.build("kv", None, handle), 2.0),
            WeightedScorer(PREFIX_CACHE_SCORER.build("prefix-scorer", None, handle), 3.0),
        ),
        picker=picker,
    )
    bare = SchedulerProfile(name="default", filters=(), scorers=(), picker=picker)
    scheduler = Scheduler(handler, {"default": default})
    baseline = Scheduler(handler, {"default": bare})
    make = _workload(rng, prompt_chars, prefixes=16)

    # warm the index: every shared prefix has been served a few times
    requests = [make(i) for i in range(iterations + 256)]
    for req in requests[:256]:
        cycle = CycleState()
        producer.prepare_data(cycle, req, eps)
        producer.pre_request(cycle, req, scheduler.schedule(req, eps, cycle))
    requests = requests[256:]

    perf = time.perf_counter_ns
    decision: list[int] = []
    schedule: list[int] = []
    bare_ns: list[int] = []
    gc.collect()
    for req in requests:
        cycle = CycleState()
        t0 = perf()
        span = None if tracer is None else tracer.start_request(headers, time.monotonic())
        producer.prepare_data(cycle, req, eps)
        t1 = perf()
        if span is None:
            result = scheduler.schedule(req, eps, cycle)
        else:
            sspan = span.child(SCHEDULING)
            result = scheduler.schedule(req, eps, cycle, None, sspan)
            sspan.end()
        t2 = perf()
        producer.pre_request(cycle, req, result)
        if span is not None:
            span.end()
        t3 = perf()
        decision.append(t3 - t0)
        schedule.append(t2 - t1)
        t4 = perf()
        baseline.schedule(req, eps, CycleState())
        bare_ns.append(perf() - t4)
    stop_tracer()
    return BenchResult(
        endpoints=endpoints,
        prompt_chars=prompt_chars,
        iterations=iterations,
        decision=Stats.of(decision),
        schedule=Stats.of(schedule),
        baseline=Stats.of(bare_ns),
        tracing=tracing,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m epp.tools.bench.schedule", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--endpoints", type=int, default=64)
    parser.add_argument("--prompt-chars", type=int, default=4000)
    parser.add_argument("--iterations", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--tracing",
        choices=TRACING_MODES,
        default="off",
        help="off: no tracer; unsampled: every request dropped by the sampler; sampled: every request traced",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    result = run(args.endpoints, args.prompt_chars, args.iterations, args.seed, args.tracing)
    print(json.dumps(asdict(result), indent=2) if args.json else result.as_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
