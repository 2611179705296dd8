"""Runs the pure engine in real (scaled) time on the asyncio loop and hands tokens to their requests.

The loop computes a step, sleeps until the step's end and then delivers its tokens. While the
engine stays busy, step start times are chained (`next start = previous end`) rather than re-read
from the clock, so oversleeping by the event loop is caught up on the following steps and the
simulated throughput holds even at small `--time-scale` values; only when the loop falls more than
`max_lag` seconds behind (an overloaded host) does it resynchronise and let simulated time slip.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence

from epp.tools.sim.engine import Engine, EngineRequest, StepResult, TokenOutput

__all__ = ["EngineDriver", "TokenSink"]

log = logging.getLogger(__name__)

TokenSink = Callable[[TokenOutput], None]


class EngineDriver:
    def __init__(
        self,
        engine: Engine,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_step: Callable[[StepResult], None] | None = None,
        max_lag: float = 0.05,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self._on_step = on_step
        self._max_lag = max_lag
        self._sinks: dict[str, TokenSink] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def submit(
        self, request_id: str, prompt: Sequence[int], max_tokens: int, lora: str | None, sink: TokenSink
    ) -> EngineRequest:
        """Queue a request; its tokens go to `sink` as their steps complete."""
        req = self.engine.add_request(request_id, prompt, max_tokens, lora, self.clock())
        self._sinks[request_id] = sink
        self._wake.set()
        return req

    def abort(self, request_id: str) -> None:
        self._sinks.pop(request_id, None)
        if self.engine.abort(request_id):
            self._wake.set()

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="sim-engine")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        chained: float | None = None
        while True:
            if not self.engine.has_work:
                chained = None
                self._wake.clear()
                await self._wake.wait()
                continue
            now = self.clock()
            start = chained if chained is not None and now - chained <= self._max_lag else now
            result = self.engine.step(start)
            if result.duration <= 0.0:
                # Nothing schedulable (cannot happen with a validated config); wait for a change.
                chained = None
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=0.01)
                continue
            chained = result.end
            await asyncio.sleep(max(0.0, result.end - self.clock()))
            self._deliver(result)

    def _deliver(self, result: StepResult) -> None:
        for out in result.outputs:
            sink = self._sinks.get(out.request_id)
            if out.finish_reason is not None:
                self._sinks.pop(out.request_id, None)
            if sink is not None:
                sink(out)
        if self._on_step is not None:
            try:
                self._on_step(result)
            except Exception:
                log.exception("sim: step observer failed")
