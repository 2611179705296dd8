"""What `epp bench quality` writes: JSON, a markdown report (tables, goal checks) and PNG plots.

`write_outputs(result, out_dir)` writes `quality.json`, `quality.md` and one `quality-<workload>.png`
per workload (TTFT p90 and output tokens/s against the offered rate, one line per router; matplotlib
with the Agg backend, so no display is needed). The goal checks compare "ours" (the recommended
profile when it ran, else `epp:default`, or `--ours`) with the best rival at each rate, the rival
with the lower p90 TTFT there, as the benchmark issue states its goals.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from epp.tools.bench.quality import WARM_AFTER_S, WORKLOADS, QualityResult, RunRecord
from epp.tools.bench.quality_slo import CRITICAL, SHEDDABLE, fmt_pct, fmt_share

__all__ = ["GoalCheck", "check_goals", "render_markdown", "render_slo_table", "write_outputs", "write_plots"]

RIVALS = ("sglang-router", "vllm-router")


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _sweep(result: QualityResult, workload: str) -> list[RunRecord]:
    """The sweep rows of `workload` by rate, then in the order the routers were listed."""
    measured = list(dict.fromkeys(r.router for r in result.runs))
    try:
        listed = [spec.name for spec in result.options.router_specs]
    except ValueError:  # a profile of an earlier run that is gone: keep the measured order
        listed = []
    order = {name: i for i, name in enumerate(listed + [n for n in measured if n not in listed])}
    rows = [r for r in result.runs if r.workload == workload and r.purpose == "sweep"]
    return sorted(rows, key=lambda r: (r.rate, order.get(r.router, len(order))))


def workloads_of(result: QualityResult) -> list[str]:
    """The workloads with sweep rows, in the canonical order (merged reports included)."""
    present = {r.workload for r in result.runs if r.purpose == "sweep"} | set(result.options.workloads)
    return [w for w in WORKLOADS if w in present] + sorted(present - set(WORKLOADS))


def ours_name(result: QualityResult) -> str:
    names = {r.router for r in result.runs}
    if result.options.ours:
        return result.options.ours
    return "epp:recommended" if "epp:recommended" in names else "epp:default"


@dataclass(frozen=True, slots=True)
class GoalCheck:
    goal: str
    workload: str
    multiplier: float
    ours: str
    rival: str | None
    ratio: float | None  # ours / best rival p90 TTFT
    limit: float
    met: bool
    note: str = ""


def _best_rival(runs: Iterable[RunRecord]) -> RunRecord | None:
    rivals = [r for r in runs if r.router in RIVALS and r.ttft_p90_ms is not None]
    return min(rivals, key=lambda r: r.ttft_p90_ms or 0.0, default=None)


def check_goals(result: QualityResult, ours: str | None = None) -> list[GoalCheck]:
    """Issue 10's goals for router `ours` on what the sweep measured (skipped where not measured)."""
    ours = ours or ours_name(result)
    goals: list[tuple[str, str, float, float, str]] = [
        ("zipf", "zipf at 1.0x: p90 TTFT <= 0.5x best rival, hit >= rival, no errors", 1.0, 0.5, "hit"),
        ("zipf", "zipf at 1.2x: p90 TTFT <= 0.5x best rival, hit >= rival, no errors", 1.2, 0.5, "hit"),
        ("mixed", "mixed at 1.0x: p90 TTFT <= 0.8x best rival", 1.0, 0.8, ""),
        ("shared_prefix", "shared_prefix below saturation: p90 <= 1.1x best rival", 0.5, 1.1, ""),
        ("shared_prefix", "shared_prefix below saturation: p90 <= 1.1x best rival", 0.8, 1.1, ""),
        ("shared_prefix", "shared_prefix above saturation: p90 < best rival", 1.2, 1.0, ""),
        ("multiturn", "multiturn below saturation: p90 <= 1.1x best rival", 0.5, 1.1, ""),
        ("multiturn", "multiturn below saturation: p90 <= 1.1x best rival", 0.8, 1.1, ""),
        ("multiturn", "multiturn above saturation: p90 < best rival", 1.2, 1.0, ""),
    ]
    out: list[GoalCheck] = []
    for workload, text, mult, limit, extra in goals:
        runs = [r for r in _sweep(result, workload) if r.multiplier == mult]
        mine = next((r for r in runs if r.router == ours), None)
        rival = _best_rival(runs)
        if mine is None or rival is None:
            continue
        ratio = None
        if mine.ttft_p90_ms is not None and rival.ttft_p90_ms:
            ratio = mine.ttft_p90_ms / rival.ttft_p90_ms
        # sheddable requests refused with 429 (`--sheddable`) are not failures
        failed = mine.failed - mine.shed
        met = ratio is not None and (ratio <= limit if limit != 1.0 else ratio < 1.0) and failed == 0
        notes = []
        if failed:
            notes.append(f"{mine.errors} errors, {mine.unfinished} unfinished")
        if extra == "hit":
            rival_hit = max(r.hit_ratio for r in runs if r.router in RIVALS)
            notes.append(f"hit {mine.hit_ratio:.3f} vs {rival_hit:.3f}")
            met = met and mine.hit_ratio >= rival_hit
        out.append(GoalCheck(text, workload, mult, ours, rival.router, ratio, limit, met, "; ".join(notes)))
    return out


