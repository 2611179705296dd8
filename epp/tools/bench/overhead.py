"""`epp bench overhead`: what the EPP costs, alone and in the request path, per request and per token.

Part 1, the EPP alone (`epp.tools.bench.extproc`'s Envoy-shaped gRPC load client): decisions/s (closed loop,
32 streams) and routing latency at a fixed rate (open loop) of the real ext_proc server with the default
profile over 64 endpoints whose metrics change every 50 ms, against a no-op grpc.aio ext_proc server
that sends the same replies without parsing or scheduling. Each server runs in its own process pinned
to one CPU with `taskset` (when there are two CPUs; the client then runs on the other one).

Part 2, in the request path, with streamed tokens: 4 instant-answer model servers (`epp.tools.bench.instant`:
N tokens per response, N = the request's `max_tokens`, one SSE event per HTTP chunk and per write,
`--token-interval-ms` apart) behind each router in turn — `epp:default` (the EPP daemon with the default
profile, TLS to Envoy as deployed, behind the Envoy config we ship: the response body ON_DEMAND plus the
observer filter; the "after"), `epp-duplex:default` (the same daemon behind upstream's Envoy config,
FULL_DUPLEX_STREAMED: every token crosses the EPP and waits on it; the "before"), Envoy alone
(`ROUND_ROBIN`), `sglang-router` (`cache_aware`) — and `direct` (the client spreads requests over the
servers itself). For each token count (`--tokens`), with and without `stream_options.include_usage`
(`--usage`), at each rate (`--rates`, open-loop Poisson arrivals): TTFT (time to the first token event,
measured by a lean keep-alive client that also counts the token events it gets) and the CPU time per
request of each process of the router (the EPP daemon and Envoy separately). CPU per streamed token is
the slope between token counts: (CPU/request at 512 tokens - at 1) / 511. Each measurement runs warm-up
arrivals and lets them drain first, then reads the CPU counters around exactly the measured arrivals;
the EPP's /metrics is read before and after it: `epp_response_body_total{path}` says who read the
response bodies, `inference_objective_output_tokens` whether the usage reached the EPP. The routers are
measured back to back for each (rate, tokens, usage), in rounds, so slow drifts of the machine's load hit
them all alike.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp

from epp.tools.bench.harness import (
    Children,
    load_average,
    machine_info,
    run_async_main,
    tidy_workdir,
    tree_cpu_seconds,
    write_report,
)
from epp.tools.bench.instant import LeanClient, Timing, completion_request
from epp.tools.bench.rivals import check_tools
from epp.tools.bench.routers import RunningRouter, parse_router, rival_tools, start_router
from epp.tools.extras import require
from epp.tools.loadgen.runner import poisson_arrivals
from epp.tools.loadgen.stats import percentile

__all__ = ["OverheadOptions", "OverheadResult", "main", "parse_epp_metrics", "run_overhead"]

Say = Callable[[str], None]
DIRECT = "direct"
ENVOY = "envoy-rr"
SGLANG = "sglang-router"
#: (router, output tokens, include_usage, rate)
Key = tuple[str, int, bool, float]

# the goals of the per-token work (docs/benchmarks.md, "Overhead in the request path")
GOAL_TOKEN_US_NO_USAGE = 1.0  # "~0": under a microsecond of EPP CPU per streamed token
GOAL_TOKEN_US_USAGE = 30.0
GOAL_CPU_VS_SGLANG = 2.0
GOAL_TTFT_ADDED_MS = 1.0
GOAL_REF_TOKENS = 128
#: seconds to let the routers finish the last responses of a warm-up or measurement
SETTLE_S = 0.3


@dataclass(frozen=True, slots=True)
class OverheadOptions:
    smoke: bool = False
    # part 1
    endpoints: int = 64
    concurrency: int = 32
    ext_rate: float = 500.0
    ext_duration_s: float = 10.0
    ext_warmup_s: float = 2.0
    # part 2
    servers: int = 4
    # 20/s: at 512 tokens that is 10k tokens/s, which upstream's config (every token through the EPP,
    # ~110 µs of EPP + Envoy CPU each) still carries on 2 cores next to the servers and the client
    rates: tuple[float, ...] = (20.0,)
    tokens: tuple[int, ...] = (1, 128, 512)
    usage: tuple[bool, ...] = (False, True)
    token_interval_ms: float = 2.0
    routers: tuple[str, ...] = (ENVOY, "epp:default", "epp-duplex:default", "sglang")
    epp_args: tuple[str, ...] = ()  # extra daemon flags of the `epp` routers
    duration_s: float = 10.0
    warmup_s: float = 1.0
    idle_s: float = 5.0
    rounds: int = 1
    seed: int = 0
    parts: tuple[int, ...] = (1, 2)
    #: install a rival router that is not installed yet (else starting it raises `rivals.NotInstalled`)
    install_rivals: bool = False


SMOKE = OverheadOptions(
    smoke=True,
    ext_duration_s=1.0,
    ext_warmup_s=0.5,
    rates=(100.0,),
    tokens=(1, 16),
    duration_s=1.0,
    warmup_s=0.5,
    idle_s=1.0,
    rounds=1,
)


def _r(v: float | None, digits: int = 3) -> float | None:
    return None if v is None else round(v, digits)


@dataclass(slots=True)
class HttpRun:
    """One (router, tokens, usage, rate) cell, pooled over rounds."""

    router: str
    rate: float
    tokens: int = 1
    usage: bool = False
    sent: int = 0
    completed: int = 0
    errors: int = 0
    wrong_tokens: int = 0  # answered 200 with another number of token events than asked
    ttft_ms: list[float] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=dict)  # by process role (epp, envoy, router)
    idle: dict[str, float] = field(default_factory=dict)  # CPU seconds per second of each one, no requests
    epp: dict[str, float] = field(default_factory=dict)  # EPP metrics counted in the measured windows
    seconds: float = 0.0

    @property
    def key(self) -> Key:
        return (self.router, self.tokens, self.usage, self.rate)

    def p(self, q: float) -> float | None:
        return percentile(self.ttft_ms, q)

    def cpu_us(self, net: bool = True) -> dict[str, float]:
        """CPU microseconds per request sent, by process role; `net`: less what the process spends idle
        (scrape loops, health checks) over the same time."""
        if not self.sent:
            return {}
        return {
            role: 1e6 * (s - (self.idle.get(role, 0.0) * self.seconds if net else 0.0)) / self.sent
            for role, s in self.cpu_s.items()
        }

    def total_cpu_us(self, net: bool = True) -> float | None:
        cpu = self.cpu_us(net)
        return sum(cpu.values()) if cpu else None

    def summary(self) -> dict[str, Any]:
        total = self.total_cpu_us()
        return {
            "router": self.router,
            "rate": self.rate,
            "tokens": self.tokens,
            "usage": self.usage,
            "sent": self.sent,
            "completed": self.completed,
            "errors": self.errors,
            "wrong_tokens": self.wrong_tokens,
            "ttft_p50_ms": _r(self.p(50)),
            "ttft_p90_ms": _r(self.p(90)),
            "ttft_p99_ms": _r(self.p(99)),
            "cpu_us_per_request": {role: round(v, 1) for role, v in self.cpu_us().items()},
            "router_cpu_us_per_request": _r(total, 1),
            "cpu_us_per_request_raw": {role: round(v, 1) for role, v in self.cpu_us(net=False).items()},
            "idle_cpu_share": {role: round(v, 4) for role, v in self.idle.items()},
            "epp_metrics": dict(self.epp),
            "seconds": round(self.seconds, 2),
        }


def _is_epp(router: str) -> bool:
    return router.startswith("epp")


@dataclass(slots=True)
class OverheadResult:
    options: OverheadOptions
    machine: dict[str, Any] = field(default_factory=dict)
    ext: list[dict[str, Any]] = field(default_factory=list)  # part 1 (extproc LoadResult summaries)
    http: dict[Key, HttpRun] = field(default_factory=dict)  # part 2, pooled over rounds
    idle: dict[str, dict[str, float]] = field(default_factory=dict)  # router -> process -> CPU s/s idle
    total_s: float = 0.0

    @property
    def routers(self) -> list[str]:
        return list(dict.fromkeys(k[0] for k in self.http))

    def added(
        self, router: str, tokens: int, usage: bool, rate: float, q: float, base: str = ENVOY
    ) -> float | None:
        """TTFT percentile `q` of `router` minus `base`'s in the same cell."""
        mine, ref = self.http.get((router, tokens, usage, rate)), self.http.get((base, tokens, usage, rate))
        if mine is None or ref is None:
            return None
        a, b = mine.p(q), ref.p(q)
        return None if a is None or b is None else a - b

    def cpu(
        self, router: str, tokens: int, usage: bool, rate: float, role: str | None = None, net: bool = True
    ) -> float | None:
        """CPU µs per request of one process of `router` (all of them when `role` is None), net of idle."""
        run = self.http.get((router, tokens, usage, rate))
        if run is None:
            return None
        return run.total_cpu_us(net) if role is None else run.cpu_us(net).get(role)

    def per_token(self, router: str, usage: bool, rate: float, role: str | None, upto: int) -> float | None:
        """CPU µs per streamed token of a process: the slope from the fewest tokens measured to `upto`."""
        low = min(self.options.tokens)
        if upto <= low:
            return None
        a, b = self.cpu(router, low, usage, rate, role), self.cpu(router, upto, usage, rate, role)
        return None if a is None or b is None else (b - a) / (upto - low)

    def per_token_rows(self) -> list[dict[str, Any]]:
        rows = []
        low = min(self.options.tokens)
        for router in self.routers:
            if router == DIRECT:
                continue
            for usage in self.options.usage:
                for rate in self.options.rates:
                    run = self.http.get((router, low, usage, rate))
                    roles = sorted(run.cpu_s) if run is not None else []
                    for role in [*roles, None] if len(roles) > 1 else roles:
                        slopes = {
                            f"{n}v{low}": _r(self.per_token(router, usage, rate, role, n), 2)
                            for n in self.options.tokens
                            if n > low
                        }
                        rows.append({"router": router, "usage": usage, "rate": rate,
                                     "process": role or "total", "cpu_us_per_token": slopes})  # fmt: skip
        return rows

    def ext_ratio(self) -> tuple[float | None, float | None]:
        """(EPP / no-op decisions per second, no-op / EPP server CPU per decision), closed loop."""
        closed = {e["server"]: e for e in self.ext if e["mode"] == "closed"}
        if "epp" not in closed or "noop" not in closed:
            return None, None
        e, n = closed["epp"], closed["noop"]
        thr = e["throughput"] / n["throughput"] if n["throughput"] else None
        cpu = None
        if e.get("cpu_us_per_request") and n.get("cpu_us_per_request"):
            cpu = n["cpu_us_per_request"] / e["cpu_us_per_request"]
        return thr, cpu

    def goals(self) -> list[dict[str, Any]]:
        """The goals of the per-token work for every EPP router, usage and rate (met: None when a number
        is missing, e.g. sglang-router was not measured)."""
        o = self.options
        low, top = min(o.tokens), max(o.tokens)
        ref = GOAL_REF_TOKENS if GOAL_REF_TOKENS in o.tokens else top
        out: list[dict[str, Any]] = []
        epps = [r for r in self.routers if _is_epp(r)]
        for router, rate, usage in itertools.product(epps, o.rates, o.usage):
            mine, theirs = self.cpu(router, ref, usage, rate), self.cpu(SGLANG, ref, usage, rate)
            mine_raw = self.cpu(router, ref, usage, rate, net=False)
            theirs_raw = self.cpu(SGLANG, ref, usage, rate, net=False)
            per_token_limit = GOAL_TOKEN_US_USAGE if usage else GOAL_TOKEN_US_NO_USAGE
            checks = [
                ("epp_cpu_us_per_token", f"{top}v{low}", self.per_token(router, usage, rate, "epp", top),
                 per_token_limit),
                ("cpu_vs_sglang", f"{ref} tokens", mine / theirs if mine is not None and theirs else None,
                 GOAL_CPU_VS_SGLANG),
                ("cpu_vs_sglang_raw", f"{ref} tokens",
                 mine_raw / theirs_raw if mine_raw is not None and theirs_raw else None, GOAL_CPU_VS_SGLANG),
                *(("ttft_p50_added_ms", f"{n} tokens", self.added(router, n, usage, rate, 50),
                   GOAL_TTFT_ADDED_MS) for n in o.tokens),
            ]  # fmt: skip
            for name, at, value, limit in checks:
                out.append({"router": router, "rate": rate, "usage": usage, "goal": name, "at": at,
                            "value": _r(value), "limit": limit,
                            "met": None if value is None else value <= limit})  # fmt: skip
        return out

    def to_json(self) -> dict[str, Any]:
        thr, cpu = self.ext_ratio()
        return {
            "benchmark": "epp bench overhead",
            "smoke": self.options.smoke,
            "machine": self.machine,
            "options": asdict(self.options),
            "ext_proc": self.ext,
            "ext_proc_ratio": {"throughput": thr, "cpu_per_decision": cpu},
            "http": [run.summary() for run in self.http.values()],
            "idle_cpu_share": self.idle,
            "per_token": self.per_token_rows(),
            "goals": self.goals(),
            "total_s": round(self.total_s, 1),
        }


