"""`epp bench quality`'s latency-SLO measurements (issue 20), in the same runs as the rivals.

- **TTFT SLO** (`--ttft-slo auto|off|MS`): `auto` sets each workload's SLO at `factor` (2) x the p90
  TTFT at light load, measured once per workload before its sweep: a run of the sweep's length by the
  light-load router (`--slo-router`, default the first `--search-with` router, sglang-router) at
  `light` (0.2) x the workload's saturation rate. `MS` is one SLO for every workload. A request meets
  the SLO when it succeeded and its TTFT (as the client saw it) is within it; failed and unfinished
  requests count as missed. With `--slo-header` every request carries `x-slo-ttft-ms` (SLO-aware
  profiles use it; Envoy and the rivals ignore it).
- **Critical / sheddable mix** (`--sheddable SHARE`): that share of the sessions (seeded, the same for
  every router) is sent as objective `sheddable` (priority -1), the others as `critical` (priority 10),
  in `x-gateway-inference-objective`; the EPP gets both objectives through `--static-objectives`. Each
  class reports its attainment, its 429s (refused; in `multiturn` the turns a refusal left unsent too),
  its late answers (served, TTFT over the SLO) and its other failures.
- **Prediction error**: an EPP whose profile has the `predicted-latency-producer` exports
  `epp_latency_prediction_error_ratio{type}` (|predicted - observed| / observed per completed request).
  Its histogram is read from the EPP's /metrics before the run, `prediction_after_s` into the run and
  at its end; the report gives the median absolute percentage error (interpolated in the histogram's
  buckets, as Prometheus' `histogram_quantile`) over the whole run and over the requests that completed
  after `prediction_after_s` (the model is trained online from the run's own first requests).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

from prometheus_client.parser import text_string_to_metric_families

from epp.metadata import OBJECTIVE_HEADER, SLO_TTFT_HEADER
from epp.tools.loadgen.client import RequestResult
from epp.tools.loadgen.workloads import Workload

__all__ = [
    "ALL",
    "CRITICAL",
    "ERROR_METRIC",
    "OBJECTIVES",
    "SHEDDABLE",
    "ClassAttainment",
    "SloOptions",
    "SloRecord",
    "SloTarget",
    "attainment",
    "error_buckets",
    "fmt_pct",
    "fmt_share",
    "histogram_quantile",
    "parse_ttft_slo",
    "prediction_error",
    "request_class",
    "session_classes",
    "session_turns",
    "slo_from_light",
    "slo_summary",
    "tag_workload",
]

CRITICAL = "critical"
SHEDDABLE = "sheddable"
ALL = "all"
#: the objectives the EPP gets (`--static-objectives`) when a run mixes classes
OBJECTIVES = {CRITICAL: 10, SHEDDABLE: -1}
ERROR_METRIC = "epp_latency_prediction_error_ratio"


def parse_ttft_slo(text: str) -> str:
    """`off`, `auto` or a positive number of milliseconds (returned as given, normalized)."""
    value = text.strip().lower()
    if value in ("off", "auto"):
        return value
    try:
        ms = float(value.removesuffix("ms"))
    except ValueError:
        raise ValueError(f"expected auto, off or milliseconds, got {text!r}") from None
    if not ms > 0 or not math.isfinite(ms):
        raise ValueError(f"the TTFT SLO must be > 0 ms, got {text!r}")
    return f"{ms:g}"


@dataclass(frozen=True, slots=True)
class SloOptions:
    """What `epp bench quality` measures about latency SLOs (all off by default)."""

    ttft: str = "off"  # "off", "auto" or milliseconds (`parse_ttft_slo`)
    factor: float = 2.0  # auto: SLO = factor x the light-load p90 TTFT
    light: float = 0.2  # auto: light load = light x the saturation rate
    router: str = ""  # auto: the light-load router ("" = the first --search-with router)
    header: bool = False  # send x-slo-ttft-ms with every request
    sheddable_share: float = 0.0  # share of sessions sent as sheddable (the others critical)
    prediction_after_s: float = 10.0  # prediction error also over the requests completed after this
    given: Mapping[str, float] = field(default_factory=dict)  # auto: SLOs (ms) already known per workload

    @property
    def enabled(self) -> bool:
        return self.ttft != "off"

    @property
    def auto(self) -> bool:
        return self.ttft == "auto"

    @property
    def fixed_ms(self) -> float | None:
        return float(self.ttft) if self.enabled and not self.auto else None

    @property
    def mixed(self) -> bool:
        return self.sheddable_share > 0.0

    def light_router(self, search_with: Sequence[str]) -> str | None:
        """The router of the light-load runs (None: no SLO to search)."""
        if not self.auto:
            return None
        return self.router or (search_with[0] if search_with else "sglang")

    def objectives_flag(self) -> list[str]:
        """The EPP's extra flags: the two objectives when classes are mixed."""
        if not self.mixed:
            return []
        return ["--static-objectives", ",".join(f"{k}={v}" for k, v in OBJECTIVES.items())]

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["given"] = dict(self.given)
        return doc


