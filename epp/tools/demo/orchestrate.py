"""The demo's run: a simulated fleet, then per profile a fresh EPP + Envoy and the same workload.

Everything listens on 127.0.0.1 on free ports. The simulators start once (one subprocess each, like
real model servers; one serves LoRA adapters). Per profile a new EPP (with that profile) and Envoy
start, a short warm-up opens every connection and runs every code path once (so the first profile
does not pay for set-up that later ones skip), then the simulators' prefix caches and counters are
reset: the runs are independent and see the same workload at the same arrival times. Whatever
happens (errors, Ctrl-C), everything started here is stopped before `run_demo` returns or raises.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from epp.tools.loadgen.client import LoadClient
from epp.tools.loadgen.fleet import FleetMode, FleetStats, SimFleet, fleet_stats
from epp.tools.loadgen.gateway import EppMode, Gateway
from epp.tools.loadgen.progress import Progress
from epp.tools.loadgen.runner import run_closed_loop, run_open_loop
from epp.tools.loadgen.stats import RunSummary, summarize
from epp.tools.loadgen.workloads import Api, Workload, shared_prefix
from epp.tools.sim import SimConfig

__all__ = ["DemoOptions", "DemoResult", "ProfileRun", "resolve_profile", "role_labels", "run_demo"]

LORA_ADAPTERS = ("sql-lora", "chat-lora")
_PROFILE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """What the demo runs. The defaults show a clear difference in well under a minute."""

    profiles: tuple[str, ...] = ("default", "random")
    servers: int = 4
    groups: int = 16
    prompts_per_group: int = 16
    system_prompt_tokens: int = 3000
    question_tokens: int = 32
    output_tokens: int = 8
    rate: float = 32.0
    seed: int = 0
    time_scale: float = 1.0
    api: Api = "completions"
    secure_serving: bool = True
    fleet_mode: FleetMode = "subprocess"
    epp_mode: EppMode = "subprocess"
    progress: bool | None = None  # None: only on a terminal
    #: P/D fleet: the first `prefill_servers` simulators serve prefill, the others decode (0: aggregated)
    prefill_servers: int = 0

    def role(self, index: int) -> str:
        """Simulator `index`'s P/D role (`both` when the fleet is not split)."""
        if not self.prefill_servers:
            return "both"
        return "prefill" if index < self.prefill_servers else "decode"


@dataclass(slots=True)
class ProfileRun:
    """One profile's run: the client's summary and the servers' counters."""

    profile: str
    config_file: str
    summary: RunSummary
    fleet: FleetStats


@dataclass(slots=True)
class DemoResult:
    options: DemoOptions
    workload: Workload
    servers: list[tuple[str, str, tuple[str, ...]]] = field(default_factory=list)  # name, address, LoRA
    runs: list[ProfileRun] = field(default_factory=list)
    startup_s: float = 0.0
    total_s: float = 0.0

    @property
    def failed_requests(self) -> int:
        return sum(r.summary.errors + r.summary.unfinished for r in self.runs)


