"""`epp bench quality`: scheduling quality of our EPP profiles against plain Envoy and the rival routers.

One fleet of simulated vLLM servers (`epp sim`, one process each, small KV caches, `--time-scale`) runs
for the whole benchmark. The fleet is uniform (every simulator timed as the default H100 calibration)
unless `--fleet mixed` / `--gpus` give the simulators hardware classes (`epp sim --gpu`); the EPP then
reads each one's class from its `nvidia.com/gpu.product` label (`--static-endpoint-labels`). For each
workload (`shared_prefix`, `zipf`, `mixed`, `multiturn`):

1. **Saturation.** Unless given (`--saturation`), the rate at which the best rival router saturates is
   searched (`saturation.py`): the highest rate whose p90 TTFT stays within `factor` x that router's
   p90 TTFT at light load, with no failures.
2. **TTFT SLO** (`--ttft-slo`, off by default; `quality_slo.py`): with `auto`, one light-load run sets
   the workload's SLO; the sweep then counts who met it (per class with `--sheddable`), and EPP runs
   report their latency predictor's error.
3. **Sweep.** At `multipliers` x that rate (0.5, 0.8, 1.0, 1.2 by default), every router in turn runs
   the same seeded workload (open-loop Poisson arrivals, streaming requests); the routers' order
   rotates from rate to rate, so none always runs first while the machine's load drifts.

Every run is independent: the router is started fresh (`routers.py`), warmed up with a few unique
prompts (connections, code paths), then the simulators are drained and their prefix caches and
counters reset; after the run the router is stopped. A run records the client's view (TTFT, e2e,
output tokens/s, errors, unfinished requests), the servers' counters (prefix-cache hits and queries
in tokens, requests and busy time per server) and the oracle hit ratio (`oracle.py`). The EPP scrapes
metrics every 50 ms x the time scale, i.e. as often in simulated time as the default does in real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp

from epp.tools.bench.harness import Children, cpu_seconds, load_average, tidy_workdir
from epp.tools.bench.oracle import RecordingClient, oracle_hit_ratio, workload_bodies
from epp.tools.bench.quality_slo import (
    SloOptions,
    SloTarget,
    attainment,
    error_buckets,
    prediction_error,
    session_classes,
    session_turns,
    slo_from_light,
    tag_workload,
)
from epp.tools.bench.routers import RouterSpec, RunningRouter, parse_router, start_router
from epp.tools.bench.saturation import Probe, SaturationSearch, search_saturation
from epp.tools.loadgen.client import LoadClient
from epp.tools.loadgen.fleet import SimFleet, fleet_stats
from epp.tools.loadgen.progress import Progress
from epp.tools.loadgen.runner import RunResult, run_closed_loop, run_open_loop
from epp.tools.loadgen.stats import percentile, summarize
from epp.tools.loadgen.workloads import UNIQUE_GROUP, Api, Workload, mixed, multiturn, shared_prefix, zipf
from epp.tools.sim import SimConfig
from epp.tools.sim.config import GPU_CLASSES, GPU_LABEL

__all__ = [
    "ALL_WORKLOADS",
    "EXTRA_WORKLOADS",
    "FLEETS",
    "FULL",
    "SMOKE",
    "WORKLOADS",
    "QualityOptions",
    "QualityResult",
    "RunRecord",
    "Sizing",
    "default_routers",
    "fleet_gpus",
    "fleet_name",
    "make_workload",
    "run_quality",
]

WORKLOADS = ("shared_prefix", "zipf", "mixed", "multiturn")
#: Workloads run only when asked for (`--workloads`): `long_prompt` (P/D: half the requests are long
#: unique prompts with a longer answer, among shared-prefix chat).
EXTRA_WORKLOADS = ("long_prompt",)
ALL_WORKLOADS = (*WORKLOADS, *EXTRA_WORKLOADS)
#: The pod label P/D role filters read (`--pd`).
ROLE_LABEL = "llm-d.ai/role"
#: `--fleet` presets; `mixed`: the first half of the simulators H100-class, the others A100-class.
FLEETS = ("default", "mixed")
log = logging.getLogger(__name__)
Say = Callable[[str], None]


def fleet_gpus(fleet: str, servers: int) -> tuple[str, ...]:
    """Each simulator's hardware class for a `--fleet` preset (() = the default, unlabelled fleet)."""
    if fleet == "default":
        return ()
    if fleet == "mixed":
        fast = (servers + 1) // 2
        return ("h100",) * fast + ("a100",) * (servers - fast)
    raise ValueError(f"unknown fleet {fleet!r}; known: {', '.join(FLEETS)}")