@dataclass(slots=True)
class SloTarget:
    """One workload's TTFT SLO and where it came from (`auto`: a light-load run; `fixed`; `given`)."""

    workload: str
    ttft_ms: float | None
    source: str
    light_router: str = ""
    light_rate: float = 0.0
    light_p90_ms: float | None = None
    factor: float = 0.0

    def describe(self) -> str:
        if self.ttft_ms is None:
            return "none (the light-load run had no successful request)"
        if self.source == "auto":
            return (
                f"{self.ttft_ms:g} ms = {self.factor:g} x the p90 TTFT {self.light_p90_ms:g} ms of "
                f"{self.light_router} at {self.light_rate:g}/s (light load)"
            )
        if self.source == "given":
            return f"{self.ttft_ms:g} ms (from an earlier run)"
        return f"{self.ttft_ms:g} ms (fixed)"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> SloTarget:
        return cls(**dict(doc))


def slo_from_light(light_p90_ms: float | None, factor: float) -> float | None:
    """The auto SLO: `factor` x the light-load p90 TTFT, whole milliseconds (None without one)."""
    if light_p90_ms is None:
        return None
    return float(max(1, round(factor * light_p90_ms)))


# ---- request classes and headers -------------------------------------------------------------------


def request_class(seed: int, session_id: str, share: float) -> str:
    """`sheddable` for a seeded `share` of the sessions, else `critical` (the same for every router)."""
    if share <= 0.0:
        return CRITICAL
    draw = zlib.crc32(f"{seed}:{session_id}".encode()) / 2**32
    return SHEDDABLE if draw < share else CRITICAL


def tag_workload(workload: Workload, slo: SloOptions, seed: int, ttft_ms: float | None) -> Workload:
    """`workload` with the headers of `slo` on every session: the objective of its class (mixed runs)
    and `x-slo-ttft-ms` (with `header` and an SLO)."""
    send_slo = slo.header and ttft_ms is not None
    if not slo.mixed and not send_slo:
        return workload
    sessions = []
    for s in workload.sessions:
        headers = dict(s.headers)
        if slo.mixed:
            headers[OBJECTIVE_HEADER] = request_class(seed, s.id, slo.sheddable_share)
        if send_slo and ttft_ms is not None:
            headers[SLO_TTFT_HEADER] = f"{ttft_ms:g}"
        sessions.append(replace(s, headers=tuple(headers.items())))
    return replace(workload, sessions=tuple(sessions))


def session_classes(workload: Workload, slo: SloOptions, seed: int) -> dict[str, str]:
    """Each session's class (every one `critical` when classes are not mixed)."""
    return {s.id: request_class(seed, s.id, slo.sheddable_share) for s in workload.sessions}


# ---- attainment ------------------------------------------------------------------------------------


@dataclass(slots=True)
class ClassAttainment:
    """Requests of one class: met the SLO, refused with 429, served late, or failed otherwise."""

    requests: int = 0
    met: int = 0
    rejected: int = 0  # HTTP 429
    late: int = 0  # succeeded with a TTFT over the SLO (or without a first token)
    failed: int = 0  # other errors and unfinished requests

    @property
    def attainment(self) -> float | None:
        return self.met / self.requests if self.requests else None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = asdict(self)
        rate = self.attainment
        doc["attainment"] = None if rate is None else round(rate, 4)
        return doc


def attainment(
    results: Iterable[RequestResult], sessions: Mapping[str, tuple[str, int]], slo_ms: float
) -> dict[str, ClassAttainment]:
    """Per class (and `all`): who met `slo_ms`. `sessions` = each session's class and number of turns
    (`session_turns`); turns missing from `results` never finished, or were not sent because an earlier
    turn of their conversation failed: after a 429 they count as refused too, else as failed."""
    out = {name: ClassAttainment() for name in (ALL, *sorted({c for c, _ in sessions.values()}))}
    answered: dict[str, int] = {}
    refused: set[str] = set()
    limit = slo_ms / 1000.0
    for r in results:
        name = sessions.get(r.session_id, (CRITICAL, 1))[0]
        answered[r.session_id] = answered.get(r.session_id, 0) + 1
        for bucket in (out[ALL], out.setdefault(name, ClassAttainment())):
            bucket.requests += 1
            if r.ok:
                if r.ttft_s is not None and r.ttft_s <= limit:
                    bucket.met += 1
                else:
                    bucket.late += 1
            elif r.status == 429:
                bucket.rejected += 1
                refused.add(r.session_id)
            else:
                bucket.failed += 1
    for session, (name, turns) in sessions.items():
        missing = max(0, turns - answered.get(session, 0))
        for bucket in (out[ALL], out[name]):
            bucket.requests += missing
            if session in refused:
                bucket.rejected += missing
            else:
                bucket.failed += missing
    return out