def _rate_label(r: RunRecord) -> str:
    return f"{r.rate:g} ({r.multiplier:g}x)" if r.multiplier is not None else f"{r.rate:g}"


def render_workload_table(result: QualityResult, workload: str) -> str:
    runs = _sweep(result, workload)
    if not runs:
        return ""
    by_kind = workload == "mixed"
    head = f"| rate/s (x sat) | router | TTFT p50 | p90 | p90 after {WARM_AFTER_S:g} s | p99 | p90 at server "
    head += "| e2e p90 | out tok/s | hit / oracle | max/mean req | max/mean busy | err / unfin |"
    sep = "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    if by_kind:
        head += " p90 shared / unique |"
        sep += "---|"
    lines = [head, sep]
    for r in runs:
        row = (
            f"| {_rate_label(r)} | {r.router} | {_fmt(r.ttft_p50_ms)} | {_fmt(r.ttft_p90_ms)} | "
            f"{_fmt(r.ttft_p90_warm_ms)} | {_fmt(r.ttft_p99_ms)} | {_fmt(r.server_ttft_p90_ms)} | "
            f"{_fmt(r.e2e_p90_ms)} | "
            f"{r.output_tokens_per_s:.0f} | "
            f"{r.hit_ratio:.3f} / {r.oracle_hit_ratio:.3f} | {r.balance_requests:.2f} | "
            f"{r.balance_busy:.2f} | {r.errors} / {r.unfinished} |"
        )
        if by_kind:
            k = r.ttft_p90_ms_by_kind
            row += f" {_fmt(k.get('shared'))} / {_fmt(k.get('unique'))} |"
        lines.append(row)
    return "\n".join(lines)