def fleet_name(gpus: Sequence[str]) -> str:
    """`default`, or the classes with their counts in fleet order, e.g. `4xh100+4xa100`."""
    if not gpus:
        return "default"
    return "+".join(f"{list(gpus).count(g)}x{g}" for g in dict.fromkeys(gpus))


@dataclass(frozen=True, slots=True)
class Sizing:
    """How big a benchmark is: the fleet, the time scale, run lengths and the workloads' shapes."""

    servers: int
    kv_blocks: int
    time_scale: float
    duration_s: float  # seconds of arrivals per run
    search_duration_s: float
    multipliers: tuple[float, ...]
    shapes: Mapping[str, Mapping[str, Any]]
    start_rates: Mapping[str, float]  # first guess of the saturation search (requests/s)
    max_probes: int = 6


_FULL_SHAPES: dict[str, dict[str, Any]] = {
    "shared_prefix": {"groups": 32, "system_prompt_len": 1500, "question_len": 150, "output_len": 16},
    "zipf": {
        "groups": 160,
        "system_prompt_len": 1500,
        "question_len": 100,
        "output_len": 16,
        "exponent": 1.1,
    },
    "mixed": {
        "groups": 16,
        "system_prompt_len": 1500,
        "question_len": 150,
        "output_len": 16,
        "unique_share": 0.3,
        "unique_len": 4000,
    },
    "long_prompt": {
        "groups": 16,
        "system_prompt_len": 1500,
        "question_len": 150,
        "output_len": 64,
        "unique_share": 0.5,
        "unique_len": 4000,
    },
    "multiturn": {
        "groups": 8,
        "system_prompt_len": 1000,
        "turns": 6,
        "question_len": 500,
        "output_len": 16,
        "think_time_s": 0.3,
    },
}

FULL = Sizing(
    servers=8,
    kv_blocks=2048,
    time_scale=8.0,
    duration_s=10.0,
    search_duration_s=6.0,
    multipliers=(0.5, 0.8, 1.0, 1.2),
    shapes=_FULL_SHAPES,
    start_rates={"shared_prefix": 36.0, "zipf": 24.0, "mixed": 12.0, "multiturn": 20.0, "long_prompt": 8.0},
    max_probes=4,
)

SMOKE = Sizing(
    servers=4,
    kv_blocks=1024,
    time_scale=4.0,
    duration_s=2.0,
    search_duration_s=2.0,
    multipliers=(1.0,),
    shapes={
        "shared_prefix": {**_FULL_SHAPES["shared_prefix"], "groups": 8, "system_prompt_len": 600},
        "zipf": {**_FULL_SHAPES["zipf"], "groups": 40, "system_prompt_len": 600},
        "mixed": {**_FULL_SHAPES["mixed"], "groups": 8, "system_prompt_len": 600, "unique_len": 1500},
        "long_prompt": {
            **_FULL_SHAPES["long_prompt"],
            "groups": 8,
            "system_prompt_len": 600,
            "unique_len": 3000,
        },
        "multiturn": {
            **_FULL_SHAPES["multiturn"],
            "system_prompt_len": 600,
            "question_len": 100,
            "turns": 3,
            "think_time_s": 0.1,
        },
    },
    start_rates={"shared_prefix": 12.0, "zipf": 12.0, "mixed": 8.0, "multiturn": 12.0, "long_prompt": 4.0},
    max_probes=3,
)


def default_routers(profiles_dir: Path | None = None) -> tuple[str, ...]:
    """Our profiles (recommended.yaml too when it exists), plain Envoy twice, both rivals."""
    ours = ["epp:default", "epp:prefix-heavy", "epp:random", "epp:least-loaded"]
    root = profiles_dir or Path(__file__).resolve().parents[3] / "profiles"
    if (root / "recommended.yaml").is_file() or (Path.cwd() / "profiles" / "recommended.yaml").is_file():
        ours.append("epp:recommended")
    return (*ours, "envoy-rr", "envoy-lr", "sglang", "vllm")


