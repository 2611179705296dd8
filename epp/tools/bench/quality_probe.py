"""Scheduling-quality probe: `python -m epp.tools.bench.quality_probe` (seeded, in-process, virtual time).

A discrete-event simulation of one `epp bench quality` run: `servers` copies of the simulator's engine
(`epp.tools.sim.engine.Engine`, the vLLM V1 model `epp sim` runs: FCFS queue, chunked prefill, paged KV cache
with prefix caching and eviction, calibrated step times, KV events), the benchmark's own seeded workloads
(`epp.tools.bench.probe_workloads`) and one router (`epp.tools.bench.probe_routers`): an EPP profile built by
the real config loader and driven through its real plugins and hooks, or a model of a rival policy.

Time is virtual, so a run is deterministic for a seed, undisturbed by the host's load, and a run of the
full benchmark size takes seconds. It keeps the benchmark's units: rates and latencies are wall-clock
numbers at the benchmark's `--time-scale` (the engines run unscaled; arrivals are divided and latencies
multiplied by the scale). Metrics are "scraped" every 50 ms of engine time (the benchmark's 50 ms x scale
of wall time); the EPP sees a streamed request's first byte at its first token and its end at the last.

Not modelled: network, proxy and EPP CPU time, HTTP errors, and the rivals' actual code (`CacheAware`
follows their documented algorithm). It is a tuning tool; `epp bench quality` is the benchmark of record.

    python -m epp.tools.bench.quality_probe --workload zipf --rate 24 --rate 30 --router cache-aware \
        --router epp:profiles/default.yaml --router epp:profiles/recommended.yaml
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from epp.framework.types import Endpoint, EndpointMetrics
from epp.tools.bench.probe_routers import CacheAware, Clairvoyant, EppRouter, LeastRequest, RoundRobin, Router
from epp.tools.bench.probe_workloads import SIZINGS, WORKLOADS, ProbeRequest, ProbeWorkload, probe_workload
from epp.tools.bench.quality import WARM_AFTER_S
from epp.tools.bench.saturation import search_saturation
from epp.tools.sim.config import SimConfig
from epp.tools.sim.engine import Engine, StepResult
from epp.tools.sim.kvcache import chain_block_hashes
from epp.tools.sim.openai_api import parse_request
from epp.tools.sim.tokenizer import CharTokenizer

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
    #: p90 TTFT of the requests that arrived after the cold-start window (`warm_after_s` of the run),
    #: when every engine's cache starts empty and the first requests of most prompt groups are misses
    ttft_p90_warm: float = math.nan
    #: EPP routers: how each pick related to the prefix match (best / partial / spill / cold)
    decisions: dict[str, int] = field(default_factory=dict)
    #: with a precise-prefix-cache-producer: endpoints whose event feed was live at the end
    precise_live: int = -1
    wall_s: float = 0.0


@dataclass(slots=True)
class _Record:
    req: ProbeRequest
    replica: int
    tokens: int
    first: float = math.nan
    done: float = math.nan
    outputs: int = 0
    text: str = ""
    engine_req: Any = None


def _pct(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


class _Sim:
    def __init__(
        self,
        workload: ProbeWorkload,
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
        self.step_end = [0.0] * replicas
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
        bind = getattr(self.router, "bind", None)
        if callable(bind):
            bind(self)

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
        self.step_end[i] = result.end
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
            rec.text += out.text
            if out.index == 0:
                rec.first = self.now
                self.router.first_token(out.request_id, self.now)
            if out.finish_reason is not None:
                rec.done = self.now
                self.router.finished(out.request_id, self.now)
                nxt = self.workload.next_turn(rec.req, self.now, rec.text)
                if nxt is not None:
                    self.push(nxt.arrival, _ARRIVAL, nxt)
        self._start_step(i)


def make_router(spec: str, seed: int) -> Callable[[int, Callable[[], float]], Router]:
    """`round-robin`, `least-request`, `cache-aware`, `clairvoyant` (a bound), `epp:<config.yaml>` or
    `epp-text:<name>=<yaml>`."""
    if spec == "round-robin":
        return lambda n, clock: RoundRobin(n, seed)
    if spec == "least-request":
        return lambda n, clock: LeastRequest(n, seed)
    if spec == "cache-aware":
        return lambda n, clock: CacheAware(n, seed)
    if spec == "clairvoyant":
        return lambda n, clock: Clairvoyant(n, seed)
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
    seed: int = 0,
    sizing: str = "full",
    duration: float | None = None,
    servers: int | None = None,
    kv_blocks: int | None = None,
    scrape_interval: float = 0.05,
    events_delay: float = 0.002,
    shape: Mapping[str, Any] | None = None,
    warm_after_s: float = WARM_AFTER_S,
) -> ProbeResult:
    """One run: `rate` requests per wall-clock second of the benchmark, for its duration (or `duration`).

    `shape` overrides parameters of the workload's shape (e.g. `{"output_len": 100}`); `warm_after_s`
    (wall seconds from the start) is where `ttft_p90_warm` starts counting.
    """
    started = time.perf_counter()
    size = SIZINGS[sizing]
    full_shape = {**size.shapes[workload], **(shape or {})}
    wl = probe_workload(workload, rate, seed=seed, sizing=size, duration_s=duration, shape=full_shape)
    scale = size.time_scale
    config = SimConfig(kv_blocks=kv_blocks or size.kv_blocks, kv_events_endpoint="inproc://probe", seed=seed)
    run_s = duration if duration is not None else size.duration_s
    sim = _Sim(
        wl,
        make_router(router, seed),
        replicas=servers or size.servers,
        config=config,
        scrape_interval=scrape_interval,
        events_delay=events_delay,
        drain=(3 * run_s + 20.0) / scale,  # the benchmark's per-run limit
    )
    sim.run()
    recs = list(sim.records.values())
    done = [r for r in recs if not math.isnan(r.done)]
    # a request without a first token counts as waiting until the end of the run: it cannot look good
    ttft = [((r.first if not math.isnan(r.first) else sim.now) - r.req.arrival) * scale for r in recs]
    by_kind: dict[str, list[float]] = {}
    for r, t in zip(recs, ttft, strict=True):
        by_kind.setdefault(r.req.kind, []).append(t)
    span = (max((r.done for r in done), default=0.0) or 1.0) * scale
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
        e2e_p90=_pct([(r.done - r.req.arrival) * scale for r in done], 0.9),
        output_tps=sum(r.outputs for r in recs) / span,
        hit_ratio=hits / queries,
        oracle_hit_ratio=sim.oracle_hits / max(1, sim.oracle_queries),
        max_mean_requests=max(counts) / (sum(counts) / len(counts)) if sum(counts) else math.nan,
        max_mean_busy=max(busy) / (sum(busy) / len(busy)) if sum(busy) else math.nan,
        ttft_p90_by_kind={k: _pct(v, 0.9) for k, v in sorted(by_kind.items())},
        ttft_p90_warm=_pct(
            [t for r, t in zip(recs, ttft, strict=True) if r.req.arrival * scale >= warm_after_s], 0.9
        ),
        decisions=dict(getattr(sim.router, "decisions", {})),
        precise_live=_precise_live(sim.router, [e.key for e in sim.endpoints]),
        wall_s=time.perf_counter() - started,
    )


def _precise_live(router: Router, keys: Sequence[str]) -> int:
    producers = getattr(router, "_precise", None)
    if not producers:
        return -1
    return sum(1 for k in keys if producers[0].live(k))


def _row(r: ProbeResult) -> str:
    kinds = (
        " ".join(f"{k}={v * 1000:.0f}" for k, v in r.ttft_p90_by_kind.items())
        if len(r.ttft_p90_by_kind) > 1
        else ""
    )
    return (
        f"| {r.workload} | {r.rate:g} | {r.router} | {r.ttft_p50 * 1000:.0f} | {r.ttft_p90 * 1000:.0f} | "
        f"{r.ttft_p90_warm * 1000:.0f} | {r.ttft_p99 * 1000:.0f} | {r.e2e_p90:.2f} | {r.output_tps:.0f} | "
        f"{r.hit_ratio:.3f} / "
        f"{r.oracle_hit_ratio:.3f} | {r.max_mean_requests:.2f} / {r.max_mean_busy:.2f} | "
        f"{r.requests - r.finished} | {kinds} |"
    )


HEADER = (
    f"| workload | rate | router | TTFT p50 ms | p90 ms | p90 after {WARM_AFTER_S:g} s | p99 ms | "
    "e2e p90 s | out tok/s | hit / oracle | max/mean req / busy | unfinished | p90 ms by kind |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What the benchmark's saturation search needs from a run."""

    ttft_p90_ms: float | None
    failed: int
    requests: int


