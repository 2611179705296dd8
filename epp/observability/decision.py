"""The full decision table logged at TRACE: every candidate, every filter's cut, every scorer's score.

`ScoreTable(trace)` renders lazily (only when a handler formats the line), so building the log call
costs nothing more than the trace itself. One block per profile run:

    profile 'default': 3 candidates, picked 10.0.0.1:8000
      endpoint       queue-scorer x2  kv-cache-utilization-scorer x2  total
    * 10.0.0.1:8000  1.0000           0.5000                          3.0000
      10.0.0.2:8000  0.0000           1.0000                          2.0000
      10.0.0.3:8000  removed by filter least-queue

Scores are the plugins' raw values (the profile clamps each to [0, 1] before weighting); `total` is the
weighted sum the picker saw. `*` marks the picked endpoint(s).
"""

from __future__ import annotations

from epp.scheduling.trace import DecisionTrace, ProfileTrace

__all__ = ["ScoreTable", "profile_table"]


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def profile_table(p: ProfileTrace) -> list[str]:
    """The lines of one profile's block (header line first)."""
    picked = set(p.picked)
    head = f"profile '{p.profile}': {len(p.candidates)} candidates"
    if p.failure:
        head += f", failed: {p.failure}"
    elif p.picked:
        head += f", picked {','.join(p.picked)}"
    lines = [head]
    removed: dict[str, str] = {}
    survivors = list(p.candidates)
    for name, keys in p.filters:
        kept = set(keys)
        for key in survivors:
            if key not in kept:
                removed[key] = name
        survivors = [k for k in survivors if k in kept]
    scorers = list(p.scores.items())
    columns = ["endpoint", *(f"{name} x{weight:g}" for name, (weight, _) in scorers), "total"]
    ranked = sorted(survivors, key=lambda k: p.totals.get(k, 0.0), reverse=True)
    rows: list[list[str]] = []
    for key in ranked:
        row = [key, *(_score(scores.get(key)) for _, (_, scores) in scorers)]
        row.append(_score(p.totals.get(key)) if p.totals else "-")
        rows.append(row)
    widths = [max(len(r[i]) for r in [columns, *rows]) for i in range(len(columns))]

    def fmt(mark: str, cells: list[str]) -> str:
        return (mark + " " + "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))).rstrip()

    lines.append(fmt(" ", columns))
    for key, row in zip(ranked, rows, strict=True):
        lines.append(fmt("*" if key in picked else " ", row))
    for key in p.candidates:
        if key in removed:
            lines.append(f"  {key.ljust(widths[0])}  removed by filter {removed[key]}")
    return lines


class ScoreTable:
    """A log argument that renders a `DecisionTrace` as text tables when (and only when) formatted."""

    __slots__ = ("trace",)

    def __init__(self, trace: DecisionTrace) -> None:
        self.trace = trace

    def __str__(self) -> str:
        lines: list[str] = []
        if self.trace.primary:
            lines.append(f"primary profile '{self.trace.primary}'")
        for p in self.trace.profiles:
            lines.extend(profile_table(p))
        return "\n".join(lines)