@dataclass(frozen=True, slots=True)
class QualityOptions:
    sizing: Sizing = FULL
    workloads: tuple[str, ...] = WORKLOADS
    routers: tuple[str, ...] = ()  # () = default_routers()
    seed: int = 0
    saturation: Mapping[str, float] = field(default_factory=dict)  # given rates skip the search
    search_with: tuple[str, ...] = ("sglang", "vllm")
    saturation_factor: float = 3.0
    scrape_interval_s: float | None = None  # None: 50 ms x time scale
    ours: str = ""  # the EPP router the goals are checked for ("" = recommended, else default)
    progress: bool | None = None
    smoke: bool = False
    #: install a rival router that is not installed yet (else starting it raises `rivals.NotInstalled`)
    install_rivals: bool = False
    #: P/D fleet: the first `pd_prefill` simulators serve prefill (`--role prefill`), the others decode
    #: (`--role decode`); the EPP learns the roles from `--static-endpoint-labels` (0: an ordinary fleet)
    pd_prefill: int = 0
    #: each simulator's hardware class (`epp sim --gpu`), one per server; () = the default fleet
    gpus: tuple[str, ...] = ()
    #: latency SLOs (issue 20): TTFT SLO attainment, a critical/sheddable mix, the predictor's error
    slo: SloOptions = field(default_factory=SloOptions)

    @property
    def fleet(self) -> str:
        return fleet_name(self.gpus)

    @property
    def router_specs(self) -> list[RouterSpec]:
        return [parse_router(r) for r in (self.routers or default_routers())]

    @property
    def specs_to_start(self) -> list[RouterSpec]:
        """Every router the run may start: the sweep's, and the search's when a saturation rate is missing."""
        search = any(w not in self.saturation for w in self.workloads)
        light = self.slo_light_router
        extra = [parse_router(light)] if light is not None else []
        return [*self.router_specs, *(parse_router(r) for r in self.search_with if search), *extra]

    @property
    def slo_light_router(self) -> str | None:
        """The router of the light-load runs that set the auto TTFT SLOs (None: no such run)."""
        if not any(w not in self.slo.given for w in self.workloads):
            return None
        return self.slo.light_router(self.search_with)

    @property
    def scrape_interval(self) -> float:
        if self.scrape_interval_s is not None:
            return self.scrape_interval_s
        return 0.05 * self.sizing.time_scale


@dataclass(slots=True)
class RunRecord:
    """One router on one workload at one rate (times in ms unless named _s)."""

    workload: str
    router: str
    rate: float
    multiplier: float | None
    purpose: str  # "sweep" or "search"
    requests: int
    ok: int
    errors: int
    unfinished: int
    ttft_p50_ms: float | None
    ttft_p90_ms: float | None
    ttft_p99_ms: float | None
    e2e_p90_ms: float | None
    output_tokens_per_s: float
    hit_ratio: float
    oracle_hit_ratio: float
    balance_requests: float
    balance_busy: float
    duration_s: float
    ttft_p90_ms_by_kind: dict[str, float | None] = field(default_factory=dict)
    error_kinds: dict[str, int] = field(default_factory=dict)
    per_server: dict[str, dict[str, float]] = field(default_factory=dict)
    server_ttft_p50_ms: float | None = None  # as the simulators measured it (no proxy, no network)
    server_ttft_p90_ms: float | None = None
    server_queue_p90_ms: float | None = None
    #: p90 TTFT of the requests sent after the cold-start window (`WARM_AFTER_S`): every run starts with
    #: empty caches, so its first seconds carry the first request of most prompt groups
    ttft_p90_warm_ms: float | None = None
    router_cpu_s: float = 0.0
    fleet_cpu_s: float = 0.0
    load_average: tuple[float, float] = (0.0, 0.0)  # 1-minute load before and after
    #: the workload's TTFT SLO (`--ttft-slo`; None: off) and the share of all requests that met it
    ttft_slo_ms: float | None = None
    slo_attainment: float | None = None
    #: per class (`all`, `critical`, `sheddable`): requests, met, rejected (429), late, failed, attainment
    slo_classes: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the EPP's latency-prediction error (`quality_slo.prediction_error`; {} without a predictor)
    prediction_error: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return self.errors + self.unfinished

    @property
    def shed(self) -> int:
        """Sheddable requests refused with 429 (what `--sheddable` asks the router to do)."""
        return int(self.slo_classes.get("sheddable", {}).get("rejected", 0))

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> RunRecord:
        fields = dict(doc)
        fields["load_average"] = tuple(fields.get("load_average", (0.0, 0.0)))
        return cls(**fields)


