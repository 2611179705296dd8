"""`epp bench reliability`: every reliability scenario against real processes on loopback, one table.

Simulated model servers (subprocesses), the EPP as its own process (`python -m epp`, the default
`--workers`), a real Envoy in front, kmock for the Lease. Scenarios, in this order (`--only` picks):
`slow-clients`, `fuzz`, `reloads`, `server-kill`, `epp-kill`, `failover`, `soak`. Prints each row as it
is measured and writes the table (markdown) and the figures (JSON) to `--out`. Exit status 0 when every
figure with a limit is within it, 1 otherwise, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from epp.tools.bench.harness import machine_info, run_async_main
from epp.tools.bench.reliability.rig import Row, metric_values, sim_configs
from epp.tools.extras import reports_missing_extras, require

__all__ = ["main"]

SCENARIOS = ("slow-clients", "fuzz", "reloads", "server-kill", "epp-kill", "failover", "soak")
SCRAPE_INTERVAL_S = 0.05  # the daemon's default --refresh-metrics-interval


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="epp bench reliability", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    p.add_argument("--soak-minutes", type=float, default=10.0)
    p.add_argument("--interval", type=float, default=60.0, help="soak sampling interval, seconds")
    p.add_argument("--calibrate", type=float, default=10.0, help="seconds of closed loop to measure capacity")
    p.add_argument("--reloads", type=int, default=100)
    p.add_argument("--requests", type=int, default=10_000, help="generated requests (fuzz)")
    p.add_argument("--configs", type=int, default=1_000, help="generated configs (fuzz)")
    p.add_argument("--servers", type=int, default=4)
    p.add_argument("--out", type=Path, default=Path(".cache/bench/reliability"))
    return p


def _markdown(rows: Sequence[Row], machine: dict[str, Any], argv: Sequence[str]) -> str:
    lines = [
        f"Command: `epp bench reliability {' '.join(argv)}`".rstrip(),
        "",
        f"Machine: {machine.get('nproc')} CPUs ({machine.get('cpu_model')}), Python {machine.get('python')}, "
        f"load average at start {machine.get('load_average')}.",
        "",
        "| scenario | figure | value | limit | within |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        within = "" if r.ok is None else ("yes" if r.ok else "**no**")
        lines.append(f"| {r.scenario} | {r.figure} | {r.value} | {r.limit} | {within} |")
    return "\n".join(lines) + "\n"


async def _run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from epp.tools.bench.reliability import failover, faults, fuzz, reloads, slow_clients, soak
    from epp.tools.loadgen.fleet import SimFleet
    from epp.tools.loadgen.gateway import EppProcess, Gateway

    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SCENARIOS))
    if unknown:
        print(
            f"epp bench reliability: unknown scenario(s) {unknown}; pick from {list(SCENARIOS)}",
            file=sys.stderr,
        )
        return 2
    machine = machine_info()
    rows: list[Row] = []
    extra: dict[str, Any] = {}
    workdir = Path(tempfile.mkdtemp(prefix="epp-reliability-"))
    config = workdir / "config.yaml"
    config.write_text(reloads.PROFILES[0])

    def say(text: str) -> None:
        print(text, flush=True)

    def add(new: list[Row]) -> None:
        for r in new:
            mark = "" if r.ok is None else (" ok" if r.ok else " OUT OF LIMIT")
            say(f"{r.scenario:>20} | {r.figure}: {r.value}{f' (limit {r.limit})' if r.limit else ''}{mark}")
        rows.extend(new)

    def gateway(name: str, *flags: str, fail_open: bool = False) -> Gateway:
        (workdir / name).mkdir(exist_ok=True)
        return Gateway(
            fleet.addresses,
            config_file=config,
            workdir=workdir / name,
            epp_mode="subprocess",
            extra_args=flags,
            route_timeout=30,
            failure_mode_allow=fail_open,
        )

    async with SimFleet(sim_configs(args.servers), mode="subprocess", log_dir=workdir) as fleet:
        if "slow-clients" in only:
            epp = EppProcess(fleet.addresses, config_file=config, log_path=workdir / "slow.log")
            async with epp:
                add(await slow_clients.run_slow_clients(epp))
        if "fuzz" in only:
            async with gateway("fuzz-requests") as gw:
                port = int(gw.url.rpartition(":")[2].rstrip("/"))
                result = await asyncio.to_thread(fuzz.fuzz_requests, "127.0.0.1", port, args.requests)
                add(fuzz.request_rows(result, args.requests))
                add(_no_crash("fuzz (requests)", gw.epp))
            judged = await asyncio.to_thread(fuzz.fuzz_configs_in_process, args.configs, str(config))
            counts = judged.counts
            for c in judged.crashes[:3]:
                say(f"  fuzz crash: {c}")
            async with gateway("fuzz-configs", "--watch-config-file=false") as gw:
                assert isinstance(gw.epp, EppProcess) and gw.epp.pid is not None
                agree, compared = await fuzz.fuzz_configs_in_daemon(
                    judged, config, gw.epp.pid, lambda: metric_values(gw.epp.metrics_url), say
                )
                add(
                    [
                        Row(
                            "fuzz",
                            "generated configs: accepted / refused / crashed (loader + build, in process)",
                            f"{counts['ok']} / {counts['error']} / {counts['crash']}",
                            "0 crashed",
                            counts["crash"] == 0,
                        ),
                        Row(
                            "fuzz",
                            "the running daemon's reload agrees (applied / refused / unchanged)",
                            f"{agree}/{compared}",
                            "all",
                            agree == compared == args.configs - counts["crash"],
                        ),
                    ]
                )
                add(_no_crash("fuzz (configs)", gw.epp))
            config.write_text(reloads.PROFILES[0])
        if "reloads" in only:
            async with gateway("reloads", "--watch-config-file=true") as gw:
                add(await reloads.run_reloads(gw, config, rate=20, changes=args.reloads, say=say))
                add(_no_crash("reloads", gw.epp))
            config.write_text(reloads.PROFILES[0])
        if "server-kill" in only:
            async with gateway("server-kill") as gw:
                add(await faults.run_server_kill(fleet, gw, SCRAPE_INTERVAL_S, say))
                add(_no_crash("server-kill", gw.epp))
        if "epp-kill" in only:
            for fail_open in (False, True):
                name = "epp-kill-fail-open" if fail_open else "epp-kill-fail-close"
                add(await faults.run_epp_kill(gateway(name, fail_open=fail_open), say))
        if "failover" in only:
            (workdir / "failover").mkdir(exist_ok=True)
            add(await failover.run_failover(fleet.addresses, config, workdir / "failover", say))
        if "soak" in only:
            async with gateway("soak") as gw:
                soak_rows, samples, figures = await soak.run_soak(
                    gw, args.soak_minutes, args.interval, args.calibrate, say
                )
                add(soak_rows)
                add(_no_crash("soak", gw.epp))
                extra["soak"] = {"samples": [asdict(s) for s in samples], **figures}

    args.out.mkdir(parents=True, exist_ok=True)
    markdown = _markdown(rows, machine, argv)
    if "soak" in extra:
        markdown += "\n" + _soak_table(extra["soak"]["samples"])
    (args.out / "reliability.md").write_text(markdown)
    doc = {"machine": machine, "argv": list(argv), "rows": [asdict(r) for r in rows], **extra}
    (args.out / "reliability.json").write_text(json.dumps(doc, indent=2))
    say(f"\n{markdown}\nwritten to {args.out}/reliability.md and .json (work files in {workdir})")
    return 0 if all(r.ok is not False for r in rows) else 1


def _soak_table(samples: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| minute | RSS (MB, EPP + workers) | open fds | asyncio tasks | requests | failed | TTFT p50 (ms) | "
        "TTFT p99 (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in samples:
        p50, p99 = s["ttft_p50_ms"], s["ttft_p99_ms"]
        lines.append(
            f"| {s['minute']} | {s['rss_mb']:.1f} | {s['fds']} | {s['tasks']} | {s['requests']} | "
            f"{s['failed']} | "
            f"{'-' if p50 is None else f'{p50:.1f}'} | {'-' if p99 is None else f'{p99:.1f}'} |"
        )
    return "\n".join(lines) + "\n"


def _no_crash(scenario: str, epp: object) -> list[Row]:
    """The EPP still running, and no traceback in its log."""
    from epp.tools.loadgen.gateway import EppProcess

    assert isinstance(epp, EppProcess)
    alive = epp.process is not None and epp.process.returncode is None
    tracebacks = epp.log_text().count("Traceback (most recent call last)")
    return [
        Row(
            scenario,
            "EPP still running / tracebacks in its log",
            f"{'yes' if alive else 'NO'} / {tracebacks}",
            "yes / 0",
            alive and tracebacks == 0,
        )
    ]


@reports_missing_extras
def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    require("epp bench reliability", "bench", modules=["kmock", "hypothesis"], envoy=True)
    args = _parser().parse_args(args_list)
    status, result = run_async_main("epp bench reliability", lambda _children: _run(args, args_list))
    return status if result is None else result
