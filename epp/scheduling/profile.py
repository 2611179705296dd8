"""One scheduling profile: filters in order, then weighted scorers, then a picker.

The profile owns the cross-cutting rules so plugins stay simple: filters stop early when nothing is left,
each score is clamped to [0, 1] before it is multiplied by its weight (totals are plain sums, as upstream),
every plugin call is timed, and a plugin exception fails this profile run instead of the request stream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from epp.framework.cycle import CycleState
from epp.framework.plugins import Filter, Picker, Scorer
from epp.framework.types import Endpoint, InferenceRequest, ProfileRunResult, ScoredEndpoint
from epp.scheduling.observer import SchedulerObserver
from epp.scheduling.trace import ProfileTrace

__all__ = ["ProfileFailure", "SchedulerProfile", "WeightedScorer"]

log = logging.getLogger(__name__)

_perf = time.perf_counter


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

    def run(
        self,
        cycle: CycleState,
        request: InferenceRequest,
        candidates: Sequence[Endpoint],
        observer: SchedulerObserver,
        trace: ProfileTrace | None = None,
    ) -> ProfileRunResult:
        """Run the profile; raises ProfileFailure when no endpoint survives or a plugin fails."""
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

        totals = dict.fromkeys((e.key for e in endpoints), 0.0)
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
            weight = ws.weight
            for key, value in scores.items():
                if key in totals:
                    # clamp to [0, 1]; NaN (value != value) counts as 0
                    totals[key] += (1.0 if value > 1.0 else value if value > 0.0 else 0.0) * weight
            if trace is not None:
                trace.scores[scorer.typed_name.name] = (ws.weight, dict(scores))

        scored = [ScoredEndpoint(e, totals[e.key]) for e in endpoints]
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
            trace.totals = totals
            trace.picked = tuple(e.key for e in result.targets)
        return result