def session_turns(workload: Workload, classes: Mapping[str, str]) -> dict[str, tuple[str, int]]:
    """Each session's class and number of requests (turns)."""
    return {s.id: (classes.get(s.id, CRITICAL), len(s.turns)) for s in workload.sessions}


# ---- prediction error ------------------------------------------------------------------------------

Buckets = dict[str, list[tuple[float, float]]]  # type -> cumulative (le, count), by le


def error_buckets(page: str) -> Buckets | None:
    """`epp_latency_prediction_error_ratio`'s cumulative buckets per `type` from a /metrics page
    (summed over any other labels); {} before the first prediction, None when the EPP does not export
    the family (no predictor)."""
    sums: dict[str, dict[float, float]] | None = None
    for family in text_string_to_metric_families(page):
        if family.name != ERROR_METRIC:
            continue
        sums = sums if sums is not None else {}
        for sample in family.samples:
            if not sample.name.endswith("_bucket"):
                continue
            kind = sample.labels.get("type", "")
            le = float(sample.labels["le"])
            per = sums.setdefault(kind, {})
            per[le] = per.get(le, 0.0) + float(sample.value)
    return None if sums is None else {k: sorted(v.items()) for k, v in sums.items()}


def _diff(after: Buckets, before: Buckets) -> Buckets:
    out: Buckets = {}
    for kind, buckets in after.items():
        earlier = dict(before.get(kind, ()))
        out[kind] = [(le, max(0.0, count - earlier.get(le, 0.0))) for le, count in buckets]
    return out


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """Prometheus' `histogram_quantile` on cumulative (le, count) buckets: linear within the bucket,
    the highest finite bound when the quantile falls in +Inf; None without observations."""
    if not buckets:
        return None
    total = buckets[-1][1]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return lower
            if count == below:
                return le
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return lower


def prediction_error(
    before: Buckets | None, middle: Buckets | None, after: Buckets | None, after_s: float
) -> dict[str, Any]:
    """The median absolute percentage error per type over the run and after `after_s` (from the three
    scrapes; a missing one leaves its figures out; `ttft_count` 0: the predictor made no prediction, e.g.
    too few samples yet); {} when the EPP has no predictor."""
    if after is None:
        return {}
    out: dict[str, Any] = {"after_s": after_s, "ttft_count": 0}
    whole = _diff(after, before or {})
    late = _diff(after, middle) if middle is not None else {}
    for kind in sorted(whole):
        buckets = whole[kind]
        median = histogram_quantile(0.5, buckets)
        out[f"{kind}_count"] = int(buckets[-1][1]) if buckets else 0
        out[f"{kind}_median_pct"] = None if median is None else round(100 * median, 1)
        if kind in late:
            tail = late[kind]
            median = histogram_quantile(0.5, tail)
            out[f"{kind}_after_count"] = int(tail[-1][1]) if tail else 0
            out[f"{kind}_after_median_pct"] = None if median is None else round(100 * median, 1)
    return out


# ---- what a run shows ------------------------------------------------------------------------------


class SloRecord(Protocol):
    """The SLO fields of a `quality.RunRecord`."""

    ttft_slo_ms: float | None
    slo_attainment: float | None
    slo_classes: dict[str, dict[str, Any]]
    prediction_error: dict[str, Any]


def fmt_share(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def fmt_pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} %"


def slo_summary(r: SloRecord) -> str:
    """The console line's SLO part: attainment (per class when mixed, with the 429s) and the
    predictor's median error ("" when neither was measured)."""
    parts = []
    if r.ttft_slo_ms is not None:
        text = f"SLO {r.ttft_slo_ms:g} ms met {fmt_share(r.slo_attainment)}"
        shed = r.slo_classes.get(SHEDDABLE)
        if shed is not None:
            crit = r.slo_classes.get(CRITICAL, {})
            text += (
                f" (critical {fmt_share(crit.get('attainment'))}, sheddable "
                f"{fmt_share(shed.get('attainment'))}, {shed.get('rejected', 0)} refused with 429)"
            )
        parts.append(text)
    err = r.prediction_error
    if err.get("ttft_count"):
        text = f"TTFT prediction error median {fmt_pct(err.get('ttft_median_pct'))}"
        if err.get("ttft_after_count"):
            text += f" ({fmt_pct(err.get('ttft_after_median_pct'))} after {err.get('after_s', 0):g} s)"
        parts.append(text)
    return "".join(f", {p}" for p in parts)
