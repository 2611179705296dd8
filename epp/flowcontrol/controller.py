"""The flow controller: capacity-checked enqueue, an event-driven dispatch loop, expiry and cancellation.

A request calls `enqueue_and_wait`; it gets an outcome once it is dispatched (it may then be scheduled:
late binding), rejected at the door (capacity → 429), or evicted (TTL → 503, client gone → cancelled).

Dispatch (as upstream's `dispatchCycle`): read pool saturation from the detector over the current
candidates, ask the usage-limit policy for each band's ceiling, walk bands from the highest priority down,
skip empty bands, stop the whole cycle at the first non-empty band whose ceiling the saturation reaches
(lower priorities never steal capacity), else dispatch one item chosen by the band's fairness and ordering
policies. One item per cycle.

Unlike upstream's polling processor the loop sleeps until something can change the answer: an enqueue, a
capacity notification (`wake`, called when a request completes), a reconfiguration, or — only while
saturated with work queued — a short tick to re-read scraped metrics. When nothing is queued at all, a
request that fits under its band's ceiling is dispatched on the spot without a queue hop (same outcome as
the next cycle would give, minus the latency).

TTL expiry is exact per request (a timer on the waiting coroutine) instead of upstream's 1 s sweep.
Everything runs on the event-loop thread; no locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from epp.errors import RequestError
from epp.flowcontrol.band import PriorityBand
from epp.flowcontrol.observe import FlowObserver, NullFlowObserver
from epp.flowcontrol.outcomes import outcome_error
from epp.flowcontrol.settings import FlowControlSettings
from epp.framework.flowcontrol import DEFAULT_FAIRNESS_ID, FlowKey, Outcome, QueueItem
from epp.framework.plugins import SaturationDetector
from epp.framework.types import Endpoint, InferenceRequest
from epp.logs import detached_context

__all__ = ["BandStats", "CycleResult", "FlowController"]

log = logging.getLogger(__name__)

_perf = time.perf_counter

#: At most one log line per this many seconds about a failing detector or policy.
_ERROR_LOG_INTERVAL = 10.0


class CycleResult(enum.Enum):
    EMPTY = "empty"
    BLOCKED = "blocked"
    DISPATCHED = "dispatched"


@dataclass(frozen=True, slots=True)
class BandStats:
    priority: int
    requests: int
    bytes: int
    flows: int
    listed: bool


class FlowController:
    def __init__(
        self,
        settings: FlowControlSettings,
        *,
        candidates: Callable[[], Sequence[Endpoint]],
        detector: Callable[[], SaturationDetector | None],
        observer: FlowObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`candidates` and `detector` are read on every cycle, so they follow pool and config changes."""
        self.settings = settings
        self._candidates = candidates
        self._detector = detector
        self.observer: FlowObserver = observer or NullFlowObserver()
        self.clock = clock
        self._bands: dict[int, PriorityBand] = {}
        self._order: list[PriorityBand] = []  # highest priority first
        self._requests = 0
        self._bytes = 0
        self._seq = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._last_detector_error = -_ERROR_LOG_INTERVAL
        self._last_cycle_error = -_ERROR_LOG_INTERVAL
        self.last_saturation = 0.0
        self.cycles = 0
        for band_settings in settings.bands.values():
            self._add_band(PriorityBand(band_settings, listed=True))

    # ---- public API ------------------------------------------------------------------------------

    @property
    def queued_requests(self) -> int:
        return self._requests

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def band_stats(self) -> list[BandStats]:
        return [BandStats(b.priority, b.count, b.byte_size, len(b.flows), b.listed) for b in self._order]

    def queued_items(self) -> list[QueueItem]:
        return [item for band in self._order for item in band.items()]

    async def admit(self, request: InferenceRequest, size_bytes: int | None = None) -> QueueItem:
        """`enqueue_and_wait`, raising the immediate-response error unless the request was dispatched."""
        item = await self.enqueue_and_wait(request, size_bytes)
        if item.outcome is not Outcome.DISPATCHED:
            raise self.error_for(item)
        return item

    @staticmethod
    def error_for(item: QueueItem) -> RequestError:
        return outcome_error(item.outcome or Outcome.REJECTED_OTHER, item.detail)

    async def enqueue_and_wait(self, request: InferenceRequest, size_bytes: int | None = None) -> QueueItem:
        """Queue `request` and wait until it leaves flow control; the returned item carries the outcome.

        Cancelling the caller (client disconnect) removes the request from its queue (outcome
        `EvictedContextCancelled`) and re-raises `CancelledError`.
        """
        t0 = _perf()
        item = self._enqueue(request, request.size_bytes if size_bytes is None else size_bytes)
        enqueue_seconds = _perf() - t0
        if item.outcome is not None:  # rejected, or dispatched on the fast path
            self.observer.finished(item, enqueue_seconds)
            return item
        self._ensure_running()
        self._wake.set()
        fut = item.future
        assert fut is not None
        try:
            if item.deadline is None:
                await fut
            else:
                async with asyncio.timeout(item.deadline - self.clock()):
                    await fut
        except TimeoutError:
            self._finish(item, Outcome.EVICTED_TTL, f"waited {item.ttl:g}s (the request TTL)")
        except asyncio.CancelledError:
            self._finish(item, Outcome.EVICTED_CONTEXT_CANCELLED, "the client went away while queued")
            self.observer.finished(item, enqueue_seconds)
            raise
        self.observer.finished(item, enqueue_seconds)
        return item

    def wake(self) -> None:
        """Pool capacity may have been freed (a request completed): run a dispatch cycle soon."""
        if self._requests:
            self._wake.set()

    def reconfigure(self, settings: FlowControlSettings) -> None:
        """Adopt new settings; queued requests stay queued (limits apply to new enqueues only)."""
        self.settings = settings
        for priority, band in list(self._bands.items()):
            band_settings, listed = settings.band_for(priority)
            band.reconfigure(band_settings, listed=listed)
            if not listed and band.count == 0:
                self._drop_band(band)
        for priority, band_settings in settings.bands.items():
            if priority not in self._bands:
                self._add_band(PriorityBand(band_settings, listed=True))
        self._wake.set()

    async def close(self) -> None:
        """Stop the dispatch loop and evict everything still queued (outcome `EvictedOther`)."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for item in self.queued_items():
            self._finish(item, Outcome.EVICTED_OTHER, "the flow controller stopped")

    # ---- enqueue ---------------------------------------------------------------------------------

    def _enqueue(self, request: InferenceRequest, size_bytes: int) -> QueueItem:
        now = self.clock()
        self._seq += 1
        settings = self.settings
        ttl = settings.default_ttl if settings.default_ttl > 0 else None
        key = FlowKey(request.fairness_id or DEFAULT_FAIRNESS_ID, request.priority)
        item = QueueItem(
            request=request,
            key=key,
            size_bytes=max(0, size_bytes),
            enqueue_time=now,
            seq=self._seq,
            ttl=ttl,
            deadline=None if ttl is None else now + ttl,
        )
        if self._closed:
            self._finish(item, Outcome.REJECTED_OTHER, "the flow controller is stopped")
            return item
        band = self._bands.get(key.priority)
        problem = self._capacity_problem(band, item)
        if problem is not None:
            self._finish(item, Outcome.REJECTED_CAPACITY, problem)
            return item
        if self._requests == 0 and self._fits_now(key.priority):
            self._finish(item, Outcome.DISPATCHED, "")
            return item
        if band is None:
            band_settings, listed = settings.band_for(key.priority)
            band = self._add_band(PriorityBand(band_settings, listed=listed))
        item.future = asyncio.get_running_loop().create_future()
        band.push(item, now)
        self._requests += 1
        self._bytes += item.size_bytes
        self.observer.enqueued(item)
        return item

    def _capacity_problem(self, band: PriorityBand | None, item: QueueItem) -> str | None:
        s = self.settings
        if s.max_requests > 0 and self._requests + 1 > s.max_requests:
            return f"flow control is full ({self._requests}/{s.max_requests} requests queued)"
        if s.max_bytes > 0 and self._bytes + item.size_bytes > s.max_bytes:
            return f"flow control is full ({self._bytes} + {item.size_bytes} bytes > {s.max_bytes} bytes)"
        if band is None:
            band = PriorityBand(s.band_for(item.key.priority)[0], listed=False)
        return band.capacity_problem(item.size_bytes)

    def _fits_now(self, priority: int) -> bool:
        """Whether a request at `priority` would be dispatched by a cycle right now (queues empty)."""
        saturation = self._saturation()
        ceiling = self.settings.usage_limit.compute_limits(saturation, (priority,)).get(priority, 1.0)
        return saturation < ceiling

    # ---- dispatch --------------------------------------------------------------------------------

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            # started from inside a request: a fresh context, or every line it logs carries that request's id
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="flow-control-dispatch", context=detached_context()
            )

    async def _run(self) -> None:
        wake = self._wake
        while True:
            wake.clear()
            try:
                result = self.dispatch_cycle()
            except Exception:
                # a failing policy plugin: keep the loop alive, retry on the next tick
                now = self.clock()
                if now - self._last_cycle_error >= _ERROR_LOG_INTERVAL:
                    self._last_cycle_error = now
                    log.exception("flow-control dispatch cycle failed; retrying")
                result = CycleResult.BLOCKED
            if result is CycleResult.DISPATCHED:
                # let the dispatched request move on (scheduling, in-flight accounting) before the next
                # cycle reads saturation again
                await asyncio.sleep(0)
                continue
            timeout = None if result is CycleResult.EMPTY else self.settings.dispatch_tick
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await wake.wait()

    def dispatch_cycle(self) -> CycleResult:
        """One cycle: dispatch at most one item. Public for tests; the loop calls it."""
        if self._requests == 0:
            return CycleResult.EMPTY
        t0 = _perf()
        self.cycles += 1
        try:
            saturation = self._saturation()
            limits = self.settings.usage_limit.compute_limits(saturation, [b.priority for b in self._order])
            for band in self._order:
                if band.count == 0:
                    continue
                if saturation >= limits.get(band.priority, 1.0):
                    return CycleResult.BLOCKED
                item = band.pop_next()
                if item is None:  # a fairness policy that found nothing: treat as empty
                    continue
                self._account_dequeued(band, item)
                self._finish(item, Outcome.DISPATCHED, "")
                return CycleResult.DISPATCHED
            return CycleResult.EMPTY
        finally:
            self.observer.dispatch_cycle(_perf() - t0)

    def _saturation(self) -> float:
        detector = self._detector()
        if detector is None:
            value = 0.0
        else:
            try:
                value = detector.saturation(self._candidates(), self.clock())
            except Exception:
                # a broken detector must not stop all traffic: fail open
                now = self.clock()
                if now - self._last_detector_error >= _ERROR_LOG_INTERVAL:
                    self._last_detector_error = now
                    log.exception("saturation detector failed; treating the pool as not saturated")
                value = 0.0
        self.last_saturation = value
        self.observer.pool_saturation(value)
        return value

    # ---- bookkeeping -----------------------------------------------------------------------------

    def _finish(self, item: QueueItem, outcome: Outcome, detail: str) -> bool:
        """Give `item` its outcome (once) and take it out of its queue; False if it already had one."""
        if item.outcome is not None:
            return False
        if item.queued:
            band = self._bands[item.key.priority]
            band.remove(item)
            self._account_dequeued(band, item)
        item.outcome = outcome
        item.detail = detail
        item.finished_at = self.clock()
        fut = item.future
        if fut is not None and not fut.done():
            fut.set_result(outcome)
        return True

    def _account_dequeued(self, band: PriorityBand, item: QueueItem) -> None:
        self._requests -= 1
        self._bytes -= item.size_bytes
        self.observer.dequeued(item)
        if band.count == 0 and not band.listed:
            self._drop_band(band)

    def _add_band(self, band: PriorityBand) -> PriorityBand:
        self._bands[band.priority] = band
        self._order = sorted(self._bands.values(), key=lambda b: b.priority, reverse=True)
        return band

    def _drop_band(self, band: PriorityBand) -> None:
        if self._bands.get(band.priority) is band:
            del self._bands[band.priority]
            self._order = [b for b in self._order if b is not band]
