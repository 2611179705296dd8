"""`max-score-picker`: the highest weighted total wins; ties are broken at random.

Equivalent to upstream's shuffle-then-stable-sort; for one endpoint it takes a single pass and draws one
random number only when several endpoints share the best score.
"""

from __future__ import annotations

from collections.abc import Sequence

from epp.framework.cycle import CycleState
from epp.framework.types import (
    Endpoint,
    InferenceRequest,
    ProfileRunResult,
    ScoredEndpoint,
    ScoredEndpoints,
)
from epp.plugins.pickers.base import CountedPicker, picker_type

__all__ = ["MAX_SCORE_PICKER", "MaxScorePicker"]

TYPE_NAME = "max-score-picker"


class MaxScorePicker(CountedPicker):
    __slots__ = ()

    def pick(
        self, cycle: CycleState, request: InferenceRequest, scored: Sequence[ScoredEndpoint]
    ) -> ProfileRunResult:
        if not scored:
            return ProfileRunResult(())
        if self.count == 1:
            return ProfileRunResult((self._best(scored),))
        shuffled = list(scored)
        self._rng.shuffle(shuffled)
        shuffled.sort(key=_neg_score)  # stable: equal scores keep their random order
        return ProfileRunResult(tuple(s.endpoint for s in shuffled[: self.count]))

    def _best(self, scored: Sequence[ScoredEndpoint]) -> Endpoint:
        if isinstance(scored, ScoredEndpoints):
            return self._best_of(scored.endpoints, scored.scores)
        best = scored[0]
        top = best.score
        ties: list[ScoredEndpoint] | None = None
        for s in scored[1:]:
            score = s.score
            if score > top:
                best, top, ties = s, score, None
            elif score == top:
                if ties is None:
                    ties = [best]
                ties.append(s)
        if ties is not None:
            best = ties[self._rng.randrange(len(ties))]
        return best.endpoint

    def _best_of(self, endpoints: Sequence[Endpoint], scores: Sequence[float]) -> Endpoint:
        """`_best` on the engine's parallel lists, without building a ScoredEndpoint per endpoint: the
        same winner and the same random draw (only when several endpoints share the best score)."""
        top = max(scores)
        if top != top:  # NaN first: max() and the loop agree only on well-ordered values
            return self._best([ScoredEndpoint(e, s) for e, s in zip(endpoints, scores, strict=True)])
        if scores.count(top) == 1:
            return endpoints[scores.index(top)]
        ties = [i for i, s in enumerate(scores) if s == top]
        return endpoints[ties[self._rng.randrange(len(ties))]]


def _neg_score(s: ScoredEndpoint) -> float:
    return -s.score


MAX_SCORE_PICKER = picker_type(
    TYPE_NAME, MaxScorePicker, "Picks the highest weighted totals, breaking ties at random."
)
