"""Summaries of a load run: latency percentiles, throughput, errors, requests per backend.

Percentiles interpolate linearly between order statistics (numpy's default), over successful requests
only; a run with no successful request has None percentiles.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from epp.tools.loadgen.runner import RunResult

__all__ = ["RunSummary", "percentile", "summarize"]


def percentile(values: Iterable[float], q: float) -> float | None:
    """The `q`-th percentile (0..100) of `values`, linearly interpolated; None when empty."""
    if not 0 <= q <= 100:
        raise ValueError(f"q must be within 0..100, got {q}")
    data = sorted(values)
    if not data:
        return None
    pos = (len(data) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


@dataclass(frozen=True, slots=True)
class RunSummary:
    """The client's view of a run (seconds, tokens). `by_backend` counts successful requests."""

    requests: int
    ok: int
    errors: int
    unfinished: int
    duration_s: float
    ttft_p50_s: float | None
    ttft_p90_s: float | None
    ttft_p99_s: float | None
    e2e_p50_s: float | None
    e2e_p90_s: float | None
    output_tokens: int
    output_tokens_per_s: float
    cached_tokens: int
    prompt_tokens: int
    by_backend: dict[str, int] = field(default_factory=dict)
    error_kinds: dict[str, int] = field(default_factory=dict)

    @property
    def client_hit_ratio(self) -> float:
        """Cached / prompt tokens as the responses' usage reported them."""
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


def _error_kind(error: str) -> str:
    return error.split(":", 1)[0]


def summarize(run: RunResult) -> RunSummary:
    """Summarize `run` (finished requests; unfinished ones are only counted)."""
    ok = [r for r in run.results if r.ok]
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    e2e = [r.e2e_s for r in ok]
    output = sum(r.output_tokens for r in ok)
    errors = Counter(_error_kind(r.error) for r in run.results if r.error is not None)
    backends = Counter(r.backend or "?" for r in ok)
    return RunSummary(
        requests=len(run.results) + run.unfinished,
        ok=len(ok),
        errors=len(run.results) - len(ok),
        unfinished=run.unfinished,
        duration_s=run.duration_s,
        ttft_p50_s=percentile(ttft, 50),
        ttft_p90_s=percentile(ttft, 90),
        ttft_p99_s=percentile(ttft, 99),
        e2e_p50_s=percentile(e2e, 50),
        e2e_p90_s=percentile(e2e, 90),
        output_tokens=output,
        output_tokens_per_s=output / run.duration_s if run.duration_s > 0 else 0.0,
        cached_tokens=sum(r.cached_tokens for r in ok),
        prompt_tokens=sum(r.prompt_tokens for r in ok),
        by_backend=dict(sorted(backends.items())),
        error_kinds=dict(errors),
    )
