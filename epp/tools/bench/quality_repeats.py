"""Medians over repeated `epp bench quality` runs: `python -m epp.tools.bench.quality_repeats A B C ...`.

One run of a workload at one rate moves 20-25 % between repeats on the shared 2-vCPU VM (p90 of a few
hundred requests, and whatever else the machine does), as much as the differences the goals ask about.
Repeat the same command with other seeds (`--seed 1`, `--seed 2`, with `--saturation-from` the first so the
rates and SLOs stay the same) and give this tool the output directories (or their quality.json files).

Per workload and router (the sweep runs at `--multiplier`, 1 by default): the median, lowest and highest p90
TTFT, the median SLO attainment, hit ratio and TTFT prediction error. With `--ours R`: in each repeat R's p90
divided by the best of the `--rivals` in that repeat, and R's attainment minus theirs (pairs from the same
run share the machine's state), then the median of those over the repeats.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Cell", "Summary", "main", "summarise"]

DEFAULT_RIVALS = ("sglang-router", "vllm-router")


@dataclass
class Cell:
    """One router on one workload over the repeats that ran it."""

    p90_ms: list[float] = field(default_factory=list)
    attainment: list[float] = field(default_factory=list)
    hit_ratio: list[float] = field(default_factory=list)
    prediction_error_pct: list[float] = field(default_factory=list)


@dataclass
class Summary:
    repeats: int
    cells: dict[str, dict[str, Cell]]  # workload -> router -> cell
    ratios: dict[str, list[float]]  # workload -> ours / best rival p90, per repeat
    attainment_gain: dict[str, list[float]]  # workload -> ours - best rival attainment (points), per repeat

    def as_markdown(self, ours: str = "") -> str:
        lines = [
            f"{self.repeats} repeats; medians (lowest-highest p90)",
            "",
            "| workload | router | p90 TTFT (ms) | SLO met | hit ratio | TTFT prediction error |",
            "|---|---|---|---|---|---|",
        ]
        for workload, routers in self.cells.items():
            for router, c in routers.items():
                p90 = f"{_median(c.p90_ms):.0f} ({min(c.p90_ms):.0f}-{max(c.p90_ms):.0f})"
                err = f"{_median(c.prediction_error_pct):.0f} %" if c.prediction_error_pct else ""
                name = f"**{router}**" if router == ours else router
                met, hit = _fmt(c.attainment, ".3f"), _fmt(c.hit_ratio, ".3f")
                lines.append(f"| {workload} | {name} | {p90} | {met} | {hit} | {err} |")
        if ours and self.ratios:
            lines += ["", f"{ours} against the best rival of the same repeat:", ""]
            lines += ["| workload | p90 ratio per repeat | median | SLO points per repeat | median |"]
            lines += ["|---|---|---|---|---|"]
            for workload, ratios in self.ratios.items():
                gains = self.attainment_gain.get(workload, [])
                lines.append(
                    f"| {workload} | {', '.join(f'{r:.2f}' for r in ratios)} | {_median(ratios):.2f} "
                    f"| {', '.join(f'{g:+.0f}' for g in gains)} | {_fmt(gains, '+.0f')} |"
                )
        return "\n".join(lines)


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _fmt(values: Sequence[float], spec: str) -> str:
    return format(_median(values), spec) if values else ""


def _load(path: Path) -> dict[str, Any]:
    file = path / "quality.json" if path.is_dir() else path
    data: dict[str, Any] = json.loads(file.read_text())
    return data


def _sweeps(report: dict[str, Any], multiplier: float) -> list[dict[str, Any]]:
    return [
        r
        for r in report.get("runs", [])
        if r.get("purpose") == "sweep" and abs(float(r.get("multiplier", 0.0)) - multiplier) < 1e-9
    ]


def summarise(
    reports: Sequence[dict[str, Any]],
    *,
    ours: str = "",
    rivals: Sequence[str] = DEFAULT_RIVALS,
    multiplier: float = 1.0,
) -> Summary:
    cells: dict[str, dict[str, Cell]] = {}
    ratios: dict[str, list[float]] = {}
    gains: dict[str, list[float]] = {}
    for report in reports:
        by_workload: dict[str, dict[str, dict[str, Any]]] = {}
        for run in _sweeps(report, multiplier):
            workload, router = run["workload"], run["router"]
            by_workload.setdefault(workload, {})[router] = run
            cell = cells.setdefault(workload, {}).setdefault(router, Cell())
            cell.p90_ms.append(float(run["ttft_p90_ms"]))
            if run.get("slo_attainment") is not None:
                cell.attainment.append(float(run["slo_attainment"]))
            cell.hit_ratio.append(float(run.get("hit_ratio", 0.0)))
            error = (run.get("prediction_error") or {}).get("ttft_after_median_pct")
            if error is not None:
                cell.prediction_error_pct.append(float(error))
        for workload, runs in by_workload.items():
            mine = runs.get(ours)
            theirs = [runs[r] for r in rivals if r in runs]
            if mine is None or not theirs:
                continue
            best = min(theirs, key=lambda r: float(r["ttft_p90_ms"]))
            ratios.setdefault(workload, []).append(float(mine["ttft_p90_ms"]) / float(best["ttft_p90_ms"]))
            met = [float(r["slo_attainment"]) for r in theirs if r.get("slo_attainment") is not None]
            if mine.get("slo_attainment") is not None and met:
                gains.setdefault(workload, []).append(100.0 * (float(mine["slo_attainment"]) - max(met)))
    return Summary(len(reports), cells, ratios, gains)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m epp.tools.bench.quality_repeats", description=__doc__.split("\n")[0]
    )
    parser.add_argument("reports", nargs="+", type=Path, help="output directories or quality.json files")
    parser.add_argument("--ours", default="", help="the router compared with the rivals, e.g. epp:slo-aware")
    parser.add_argument("--rivals", default=",".join(DEFAULT_RIVALS), help="comma-separated router names")
    parser.add_argument("--multiplier", type=float, default=1.0, help="which sweep rate (x saturation)")
    args = parser.parse_args(argv)
    try:
        reports = [_load(p) for p in args.reports]
    except (OSError, ValueError) as exc:
        print(f"quality_repeats: {exc}", file=sys.stderr)
        return 2
    rivals = [r for r in args.rivals.split(",") if r]
    summary = summarise(reports, ours=args.ours, rivals=rivals, multiplier=args.multiplier)
    print(summary.as_markdown(args.ours))
    return 0


if __name__ == "__main__":
    sys.exit(main())