def sweep(
    workload: str,
    routers: Sequence[str],
    *,
    rivals: Sequence[str] = ("cache-aware",),
    seeds: Sequence[int] = (0,),
    sizing: str = "full",
    say: Callable[[str], None] | None = None,
) -> tuple[float, list[ProbeResult]]:
    """The benchmark's procedure: find where the best rival saturates (its search, seed 0, search duration),
    then run every router at the sizing's multipliers of that rate for each seed."""
    size = SIZINGS[sizing]

    def probe(router: str) -> Callable[[float], Any]:
        async def run(rate: float) -> _Outcome:
            r = run_probe(workload, rate, router, seed=0, sizing=sizing, duration=size.search_duration_s)
            return _Outcome(r.ttft_p90 * 1000, r.requests - r.finished, r.requests)

        return run

    search = asyncio.run(
        search_saturation(
            workload,
            [(name, probe(name)) for name in rivals],
            start=size.start_rates[workload],
            max_probes=size.max_probes,
            say=say,
        )
    )
    results = [
        run_probe(workload, round(search.rate * m, 2), router, seed=seed, sizing=sizing)
        for m in size.multipliers
        for router in routers
        for seed in seeds
    ]
    return search.rate, results


def sweep_table(saturation: float, results: Sequence[ProbeResult], rival: str) -> str:
    """Mean p90 TTFT over seeds per (rate, router), and its ratio to the rival's at the same rate."""
    groups: dict[tuple[float, str], list[ProbeResult]] = {}
    for r in results:
        groups.setdefault((r.rate, r.router), []).append(r)
    lines = [
        f"saturation of the best rival: {saturation:g}/s",
        f"| rate | router | TTFT p50 ms | p90 ms (per seed) | p90 / rival | p90 after {WARM_AFTER_S:g} s "
        "/ rival | hit / oracle | unfinished |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (rate, router), rs in sorted(groups.items()):
        p90 = statistics.mean(r.ttft_p90 for r in rs) * 1000
        hit = statistics.mean(r.hit_ratio for r in rs)
        oracle = statistics.mean(r.oracle_hit_ratio for r in rs)
        base = groups.get((rate, rival))
        ratio = p90 / (statistics.mean(r.ttft_p90 for r in base) * 1000) if base else math.nan
        warm = statistics.mean(r.ttft_p90_warm for r in rs) * 1000
        warm_ratio = warm / (statistics.mean(r.ttft_p90_warm for r in base) * 1000) if base else math.nan
        lines.append(
            f"| {rate:g} | {router} | {statistics.mean(r.ttft_p50 for r in rs) * 1000:.0f} | {p90:.0f} "
            f"({' '.join(f'{r.ttft_p90 * 1000:.0f}' for r in rs)}) | {ratio:.2f} | {warm:.0f} "
            f"({warm_ratio:.2f}) | "
            f"{hit:.3f} / {oracle:.3f} | {sum(r.requests - r.finished for r in rs)} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(
        prog="python -m epp.tools.bench.quality_probe", description=doc.split("\n")[0]
    )
    parser.add_argument("--workload", action="append", choices=WORKLOADS, help="repeatable; default: all")
    parser.add_argument(
        "--rate", action="append", type=float, help="requests/s; repeatable (not with --sweep)"
    )
    parser.add_argument("--router", action="append", required=True, help="repeatable (see make_router)")
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="the benchmark's procedure: saturation of the cache-aware rival model, then its multipliers",
    )
    parser.add_argument("--sizing", choices=sorted(SIZINGS), default="full", help="the benchmark's sizes")
    parser.add_argument("--duration", type=float, default=None, help="wall seconds of arrivals")
    parser.add_argument("--seed", action="append", type=int, help="repeatable; default 0")
    parser.add_argument("--servers", type=int, default=None)
    parser.add_argument("--kv-blocks", type=int, default=None)
    parser.add_argument("--json", action="store_true", help="one JSON object per run instead of a table")
    args = parser.parse_args(argv)
    if args.sweep:
        for workload in args.workload or WORKLOADS:
            routers = ["cache-aware", *[r for r in args.router if r != "cache-aware"]]
            rate, results = sweep(workload, routers, seeds=args.seed or [0], sizing=args.sizing)
            print(f"\n### {workload}\n")
            print(sweep_table(rate, results, "cache-aware"), flush=True)
        return 0
    if not args.rate:
        parser.error("--rate is required without --sweep")
    if not args.json:
        print(HEADER)
    for workload in args.workload or WORKLOADS:
        for rate in args.rate:
            for seed in args.seed or [0]:
                for router in args.router:
                    result = run_probe(
                        workload,
                        rate,
                        router,
                        seed=seed,
                        sizing=args.sizing,
                        duration=args.duration,
                        servers=args.servers,
                        kv_blocks=args.kv_blocks,
                    )
                    print(json.dumps(asdict(result)) if args.json else _row(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
