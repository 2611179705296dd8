"""`epp bench quality`: flags, the run, the files it writes and what it prints.

Writes `quality.json`, `quality.md` and `quality-<workload>.png` into `--out` (default
`bench-results/quality-<time>/`) and prints the markdown report. Exit status 0 when every run
finished without failed requests, 1 otherwise (or when something did not start), 2 for bad flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from epp.tools.bench.cli import out_dir_default
from epp.tools.bench.harness import Children, machine_info, run_async_main
from epp.tools.bench.quality import (
    ALL_WORKLOADS,
    FLEETS,
    FULL,
    SMOKE,
    WORKLOADS,
    QualityOptions,
    QualityResult,
    RunRecord,
    fleet_gpus,
    fleet_name,
    run_quality,
)
from epp.tools.bench.quality_slo import SloOptions, parse_ttft_slo, slo_summary
from epp.tools.bench.rivals import check_tools
from epp.tools.bench.routers import parse_router, rival_tools
from epp.tools.extras import require
from epp.tools.sim.config import GPU_CLASSES

__all__ = ["build_parser", "main", "options_from_args", "slo_options"]


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _saturation(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in _names(text):
        name, sep, value = part.partition("=")
        if not sep or name not in ALL_WORKLOADS:
            raise argparse.ArgumentTypeError(f"expected WORKLOAD=RATE[,...] with WORKLOAD in {ALL_WORKLOADS}")
        try:
            out[name] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad rate in {part!r}") from None
        if out[name] <= 0:
            raise argparse.ArgumentTypeError(f"rate must be > 0 in {part!r}")
    return out


def _ttft_slo(text: str) -> str:
    try:
        return parse_ttft_slo(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a share in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a share in [0, 1), got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="epp bench quality",
        description=(
            "Scheduling quality on a simulated fleet: our EPP profiles behind Envoy vs Envoy round-robin / "
            "least-request, sglang-router and vllm-router (cache_aware), on shared_prefix, zipf, mixed and "
            "multiturn workloads, at 0.5-1.2x the rate where the best rival saturates."
        ),
    )
    add = p.add_argument
    add("--smoke", action="store_true", help="a small, fast configuration (CI): 4 servers, one rate")
    add(
        "--workloads",
        type=_names,
        default=None,
        help=f"comma-separated subset of {','.join(ALL_WORKLOADS)} (default {','.join(WORKLOADS)})",
    )
    add(
        "--pd",
        type=int,
        default=0,
        metavar="N",
        help="P/D fleet: the first N simulators are prefill servers (llm-d.ai/role=prefill), the others "
        "decode servers; compare e.g. --routers epp:pd,epp:default (the same servers, aggregated)",
    )
    add(
        "--routers",
        type=_names,
        default=None,
        help="comma-separated: epp:PROFILE (name in profiles/ or a file), envoy-rr, envoy-lr, sglang, vllm "
        "(default: every profile incl. recommended if present, both Envoys, both rivals)",
    )
    add("--servers", type=int, default=None, help="simulators in the fleet (default 8; smoke 4)")
    add(
        "--fleet",
        choices=FLEETS,
        default="default",
        help="default: every simulator timed as an H100, no hardware label; mixed: the first half "
        "H100-class, the others A100-class (about 2x slower), each labelled nvidia.com/gpu.product",
    )
    add(
        "--gpus",
        type=_names,
        default=None,
        metavar="CLASS,...",
        help=f"one hardware class per simulator, in {','.join(GPU_CLASSES)} (e.g. h100,h100,a100,a100; "
        "sets --servers); instead of --fleet",
    )
    add(
        "--kv-blocks",
        type=int,
        default=None,
        help="KV blocks per simulator (default 2048; smoke 1024); with --fleet/--gpus per H100-class "
        "simulator, the others get their class's share",
    )
    add(
        "--time-scale",
        type=float,
        default=None,
        help="simulator time scale (default 8: 8x slower than an H100)",
    )
    add("--duration", type=float, default=None, help="seconds of arrivals per run (default 10; smoke 2)")
    add("--search-duration", type=float, default=None, help="seconds of arrivals per saturation probe")
    add("--multipliers", type=_floats, default=None, help="rates as multiples of saturation (0.5,0.8,1,1.2)")
    add(
        "--saturation",
        type=_saturation,
        default={},
        help="WORKLOAD=RATE,... known saturation rates (requests/s): skips their search",
    )
    add("--saturation-from", default=None, help="take the saturation rates from an earlier quality.json")
    add(
        "--merge",
        default=None,
        help="an earlier quality.json: reuse its saturation rates, keep its rows for routers not run now, "
        "and write the combined report (e.g. to add a new profile to a full sweep)",
    )
    add("--search-with", type=_names, default=("sglang", "vllm"), help="routers whose best sets the rate")
    add("--factor", type=float, default=3.0, help="saturated when p90 TTFT > FACTOR x its light-load p90")
    add("--scrape-interval", type=float, default=None, help="EPP scrape interval in s (default 0.05 x scale)")
    add(
        "--ours", default="", help="the router the goals are checked for (default epp:recommended or default)"
    )
    add("--seed", type=int, default=0, help="seed of the workloads and arrival times")
    slo = p.add_argument_group("latency SLOs (issue 20)")
    slo.add_argument(
        "--ttft-slo",
        type=_ttft_slo,
        default="off",
        metavar="auto|off|MS",
        help="report the share of requests whose TTFT met an SLO (failed ones miss it): MS for every "
        "workload, or auto: --slo-factor x the p90 TTFT of --slo-router at --slo-light x the saturation "
        "rate (one light-load run per workload before its sweep); default off",
    )
    slo.add_argument("--slo-factor", type=float, default=2.0, help="auto SLO = FACTOR x light-load p90 (2)")
    slo.add_argument(
        "--slo-light", type=float, default=0.2, help="light load as a multiple of saturation (0.2)"
    )
    slo.add_argument(
        "--slo-router",
        default="",
        help="the router of the light-load runs (default: the first --search-with router)",
    )
    slo.add_argument(
        "--slo-header",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="send x-slo-ttft-ms with every sweep request (SLO-aware profiles read it; others ignore it)",
    )
    slo.add_argument(
        "--sheddable",
        type=_share,
        default=0.0,
        metavar="SHARE",
        help="send SHARE of the sessions as objective 'sheddable' (priority -1), the others 'critical' "
        "(10), in x-gateway-inference-objective (the EPP gets --static-objectives); reports attainment "
        "and 429s per class; needs --ttft-slo",
    )
    slo.add_argument(
        "--prediction-after",
        type=float,
        default=10.0,
        metavar="S",
        help="the latency predictor's error is also reported over the requests completed after S "
        "seconds of the run (default 10)",
    )
    add(
        "--install-rivals",
        action="store_true",
        help="install sglang-router / vllm-router into .cache/bench/venvs/ if they are not (else a missing "
        "one is an error; 'epp bench install' installs them beforehand)",
    )
    add("--out", default=None, help="output directory (default bench-results/quality-TIME)")
    add("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar (default: tty)")
    add("-v", "--verbose", action="store_true", help="log what the harness does")
    return p


def slo_options(args: argparse.Namespace) -> SloOptions:
    """The latency-SLO flags; with `auto`, the SLOs of an earlier run (`--merge`, `--saturation-from`)
    are reused, so the rows compared were measured against the same SLO."""
    if args.sheddable and args.ttft_slo == "off":
        raise ValueError("--sheddable needs --ttft-slo (auto or MS): attainment is counted per class")
    if args.slo_factor <= 0 or not 0 < args.slo_light <= 1 or args.prediction_after < 0:
        raise ValueError("need --slo-factor > 0, 0 < --slo-light <= 1 and --prediction-after >= 0")
    if args.slo_router:
        parse_router(args.slo_router)
    given: dict[str, float] = {}
    for source in (args.merge, args.saturation_from):
        if source and args.ttft_slo == "auto":
            doc = json.loads(Path(source).read_text())
            given.update({k: float(v["ttft_ms"]) for k, v in doc.get("slo", {}).items() if v.get("ttft_ms")})
    return SloOptions(
        ttft=args.ttft_slo,
        factor=args.slo_factor,
        light=args.slo_light,
        router=args.slo_router,
        header=args.slo_header,
        sheddable_share=args.sheddable,
        prediction_after_s=args.prediction_after,
        given=given,
    )


def options_from_args(args: argparse.Namespace) -> QualityOptions:
    base = SMOKE if args.smoke else FULL
    gpus: tuple[str, ...] = tuple(args.gpus or ())
    if gpus and args.fleet != "default":
        raise ValueError("give --fleet or --gpus, not both")
    unknown_gpus = sorted(set(gpus) - set(GPU_CLASSES))
    if unknown_gpus:
        raise ValueError(
            f"unknown --gpus class(es) {', '.join(unknown_gpus)}; known: {', '.join(GPU_CLASSES)}"
        )
    if gpus and args.servers and args.servers != len(gpus):
        raise ValueError(f"--gpus names {len(gpus)} simulators but --servers is {args.servers}")
    servers = len(gpus) or args.servers or base.servers
    gpus = gpus or fleet_gpus(args.fleet, servers)
    time_scale = args.time_scale or base.time_scale
    # the search starts where the default fleet would saturate, scaled to this fleet's capacity
    speed = sum(GPU_CLASSES[g].relative_speed for g in gpus) / len(gpus) if gpus else 1.0
    capacity = (servers / base.servers) * (base.time_scale / time_scale) * speed
    sizing = dataclasses.replace(
        base,
        servers=servers,
        kv_blocks=args.kv_blocks or base.kv_blocks,
        time_scale=time_scale,
        start_rates={k: round(v * capacity, 2) for k, v in base.start_rates.items()},
        duration_s=args.duration or base.duration_s,
        search_duration_s=args.search_duration or base.search_duration_s,
        multipliers=args.multipliers or base.multipliers,
    )
    if sizing.servers < 2 or sizing.kv_blocks < 64 or sizing.time_scale <= 0 or sizing.duration_s <= 0:
        raise ValueError("need --servers >= 2, --kv-blocks >= 64, --time-scale > 0 and --duration > 0")
    workloads = args.workloads or WORKLOADS
    unknown = [w for w in workloads if w not in ALL_WORKLOADS]
    if unknown:
        raise ValueError(f"unknown workload(s) {', '.join(unknown)}; known: {', '.join(ALL_WORKLOADS)}")
    if not 0 <= args.pd < sizing.servers:
        raise ValueError("--pd N needs 0 <= N < --servers (at least one decode server)")
    saturation: dict[str, float] = {}
    fleet = fleet_name(gpus)
    for source in (args.merge, args.saturation_from):
        if source:
            doc = json.loads(Path(source).read_text())
            theirs = doc.get("options", {}).get("fleet", "default")
            if theirs != fleet:
                raise ValueError(
                    f"{source} was measured on the {theirs} fleet, this run is on the {fleet} fleet"
                )
            saturation.update({k: float(v["rate"]) for k, v in doc.get("saturation", {}).items()})
    saturation.update(args.saturation)
    routers: tuple[str, ...] = args.routers or ()
    if args.smoke and not routers:
        routers = ("epp:default", "envoy-rr", "sglang", "vllm")
    if args.smoke and not args.saturation and not args.saturation_from and not args.merge:
        # a fleet with slower hardware classes gets its share of the smoke rates
        rates = sizing.start_rates if gpus else base.start_rates
        saturation = {w: rates[w] for w in workloads}
    for r in (*routers, *args.search_with):
        parse_router(r)  # raises ValueError early for a bad name or a missing profile
    if args.factor <= 1:
        raise ValueError("--factor must be > 1")
    slo = slo_options(args)
    return QualityOptions(
        sizing=sizing,
        workloads=tuple(workloads),
        routers=routers,
        seed=args.seed,
        saturation=saturation,
        search_with=tuple(args.search_with),
        saturation_factor=args.factor,
        scrape_interval_s=args.scrape_interval,
        ours=args.ours,
        progress=args.progress,
        smoke=args.smoke,
        install_rivals=args.install_rivals,
        pd_prefill=args.pd,
        gpus=gpus,
        slo=slo,
    )


def _say(text: str) -> None:
    print(text, flush=True)


def _line(r: RunRecord) -> str:
    p90 = "-" if r.ttft_p90_ms is None else f"{r.ttft_p90_ms:.0f}"
    line = (
        f"  {r.workload} {r.rate:g}/s {r.router}: p90 TTFT {p90} ms, {r.output_tokens_per_s:.0f} tok/s, "
        f"hit {r.hit_ratio:.3f}/{r.oracle_hit_ratio:.3f}, max/mean {r.balance_requests:.2f}, "
        f"failed {r.errors}+{r.unfinished}"
    )
    return line + slo_summary(r)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        options = options_from_args(args)
    except (ValueError, OSError) as exc:
        print(f"epp bench quality: {exc}", file=sys.stderr)
        return 2
    # the plots need matplotlib; Envoy is needed unless only the rival routers run
    specs = options.specs_to_start
    require("epp bench quality", "bench", modules=("matplotlib",), envoy=any(s.needs_envoy for s in specs))
    status = check_tools("epp bench quality", rival_tools(specs), install=options.install_rivals, say=_say)
    if status:
        return status
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    out_dir = Path(args.out) if args.out else out_dir_default("quality")
    children = Children()
    machine = machine_info()

    partial = out_dir / "quality.partial.json"

    def on_run(record: RunRecord, so_far: QualityResult) -> None:
        _say(_line(record))
        # a long sweep that dies half-way still leaves what it measured
        out_dir.mkdir(parents=True, exist_ok=True)
        so_far.machine = machine
        partial.write_text(json.dumps(so_far.to_json(), indent=1) + "\n")

    async def go(kids: Children) -> QualityResult:
        return await run_quality(options, _say, children=kids, on_run=on_run)

    status, result = run_async_main("epp bench quality", go, children)
    if result is None:
        if partial.exists():
            print(f"epp bench quality: what was measured is in {partial}", file=sys.stderr)
        return status
    from epp.tools.bench.quality_report import render_markdown, write_outputs

    result.machine = {**machine, "load_average_end": machine_info()["load_average"]}
    if args.merge:
        result.merge(json.loads(Path(args.merge).read_text()), args.merge)
    write_outputs(result, out_dir)
    partial.unlink(missing_ok=True)
    _say("")
    _say(render_markdown(result))
    _say(f"results in {out_dir}/ (quality.json, quality.md, quality-*.png)")
    # sheddable requests refused with 429 are what --sheddable asks of the router, not failures
    failed = sum(r.failed - r.shed for r in result.runs if r.purpose == "sweep")
    if failed:
        print(f"epp bench quality: {failed} requests failed or did not finish", file=sys.stderr)
        return 1
    return 0