@dataclass(slots=True)
class QualityResult:
    options: QualityOptions
    machine: dict[str, Any] = field(default_factory=dict)
    saturation: dict[str, SaturationSearch] = field(default_factory=dict)
    runs: list[RunRecord] = field(default_factory=list)
    total_s: float = 0.0
    tools: dict[str, str] = field(default_factory=dict)
    merged: dict[str, Any] = field(default_factory=dict)
    slo: dict[str, SloTarget] = field(default_factory=dict)  # each workload's TTFT SLO (`--ttft-slo`)

    def merge(self, previous: Mapping[str, Any], source: str = "") -> None:
        """Keep the sweep runs of `previous` (a quality.json) for the routers this run did not measure.

        Rows measured now replace earlier rows of the same workload and router; the earlier runs'
        saturation searches are kept for workloads that were not searched now; where the kept rows
        come from (file, machine, routers) is recorded in `merged`.
        """
        now = {(r.workload, r.router) for r in self.runs if r.purpose == "sweep"}
        kept = [
            RunRecord.from_json(d)
            for d in previous.get("runs", [])
            if d.get("purpose") == "sweep" and (d["workload"], d["router"]) not in now
        ]
        self.runs = kept + self.runs
        for workload, doc in previous.get("saturation", {}).items():
            current = self.saturation.get(workload)
            if current is None or current.best == "given":
                self.saturation[workload] = SaturationSearch.from_json(workload, doc)
        for workload, doc in previous.get("slo", {}).items():
            self.slo.setdefault(workload, SloTarget.from_json(doc))
        self.merged = {
            "file": source,
            "machine": previous.get("machine", {}),
            "routers": sorted({r.router for r in kept}),
            "total_s": previous.get("total_s"),
        }

    def to_json(self) -> dict[str, Any]:
        o = self.options
        return {
            "benchmark": "epp bench quality",
            "smoke": o.smoke,
            "machine": self.machine,
            "tools": self.tools,
            "options": {
                "sizing": asdict(o.sizing),
                "workloads": list(o.workloads),
                "routers": [s.name for s in o.router_specs],
                "seed": o.seed,
                "saturation_factor": o.saturation_factor,
                "search_with": list(o.search_with),
                "scrape_interval_s": o.scrape_interval,
                "ours": o.ours,
                "pd_prefill": o.pd_prefill,
                "fleet": o.fleet,
                "gpus": list(o.gpus),
                "slo": o.slo.to_json(),
            },
            "saturation": {k: v.to_json() for k, v in self.saturation.items()},
            "slo": {k: v.to_json() for k, v in self.slo.items()},
            "runs": [asdict(r) for r in self.runs],
            "total_s": round(self.total_s, 1),
            "merged": self.merged,
        }


# ---- workloads ----------------------------------------------------------------------------------


def make_workload(
    name: str, rate: float, duration_s: float, shape: Mapping[str, Any], seed: int
) -> tuple[Workload, float]:
    """The workload for `rate` requests/s over `duration_s` seconds, and its session arrival rate.

    Single-turn workloads have rate x duration requests; `multiturn` has rate x duration / turns
    sessions that start at rate / turns per second (so requests arrive at about `rate`).
    """
    if rate <= 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    params = dict(shape)
    if name == "multiturn":
        turns = int(params.get("turns", 6))
        sessions = max(1, round(rate * duration_s / turns))
        return multiturn(sessions=sessions, seed=seed, **params), rate / turns
    count = max(1, round(rate * duration_s))
    if name == "shared_prefix":
        groups = int(params.pop("groups", 8))
        per_group = math.ceil(count / groups)
        full = shared_prefix(groups=groups, prompts_per_group=per_group, seed=seed, **params)
        return replace(full, sessions=full.sessions[:count]), rate
    if name == "zipf":
        return zipf(requests=count, seed=seed, **params), rate
    if name in ("mixed", "long_prompt"):
        return replace(mixed(requests=count, seed=seed, **params), name=name), rate
    raise ValueError(f"unknown workload {name!r}; known: {', '.join(ALL_WORKLOADS)}")


# ---- one run --------------------------------------------------------------------------------------