# ---- part 1: the EPP alone -------------------------------------------------------------------------


async def _part1(options: OverheadOptions, say: Say, children: Children) -> list[dict[str, Any]]:
    from epp.tools.bench import extproc as xp

    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    server_cpu = 0 if ncpu >= 2 else None
    exchanges = xp.make_exchanges(1024, 2000, 16, options.seed)
    before = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    out: list[dict[str, Any]] = []
    pinned = "taskset" if shutil.which("taskset") else "sched_setaffinity"
    say(f"part 1: ext_proc servers on cpu {server_cpu} ({pinned}), client on cpu {1 if ncpu >= 2 else 'any'}")
    try:
        if ncpu >= 2 and before is not None:
            os.sched_setaffinity(0, {1})
        for kind in ("noop", "epp"):
            extra = ["--endpoints", str(options.endpoints), "--churn", "0.05"]
            server = xp.ServerProcess(kind, server_cpu, extra)
            children.add([server.proc.pid])
            try:
                (port,) = await server.ports()
                pid = server.proc.pid
                closed = await xp.run_closed_loop(
                    port,
                    exchanges,
                    options.concurrency,
                    options.ext_duration_s,
                    options.ext_warmup_s,
                    kind,
                    pid,
                )
                opened = await xp.run_open_loop(
                    port, exchanges, options.ext_rate, options.ext_duration_s, options.ext_warmup_s, kind, pid
                )
            finally:
                await asyncio.to_thread(server.stop)
            for r in (closed, opened):
                s = r.summary()
                out.append(s)
                say(
                    f"  {kind} {r.mode}: {s['throughput']:.0f}/s, p50 {s['p50_ms']:.2f} ms, "
                    f"p99 {s['p99_ms']:.2f} ms, {s['cpu_us_per_request']} us CPU/decision, errors {r.errors}"
                )
    finally:
        if before is not None:
            os.sched_setaffinity(0, before)
    return out


