"""`LatencyPredictionInfo`: what `predicted-latency-producer` tells the scorer, the filter and the admitter.

One object per request (not one per endpoint: building 64 small objects per request would cost more than
the predictions). Predictions are in milliseconds, as upstream's; headroom = SLO - predicted, so a request
without an SLO header has negative headroom everywhere and the consumers rank by predicted latency alone.
TPOT is *neutral* (always valid, headroom 0) when it is not modelled: outside `streamingMode`, and on
prefill endpoints of a P/D pool.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from epp.framework.cycle import StateKey
from epp.metadata import SLO_TPOT_HEADER, SLO_TTFT_HEADER
from epp.plugins.common import header_value

__all__ = [
    "LATENCY_PREDICTION_INFO",
    "LATENCY_PREDICTION_INFO_KEY",
    "NO_SLO",
    "LatencyPredictionInfo",
    "RequestSlo",
    "request_slo",
]

#: Data-key name (upstream `LatencyPredictionInfoKey`).
LATENCY_PREDICTION_INFO = "LatencyPredictionInfo"


@dataclass(frozen=True, slots=True)
class RequestSlo:
    """The request's SLO headers in milliseconds (0: none, or not a positive number)."""

    ttft_ms: float = 0.0
    tpot_ms: float = 0.0

    @property
    def present(self) -> bool:
        return self.ttft_ms > 0.0 or self.tpot_ms > 0.0


NO_SLO = RequestSlo()


def _ms(text: str | None) -> float:
    if not text:
        return 0.0
    try:
        value = float(text)
    except ValueError:
        return 0.0
    return value if value > 0.0 and math.isfinite(value) else 0.0


def request_slo(headers: Mapping[str, str]) -> RequestSlo:
    """`x-slo-ttft-ms` / `x-slo-tpot-ms` as upstream reads them (a missing or bad value counts as 0)."""
    ttft = _ms(header_value(headers, SLO_TTFT_HEADER))
    tpot = _ms(header_value(headers, SLO_TPOT_HEADER))
    return NO_SLO if not (ttft or tpot) else RequestSlo(ttft, tpot)


