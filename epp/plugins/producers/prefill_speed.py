"""How fast each hardware class gets through prefill work, measured from the requests the EPP routes.

Every request whose first token arrives is one observation of its class: the seconds from dispatch to
first byte, and the prompt tokens that had to be prefilled on that endpoint before it could start (the
pending tokens ahead of it at dispatch plus its own uncached ones). Per class the estimate is

    seconds per token = sum(seconds) / sum(tokens + OFFSET_TOKENS)        (sums decayed per observation)

published in `rates`. `prefill-load-producer` turns them into each candidate's slowdown (its class's rate
over the fastest candidate class's) and `prefill-cost-scorer` multiplies its token cost by that, so on a
pool of mixed GPU generations it weighs the queue on a slow server as the wait it really is.

Why a ratio of sums and not a fitted slope: on the benchmark fleet's samples (4 H100-class + 4
A100-class simulators, prefill 2.25x and step time 1.57x slower) the least-squares slope's A100/H100
ratio ranged 1.5-4.7 between runs, the ratio of sums 1.7-2.3. The offset keeps an idle class (little work
per request, TTFT mostly the engine's fixed step) from looking arbitrarily slow, which would starve it of
work and keep its estimate high.

Not thread-safe on its own: the prefill ledger calls it under its lock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["DECAY", "MIN_OBSERVATIONS", "OFFSET_TOKENS", "PrefillSpeed"]

#: Added to every observation's tokens (see the module docstring).
OFFSET_TOKENS = 256.0
#: Weight kept by the older observations of a class at each new one (about the last 500 count).
DECAY = 1.0 - 1.0 / 512.0
#: Observations a class needs before it has an estimate (and a slowdown).
MIN_OBSERVATIONS = 16


@dataclass(slots=True)
class _Sums:
    seconds: float = 0.0
    tokens: float = 0.0
    count: int = 0


class PrefillSpeed:
    def __init__(self) -> None:
        self._sums: dict[str, _Sums] = {}
        #: class -> seconds per prefill token, for the classes with MIN_OBSERVATIONS; replaced (never
        #: mutated) at each observation, so readers need no lock
        self.rates: Mapping[str, float] = {}

    def observe(self, group: str, seconds: float, tokens: float) -> None:
        if seconds <= 0.0:
            return
        sums = self._sums.get(group)
        if sums is None:
            sums = self._sums[group] = _Sums()
        sums.seconds = sums.seconds * DECAY + seconds
        sums.tokens = sums.tokens * DECAY + max(0.0, tokens) + OFFSET_TOKENS
        sums.count += 1
        if sums.count >= MIN_OBSERVATIONS:
            rates = dict(self.rates)
            rates[group] = sums.seconds / sums.tokens
            self.rates = rates
