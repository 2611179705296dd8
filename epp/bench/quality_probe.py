"""Scheduling-quality probe: `python -m epp.bench.quality_probe` (a seeded, in-process, virtual-time run).

A discrete-event simulation: `--replicas` copies of the simulator's engine (`epp.sim.engine.Engine`, the
same vLLM V1 model `epp sim` runs: FCFS queue, chunked prefill, paged KV cache with prefix caching and
eviction, calibrated step times), a seeded workload (`epp.bench.probe_workloads`) and one router
(`epp.bench.probe_routers`): an EPP profile built by the real config loader, or a model of a rival policy.
Time is virtual, so a run is deterministic for a seed, never disturbed by the host's load, and a minute
of traffic on 8 replicas takes seconds. Metrics are "scraped" every `--scrape-interval` virtual seconds
(the EPP default is 50 ms; a harness running the simulators at `--time-scale s` sees 50 ms / s), and
the EPP sees the first response byte of a streamed request at its first token.

What it does not model: network and proxy latency, the EPP's own CPU time, HTTP errors. It is a tuning
tool; `epp bench quality` (real processes, Envoy, the rival binaries) is the benchmark of record.

    python -m epp.bench.quality_probe --workload zipf --rate 40 --router cache-aware \\
        --router epp:profiles/default.yaml --router epp:profiles/recommended.yaml
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from epp.bench.probe_routers import CacheAware, EppRouter, LeastRequest, RoundRobin, Router
from epp.bench.probe_workloads import WORKLOADS, ProbeRequest, Workload, make_workload
from epp.framework.types import Endpoint, EndpointMetrics
from epp.sim.config import SimConfig
from epp.sim.engine import Engine, StepResult
from epp.sim.kvcache import chain_block_hashes
from epp.sim.openai_api import parse_request
from epp.sim.tokenizer import CharTokenizer

__all__ = ["ProbeResult", "main", "run_probe"]

_ARRIVAL, _STEP, _SCRAPE, _EVENTS = 0, 1, 2, 3


@dataclass
class ProbeResult:
    workload: str
    router: str
    rate: float
    requests: int
    finished: int
    ttft_p50: float
    ttft_p90: float
    ttft_p99: float
    e2e_p90: float
    output_tps: float
    hit_ratio: float
    oracle_hit_ratio: float
    max_mean_requests: float
    max_mean_busy: float
    ttft_p90_by_kind: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0


@dataclass(slots=True)
class _Record:
    req: ProbeRequest
    replica: int
    tokens: int
    first: float = math.nan
    done: float = math.nan
    outputs: int = 0
    engine_req: Any = None


def _pct(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


class _Sim:
    def __init__(
        self,
        workload: Workload,
        make_router: Callable[[int, Callable[[], float]], Router],
        *,
        replicas: int,
        config: SimConfig,
        scrape_interval: float,
        events_delay: float,
        drain: float,
    ) -> None:
        self.now = 0.0
        self.workload = workload
        self.config = config
        self.engines = [Engine(config) for _ in range(replicas)]
        self.busy = [False] * replicas
        self.tokenizer = CharTokenizer(config.vocab_size)
        self.endpoints = [
            Endpoint(key=f"127.0.0.1:{8000 + i}", ip="127.0.0.1", port=8000 + i) for i in range(replicas)
        ]
        self.router = make_router(replicas, lambda: self.now)
        self.scrape_interval = scrape_interval
        self.events_delay = events_delay
        self.drain = drain
        self.heap: list[tuple[float, int, int, Any]] = []
        self.seq = 0
        self.records: dict[str, _Record] = {}
        self.per_replica = [0] * replicas
        self.oracle: set[int] = set()
        self.oracle_hits = 0
        self.oracle_queries = 0
        self.event_sink = getattr(self.router, "kv_events", None)

    def push(self, t: float, kind: int, data: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, data))

    def run(self) -> None:
        for r in self.workload.requests:
            self.push(r.arrival, _ARRIVAL, r)
        end_arrivals = max((r.arrival for r in self.workload.requests), default=0.0)
        self._scrape()
        self.push(self.scrape_interval, _SCRAPE, None)
        limit = end_arrivals + self.drain
        while self.heap:
            t, _, kind, data = heapq.heappop(self.heap)
            if t > limit:
                break
            self.now = t
            if kind == _ARRIVAL:
                self._arrive(data)
            elif kind == _STEP:
                self._step_done(*data)
            elif kind == _SCRAPE:
                self._scrape()
                if any(self.busy) or t < end_arrivals:
                    self.push(t + self.scrape_interval, _SCRAPE, None)
            elif kind == _EVENTS and self.event_sink is not None:
                self.event_sink(*data)

    def _scrape(self) -> None:
        out = []
        for e, eng in zip(self.endpoints, self.engines, strict=True):
            m = EndpointMetrics(
                waiting_queue_size=len(eng.waiting),
                running_requests_size=len(eng.running),
                kv_cache_usage=eng.pool.usage,
                cache_block_size=self.config.block_size,
                cache_num_blocks=self.config.kv_blocks,
                update_time=max(self.now, 1e-9),
            )
            out.append(Endpoint(key=e.key, ip=e.ip, port=e.port, metrics=m))
        self.endpoints = out

    def _arrive(self, req: ProbeRequest) -> None:
        parsed = parse_request(
            "chat" if "messages" in req.body else "completion", req.body, self.config, self.tokenizer
        )
        tokens = parsed.prompts[0]
        i = self.router.route(req, self.endpoints, self.now)
        self.per_replica[i] += 1
        self.records[req.rid] = _Record(req, i, len(tokens))
        self._oracle(tokens)
        eng = self.engines[i]
        self.records[req.rid].engine_req = eng.add_request(
            req.rid, tokens, parsed.max_tokens, parsed.lora, self.now
        )
        if not self.busy[i]:
            self._start_step(i)

    def _oracle(self, tokens: Sequence[int]) -> None:
        bs = self.config.block_size
        hashes = chain_block_hashes(tokens, bs, None)
        usable = hashes[: (len(tokens) - 1) // bs]
        hit = 0
        for h in usable:
            if h not in self.oracle:
                break
            hit += 1
        self.oracle_hits += hit * bs
        self.oracle_queries += len(tokens)
        self.oracle.update(hashes)

    def _start_step(self, i: int) -> None:
        eng = self.engines[i]
        if not eng.has_work:
            self.busy[i] = False
            return
        result = eng.step(self.now)
        if result.duration <= 0.0:
            self.busy[i] = False
            return
        self.busy[i] = True
        self.push(result.end, _STEP, (i, result))
        events = eng.pool.drain_events()
        if events and self.event_sink is not None:
            self.push(result.end + self.events_delay, _EVENTS, (self.endpoints[i].key, events))

    def _step_done(self, i: int, result: StepResult) -> None:
        for out in result.outputs:
            rec = self.records.get(out.request_id)
            if rec is None:
                continue
            rec.outputs += 1
            if out.index == 0:
                rec.first = self.now
                self.router.first_token(out.request_id, self.now)
            if out.finish_reason is not None:
                rec.done = self.now
                self.router.finished(out.request_id, self.now)
                follow = self.workload.next_turn
                if follow is not None:
                    nxt = follow(rec.req, self.now)
                    if nxt is not None:
                        self.push(nxt.arrival, _ARRIVAL, nxt)
        self._start_step(i)


def make_router(spec: str, seed: int) -> Callable[[int, Callable[[], float]], Router]:
    """`round-robin`, `least-request`, `cache-aware`, `epp:<config.yaml>` or `epp-text:<name>=<yaml>`."""
    if spec == "round-robin":
        return lambda n, clock: RoundRobin(n, seed)
    if spec == "least-request":
        return lambda n, clock: LeastRequest(n, seed)
    if spec == "cache-aware":
        return lambda n, clock: CacheAware(n, seed)
    if spec.startswith("epp:"):
        path = Path(spec[4:])
        text = path.read_text()
        name = f"epp:{path.stem}"
        return lambda n, clock: EppRouter(text, name, seed, clock)
    if spec.startswith("epp-text:"):
        name, _, text = spec[9:].partition("=")
        return lambda n, clock: EppRouter(text, f"epp:{name}", seed, clock)
    raise ValueError(f"unknown router {spec!r}")


def run_probe(
    workload: str,
    rate: float,
    router: str,
    *,
    duration: float = 60.0,
    seed: int = 1,
    replicas: int = 8,
    kv_blocks: int = 2048,
    scrape_interval: float = 0.05,
    events_delay: float = 0.002,
    drain: float = 60.0,
) -> ProbeResult:
    started = time.perf_counter()
    wl = make_workload(workload, rate, duration, seed)
    config = SimConfig(kv_blocks=kv_blocks, kv_events_endpoint="inproc://probe", seed=seed)
    sim = _Sim(
        wl,
        make_router(router, seed),
        replicas=replicas,
        config=config,
        scrape_interval=scrape_interval,
        events_delay=events_delay,
        drain=drain,
    )
    sim.run()
    recs = list(sim.records.values())
    done = [r for r in recs if not math.isnan(r.done)]
    ttft = [r.first - r.req.arrival for r in recs if not math.isnan(r.first)]
    # a request that never got its first token counts as the whole run: it cannot look good
    ttft += [sim.now - r.req.arrival for r in recs if math.isnan(r.first)]
    by_kind: dict[str, list[float]] = {}
    for r in recs:
        first = r.first if not math.isnan(r.first) else sim.now
        by_kind.setdefault(r.req.kind, []).append(first - r.req.arrival)
    span = max((r.done for r in done), default=0.0) or 1.0
    hits = sum(e.stats.prefix_cache_hits for e in sim.engines)
    queries = sum(e.stats.prefix_cache_queries for e in sim.engines) or 1
    busy = [e.stats.busy_time for e in sim.engines]
    counts = sim.per_replica
    return ProbeResult(
        workload=workload,
        router=sim.router.name,
        rate=rate,
        requests=len(recs),
        finished=len(done),
        ttft_p50=_pct(ttft, 0.5),
        ttft_p90=_pct(ttft, 0.9),
        ttft_p99=_pct(ttft, 0.99),
        e2e_p90=_pct([r.done - r.req.arrival for r in done], 0.9),
        output_tps=sum(r.outputs for r in recs) / span,
        hit_ratio=hits / queries,
        oracle_hit_ratio=sim.oracle_hits / max(1, sim.oracle_queries),
        max_mean_requests=max(counts) / (sum(counts) / len(counts)) if sum(counts) else math.nan,
        max_mean_busy=max(busy) / (sum(busy) / len(busy)) if sum(busy) else math.nan,
        ttft_p90_by_kind={k: _pct(v, 0.9) for k, v in sorted(by_kind.items())},
        wall_s=time.perf_counter() - started,
    )


def _row(r: ProbeResult) -> str:
    kinds = (
        " ".join(f"{k}={v * 1000:.0f}" for k, v in r.ttft_p90_by_kind.items())
        if len(r.ttft_p90_by_kind) > 1
        else ""
    )
    return (
        f"| {r.workload} | {r.rate:g} | {r.router} | {r.ttft_p50 * 1000:.0f} | {r.ttft_p90 * 1000:.0f} | "
        f"{r.ttft_p99 * 1000:.0f} | {r.e2e_p90:.2f} | {r.output_tps:.0f} | {r.hit_ratio:.3f} / "
        f"{r.oracle_hit_ratio:.3f} | {r.max_mean_requests:.2f} / {r.max_mean_busy:.2f} | "
        f"{r.requests - r.finished} | {kinds} |"
    )


HEADER = (
    "| workload | rate | router | TTFT p50 ms | p90 ms | p99 ms | e2e p90 s | out tok/s | hit / oracle | "
    "max/mean req / busy | unfinished | p90 ms by kind |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m epp.bench.quality_probe", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--workload", action="append", choices=WORKLOADS, help="repeatable; default: all")
    parser.add_argument("--rate", action="append", type=float, required=True, help="requests/s; repeatable")
    parser.add_argument("--router", action="append", required=True, help="repeatable (see make_router)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of arrivals (virtual)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--replicas", type=int, default=8)
    parser.add_argument("--kv-blocks", type=int, default=2048)
    parser.add_argument("--scrape-interval", type=float, default=0.05)
    parser.add_argument("--json", action="store_true", help="one JSON object per run instead of a table")
    args = parser.parse_args(argv)
    if not args.json:
        print(HEADER)
    for workload in args.workload or WORKLOADS:
        for rate in args.rate:
            for router in args.router:
                result = run_probe(
                    workload,
                    rate,
                    router,
                    duration=args.duration,
                    seed=args.seed,
                    replicas=args.replicas,
                    kv_blocks=args.kv_blocks,
                    scrape_interval=args.scrape_interval,
                )
                print(json.dumps(asdict(result)) if args.json else _row(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