class LatencyPredictionInfo:
    """Predictions for the candidates of one request, as parallel sequences indexed by `index[key]`.

    `ttft` / `tpot`: predicted milliseconds. `ttft_headroom_ms` / `tpot_headroom_ms`: SLO - predicted
    (the TPOT SLO times the producer's `sloBufferFactor`, lowered on an endpoint already running a request
    with a tighter TPOT SLO); without any SLO header, -predicted. A dimension is *neutral* (headroom 0,
    always valid) when it is not modelled (TPOT outside `streamingMode`, on P/D prefill endpoints) or
    when the request states an SLO for the other dimension only. `valid_flags`: both predictions meet the
    SLOs (upstream `IsValid`; never without an SLO header). `dispatched`: requests the pod has in flight
    on each endpoint (absent: none). `ttft_error`: the median relative TTFT error of the producer's recent
    predictions (0 until it has measured any).

    The producer hands over numpy arrays (the validity flags as a function computing them); each
    becomes a list the first time a consumer reads it (what no consumer reads costs nothing).
    Read-only by convention.
    """

    __slots__ = ("_data", "_lists", "dispatched", "index", "slo", "ttft_error")

    def __init__(
        self,
        index: Mapping[str, int],
        ttft: Sequence[float] | np.ndarray,
        tpot: Sequence[float] | np.ndarray,
        ttft_headroom_ms: Sequence[float] | np.ndarray,
        tpot_headroom_ms: Sequence[float] | np.ndarray,
        valid_flags: Sequence[bool] | np.ndarray | Callable[[], np.ndarray],
        slo: RequestSlo = NO_SLO,
        dispatched: Mapping[str, int] | None = None,
        ttft_error: float = 0.0,
    ) -> None:
        self.index = index
        self.slo = slo
        self.dispatched: Mapping[str, int] = dispatched if dispatched is not None else {}
        self.ttft_error = ttft_error
        self._data = (ttft, tpot, ttft_headroom_ms, tpot_headroom_ms, valid_flags)
        self._lists: list[list[Any] | None] = [None, None, None, None, None]

    def _list(self, i: int) -> list[Any]:
        values = self._lists[i]
        if values is None:
            data = self._data[i]
            if callable(data):
                data = data()
            values = self._lists[i] = data.tolist() if isinstance(data, np.ndarray) else list(data)
        return values

    @property
    def ttft(self) -> list[float]:
        return self._list(0)

    @property
    def tpot(self) -> list[float]:
        return self._list(1)

    @property
    def ttft_headroom_ms(self) -> list[float]:
        return self._list(2)

    @property
    def tpot_headroom_ms(self) -> list[float]:
        return self._list(3)

    @property
    def valid_flags(self) -> list[bool]:
        return self._list(4)

    @classmethod
    def build(
        cls,
        ttft: Mapping[str, float],
        tpot: Mapping[str, float],
        slo: RequestSlo = NO_SLO,
        *,
        tpot_modelled: bool = True,
        buffer_factor: float = 1.0,
        tpot_budgets: Mapping[str, float] | None = None,
        tpot_neutral: Collection[str] = (),
        dispatched: Mapping[str, int] | None = None,
        ttft_error: float = 0.0,
    ) -> LatencyPredictionInfo:
        """From per-endpoint predictions (the reference for the producer's vectorised computation)."""
        keys = list(ttft)
        ttft_neutral = slo.present and slo.ttft_ms <= 0.0
        all_tpot_neutral = not tpot_modelled or (slo.present and slo.tpot_ms <= 0.0)
        budget = slo.tpot_ms * buffer_factor
        budgets = tpot_budgets or {}
        h_ttft, h_tpot, valid = [], [], []
        for k in keys:
            ht = 0.0 if ttft_neutral else slo.ttft_ms - ttft[k]
            neutral = all_tpot_neutral or k in tpot_neutral
            hd = 0.0 if neutral else budgets.get(k, budget) - tpot[k]
            h_ttft.append(ht)
            h_tpot.append(hd)
            valid.append((ttft_neutral or ht > 0.0) and (neutral or hd > 0.0))
        return cls(
            {k: i for i, k in enumerate(keys)},
            [ttft[k] for k in keys],
            [tpot[k] for k in keys],
            h_ttft,
            h_tpot,
            valid,
            slo,
            dict(dispatched or {}),
            ttft_error,
        )

    def has(self, key: str) -> bool:
        return key in self.index

    @property
    def ttft_ms(self) -> dict[str, float]:
        """Predicted TTFT per endpoint key (a new dict)."""
        return {k: self.ttft[i] for k, i in self.index.items()}

    @property
    def tpot_ms(self) -> dict[str, float]:
        """Predicted TPOT per endpoint key (a new dict)."""
        return {k: self.tpot[i] for k, i in self.index.items()}

    def ttft_headroom(self, key: str) -> float:
        """TTFT SLO - predicted TTFT (negative without an SLO); -inf without a prediction."""
        i = self.index.get(key)
        return -math.inf if i is None else self._list(2)[i]

    def tpot_headroom(self, key: str) -> float:
        """Buffered TPOT SLO - predicted TPOT (0 where neutral); -inf without a prediction."""
        i = self.index.get(key)
        return -math.inf if i is None else self._list(3)[i]

    def valid(self, key: str) -> bool:
        """Both predictions meet the SLOs (upstream `IsValid`)."""
        i = self.index.get(key)
        return i is not None and bool(self._list(4)[i])

    def predicted(self, key: str) -> tuple[float, float] | None:
        """(TTFT, TPOT) predicted for the endpoint, in ms (None: no prediction for it)."""
        i = self.index.get(key)
        if i is None:
            return None
        ttft, tpot = self._data[0], self._data[1]
        return float(ttft[i]), float(tpot[i])

    def dispatched_requests(self, key: str) -> int:
        return self.dispatched.get(key, 0)


#: Written by `predicted-latency-producer` in `prepare_data` (absent: no model yet, or predictions off).
LATENCY_PREDICTION_INFO_KEY: StateKey[LatencyPredictionInfo] = StateKey(LATENCY_PREDICTION_INFO)