class Bench:
    """The fleet and everything one run needs; `run()` measures one router on one workload and rate."""

    def __init__(self, options: QualityOptions, say: Say, children: Children, workdir: Path) -> None:
        self.options = options
        self.say = say
        self.children = children
        self.workdir = workdir
        sizing = options.sizing
        # KV-cache events (ZMQ on a free port, announced at /kv_event_sources) only when a profile
        # subscribes to them: the other routers then see exactly the fleet they always did
        kv_events = "tcp://127.0.0.1:0" if any(r.needs_kv_events for r in options.router_specs) else None
        configs = [
            SimConfig(
                name=f"sim-{i}",
                time_scale=sizing.time_scale,
                kv_blocks=self.kv_blocks(i),
                seed=options.seed + i,
                kv_events_endpoint=kv_events,
                role=self.role(i),
                gpu=self.gpu(i),
            )
            for i in range(sizing.servers)
        ]
        (workdir / "fleet").mkdir(parents=True, exist_ok=True)
        self.fleet = SimFleet(configs, mode="subprocess", log_dir=workdir / "fleet")
        self.model = SimConfig().model
        self.total_runs = 0
        self.done_runs = 0
        self._oracles: dict[tuple[str, float, int], float] = {}

    async def start(self) -> None:
        sz = self.options.sizing
        if self.options.gpus:
            fleet = f"{self.options.fleet} fleet, " + " ".join(
                f"{m.config.name}={m.config.gpu}({m.config.kv_blocks} blocks)" for m in self.fleet.members
            )
        else:
            fleet = f"{sz.kv_blocks} KV blocks each"
        self.say(f"starting {sz.servers} simulators (time scale {sz.time_scale:g}, {fleet})")
        try:
            await self.fleet.start(timeout=180.0)
        finally:
            self.children.add(m.pid for m in self.fleet.members if m.pid is not None)

    async def stop(self) -> None:
        await self.fleet.stop()

    async def idle_and_reset(self, timeout: float = 60.0) -> None:
        """Wait until no simulator has work left, then drop their caches and restart their counters."""
        deadline = time.monotonic() + timeout
        while True:
            stats = await self.fleet.stats()
            if all(int(s["waiting"]) == 0 and int(s["running"]) == 0 for s in stats):
                break
            if time.monotonic() > deadline:
                self.say("warning: simulators still busy after the run; resetting anyway")
                break
            await asyncio.sleep(0.1)
        await self.fleet.reset()

    def role(self, index: int) -> str:
        """The simulator's P/D role (`both` without `--pd`)."""
        if not self.options.pd_prefill:
            return "both"
        return "prefill" if index < self.options.pd_prefill else "decode"

    def gpu(self, index: int) -> str | None:
        """The simulator's hardware class (None in the default fleet)."""
        return self.options.gpus[index] if self.options.gpus else None

    def kv_blocks(self, index: int) -> int:
        """`--kv-blocks` counts H100-class blocks: another class gets its share of them."""
        gpu = self.gpu(index)
        blocks = self.options.sizing.kv_blocks
        if gpu is None:
            return blocks
        return max(1, round(blocks * GPU_CLASSES[gpu].kv_blocks / GPU_CLASSES["h100"].kv_blocks))

    def endpoint_labels(self) -> list[str]:
        """`host:port=key=value` pod labels: the P/D role (`--pd`), the hardware class (`--gpus`)."""
        labels: list[str] = []
        for m in self.fleet.members:
            if self.options.pd_prefill:
                labels.append(f"{m.address}={ROLE_LABEL}={m.config.role}")
            if m.config.gpu is not None:
                labels.append(f"{m.address}={GPU_LABEL}={m.config.gpu_class.product}")
        return labels

    def epp_args(self) -> list[str]:
        args = ["--refresh-metrics-interval", f"{round(self.options.scrape_interval * 1000)}ms"]
        labels = self.endpoint_labels()
        if labels:
            args += ["--static-endpoint-labels", ",".join(labels)]
        if self.options.smoke:  # one decision process: it starts in half the time (`@N` still wins)
            args += ["--workers", "1"]
        return args + self.options.slo.objectives_flag()

    async def _warm_up(self, client: LoadClient, api: Api) -> None:
        """Unique short prompts through the fresh router until every one succeeds (or give up)."""
        servers = self.options.sizing.servers
        warm = shared_prefix(
            groups=2 * servers,
            prompts_per_group=1,
            system_prompt_len=48,
            question_len=8,
            output_len=2,
            seed=self.options.seed + 7919,
            api=api,
        )
        last = ""
        for _ in range(5):
            run = await run_closed_loop(client, warm, concurrency=servers, duration_limit_s=30.0)
            bad = [r for r in run.results if not r.ok]
            if not bad and not run.unfinished:
                return
            last = bad[0].error or "" if bad else f"{run.unfinished} unfinished"
            await asyncio.sleep(0.5)
        raise RuntimeError(f"the router does not serve the warm-up requests: {last}")

    def _oracle(self, workload: Workload, rate: float, client: RecordingClient) -> float:
        if any(len(s.turns) > 1 for s in workload.sessions):
            return oracle_hit_ratio(workload.api, client.bodies())
        # the same rate can come with another duration (a saturation probe): key on the workload itself
        key = (workload.describe(), rate, len(workload.sessions))
        if key not in self._oracles:
            self._oracles[key] = oracle_hit_ratio(workload.api, workload_bodies(workload, self.model))
        return self._oracles[key]

    @contextlib.asynccontextmanager
    async def router_session(self, spec: RouterSpec, api: Api, name: str) -> AsyncIterator[RunningRouter]:
        """A fresh router in front of the fleet, warmed up, with idle and reset simulators; stopped after."""
        await self.idle_and_reset()
        runs_dir = self.workdir / name
        router = await start_router(
            spec,
            self.fleet.addresses,
            runs_dir,
            epp_args=self.epp_args(),
            say=self.say,
            children=self.children,
            install=self.options.install_rivals,
        )
        try:
            async with LoadClient(router.url, api=api, model=self.model, timeout_s=60.0) as client:
                await self._warm_up(client, api)
            await self.idle_and_reset()
            yield router
        finally:
            await router.stop()
            shutil.rmtree(runs_dir, ignore_errors=True)

    async def run(
        self,
        spec: RouterSpec,
        workload_name: str,
        rate: float,
        *,
        multiplier: float | None,
        purpose: str,
        duration_s: float,
        ttft_slo_ms: float | None = None,
    ) -> RunRecord:
        """One run; with `ttft_slo_ms` its requests carry the SLO headers and it counts who met the SLO."""
        o = self.options
        shape = o.sizing.shapes[workload_name]
        workload, session_rate = make_workload(workload_name, rate, duration_s, shape, o.seed)
        if ttft_slo_ms is not None:
            workload = tag_workload(workload, o.slo, o.seed, ttft_slo_ms)
        # Generous: a run that stalls ends with its unfinished requests counted rather than hanging.
        limit = 3 * duration_s + 20.0 + (60.0 if workload_name == "multiturn" else 0.0)
        t_begin = time.perf_counter()
        name = f"{workload_name}-{rate:g}-{spec.name.replace(':', '-')}"
        async with self.router_session(spec, workload.api, name) as router:
            t_warm = time.perf_counter()
            async with RecordingClient(
                router.url, api=workload.api, model=self.model, timeout_s=limit
            ) as client:
                label = f"[{self.done_runs + 1}/{self.total_runs}] {workload_name} {rate:g}/s {spec.name}"
                if purpose != "sweep":
                    label = f"[{purpose}] {workload_name} {rate:g}/s {spec.name}"
                progress = Progress(workload.num_requests, label, enabled=o.progress)
                load0 = load_average()[0]
                cpu0 = sum(cpu_seconds(p) for p in router.pids)
                fleet0 = self.fleet_cpu()
                metrics_url = getattr(router, "metrics_url", None) if purpose == "sweep" else None
                errors0 = await self._error_buckets(metrics_url)
                mid_scrape = asyncio.create_task(self._error_buckets(metrics_url, o.slo.prediction_after_s))
                try:
                    run = await run_open_loop(
                        client,
                        workload,
                        rate=session_rate,
                        seed=o.seed,
                        duration_limit_s=limit,
                        on_result=lambda r: progress.advance(errors=0 if r.ok else 1),
                    )
                finally:
                    progress.close()
                # the mid-run scrape counts only if it happened before the run ended
                errors_mid = mid_scrape.result() if mid_scrape.done() else None
                mid_scrape.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await mid_scrape
                errors_end = await self._error_buckets(metrics_url)
                router_cpu = sum(cpu_seconds(p) for p in router.pids) - cpu0
                fleet_cpu = self.fleet_cpu() - fleet0
                stats = fleet_stats(await self.fleet.stats())
                t_run = time.perf_counter()
                oracle = self._oracle(workload, rate, client)
        log.info(
            "%s %s %g/s: start + warm-up %.2fs, run %.2fs, oracle + stop %.2fs",
            workload_name,
            spec.name,
            rate,
            t_warm - t_begin,
            t_run - t_warm,
            time.perf_counter() - t_run,
        )
        if purpose == "sweep":
            self.done_runs += 1
        record = _record(workload_name, spec, rate, multiplier, purpose, run, stats, oracle)
        if ttft_slo_ms is not None:
            classes = session_classes(workload, o.slo, o.seed)
            counts = attainment(run.results, session_turns(workload, classes), ttft_slo_ms)
            record.ttft_slo_ms = ttft_slo_ms
            record.slo_attainment = counts["all"].attainment
            record.slo_classes = {k: v.to_json() for k, v in counts.items()}
        record.prediction_error = prediction_error(errors0, errors_mid, errors_end, o.slo.prediction_after_s)
        record.router_cpu_s = round(router_cpu, 2)
        record.fleet_cpu_s = round(fleet_cpu, 2)
        record.load_average = (round(load0, 2), round(load_average()[0], 2))
        return record

    def fleet_cpu(self) -> float:
        return sum(cpu_seconds(m.pid) for m in self.fleet.members if m.pid)

    async def _error_buckets(
        self, url: str | None, after_s: float = 0.0
    ) -> dict[str, list[tuple[float, float]]] | None:
        """The EPP's prediction-error histogram (`quality_slo.error_buckets`), after `after_s` seconds;
        None for a router without an EPP or when /metrics does not answer."""
        if not isinstance(url, str):
            return None
        if after_s > 0:
            await asyncio.sleep(after_s)
        try:
            timeout = aiohttp.ClientTimeout(total=10)
            async with aiohttp.ClientSession(trust_env=False) as http, http.get(url, timeout=timeout) as resp:
                resp.raise_for_status()
                return error_buckets(await resp.text())
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("could not read the EPP's metrics at %s: %s", url, exc)
            return None


