"""Overload benchmark: does flow control hold critical traffic's TTFT when the pool is overloaded?

`python -m epp.tools.bench.overload [--duration 20] [--json]`

Setup (all on loopback): simulated vLLM servers (one subprocess each, small batch so they saturate at a
modest rate), the EPP daemon in-process with `--static-endpoints` and `--static-objectives
critical=10,standard=0,batch=-1`, and a real Envoy in front. Two open-loop Poisson streams run at once:

- **critical** (`x-gateway-inference-objective: critical`, priority 10) at a rate the pool handles easily;
- **flood** (`standard`, priority 0, by default) well above what the pool can serve.

The same traffic is sent twice:

- **off**: the default admission. Priority-0 traffic is never shed, so the model servers' own queues
  grow without bound and critical requests wait behind the flood.
- **on**: `featureGates: [flowControl]` with a `concurrency-detector` (limit = the servers' batch size):
  requests wait in the EPP's priority bands, critical first; flood requests that wait longer than the TTL
  get 503.

Reported per mode and class: requests, successes, TTFT p50/p90/p99 of successes, status counts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from epp.tools.extras import reports_missing_extras, require
from epp.tools.loadgen.client import LoadClient, RequestResult
from epp.tools.loadgen.fleet import SimFleet
from epp.tools.loadgen.gateway import Gateway
from epp.tools.loadgen.runner import poisson_arrivals
from epp.tools.loadgen.stats import percentile
from epp.tools.loadgen.text import synthetic_text
from epp.tools.loadgen.workloads import Session, Turn
from epp.tools.sim.config import SimConfig

__all__ = ["ClassSummary", "OverloadParams", "main", "run_mode"]

MODEL = "sim-model"
OBJECTIVES = "critical=10,standard=0,batch=-1"
HEAD = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"


@dataclass(frozen=True)
class OverloadParams:
    servers: int = 2
    max_num_seqs: int = 4
    duration_s: float = 20.0
    critical_rate: float = 2.0
    flood_rate: float = 24.0
    flood_objective: str = "standard"
    prompt_tokens: int = 128
    output_tokens: int = 64
    ttl: str = "10s"
    seed: int = 0


def flow_control_config(p: OverloadParams) -> str:
    return (
        HEAD
        + f"""
featureGates: [flowControl]
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: concurrency-detector
  parameters: {{maxConcurrency: {p.max_num_seqs}}}
- type: metrics-data-source
- type: core-metrics-extractor
schedulingProfiles:
- name: default
  plugins:
  - {{pluginRef: queue-scorer, weight: 2}}
  - {{pluginRef: kv-cache-utilization-scorer, weight: 2}}
saturationDetector: {{pluginRef: concurrency-detector}}
dataLayer:
  sources:
  - pluginRef: metrics-data-source
    extractors: [{{pluginRef: core-metrics-extractor}}]
flowControl:
  defaultRequestTTL: {p.ttl}
"""
    )


def legacy_config() -> str:
    """The same scoring without the gate (the detector is the default utilization-detector)."""
    return (
        HEAD
        + """
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: metrics-data-source
- type: core-metrics-extractor
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: queue-scorer, weight: 2}
  - {pluginRef: kv-cache-utilization-scorer, weight: 2}
dataLayer:
  sources:
  - pluginRef: metrics-data-source
    extractors: [{pluginRef: core-metrics-extractor}]
