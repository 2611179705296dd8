"""One scheduling profile: filters in order, then weighted scorers, then a picker.

The profile owns the cross-cutting rules so plugins stay simple: filters stop early when nothing is left,
each score is clamped to [0, 1] before it is multiplied by its weight (totals are plain sums, as upstream),
every plugin call is timed, and a plugin exception fails this profile run instead of the request stream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat

from epp.framework.cycle import CycleState
from epp.framework.plugins import Filter, Picker, Scorer
from epp.framework.types import Endpoint, InferenceRequest, ProfileRunResult, ScoredEndpoints
from epp.scheduling.observer import SchedulerObserver
from epp.scheduling.spans import Span, TracedFilter, TracedPicker, TracedScorer
from epp.scheduling.trace import ProfileTrace

__all__ = ["ProfileFailure", "SchedulerProfile", "WeightedScorer"]

log = logging.getLogger(__name__)

_perf = time.perf_counter
_ZEROS = repeat(0.0)


@dataclass(frozen=True, slots=True)
class WeightedScorer:
    """A scorer and how much it counts in its profile (the scorer itself never knows its weight)."""

    scorer: Scorer
    weight: float


class ProfileFailure(Exception):
    """Why a profile run produced no result (kept for the error message and the trace)."""


@dataclass(frozen=True, slots=True)
class SchedulerProfile:
    name: str
    filters: tuple[Filter, ...]
    scorers: tuple[WeightedScorer, ...]
    picker: Picker
    _weights: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_weights", tuple(ws.weight for ws in self.scorers))

    def run(
        self,
        cycle: CycleState,
        request: InferenceRequest,
        candidates: Sequence[Endpoint],
        observer: SchedulerObserver,
        trace: ProfileTrace | None = None,
        span: Span | None = None,
    ) -> ProfileRunResult:
        """Run the profile; raises ProfileFailure when no endpoint survives or a plugin fails.

        `span` (a traced request): this profile run's span; every plugin call becomes a child of it.
        """
        if span is not None:
            return self.traced(span).run(cycle, request, candidates, observer, trace)
        endpoints: Sequence[Endpoint] = candidates
        for flt in self.filters:
            start = _perf()
            try:
                endpoints = flt.filter(cycle, request, endpoints)
            except Exception as exc:
                log.exception("filter %s failed", flt.typed_name)
                raise ProfileFailure(f"filter '{flt.typed_name.name}' failed: {exc!r}") from exc
            finally:
                observer.plugin_duration("Filter", flt.typed_name, _perf() - start)
            if trace is not None:
                trace.filters.append((flt.typed_name.name, tuple(e.key for e in endpoints)))
            if not endpoints:
                raise ProfileFailure(f"no endpoints left after filter '{flt.typed_name.name}'")
        if not endpoints:
            raise ProfileFailure("no candidate endpoints")

        keys = [e.key for e in endpoints]
        columns: list[list[float]] = []
        for ws in self.scorers:
            scorer = ws.scorer
            start = _perf()
            try:
                scores = scorer.score(cycle, request, endpoints)
            except Exception as exc:
                log.exception("scorer %s failed", scorer.typed_name)
                raise ProfileFailure(f"scorer '{scorer.typed_name.name}' failed: {exc!r}") from exc
            finally:
                observer.plugin_duration("Scorer", scorer.typed_name, _perf() - start)
            columns.append(_clamped_column(scores, keys))
            if trace is not None:
                trace.scores[scorer.typed_name.name] = (ws.weight, dict(scores))
        totals = _weighted_totals(columns, self._weights, len(keys))
        scored = ScoredEndpoints(endpoints, totals)
        start = _perf()
        try:
            result = self.picker.pick(cycle, request, scored)
        except Exception as exc:
            log.exception("picker %s failed", self.picker.typed_name)
            raise ProfileFailure(f"picker '{self.picker.typed_name.name}' failed: {exc!r}") from exc
        finally:
            observer.plugin_duration("Picker", self.picker.typed_name, _perf() - start)
        if not result.targets:
            raise ProfileFailure(f"picker '{self.picker.typed_name.name}' picked no endpoint")
        if trace is not None:
            trace.totals = dict(zip(keys, totals, strict=True))
            trace.picked = tuple(e.key for e in result.targets)
        return result

    def traced(self, span: Span) -> SchedulerProfile:
        """The same profile with plugins that open a child span of `span` per call (built per traced
        request only, so the untraced path stays the loop above)."""
        return SchedulerProfile(
            name=self.name,
            filters=tuple(TracedFilter(f, span) for f in self.filters),
            scorers=tuple(WeightedScorer(TracedScorer(ws.scorer, span), ws.weight) for ws in self.scorers),
            picker=TracedPicker(self.picker, span),
        )


# ---- combining scores --------------------------------------------------------------------------------
# A profile combines (scorers x endpoints) numbers per request; done element by element in Python this was
# a large share of a request's CPU, so the work is done with whole-list operations, with the same
# arithmetic in the same order as "total = 0.0; total += clamp(score) * weight" per scorer.


def _clamped_column(scores: Mapping[str, float], keys: list[str]) -> list[float]:
    """A scorer's scores aligned with `keys` (a key it left out scores 0), clamped to [0, 1] (NaN is 0)."""
    if len(scores) == len(keys) and list(scores) == keys:  # the usual case: one score per endpoint, in order
        values = list(scores.values())
    else:
        values = list(map(scores.get, keys, _ZEROS))
    total = sum(values)
    if total == total:  # no NaN: check the range on a sorted copy (much cheaper than min() + max())
        ordered = sorted(values)
        if ordered[0] >= 0.0 and ordered[-1] <= 1.0:
            return values
    return [1.0 if v > 1.0 else v if v > 0.0 else 0.0 for v in values]


def _weighted_totals(columns: list[list[float]], weights: tuple[float, ...], n: int) -> list[float]:
    """Per endpoint `((0.0 + c0 * w0) + c1 * w1) + ...`, fused for the common scorer counts."""
    k = len(columns)
    if k == 3:
        w0, w1, w2 = weights
        return [((0.0 + a * w0) + b * w1) + c * w2 for a, b, c in zip(*columns, strict=True)]
    if k == 2:
        w0, w1 = weights
        return [(0.0 + a * w0) + b * w1 for a, b in zip(*columns, strict=True)]
    if k == 1:
        w0 = weights[0]
        return [0.0 + a * w0 for a in columns[0]]
    totals = [0.0] * n
    for column, w in zip(columns, weights, strict=True):
        totals = [t + v * w for t, v in zip(totals, column, strict=True)]
    return totals