#: Seconds from a run's start after which `RunRecord.ttft_p90_warm_ms` counts a request.
WARM_AFTER_S = 3.0


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


def _record(
    workload: str,
    spec: RouterSpec,
    rate: float,
    multiplier: float | None,
    purpose: str,
    run: RunResult,
    stats: Any,
    oracle: float,
) -> RunRecord:
    s = summarize(run)
    by_kind: dict[str, float | None] = {}
    if workload in ("mixed", "long_prompt"):
        for kind, unique in (("shared", False), ("unique", True)):
            values = [
                r.ttft_s
                for r in run.results
                if r.ok and r.ttft_s is not None and (r.group == UNIQUE_GROUP) == unique
            ]
            by_kind[kind] = _ms(percentile(values, 90))
    warm = [r.ttft_s for r in run.results if r.ok and r.ttft_s is not None and r.start_s >= WARM_AFTER_S]
    server_ttft = [float(x) for v in stats.per_server.values() for x in v.get("ttft_s", ())]
    server_queue = [float(x) for v in stats.per_server.values() for x in v.get("queue_s", ())]
    per_server = {
        name: {
            "requests": int(v.get("requests_finished", 0)),
            "busy_s": round(float(v.get("busy_time_s", 0.0)), 3),
            "hit_ratio": round(float(v.get("prefix_cache_hit_ratio", 0.0) or 0.0), 3),
        }
        for name, v in stats.per_server.items()
    }
    return RunRecord(
        workload=workload,
        router=spec.name,
        rate=round(rate, 2),
        multiplier=multiplier,
        purpose=purpose,
        requests=s.requests,
        ok=s.ok,
        errors=s.errors,
        unfinished=s.unfinished,
        ttft_p50_ms=_ms(s.ttft_p50_s),
        ttft_p90_ms=_ms(s.ttft_p90_s),
        ttft_p99_ms=_ms(s.ttft_p99_s),
        e2e_p90_ms=_ms(s.e2e_p90_s),
        output_tokens_per_s=round(s.output_tokens_per_s, 1),
        hit_ratio=round(stats.hit_ratio, 4),
        oracle_hit_ratio=round(oracle, 4),
        balance_requests=round(stats.balance("requests_finished"), 3),
        balance_busy=round(stats.balance("busy_time_s"), 3),
        duration_s=round(s.duration_s, 2),
        ttft_p90_ms_by_kind=by_kind,
        error_kinds=dict(s.error_kinds),
        per_server=per_server,
        server_ttft_p50_ms=_ms(percentile(server_ttft, 50)),
        server_ttft_p90_ms=_ms(percentile(server_ttft, 90)),
        server_queue_p90_ms=_ms(percentile(server_queue, 90)),
        ttft_p90_warm_ms=_ms(percentile(warm, 90)),
    )