def _shown(path: Path) -> Path:
    """`path` relative to the current directory when it is below it (shorter to print)."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path


def resolve_profile(name: str) -> Path:
    """A profile file: `name` as a path, or `profiles/NAME.yaml` (current directory, then the source tree)."""
    path = Path(name)
    if path.is_file():
        return path
    if _PROFILE_NAME.match(name):
        stem = name.removesuffix(".yaml")
        roots = [Path.cwd() / "profiles", Path(__file__).resolve().parents[3] / "profiles"]
        for root in roots:
            candidate = root / f"{stem}.yaml"
            if candidate.is_file():
                return _shown(candidate)
        known = sorted({p.stem for root in roots if root.is_dir() for p in root.glob("*.yaml")})
        hint = f"; known profiles: {', '.join(known)}" if known else ""
        raise ValueError(f"no profile {name!r} (looked for profiles/{stem}.yaml){hint}")
    raise ValueError(f"no such profile file: {name}")


def sim_configs(options: DemoOptions) -> list[SimConfig]:
    """The fleet: `servers` identical simulators; the last one also serves LoRA adapters."""
    configs = []
    for i in range(options.servers):
        lora = LORA_ADAPTERS if i == options.servers - 1 else ()
        configs.append(
            SimConfig(
                name=f"sim-{i}",
                time_scale=options.time_scale,
                seed=options.seed + i,
                lora_adapters=lora,
                role=options.role(i),
            )
        )
    return configs


def demo_workload(options: DemoOptions) -> Workload:
    return shared_prefix(
        groups=options.groups,
        prompts_per_group=options.prompts_per_group,
        system_prompt_len=options.system_prompt_tokens,
        question_len=options.question_tokens,
        output_len=options.output_tokens,
        seed=options.seed,
        api=options.api,
    )


Say = Callable[[str], None]

#: The pod label llm-d's P/D role filters read.
ROLE_LABEL = "llm-d.ai/role"


def role_labels(fleet: SimFleet) -> list[str]:
    """EPP flags giving each simulator of a split (P/D) fleet its role label; none for an aggregated one."""
    if all(m.config.role == "both" for m in fleet.members):
        return []
    labels = [f"{m.address}={ROLE_LABEL}={m.config.role}" for m in fleet.members]
    return ["--static-endpoint-labels", ",".join(labels)]


async def _warm_up(client: LoadClient, options: DemoOptions) -> None:
    """A few short unique prompts through the fresh gateway before measuring.

    They open the connections (client to Envoy, Envoy to the EPP over TLS and to the servers) and run
    every code path once, so that the first profile measured does not pay for what the next one gets
    for free. The caller then resets the servers' caches and counters.
    """
    warm = shared_prefix(
        groups=2 * options.servers,
        prompts_per_group=1,
        system_prompt_len=48,
        question_len=8,
        output_len=2,
        seed=options.seed + 7919,
        api=options.api,
    )
    await run_closed_loop(client, warm, concurrency=options.servers, duration_limit_s=30.0)


async def _run_profile(
    profile: str,
    config_file: Path,
    fleet: SimFleet,
    workload: Workload,
    options: DemoOptions,
    workdir: Path,
    say: Say,
    on_gateway: Callable[[Gateway | None], None],
) -> ProfileRun:
    started = time.perf_counter()
    gateway = Gateway(
        fleet.addresses,
        config_file=config_file,
        secure_serving=options.secure_serving,
        workdir=workdir / f"gateway-{profile}",
        epp_mode=options.epp_mode,
        extra_args=role_labels(fleet),
    )
    model = SimConfig().model
    try:
        on_gateway(gateway)
        await gateway.start()
        on_gateway(gateway)
        async with LoadClient(gateway.url, api=options.api, model=model) as client:
            await _warm_up(client, options)
            await fleet.reset()
            say(
                f"[{profile}] EPP ({config_file}) and Envoy ready in "
                f"{time.perf_counter() - started:.1f}s; "
                f"sending {workload.num_requests} requests through {gateway.url}"
            )
            progress = Progress(workload.num_requests, f"[{profile}]", enabled=options.progress)
            # Generous: a run that stalls ends with its unfinished requests counted rather than hanging.
            limit = workload.num_requests / options.rate + 60.0
            try:
                run = await run_open_loop(
                    client,
                    workload,
                    rate=options.rate,
                    seed=options.seed,
                    duration_limit_s=limit,
                    on_result=lambda r: progress.advance(errors=0 if r.ok else 1),
                )
            finally:
                progress.close()
    finally:
        await gateway.stop()
        on_gateway(None)
    summary = summarize(run)
    say(
        f"[{profile}] {summary.ok} ok, {summary.errors} errors, {summary.unfinished} unfinished "
        f"in {summary.duration_s:.1f}s"
    )
    return ProfileRun(profile, str(config_file), summary, fleet_stats(await fleet.stats()))


async def run_demo(
    options: DemoOptions,
    say: Say = print,
    *,
    on_ready: Callable[[DemoResult], None] | None = None,
    on_children: Callable[[Sequence[int]], None] | None = None,
) -> DemoResult:
    """Run the demo.

    `say` gets the status lines, `on_ready` the result once the fleet serves (its `servers` filled in),
    `on_children` the PIDs of the child processes whenever they change.
    """
    profiles = [(p, resolve_profile(p)) for p in options.profiles]
    workload = demo_workload(options)
    result = DemoResult(options=options, workload=workload)
    workdir = Path(tempfile.mkdtemp(prefix="epp-demo-"))
    begin = time.perf_counter()
    fleet = SimFleet(sim_configs(options), mode=options.fleet_mode, log_dir=workdir)
    gateways: list[Gateway] = []

    def report_children() -> None:
        if on_children is None:
            return
        pids = [m.pid for m in fleet.members if m.pid is not None]
        for gw in gateways:
            pids += gw.pids
        on_children(pids)

    def on_gateway(gw: Gateway | None) -> None:
        gateways.clear()
        if gw is not None:
            gateways.append(gw)
        report_children()

    keep_logs = False
    try:
        split = (
            f", {options.prefill_servers} prefill + {options.servers - options.prefill_servers} decode (P/D)"
            if options.prefill_servers
            else ""
        )
        say(f"starting {options.servers} simulated vLLM servers ({options.fleet_mode}{split}) ...")
        await fleet.start()
        report_children()
        for m in fleet.members:
            result.servers.append((m.name, m.address, m.config.lora_adapters))
        result.startup_s = time.perf_counter() - begin
        if on_ready is not None:
            on_ready(result)
        for profile, path in profiles:
            run = await _run_profile(profile, path, fleet, workload, options, workdir, say, on_gateway)
            result.runs.append(run)
        keep_logs = result.failed_requests > 0
    except Exception:
        keep_logs = True  # a failure, not an interruption: the logs say what went wrong
        raise
    finally:
        await fleet.stop()
        report_children()
        if keep_logs:
            say(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    result.total_s = time.perf_counter() - begin
    return result