# ---- part 2: through the routers --------------------------------------------------------------------


class _Backends:
    """The instant servers, one subprocess (`python -m epp.tools.bench.instant`), stopped by PID."""

    def __init__(self, count: int, workdir: Path, token_interval_ms: float) -> None:
        self.count = count
        self.token_interval_ms = token_interval_ms
        self.port_file = workdir / "instant.ports"
        self.proc: subprocess.Popen[bytes] | None = None
        self.addresses: list[str] = []

    async def start(self, children: Children, timeout: float = 30.0) -> None:
        cmd = [sys.executable, "-m", "epp.tools.bench.instant", "--count", str(self.count)]
        cmd += ["--port-file", str(self.port_file), "--token-interval-ms", f"{self.token_interval_ms:g}"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
        children.add([self.proc.pid])
        deadline = time.monotonic() + timeout
        while not self.port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the instant servers did not start")
            await asyncio.sleep(0.05)
        self.addresses = [f"127.0.0.1:{p}" for p in self.port_file.read_text().split(",")]

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                await asyncio.to_thread(proc.wait, 5)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait, 5)


_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{([^}]*)\})?\s+(\S+)", re.MULTILINE)
_PATH_LABEL = re.compile(r'path="([^"]*)"')
_EPP_SERIES = {
    "inference_objective_request_total": "requests",
    "inference_objective_request_duration_seconds_count": "completed",
    "inference_objective_request_ttft_seconds_count": "ttft",
    "inference_objective_output_tokens_count": "usage_responses",
    "inference_objective_output_tokens_sum": "usage_tokens",
}


