"""`LatencyPredictionInfo`: what `predicted-latency-producer` tells the scorer, the filter and the admitter.

One object per request (not one per endpoint: building 64 small objects per request would cost more than
the predictions). Predictions are in milliseconds, as upstream's; headroom = SLO - predicted, so a request
without an SLO header has negative headroom everywhere and the consumers rank by predicted latency alone.
TPOT is *neutral* (always valid, headroom 0) when it is not modelled: outside `streamingMode`, and on
prefill endpoints of a P/D pool.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from epp.framework.cycle import StateKey
from epp.metadata import SLO_TPOT_HEADER, SLO_TTFT_HEADER
from epp.plugins.common import header_value

__all__ = [
    "LATENCY_PREDICTION_INFO",
    "LATENCY_PREDICTION_INFO_KEY",
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


@dataclass(frozen=True, slots=True)
class LatencyPredictionInfo:
    """Predictions for the candidates of one request.

    `ttft_ms` / `tpot_ms`: predicted milliseconds per endpoint key (absent: no prediction for it).
    `slo`: the request's SLO headers. `tpot_budget_ms`: the TPOT SLO times the producer's
    `sloBufferFactor`; `tpot_budgets` lowers it on endpoints already running a request with a tighter
    TPOT SLO. A dimension is *neutral* (valid, headroom 0) when it is not modelled or not asked for:
    `ttft_neutral` (the request has only a TPOT SLO), `all_tpot_neutral` (TPOT not modelled, or the
    request has only a TTFT SLO), `tpot_neutral` (per endpoint: prefill endpoints of a P/D pool).
    `dispatched`: requests this EPP has in flight on each endpoint (absent: none).
    """

    ttft_ms: Mapping[str, float]
    tpot_ms: Mapping[str, float]
    slo: RequestSlo = NO_SLO
    tpot_budget_ms: float = 0.0
    tpot_budgets: Mapping[str, float] = field(default_factory=dict)
    ttft_neutral: bool = False
    all_tpot_neutral: bool = False
    tpot_neutral: frozenset[str] = frozenset()
    dispatched: Mapping[str, int] = field(default_factory=dict)

    def has(self, key: str) -> bool:
        return key in self.ttft_ms

    def ttft_headroom(self, key: str) -> float:
        """TTFT SLO - predicted TTFT (negative without an SLO); -inf without a prediction."""
        predicted = self.ttft_ms.get(key)
        if predicted is None:
            return -math.inf
        return 0.0 if self.ttft_neutral else self.slo.ttft_ms - predicted

    def tpot_headroom(self, key: str) -> float:
        """Buffered TPOT SLO - predicted TPOT (negative without an SLO); -inf without a prediction."""
        predicted = self.tpot_ms.get(key)
        if predicted is None:
            return -math.inf
        if self.all_tpot_neutral or key in self.tpot_neutral:
            return 0.0
        return self.tpot_budgets.get(key, self.tpot_budget_ms) - predicted

    def ttft_valid(self, key: str) -> bool:
        """The predicted TTFT meets the SLO (False without an SLO, as upstream)."""
        return self.ttft_headroom(key) > 0.0 or (self.ttft_neutral and key in self.ttft_ms)

    def tpot_valid(self, key: str) -> bool:
        if key not in self.tpot_ms:
            return False
        if self.all_tpot_neutral or key in self.tpot_neutral:
            return True
        return self.tpot_headroom(key) > 0.0

    def valid(self, key: str) -> bool:
        """Both predictions meet the SLOs (upstream `IsValid`)."""
        return self.ttft_valid(key) and self.tpot_valid(key)

    def dispatched_requests(self, key: str) -> int:
        return self.dispatched.get(key, 0)


#: Written by `predicted-latency-producer` in `prepare_data` (absent: no model yet, or predictions off).
LATENCY_PREDICTION_INFO_KEY: StateKey[LatencyPredictionInfo] = StateKey(LATENCY_PREDICTION_INFO)