"""
    )


@dataclass
class ClassSummary:
    name: str
    requests: int
    ok: int
    ttft_p50_s: float | None
    ttft_p90_s: float | None
    ttft_p99_s: float | None
    statuses: dict[str, int] = field(default_factory=dict)


def summarize(name: str, results: Sequence[RequestResult]) -> ClassSummary:
    ttfts = [r.ttft_s for r in results if r.ok and r.ttft_s is not None]
    statuses = Counter(str(r.status) if r.status else "no-response" for r in results)
    return ClassSummary(
        name=name,
        requests=len(results),
        ok=sum(1 for r in results if r.ok),
        ttft_p50_s=percentile(ttfts, 50),
        ttft_p90_s=percentile(ttfts, 90),
        ttft_p99_s=percentile(ttfts, 99),
        statuses=dict(sorted(statuses.items())),
    )


def _sessions(prefix: str, count: int, p: OverloadParams, rng: random.Random) -> list[Session]:
    return [
        Session(
            id=f"{prefix}-{i}",
            group=prefix,
            turns=(Turn(text=synthetic_text(rng, p.prompt_tokens), max_tokens=p.output_tokens),),
        )
        for i in range(count)
    ]


async def _stream(
    client: LoadClient, sessions: Sequence[Session], offsets: Sequence[float], start: float
) -> list[RequestResult]:
    async def one(session: Session, at: float) -> RequestResult:
        delay = start + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        result, _ = await client.send(session, 0, run_start=start)
        return result

    return list(await asyncio.gather(*(one(s, t) for s, t in zip(sessions, offsets, strict=True))))


async def run_mode(mode: str, p: OverloadParams, fleet: SimFleet, workdir: str) -> dict[str, ClassSummary]:
    """One run through a fresh EPP + Envoy; `mode` is "on" or "off"."""
    config = flow_control_config(p) if mode == "on" else legacy_config()
    rng = random.Random(p.seed)
    n_crit = max(1, int(p.critical_rate * p.duration_s))
    n_flood = max(1, int(p.flood_rate * p.duration_s))
    crit = _sessions("critical", n_crit, p, rng)
    flood = _sessions("flood", n_flood, p, rng)
    crit_at = poisson_arrivals(n_crit, p.critical_rate, p.seed + 1)
    flood_at = poisson_arrivals(n_flood, p.flood_rate, p.seed + 2)
    await fleet.reset()
    gateway = Gateway(
        fleet.addresses,
        config_text=config,
        workdir=workdir,
        extra_args=["--static-objectives", OBJECTIVES],
        route_timeout=0,
    )
    timeout = p.duration_s * 4 + 60
    async with gateway as gw:
        crit_client = LoadClient(
            gw.url, model=MODEL, timeout_s=timeout, headers={"x-gateway-inference-objective": "critical"}
        )
        flood_client = LoadClient(
            gw.url,
            model=MODEL,
            timeout_s=timeout,
            headers={"x-gateway-inference-objective": p.flood_objective},
        )
        async with crit_client, flood_client:
            start = time.perf_counter()
            crit_results, flood_results = await asyncio.gather(
                _stream(crit_client, crit, crit_at, start), _stream(flood_client, flood, flood_at, start)
            )
    return {
        "critical": summarize("critical", crit_results),
        "flood": summarize(f"flood ({p.flood_objective})", flood_results),
    }


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.0f}"


def render(results: dict[str, dict[str, ClassSummary]], p: OverloadParams) -> str:
    lines = [
        f"overload: {p.servers} simulated servers (max_num_seqs {p.max_num_seqs}), {p.duration_s:g}s, "
        f"critical {p.critical_rate:g}/s + {p.flood_objective} flood {p.flood_rate:g}/s, "
        f"{p.prompt_tokens} prompt / {p.output_tokens} output tokens",
        "",
        "| flow control | class | requests | ok | TTFT p50 ms | p90 ms | p99 ms | statuses |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode, classes in results.items():
        for c in classes.values():
            statuses = ", ".join(f"{k}: {v}" for k, v in c.statuses.items())
            lines.append(
                f"| {mode} | {c.name} | {c.requests} | {c.ok} | {_ms(c.ttft_p50_s)} | {_ms(c.ttft_p90_s)} "
                f"| {_ms(c.ttft_p99_s)} | {statuses} |"
            )
    return "\n".join(lines)


async def _main(p: OverloadParams, modes: Sequence[str]) -> dict[str, dict[str, ClassSummary]]:
    configs = [SimConfig(model=MODEL, seed=i, max_num_seqs=p.max_num_seqs) for i in range(p.servers)]
    out: dict[str, dict[str, ClassSummary]] = {}
    with tempfile.TemporaryDirectory(prefix="epp-overload-") as workdir:
        async with SimFleet(configs, mode="subprocess", log_dir=workdir) as fleet:
            for mode in modes:
                out[mode] = await run_mode(mode, p, fleet, workdir)
    return out


@reports_missing_extras
def main(argv: Sequence[str] | None = None) -> int:
    d = OverloadParams()
    ap = argparse.ArgumentParser(
        prog="python -m epp.tools.bench.overload", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--servers", type=int, default=d.servers)
    ap.add_argument("--max-num-seqs", type=int, default=d.max_num_seqs, help="simulator batch size")
    ap.add_argument("--duration", type=float, default=d.duration_s, help="seconds of arrivals per mode")
    ap.add_argument("--critical-rate", type=float, default=d.critical_rate, help="critical requests/s")
    ap.add_argument("--flood-rate", type=float, default=d.flood_rate, help="flood requests/s")
    ap.add_argument(
        "--flood-objective",
        choices=["standard", "batch"],
        default=d.flood_objective,
        help="flood priority 0 / -1",
    )
    ap.add_argument("--prompt-tokens", type=int, default=d.prompt_tokens)
    ap.add_argument("--output-tokens", type=int, default=d.output_tokens)
    ap.add_argument("--ttl", default=d.ttl, help="flowControl.defaultRequestTTL in the 'on' run")
    ap.add_argument("--modes", default="off,on", help="comma-separated: off, on")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)
    p = OverloadParams(
        servers=args.servers,
        max_num_seqs=args.max_num_seqs,
        duration_s=args.duration,
        critical_rate=args.critical_rate,
        flood_rate=args.flood_rate,
        flood_objective=args.flood_objective,
        prompt_tokens=args.prompt_tokens,
        output_tokens=args.output_tokens,
        ttl=args.ttl,
        seed=args.seed,
    )
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in ("off", "on")]
    if bad or not modes:
        ap.error(f"--modes takes off and/or on, got {args.modes!r}")
    require("epp bench overload", "bench", envoy=True)
    results = asyncio.run(_main(p, modes))
    if args.json:
        doc: dict[str, Any] = {
            "params": asdict(p),
            "results": {m: {k: asdict(v) for k, v in c.items()} for m, c in results.items()},
        }
        print(json.dumps(doc, indent=2))
    else:
        print(render(results, p))
    return 0


if __name__ == "__main__":
    sys.exit(main())
