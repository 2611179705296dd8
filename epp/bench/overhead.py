"""`epp bench overhead`: what the EPP costs, alone and in the request path.

Part 1, the EPP alone (`epp.bench.extproc`'s Envoy-shaped gRPC load client): decisions/s (closed loop,
32 streams) and routing latency at a fixed rate (open loop) of the real ext_proc server with the default
profile over 64 endpoints whose metrics change every 50 ms, against a no-op grpc.aio ext_proc server
that sends the same replies without parsing or scheduling. Each server runs in its own process pinned
to one CPU with `taskset` (when there are two CPUs; the client then runs on the other one).

Part 2, in the request path: 4 instant-answer model servers (`epp.bench.instant`: one token, streamed)
behind each router in turn — Envoy + EPP (the daemon with the default profile, TLS to Envoy as deployed),
Envoy alone (`ROUND_ROBIN`), `sglang-router` (`cache_aware`) — and `direct` (the client spreads requests
over the servers itself). Open-loop Poisson arrivals at 200 and 500 requests/s; TTFT = time to the first
streamed token, measured by a lean keep-alive client. The routers are measured in rounds, each round
every router once per rate, so slow drifts of the machine's load hit them all alike; what a router adds
is its TTFT minus `direct`'s at the same percentile.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from epp.bench.harness import (
    Children,
    cpu_seconds,
    load_average,
    machine_info,
    run_async_main,
    tidy_workdir,
    write_report,
)
from epp.bench.instant import LeanClient, Timing, completion_request
from epp.bench.routers import RunningRouter, parse_router, start_router
from epp.loadgen.runner import poisson_arrivals
from epp.loadgen.stats import percentile

__all__ = ["OverheadOptions", "OverheadResult", "main", "run_overhead"]

Say = Callable[[str], None]
DIRECT = "direct"


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
    rates: tuple[float, ...] = (200.0, 500.0)
    routers: tuple[str, ...] = ("envoy-rr", "epp:default", "sglang")
    duration_s: float = 10.0
    warmup_s: float = 1.0
    rounds: int = 2
    seed: int = 0
    parts: tuple[int, ...] = (1, 2)


SMOKE = OverheadOptions(
    smoke=True, ext_duration_s=2.0, ext_warmup_s=0.5, duration_s=2.0, warmup_s=0.5, rounds=1
)


@dataclass(slots=True)
class HttpRun:
    router: str
    rate: float
    completed: int = 0
    errors: int = 0
    ttft_ms: list[float] = field(default_factory=list)
    router_cpu_s: float = 0.0
    seconds: float = 0.0

    def p(self, q: float) -> float | None:
        return percentile(self.ttft_ms, q)

    def summary(self) -> dict[str, Any]:
        def r(v: float | None) -> float | None:
            return None if v is None else round(v, 3)

        return {
            "router": self.router,
            "rate": self.rate,
            "completed": self.completed,
            "errors": self.errors,
            "ttft_p50_ms": r(self.p(50)),
            "ttft_p90_ms": r(self.p(90)),
            "ttft_p99_ms": r(self.p(99)),
            "router_cpu_us_per_request": (
                round(1e6 * self.router_cpu_s / self.completed, 1)
                if self.completed and self.router_cpu_s
                else None
            ),
        }


@dataclass(slots=True)
class OverheadResult:
    options: OverheadOptions
    machine: dict[str, Any] = field(default_factory=dict)
    ext: list[dict[str, Any]] = field(default_factory=list)  # part 1 (extproc LoadResult summaries)
    http: dict[tuple[str, float], HttpRun] = field(default_factory=dict)  # part 2, pooled over rounds
    total_s: float = 0.0

    def added(self, router: str, rate: float, q: float, base: str = DIRECT) -> float | None:
        mine, ref = self.http.get((router, rate)), self.http.get((base, rate))
        if mine is None or ref is None:
            return None
        a, b = mine.p(q), ref.p(q)
        return None if a is None or b is None else a - b

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

    def to_json(self) -> dict[str, Any]:
        thr, cpu = self.ext_ratio()
        added = {
            f"{router}@{rate:g}": {
                "p50_ms": self.added(router, rate, 50),
                "p99_ms": self.added(router, rate, 99),
            }
            for (router, rate) in self.http
            if router != DIRECT
        }
        epp = next((r for r, _ in self.http if r.startswith("epp:")), None)
        over_envoy = {
            f"{rate:g}": {
                "p50_ms": self.added(epp, rate, 50, "envoy-rr"),
                "p99_ms": self.added(epp, rate, 99, "envoy-rr"),
            }
            for rate in self.options.rates
            if epp is not None
        }
        return {
            "benchmark": "epp bench overhead",
            "smoke": self.options.smoke,
            "machine": self.machine,
            "options": asdict(self.options),
            "ext_proc": self.ext,
            "ext_proc_ratio": {"throughput": thr, "cpu_per_decision": cpu},
            "http": [run.summary() for run in self.http.values()],
            "added_vs_direct": added,
            "epp_over_envoy": over_envoy,
            "total_s": round(self.total_s, 1),
        }


# ---- part 1: the EPP alone -------------------------------------------------------------------------


async def _part1(options: OverheadOptions, say: Say, children: Children) -> list[dict[str, Any]]:
    from epp.bench import extproc as xp

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
    """The instant servers, one subprocess (`python -m epp.bench.instant`), stopped by PID."""

    def __init__(self, count: int, workdir: Path) -> None:
        self.count = count
        self.port_file = workdir / "instant.ports"
        self.proc: subprocess.Popen[bytes] | None = None
        self.addresses: list[str] = []

    async def start(self, children: Children, timeout: float = 30.0) -> None:
        cmd = [sys.executable, "-m", "epp.bench.instant", "--count", str(self.count)]
        cmd += ["--port-file", str(self.port_file)]
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


class _Target:
    """Where requests go: one router (one client) or the servers directly (round-robin over clients)."""

    def __init__(self, name: str, addresses: Sequence[str], router: RunningRouter | None) -> None:
        self.name = name
        self.router = router
        urls = [router.url.removeprefix("http://")] if router is not None else list(addresses)
        self.clients = []
        self.requests = []
        for hp in urls:
            host, _, port = hp.rpartition(":")
            self.clients.append(LeanClient(host, int(port)))
            self.requests.append(completion_request(hp))
        self._next = 0

    def send(self) -> Awaitable[Timing]:
        i = self._next
        self._next = (i + 1) % len(self.clients)
        return self.clients[i].request(self.requests[i])

    @property
    def pids(self) -> list[int]:
        return self.router.pids if self.router is not None else []

    async def close(self) -> None:
        for c in self.clients:
            await c.close()


async def _open_loop(
    target: _Target, rate: float, duration: float, warmup: float, seed: int, run: HttpRun
) -> None:
    arrivals = poisson_arrivals(max(1, int((warmup + duration) * rate)), rate, seed)
    tasks: set[asyncio.Task[None]] = set()

    async def one(measure: bool) -> None:
        try:
            async with asyncio.timeout(10):
                t = await target.send()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            if measure:
                run.errors += 1
            return
        if not measure:
            return
        if t.status == 200 and t.ttft_s is not None:
            run.completed += 1
            run.ttft_ms.append(t.ttft_s * 1000)
        else:
            run.errors += 1

    start = time.perf_counter()
    cpu0 = 0.0
    measuring = False
    for at in arrivals:
        delay = start + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if not measuring and at >= warmup:
            measuring = True
            cpu0 = sum(cpu_seconds(p) for p in target.pids)
        task = asyncio.create_task(one(at >= warmup))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    run.router_cpu_s += sum(cpu_seconds(p) for p in target.pids) - cpu0
    run.seconds += time.perf_counter() - start


async def _part2(options: OverheadOptions, say: Say, children: Children, result: OverheadResult) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="epp-bench-overhead-"))
    backends = _Backends(options.servers, workdir)
    targets: list[_Target] = []
    ok = False
    try:
        await backends.start(children)
        targets.append(_Target(DIRECT, backends.addresses, None))
        for name in options.routers:
            spec = parse_router(name)
            router = await start_router(
                spec, backends.addresses, workdir / spec.name.replace(":", "-"), children=children
            )
            targets.append(_Target(spec.name, backends.addresses, router))
        say(f"part 2: {options.servers} instant servers; {', '.join(t.name for t in targets)}")
        for t in targets:  # warm-up: connections, code paths
            for _ in range(50):
                await t.send()
        for rnd in range(options.rounds):
            for rate in options.rates:
                for t in targets:
                    run = result.http.setdefault((t.name, rate), HttpRun(t.name, rate))
                    await _open_loop(t, rate, options.duration_s, options.warmup_s, options.seed + rnd, run)
                runs = [result.http[t.name, rate] for t in targets]
                line = ", ".join(f"{r.router} {_fmt(r.p(50))}/{_fmt(r.p(99))}" for r in runs)
                say(f"  round {rnd + 1} {rate:g}/s TTFT p50/p99 ms: {line} (load {load_average()[0]:.1f})")
        ok = True
    finally:
        for t in targets:
            await t.close()
            if t.router is not None:
                await t.router.stop()
        await backends.stop()
        tidy_workdir(workdir, ok, say)


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


def render_markdown(result: OverheadResult) -> str:
    o, m = result.options, result.machine
    lines = [
        f"# epp bench overhead{' (smoke)' if o.smoke else ''}",
        "",
        f"Machine: {m.get('nproc')} CPUs ({m.get('cpu_model')}), load average {m.get('load_average')} at "
        f"start and {m.get('load_average_end')} at the end; Envoy {m.get('envoy')}. "
        f"Total {result.total_s:.0f} s.",
        "",
    ]
    if result.ext:
        lines += [
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
        lines += [
            "",
            f"EPP / no-op decisions per second: **{_fmt(thr)}** (goal >= 0.7); by server CPU per decision: "
            f"{_fmt(cpu)}.",
            "",
        ]
    if result.http:
        lines += [
            f"## Through the routers ({o.servers} instant servers, 1 streamed token, Poisson arrivals, "
            f"{o.rounds} x {o.duration_s:g} s per router and rate)",
            "",
            "| rate/s | router | requests | errors | TTFT p50 ms | p90 ms | p99 ms | added p50 ms | "
            "added p99 ms | router CPU/request |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for (name, rate), run in sorted(result.http.items(), key=lambda kv: (kv[0][1], kv[0][0] != DIRECT)):
            s = run.summary()
            cpu = s["router_cpu_us_per_request"]
            lines.append(
                f"| {rate:g} | {name} | {run.completed} | {run.errors} | {_fmt(s['ttft_p50_ms'])} | "
                f"{_fmt(s['ttft_p90_ms'])} | {_fmt(s['ttft_p99_ms'])} | "
                f"{_fmt(result.added(name, rate, 50)) if name != DIRECT else ''} | "
                f"{_fmt(result.added(name, rate, 99)) if name != DIRECT else ''} | "
                f"{'-' if cpu is None else f'{cpu:.0f} us'} |"
            )
        epp = next((n for n, _ in result.http if n.startswith("epp:")), None)
        if epp is not None and any(n == "envoy-rr" for n, _ in result.http):
            lines.append("")
            for rate in o.rates:
                a50, a99 = result.added(epp, rate, 50, "envoy-rr"), result.added(epp, rate, 99, "envoy-rr")
                lines.append(
                    f"- {rate:g}/s: Envoy + EPP over Envoy alone: p50 **{_fmt(a50)} ms** (goal <= 1.5), "
                    f"p99 **{_fmt(a99)} ms** (goal <= 5)"
                )
        lines.append("")
    return "\n".join(lines)


# ---- command line ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="epp bench overhead", description=__doc__.split("\n\n")[0])
    add = p.add_argument
    add("--smoke", action="store_true", help="short runs (CI)")
    add("--part", type=int, choices=[1, 2], action="append", help="only part 1 or 2 (repeatable)")
    add(
        "--routers",
        default=None,
        help="comma-separated routers for part 2 (default envoy-rr,epp:default,sglang)",
    )
    add("--rates", default=None, help="comma-separated request rates for part 2 (default 200,500)")
    add("--duration", type=float, default=None, help="seconds per measurement (default 10; smoke 2)")
    add("--rounds", type=int, default=None, help="rounds of part 2 (default 2; smoke 1)")
    add("--endpoints", type=int, default=64, help="endpoints in the EPP's datastore (part 1)")
    add("--out", default=None, help="output directory (default bench-results/overhead-TIME)")
    return p


def options_from_args(args: argparse.Namespace) -> OverheadOptions:
    base = SMOKE if args.smoke else OverheadOptions()
    changes: dict[str, Any] = {"endpoints": args.endpoints}
    if args.part:
        changes["parts"] = tuple(sorted(set(args.part)))
    if args.routers:
        names = tuple(x.strip() for x in args.routers.split(",") if x.strip())
        for name in names:
            parse_router(name)
        changes["routers"] = names
    if args.rates:
        rates = tuple(float(x) for x in args.rates.split(",") if x.strip())
        if not rates or any(r <= 0 for r in rates):
            raise ValueError("--rates must be positive numbers")
        changes["rates"] = rates
    if args.duration:
        changes["duration_s"] = changes["ext_duration_s"] = args.duration
    if args.rounds:
        changes["rounds"] = args.rounds
    if args.endpoints < 1:
        raise ValueError("--endpoints must be >= 1")
    from dataclasses import replace

    return replace(base, **changes)


def main(argv: Sequence[str] | None = None) -> int:
    from epp.bench.cli import out_dir_default

    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        options = options_from_args(args)
    except ValueError as exc:
        print(f"epp bench overhead: {exc}", file=sys.stderr)
        return 2
    out_dir = Path(args.out) if args.out else out_dir_default("overhead")
    machine = machine_info()

    def say(text: str) -> None:
        print(text, flush=True)

    async def go(children: Children) -> OverheadResult:
        return await run_overhead(options, say, children)

    status, result = run_async_main("epp bench overhead", go)
    if result is None:
        return status
    result.machine = {**machine, "load_average_end": machine_info()["load_average"]}
    write_report(out_dir, "overhead", result.to_json(), render_markdown(result))
    errors = sum(r.errors for r in result.http.values()) + sum(int(e["errors"]) for e in result.ext)
    if errors:
        print(f"epp bench overhead: {errors} requests failed", file=sys.stderr)
        return 1
    return 0