def parse_epp_metrics(text: str) -> dict[str, float]:
    """The EPP series part 2 reports, summed over their labels: `requests` (routed), `completed` and
    `ttft` (responses the EPP metered as complete, and with a time to first byte), `usage_responses` and
    `usage_tokens` (responses whose usage the EPP recorded, and their completion tokens), and
    `body:<path>` for `epp_response_body_total{path}`."""
    out: dict[str, float] = {}
    for name, labels, value in _SAMPLE.findall(text):
        key = _EPP_SERIES.get(name)
        if name == "epp_response_body_total":
            found = _PATH_LABEL.search(labels or "")
            key = f"body:{found.group(1) if found else ''}"
        if key is not None:
            out[key] = out.get(key, 0.0) + float(value)
    return out


def _diff(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}


class _Target:
    """Where requests go: one router (one client) or the servers directly (round-robin over clients)."""

    def __init__(self, name: str, addresses: Sequence[str], router: RunningRouter | None) -> None:
        self.name = name
        self.router = router
        self.hosts = [router.url.removeprefix("http://")] if router is not None else list(addresses)
        self.clients = []
        for hp in self.hosts:
            host, _, port = hp.rpartition(":")
            self.clients.append(LeanClient(host, int(port)))
        self.requests: list[bytes] = []
        self.use(1, False)
        self._next = 0
        self._http: aiohttp.ClientSession | None = None

    def use(self, tokens: int, usage: bool) -> None:
        """Send requests for `tokens` streamed tokens, asking for the usage event when `usage`."""
        self.requests = [completion_request(hp, max_tokens=tokens, include_usage=usage) for hp in self.hosts]

    def send(self) -> Awaitable[Timing]:
        i = self._next
        self._next = (i + 1) % len(self.clients)
        return self.clients[i].request(self.requests[i])

    @property
    def processes(self) -> dict[str, int]:
        return self.router.processes if self.router is not None else {}

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of each process of the router (with their children)."""
        return {role: tree_cpu_seconds(pid) for role, pid in self.processes.items()}

    async def epp_metrics(self) -> dict[str, float] | None:
        """The EPP's series (`parse_epp_metrics`), None for a router without an EPP."""
        url = getattr(self.router, "metrics_url", None)
        if not isinstance(url, str):
            return None
        if self._http is None:
            self._http = aiohttp.ClientSession(trust_env=False)
        async with self._http.get(url, timeout=aiohttp.ClientTimeout(total=10)) as resp:
            resp.raise_for_status()
            return parse_epp_metrics(await resp.text())

    async def close(self) -> None:
        for c in self.clients:
            await c.close()
        if self._http is not None:
            await self._http.close()