# ---- the benchmark ---------------------------------------------------------------------------------


async def _saturation(bench: Bench, workload: str, rivals: Sequence[RouterSpec]) -> SaturationSearch:
    o = bench.options

    def prober(spec: RouterSpec) -> Probe:
        async def probe(rate: float) -> RunRecord:
            return await bench.run(
                spec, workload, rate, multiplier=None, purpose="search", duration_s=o.sizing.search_duration_s
            )

        return probe

    return await search_saturation(
        workload,
        [(spec.name, prober(spec)) for spec in rivals],
        start=o.sizing.start_rates[workload],
        factor=o.saturation_factor,
        max_probes=o.sizing.max_probes,
        say=bench.say,
    )


async def _ttft_slo(
    bench: Bench, workload: str, saturation_rate: float
) -> tuple[SloTarget | None, RunRecord | None]:
    """The workload's TTFT SLO (None with `--ttft-slo off`): fixed, known, or `factor` x the p90 TTFT of
    a light-load run (`light` x the saturation rate, the sweep's duration) of the light-load router;
    and that run's record."""
    o = bench.options
    slo = o.slo
    if not slo.enabled:
        return None, None
    fixed = slo.fixed_ms
    if fixed is not None:
        return SloTarget(workload, fixed, "fixed"), None
    if workload in slo.given:
        return SloTarget(workload, slo.given[workload], "given"), None
    router = o.slo_light_router
    if router is None:
        raise ValueError("no router for the light-load run of --ttft-slo auto")
    spec = parse_router(router)
    rate = round(saturation_rate * slo.light, 2)
    record = await bench.run(
        spec, workload, rate, multiplier=slo.light, purpose="slo", duration_s=o.sizing.duration_s
    )
    target = SloTarget(
        workload,
        slo_from_light(record.ttft_p90_ms, slo.factor),
        "auto",
        light_router=spec.name,
        light_rate=rate,
        light_p90_ms=record.ttft_p90_ms,
        factor=slo.factor,
    )
    return target, record


