"""Upstream's predicted-latency family, trained and served in the EPP process (no sidecar).

- `predicted-latency-producer` (`producer`): per candidate endpoint, predicted TTFT and TPOT from an
  online model (`model`: ridge regression per endpoint or per hardware class, retrained in the background
  and swapped as an immutable snapshot) over the EPP's own in-flight view (`tracker`) and the scraped
  gauges; publishes `LatencyPredictionInfo` (`info`) and the request's SLO headroom.
- `latency-scorer` (`scorer`), `slo-headroom-tier-filter` (`tier_filter`), `latency-slo-admitter`
  (`admitter`): read it.
"""