async def _arrivals(
    rate: float, seconds: float, seed: int, one: Callable[[], Coroutine[Any, Any, None]]
) -> int:
    """Poisson arrivals at `rate` for `seconds`, each running `one()`; returns when all are done."""
    arrivals = [
        at for at in poisson_arrivals(max(1, int(seconds * rate * 1.5) + 10), rate, seed) if at < seconds
    ]
    tasks: list[asyncio.Task[None]] = []
    start = time.perf_counter()
    for at in arrivals:
        delay = start + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    return len(arrivals)


async def _measure(target: _Target, options: OverheadOptions, seed: int, run: HttpRun) -> None:
    """Warm-up arrivals (drained), then the measured ones with the CPU and EPP counters read around them."""
    timeout = 10.0 + 2 * run.tokens * options.token_interval_ms / 1000

    async def send(measure: bool) -> None:
        try:
            async with asyncio.timeout(timeout):
                t = await target.send()
        except (OSError, TimeoutError, ValueError):
            run.errors += measure
            return
        if not measure:
            return
        if t.status != 200 or t.ttft_s is None:
            run.errors += 1
        elif t.tokens != run.tokens:
            run.wrong_tokens += 1
        else:
            run.completed += 1
            run.ttft_ms.append(t.ttft_s * 1000)

    async def warm() -> None:
        await send(False)

    async def measured() -> None:
        await send(True)

    target.use(run.tokens, run.usage)
    await _arrivals(run.rate, options.warmup_s, seed + 7919, warm)
    # the router finishes a response a moment after its last byte reached the client (the EPP meters it
    # when the ext_proc streams end, an observer's usage may come later): let that settle on both sides
    await asyncio.sleep(SETTLE_S)
    before = await target.epp_metrics()
    cpu0 = target.cpu()
    start = time.perf_counter()
    run.sent += await _arrivals(run.rate, options.duration_s, seed, measured)
    await asyncio.sleep(SETTLE_S)
    cpu1 = target.cpu()
    run.seconds += time.perf_counter() - start
    for role, seconds in cpu1.items():
        run.cpu_s[role] = run.cpu_s.get(role, 0.0) + seconds - cpu0.get(role, seconds)
    if before is not None:
        after = await target.epp_metrics()
        for k, v in _diff(after or {}, before).items():
            run.epp[k] = run.epp.get(k, 0.0) + v


def _cells(options: OverheadOptions) -> Iterable[tuple[float, int, bool]]:
    for rate in options.rates:
        for tokens in options.tokens:
            for usage in options.usage:
                yield rate, tokens, usage


async def _part2(options: OverheadOptions, say: Say, children: Children, result: OverheadResult) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="epp-bench-overhead-"))
    backends = _Backends(options.servers, workdir, options.token_interval_ms)
    targets: list[_Target] = []
    ok = False
    try:
        await backends.start(children)
        targets.append(_Target(DIRECT, backends.addresses, None))
        for name in options.routers:
            spec = parse_router(name)
            router = await start_router(
                spec,
                backends.addresses,
                workdir / spec.name.replace(":", "-"),
                epp_args=options.epp_args,
                children=children,
                install=options.install_rivals,
            )
            targets.append(_Target(spec.name, backends.addresses, router))
        say(
            f"part 2: {options.servers} instant servers, a token every {options.token_interval_ms:g} ms; "
            f"{', '.join(t.name for t in targets)}"
        )
        for t in targets:  # warm-up: connections, code paths
            for _ in range(50):
                await t.send()
        for t in targets:  # what each process spends with no requests (scrape loops, health checks)
            if t.processes:
                cpu0 = t.cpu()
                await asyncio.sleep(options.idle_s)
                result.idle[t.name] = {role: (v - cpu0[role]) / options.idle_s for role, v in t.cpu().items()}
        say(f"  idle CPU, % of a core: {_idle_text(result)}")
        for rnd in range(options.rounds):
            for rate, tokens, usage in _cells(options):
                for t in targets:
                    run = result.http.get((t.name, tokens, usage, rate))
                    if run is None:
                        run = HttpRun(t.name, rate, tokens, usage, idle=result.idle.get(t.name, {}))
                        result.http[run.key] = run
                    await _measure(t, options, options.seed + rnd, run)
                say(f"  round {rnd + 1} {rate:g}/s, {tokens} tokens, usage {'on' if usage else 'off'}: "
                    + "; ".join(_progress(result.http[t.name, tokens, usage, rate]) for t in targets)
                    + f" (load {load_average()[0]:.1f})")  # fmt: skip
        ok = True
    finally:
        for t in targets:
            await t.close()
            if t.router is not None:
                await t.router.stop()
        await backends.stop()
        tidy_workdir(workdir, ok, say)