async def run_quality(
    options: QualityOptions,
    say: Say = print,
    *,
    children: Children | None = None,
    on_run: Callable[[RunRecord, QualityResult], None] | None = None,
) -> QualityResult:
    """Run the benchmark; everything started is stopped before this returns or raises.

    `on_run(record, result)` is called after every sweep run with the result so far.
    """
    from epp.tools.bench.rivals import TOOLS, installed_tool

    children = children if children is not None else Children()
    specs = options.router_specs
    search_specs = [parse_router(r) for r in options.search_with]
    missing = [w for w in options.workloads if w not in options.saturation]
    if missing and not search_specs:
        raise ValueError(f"no saturation rate for {', '.join(missing)} and no router to search with")
    result = QualityResult(options=options)
    begin = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="epp-bench-quality-"))
    bench = Bench(options, say, children, workdir)
    bench.total_runs = len(options.workloads) * len(options.sizing.multipliers) * len(specs)
    ok = False
    try:
        await bench.start()
        for workload in options.workloads:
            if workload in options.saturation:
                search = SaturationSearch.given(workload, options.saturation[workload])
            else:
                search = await _saturation(bench, workload, search_specs)
                for record in search.records:
                    result.runs.append(record)
            search.fleet = options.fleet
            result.saturation[workload] = search
            fleet = f" on the {options.fleet} fleet" if options.gpus else ""
            say(f"{workload}: saturation rate {search.rate:g}/s{fleet} ({search.describe()})")
            target, light = await _ttft_slo(bench, workload, search.rate)
            if light is not None:
                result.runs.append(light)
            if target is not None:
                result.slo[workload] = target
                say(f"{workload}: TTFT SLO {target.describe()}")
            slo_ms = target.ttft_ms if target is not None else None
            for step, multiplier in enumerate(options.sizing.multipliers):
                rate = round(search.rate * multiplier, 2)
                # rotate the order from rate to rate: no router always runs first (or last) while the
                # machine's load drifts
                shift = (step + options.workloads.index(workload)) % len(specs)
                for spec in specs[shift:] + specs[:shift]:
                    record = await bench.run(
                        spec,
                        workload,
                        rate,
                        multiplier=multiplier,
                        purpose="sweep",
                        duration_s=options.sizing.duration_s,
                        ttft_slo_ms=slo_ms,
                    )
                    result.runs.append(record)
                    if on_run is not None:
                        on_run(record, result)
        ok = True
    finally:
        await bench.stop()
        tidy_workdir(workdir, ok, say)
    for name, tool in TOOLS.items():
        if installed_tool(name) is not None:
            result.tools[name] = tool.requirement
    result.total_s = time.perf_counter() - begin
    return result
