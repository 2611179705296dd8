"""The request path's recording: `inference_objective_*`, scheduling attempts and model rewrites.

The families are declared in `epp.observability.families` (`EppMetrics.requests`, `.scheduler`); this
is where a request's samples are recorded. prometheus_client's `.labels(...)` validates and locks on
every call (~2 µs); a request records about ten labelled samples, so the children are looked up once per
(model, target model) and reused. Label values come from clients (model names), so the caches are
bounded: past `MAX_ENTRIES` they are simply cleared. Semantics and names are upstream's.
"""

from __future__ import annotations

from typing import Any

from epp.framework.types import Endpoint
from epp.observability.families import RequestFamilies
from epp.observability.metrics import EppMetrics

__all__ = ["RequestMeter"]

MAX_ENTRIES = 4096


class _ModelSeries:
    __slots__ = ("cached", "duration", "input", "ntpot", "output", "request_sizes", "response_sizes", "ttft")

    def __init__(self, f: RequestFamilies, model: str, target: str) -> None:
        self.request_sizes = f.request_sizes.labels(model, target)
        self.duration = f.duration.labels(model, target)
        self.ttft = f.ttft.labels(model, target)
        self.response_sizes = f.response_sizes.labels(model, target)
        self.input = f.input_tokens.labels(model, target)
        self.cached = f.prompt_cached_tokens.labels(model, target)
        self.output = f.output_tokens.labels(model, target)
        self.ntpot = f.ntpot.labels(model, target)


class RequestMeter:
    """What the director records per request (requests, sizes, running, attempts, response usage)."""

    def __init__(self, metrics: EppMetrics) -> None:
        self._requests = metrics.requests
        self._attempt_family = metrics.scheduler.attempts
        self._series: dict[tuple[str, str], _ModelSeries] = {}
        self._totals: dict[tuple[str, str, int], Any] = {}
        self._running: dict[str, Any] = {}
        self._attempts: dict[tuple[str, str, str, int], Any] = {}

    def _model(self, model: str, target: str) -> _ModelSeries:
        key = (model, target)
        series = self._series.get(key)
        if series is None:
            if len(self._series) >= MAX_ENTRIES:
                self._series.clear()
            series = self._series[key] = _ModelSeries(self._requests, model, target)
        return series

    def request(self, model: str, target: str, priority: int, size_bytes: int) -> None:
        """A request was scheduled (upstream counts only scheduled requests)."""
        key = (model, target, priority)
        total = self._totals.get(key)
        if total is None:
            if len(self._totals) >= MAX_ENTRIES:
                self._totals.clear()
            total = self._totals[key] = self._requests.total.labels(model, target, str(priority))
        total.inc()
        self._model(model, target).request_sizes.observe(size_bytes)

    def _running_child(self, model: str) -> Any:
        child = self._running.get(model)
        if child is None:
            if len(self._running) >= MAX_ENTRIES:
                self._running.clear()
            child = self._running[model] = self._requests.running.labels(model)
        return child

    def running_inc(self, model: str) -> None:
        self._running_child(model).inc()

    def running_dec(self, model: str) -> None:
        self._running_child(model).dec()

    def scheduled(self, target: str, endpoint: Endpoint) -> None:
        """A successful scheduling attempt on `endpoint`."""
        key = (target, endpoint.pod_name or endpoint.key, endpoint.namespace, endpoint.port)
        child = self._attempts.get(key)
        if child is None:
            if len(self._attempts) >= MAX_ENTRIES:
                self._attempts.clear()
            child = self._attempts[key] = self._attempt_family.labels(
                "success", target, key[1], endpoint.namespace, str(endpoint.port)
            )
        child.inc()

    def schedule_failed(self, target: str) -> None:
        """A failed scheduling attempt: no endpoint, so empty endpoint labels."""
        self._attempt_family.labels("failure", target, "", "", "").inc()

    def error(self, model: str, target: str, code: str) -> None:
        """A request failed with `code` (counted once, when its stream ends)."""
        if code:  # upstream records nothing for an empty code
            self._requests.errors.labels(model, target, code).inc()

    def model_rewrite(self, rule: str, model: str, target: str) -> None:
        self._requests.model_rewrites.labels(rule, model, target).inc()

    def completed(self, model: str, target: str, *, duration: float, ttft: float = 0.0) -> None:
        """A response completed: its duration, and its TTFT when known (> 0: a first body chunk was seen)."""
        s = self._model(model, target)
        s.duration.observe(duration)
        if ttft > 0.0:
            s.ttft.observe(ttft)

    def usage(
        self,
        model: str,
        target: str,
        *,
        duration: float,
        response_bytes: int | None,
        prompt_tokens: int,
        completion_tokens: int,
        cached_tokens: int,
    ) -> None:
        """What the response body told: its size (None: unknown, no body was seen nor a Content-Length),
        token histograms only when it reported usage."""
        s = self._model(model, target)
        if response_bytes is not None:
            s.response_sizes.observe(response_bytes)
        if prompt_tokens > 0:
            s.input.observe(prompt_tokens)
            s.cached.observe(cached_tokens)
        if completion_tokens > 0:
            s.output.observe(completion_tokens)
            s.ntpot.observe(duration / completion_tokens)