def render_slo_table(result: QualityResult, workload: str) -> str:
    """The workload's latency-SLO table: TTFT SLO attainment (per class with `--sheddable`: met, refused
    with 429, served late) and the latency predictor's median error; "" when neither was measured."""
    runs = [r for r in _sweep(result, workload) if r.ttft_slo_ms is not None or r.prediction_error]
    if not runs:
        return ""
    slo = any(r.ttft_slo_ms is not None for r in runs)
    mixed = any(SHEDDABLE in r.slo_classes for r in runs)
    errors = any(r.prediction_error for r in runs)
    after = result.options.slo.prediction_after_s
    head = ["rate/s (x sat)", "router"]
    if slo:
        head += ["SLO ms", "met"]
    if mixed:
        head += ["critical met", "sheddable met", "sheddable 429 / late", "critical 429 / late"]
    if errors:
        head += ["TTFT pred. err. median (n)", f"after {after:g} s (n)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        row = [_rate_label(r), r.router]
        if slo:
            row += [_fmt(r.ttft_slo_ms), fmt_share(r.slo_attainment)]
        if mixed:
            crit = r.slo_classes.get(CRITICAL, {})
            shed = r.slo_classes.get(SHEDDABLE, {})
            row += [
                fmt_share(crit.get("attainment")),
                fmt_share(shed.get("attainment")),
                f"{shed.get('rejected', 0)} / {shed.get('late', 0)}",
                f"{crit.get('rejected', 0)} / {crit.get('late', 0)}",
            ]
        if errors:
            e = r.prediction_error
            if e:
                row.append(f"{fmt_pct(e.get('ttft_median_pct'))} ({e.get('ttft_count', 0)})")
                row.append(f"{fmt_pct(e.get('ttft_after_median_pct'))} ({e.get('ttft_after_count', 0)})")
            else:
                row += ["-", "-"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def render_goals(checks: Sequence[GoalCheck]) -> str:
    if not checks:
        return ""
    lines = ["| goal | ours | best rival | ours / rival p90 | met | note |", "|---|---|---|---|---|---|"]
    for c in checks:
        ratio = "-" if c.ratio is None else f"{c.ratio:.2f}"
        lines.append(
            f"| {c.goal} | {c.ours} | {c.rival} | {ratio} | {'yes' if c.met else '**no**'} | {c.note} |"
        )
    return "\n".join(lines)


def _fleet(result: QualityResult) -> str:
    """The fleet's hardware: KV blocks, and with hardware classes which simulator has which."""
    o = result.options
    if not o.gpus:
        return f"{o.sizing.kv_blocks} KV blocks x 16 tokens each"
    classes = ", ".join(f"sim-{i} {g}" for i, g in enumerate(o.gpus))
    return (
        f"**{o.fleet} fleet** ({classes}; `epp sim --gpu`, labelled `nvidia.com/gpu.product` for the EPP), "
        f"{o.sizing.kv_blocks} KV blocks x 16 tokens per H100-class simulator"
    )


def render_markdown(result: QualityResult) -> str:
    o = result.options
    m = result.machine
    sz = o.sizing
    lines = [
        f"# epp bench quality{' (smoke)' if o.smoke else ''}",
        "",
        f"Machine: {m.get('nproc')} CPUs ({m.get('cpu_model')}), load average at start "
        f"{m.get('load_average')}, Python {m.get('python')}, Envoy {m.get('envoy')}; "
        f"tools: {', '.join(f'{v}' for v in result.tools.values()) or '-'}.",
        f"Fleet: {sz.servers} simulators, {_fleet(result)}, time scale "
        f"{sz.time_scale:g}; EPP scrape interval {o.scrape_interval * 1000:.0f} ms. "
        f"{sz.duration_s:g} s of Poisson arrivals per run; seed {o.seed}. "
        f"Total {result.total_s / 60:.1f} min.",
        "",
        "Times in ms (wall clock); TTFT as the client saw it, p90 at server as the simulators measured it "
        f"(from arrival at the engine, so without the router and the network); p90 after {WARM_AFTER_S:g} s "
        f"over the requests sent after the run's first {WARM_AFTER_S:g} s (every run starts with empty "
        "caches, so its first "
        "seconds carry most prompt groups' first, uncached request). "
        "hit = prefix-cache hit ratio from the simulators' counters (tokens); "
        "oracle = one infinite cache seeing every request. max/mean = busiest server / mean, by requests "
        "and by busy time. err / unfin = failed / never-finished requests.",
        "",
    ]
    if o.slo.enabled or any(r.prediction_error for r in result.runs):
        mix = (
            f" {o.slo.sheddable_share:.0%} of the sessions are sent as objective `sheddable` (priority -1), "
            "the others as `critical` (priority 10); 429 = refused, late = served after the SLO."
            if o.slo.mixed
            else ""
        )
        header = " Every request carried `x-slo-ttft-ms`." if o.slo.header else ""
        lines += [
            "Latency SLOs: met = share of all requests (failed and unfinished ones included) whose TTFT "
            f"met the workload's TTFT SLO.{header}{mix} TTFT pred. err. = the EPP's latency predictor's "
            "median absolute percentage error (`epp_latency_prediction_error_ratio`, interpolated in its "
            "buckets), over the run and over the requests completed after its first "
            f"{o.slo.prediction_after_s:g} s.",
            "",
        ]
    if result.merged:
        mm = result.merged.get("machine", {})
        lines += [
            f"Rows of {', '.join(result.merged.get('routers', [])) or 'no router'} come from "
            f"{result.merged.get('file')} (measured {mm.get('time', 'earlier')}, load average "
            f"{mm.get('load_average')}); the others from this run, at the same rates.",
            "",
        ]
    for workload in workloads_of(result):
        sat = result.saturation.get(workload)
        if sat is None:
            continue
        on = f" on the {sat.fleet} fleet" if sat.fleet and sat.fleet != "default" else ""
        lines += [f"## {workload}", "", f"Saturation rate: {sat.rate:g} req/s{on} ({sat.describe()}).", ""]
        lines += [render_workload_table(result, workload), ""]
        target = result.slo.get(workload)
        table = render_slo_table(result, workload)
        if target is not None or table:
            lines += [f"TTFT SLO: {target.describe() if target is not None else 'off'}.", ""]
        if table:
            lines += [table, ""]
    checks = check_goals(result)
    if checks:
        lines += ["## Goals (issue 10)", "", render_goals(checks), ""]
        others = sorted({r.router for r in result.runs if r.router.startswith("epp:")} - {ours_name(result)})
        for name in others:
            extra = check_goals(result, name)
            met = sum(c.met for c in extra)
            lines.append(f"- {name}: {met}/{len(extra)} goals met")
        lines.append("")
    return "\n".join(lines)


def write_plots(result: QualityResult, out_dir: Path) -> list[Path]:
    """One PNG per workload: p90 TTFT (log scale) and output tokens/s against the rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: list[Path] = []
    for workload in workloads_of(result):
        runs = _sweep(result, workload)
        if not runs:
            continue
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
        routers = list(dict.fromkeys(r.router for r in runs))
        for name in routers:
            mine = sorted((r for r in runs if r.router == name), key=lambda r: r.rate)
            style = "-" if name.startswith("epp:") else "--"
            marker = "o" if name.startswith("epp:") else ("s" if name in RIVALS else "^")
            xs = [r.rate for r in mine]
            ax1.plot(xs, [r.ttft_p90_ms or float("nan") for r in mine], style, marker=marker, label=name)
            ax2.plot(xs, [r.output_tokens_per_s for r in mine], style, marker=marker, label=name)
        sat = result.saturation.get(workload)
        for ax in (ax1, ax2):
            if sat is not None and sat.rate:
                ax.axvline(sat.rate, color="grey", linewidth=0.8, linestyle=":")
            ax.set_xlabel("offered rate (requests/s)")
            ax.grid(True, alpha=0.3)
        ax1.set_yscale("log")
        ax1.set_ylabel("TTFT p90 (ms, log)")
        ax2.set_ylabel("output tokens/s")
        ax1.set_title(f"{workload}: p90 TTFT")
        ax2.set_title(f"{workload}: throughput")
        ax2.legend(fontsize=8, loc="best")
        fig.tight_layout()
        path = out_dir / f"quality-{workload}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def write_outputs(result: QualityResult, out_dir: Path) -> dict[str, Any]:
    """Write JSON, markdown and plots into `out_dir`; returns the JSON document."""
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = result.to_json()
    doc["goals"] = [
        {
            "goal": c.goal,
            "workload": c.workload,
            "multiplier": c.multiplier,
            "ours": c.ours,
            "rival": c.rival,
            "ratio": c.ratio,
            "limit": c.limit,
            "met": c.met,
            "note": c.note,
        }
        for c in check_goals(result)
    ]
    (out_dir / "quality.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out_dir / "quality.md").write_text(render_markdown(result))
    write_plots(result, out_dir)
    return doc