def _progress(run: HttpRun) -> str:
    cpu = "+".join(f"{role} {us:.0f}" for role, us in run.cpu_us().items())
    bad = f" ERR {run.errors}/{run.wrong_tokens}" if run.errors or run.wrong_tokens else ""
    return f"{run.router} p50 {_fmt(run.p(50))} ms{f' cpu {cpu} us' if cpu else ''}{bad}"


def _fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


async def run_overhead(
    options: OverheadOptions, say: Say = print, children: Children | None = None
) -> OverheadResult:
    children = children if children is not None else Children()
    result = OverheadResult(options=options)
    begin = time.perf_counter()
    if 1 in options.parts:
        result.ext = await _part1(options, say, children)
    if 2 in options.parts:
        await _part2(options, say, children, result)
    result.total_s = time.perf_counter() - begin
    return result


# ---- report ----------------------------------------------------------------------------------------


def _us(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def _paths(run: HttpRun) -> str:
    paths = [(k.removeprefix("body:"), v) for k, v in sorted(run.epp.items()) if k.startswith("body:")]
    return ", ".join(f"{p} {v:.0f}" for p, v in paths) or ("-" if not _is_epp(run.router) else "none counted")


def _part1_markdown(result: OverheadResult) -> list[str]:
    o = result.options
    lines = [
        f"## The EPP alone ({o.endpoints} endpoints, default profile, one pinned core)",
        "",
        "| server | load | decisions/s | p50 ms | p90 ms | p99 ms | server CPU/decision | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in result.ext:
        load = f"closed, {e['concurrency']} streams" if e["mode"] == "closed" else f"open {e['rate']:g}/s"
        cpu = e.get("cpu_us_per_request")
        lines.append(
            f"| {e['server']} | {load} | {e['throughput']:.0f} | {e['p50_ms']:.2f} | {e['p90_ms']:.2f} | "
            f"{e['p99_ms']:.2f} | {'-' if cpu is None else f'{cpu:.0f} us'} | {e['errors']} |"
        )
    thr, cpu = result.ext_ratio()
    return [
        *lines,
        "",
        f"EPP / no-op decisions per second: **{_fmt(thr)}** (goal >= 0.7); by server CPU per decision: "
        f"{_fmt(cpu)}.",
        "",
    ]


def _cell_table(result: OverheadResult, tokens: int) -> list[str]:
    lines = [
        f"### {tokens} output token{'s' if tokens != 1 else ''} per request",
        "",
        "| rate/s | usage | router | requests | errors | TTFT p50 ms | p90 ms | p99 ms | "
        "p50 over envoy-rr ms | EPP CPU/req | Envoy CPU/req | sglang-router CPU/req | total CPU/req | "
        "total with idle | body read by (EPP metric) | EPP metered: completed / TTFT / usage |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    runs = [r for r in result.http.values() if r.tokens == tokens]
    order = {name: i for i, name in enumerate(result.routers)}
    for run in sorted(runs, key=lambda r: (r.rate, r.usage, order[r.router])):
        cpu = run.cpu_us()
        added = (
            result.added(run.router, tokens, run.usage, run.rate, 50)
            if run.router not in (ENVOY, DIRECT)
            else None
        )
        seen = " / ".join(f"{run.epp.get(k, 0):.0f}" for k in ("completed", "ttft", "usage_responses"))
        seen = seen if _is_epp(run.router) else ""
        paths = _paths(run) if _is_epp(run.router) else ""
        lines.append(
            f"| {run.rate:g} | {'on' if run.usage else 'off'} | {run.router} | {run.completed} | "
            f"{run.errors + run.wrong_tokens} | {_fmt(run.p(50))} | {_fmt(run.p(90))} | {_fmt(run.p(99))} | "
            f"{_fmt(added) if added is not None else ''} | {_us(cpu.get('epp'))} | {_us(cpu.get('envoy'))} | "
            f"{_us(cpu.get('router'))} | {_us(run.total_cpu_us())} | {_us(run.total_cpu_us(net=False))} | "
            f"{paths} | {seen} |"
        )
    return [*lines, ""]


def _per_token_table(result: OverheadResult) -> list[str]:
    o = result.options
    low = min(o.tokens)
    highs = [n for n in o.tokens if n > low]
    if not highs:
        return []
    lines = [
        f"### CPU per streamed token (µs; slope of CPU/request from {low} token{'s' if low != 1 else ''})",
        "",
        f"| rate/s | router | usage | process | {' | '.join(f'{n} vs {low}' for n in highs)} |",
        f"|---|---|---|---|{'---|' * len(highs)}",
    ]
    for row in result.per_token_rows():
        slopes = " | ".join(_fmt(row["cpu_us_per_token"].get(f"{n}v{low}")) for n in highs)
        lines.append(
            f"| {row['rate']:g} | {row['router']} | {'on' if row['usage'] else 'off'} | {row['process']} | "
            f"{slopes} |"
        )
    return [*lines, ""]


_GOAL_TEXT = {
    "epp_cpu_us_per_token": "EPP CPU per streamed token",
    "cpu_vs_sglang": "(EPP + Envoy) / sglang-router CPU per request",
    "cpu_vs_sglang_raw": "the same with their idle CPU counted",
    "ttft_p50_added_ms": "TTFT p50 added over Envoy alone",
}


def _goals_block(result: OverheadResult) -> list[str]:
    goals = result.goals()
    if not goals:
        return []
    lines = [
        "### Against the goals",
        "",
        f"Goals: EPP CPU per streamed token ~0 without usage (< {GOAL_TOKEN_US_NO_USAGE:g} µs) and <= "
        f"{GOAL_TOKEN_US_USAGE:g} µs with usage; EPP + Envoy CPU per request at {GOAL_REF_TOKENS} tokens <= "
        f"{GOAL_CPU_VS_SGLANG:g}x sglang-router's; TTFT p50 added by the EPP over Envoy alone <= "
        f"{GOAL_TTFT_ADDED_MS:g} ms. `epp:` is the Envoy config we ship, `epp-duplex:` upstream's (before).",
        "",
    ]
    for name, text in _GOAL_TEXT.items():
        for router in (r for r in result.routers if _is_epp(r)):
            for rate in result.options.rates:
                mine = [g for g in goals if g["goal"] == name and g["router"] == router and g["rate"] == rate]
                parts = [
                    f"usage {'on' if g['usage'] else 'off'}"
                    + (f", {g['at']}" if name == "ttft_p50_added_ms" else "")
                    + f": **{_fmt(g['value'])}** ({_verdict(g['met'])}, limit {g['limit']:g})"
                    for g in mine
                ]
                at = f" at {mine[0]['at']}" if mine and name != "ttft_p50_added_ms" else ""
                lines.append(f"- {text}, {router}, {rate:g}/s{at}: " + "; ".join(parts))
    return [*lines, ""]


def _idle_text(result: OverheadResult) -> str:
    return "; ".join(
        f"{name} " + ", ".join(f"{role} {100 * share:.1f}" for role, share in idle.items())
        for name, idle in result.idle.items()
    )


def _verdict(met: bool | None) -> str:
    return "not measured" if met is None else "met" if met else "missed"


def render_markdown(result: OverheadResult) -> str:
    o, m = result.options, result.machine
    lines = [
        f"# epp bench overhead{' (smoke)' if o.smoke else ''}",
        "",
        f"Machine: {m.get('nproc')} CPUs ({m.get('cpu_model')}), load average {m.get('load_average')} at "
        f"start and {m.get('load_average_end')} at the end; Envoy {m.get('envoy')}. "
        f"Total {result.total_s:.0f} s. EPP daemon flags beyond the defaults: "
        f"{' '.join(o.epp_args) or 'none'}.",
        "",
    ]
    if result.ext:
        lines += _part1_markdown(result)
    if result.http:
        lines += [
            f"## Through the routers: streamed tokens ({o.servers} instant servers, a token every "
            f"{o.token_interval_ms:g} ms, Poisson arrivals, {o.rounds} x {o.duration_s:g} s per cell)",
            "",
            "CPU/req: CPU time of the process over the measured window, less what it spends idle over the "
            "same time, / requests sent, in µs (`EPP` the daemon, `Envoy` the Envoy in front of it or "
            "alone); total with idle: without subtracting it. Idle CPU (no requests, "
            f"{o.idle_s:g} s), % of a core: {_idle_text(result)}. Body read by: "
            "`epp_response_body_total{path}` over the window; EPP metered: responses the EPP counted as "
            "completed (`inference_objective_request_duration_seconds`), with a TTFT, with usage (output "
            "tokens). Errors include responses with another number of token events than asked.",
            "",
        ]
        for tokens in o.tokens:
            lines += _cell_table(result, tokens)
        lines += _per_token_table(result)
        lines += _goals_block(result)
    return "\n".join(lines)


# ---- command line ----------------------------------------------------------------------------------


def _numbers(text: str, what: str, kind: Callable[[str], Any]) -> tuple[Any, ...]:
    try:
        values = tuple(kind(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"{what} must be comma-separated positive numbers") from None
    if not values or any(v <= 0 for v in values):
        raise ValueError(f"{what} must be comma-separated positive numbers")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="epp bench overhead", description=__doc__.split("\n\n")[0])
    add = p.add_argument
    d = OverheadOptions()
    add("--smoke", action="store_true", help="short runs (CI)")
    add("--part", type=int, choices=[1, 2], action="append", help="only part 1 or 2 (repeatable)")
    add("--routers", default=None, help=f"comma-separated routers for part 2 (default {','.join(d.routers)})")
    add("--rates", default=None, help="comma-separated request rates for part 2 (default 20; smoke 100)")
    add(
        "--tokens",
        default=None,
        help="comma-separated output tokens per request (default 1,128,512; smoke 1,16)",
    )
    add("--usage", choices=["on", "off", "both"], default="both",
        help="requests with stream_options.include_usage, without, or both (default)")  # fmt: skip
    add("--token-interval-ms", type=float, default=None,
        help=f"milliseconds between two tokens of a response (default {d.token_interval_ms:g})")  # fmt: skip
    add("--epp-args", default="", help="extra daemon flags for the EPP routers, e.g. --epp-args=--workers=1")
    add("--duration", type=float, default=None, help="seconds per measurement (default 10; smoke 1)")
    add("--rounds", type=int, default=None, help="rounds of part 2 (default 1)")
    add("--endpoints", type=int, default=64, help="endpoints in the EPP's datastore (part 1)")
    add(
        "--install-rivals",
        action="store_true",
        help="install sglang-router into .cache/bench/venvs/ if it is not (else a missing one is an error; "
        "'epp bench install' installs it beforehand)",
    )
    add("--out", default=None, help="output directory (default bench-results/overhead-TIME)")
    return p


def options_from_args(args: argparse.Namespace) -> OverheadOptions:
    base = SMOKE if args.smoke else OverheadOptions()
    changes: dict[str, Any] = {"endpoints": args.endpoints, "install_rivals": args.install_rivals}
    if args.part:
        changes["parts"] = tuple(sorted(set(args.part)))
    if args.routers:
        names = tuple(x.strip() for x in args.routers.split(",") if x.strip())
        for name in names:
            parse_router(name)
        changes["routers"] = names
    if args.rates:
        changes["rates"] = _numbers(args.rates, "--rates", float)
    if args.tokens:
        tokens = _numbers(args.tokens, "--tokens", int)
        if len(set(tokens)) != len(tokens):
            raise ValueError("--tokens must not repeat a count")
        changes["tokens"] = tuple(sorted(tokens))
    changes["usage"] = {"on": (True,), "off": (False,), "both": (False, True)}[args.usage]
    if args.epp_args:
        changes["epp_args"] = tuple(shlex.split(args.epp_args))
    if args.token_interval_ms is not None:
        if args.token_interval_ms < 0:
            raise ValueError("--token-interval-ms must be >= 0")
        changes["token_interval_ms"] = args.token_interval_ms
    if args.duration:
        changes["duration_s"] = changes["ext_duration_s"] = args.duration
    if args.rounds:
        changes["rounds"] = args.rounds
    if args.endpoints < 1:
        raise ValueError("--endpoints must be >= 1")
    return replace(base, **changes)


def main(argv: Sequence[str] | None = None) -> int:
    from epp.tools.bench.cli import out_dir_default

    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        options = options_from_args(args)
    except ValueError as exc:
        print(f"epp bench overhead: {exc}", file=sys.stderr)
        return 2
    # part 1 needs no Envoy and no rival; part 2 starts the routers
    specs = [parse_router(r) for r in options.routers] if 2 in options.parts else []
    require("epp bench overhead", "bench", envoy=any(s.needs_envoy for s in specs))

    def say(text: str) -> None:
        print(text, flush=True)

    status = check_tools("epp bench overhead", rival_tools(specs), install=options.install_rivals, say=say)
    if status:
        return status
    out_dir = Path(args.out) if args.out else out_dir_default("overhead")
    machine = machine_info()

    async def go(children: Children) -> OverheadResult:
        return await run_overhead(options, say, children)

    status, result = run_async_main("epp bench overhead", go)
    if result is None:
        return status
    result.machine = {**machine, "load_average_end": machine_info()["load_average"]}
    write_report(out_dir, "overhead", result.to_json(), render_markdown(result))
    errors = sum(r.errors + r.wrong_tokens for r in result.http.values())
    errors += sum(int(e["errors"]) for e in result.ext)
    if errors:
        print(f"epp bench overhead: {errors} requests failed", file=sys.stderr)
        return 1
    return 0
