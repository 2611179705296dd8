"""Drive a workload through a `LoadClient`: open-loop Poisson arrivals or a closed loop of workers.

Open loop (`run_open_loop`): sessions start at seeded Poisson arrival times at `rate` per second,
whatever the server does (an optional `max_concurrency` caps sessions in flight, as inference-perf's
max concurrency does; arrivals then wait). Closed loop (`run_closed_loop`): `concurrency` workers each
take the next session as soon as their previous one finished. Within a session, turns run in order,
each after its think time, replaying the earlier turns and the responses received.

`duration_limit_s` bounds a run: what has not finished by then is cancelled and counted as unfinished.
`on_result` is called for every finished request (progress bars, live counters).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from epp.tools.loadgen.client import LoadClient, RequestResult
from epp.tools.loadgen.workloads import Session, Workload

__all__ = ["RunResult", "poisson_arrivals", "run_closed_loop", "run_open_loop"]

OnResult = Callable[[RequestResult], None]


@dataclass(slots=True)
class RunResult:
    """Every finished request of one run, the run's wall time, and how many requests never finished."""

    workload: str
    results: list[RequestResult] = field(default_factory=list)
    duration_s: float = 0.0
    unfinished: int = 0
    rate: float | None = None
    concurrency: int | None = None


def poisson_arrivals(count: int, rate: float, seed: int) -> list[float]:
    """`count` arrival offsets (seconds from 0) of a Poisson process of `rate`/s; the first is at 0."""
    if rate <= 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    rng = random.Random(seed)
    times, t = [], 0.0
    for i in range(count):
        if i:
            t += rng.expovariate(rate)
        times.append(t)
    return times


async def _run_session(
    client: LoadClient,
    session: Session,
    run_start: float,
    out: list[RequestResult],
    on_result: OnResult | None,
) -> None:
    history: list[tuple[str, str]] = []
    for index, turn in enumerate(session.turns):
        if index and turn.think_time_s > 0:
            await asyncio.sleep(turn.think_time_s)
        result, text = await client.send(session, index, history, run_start=run_start)
        out.append(result)
        if on_result is not None:
            on_result(result)
        if not result.ok:
            return  # the rest of a broken conversation is not sent (counted as unfinished)
        history.append((turn.text, text))


async def _bounded(tasks: Sequence[asyncio.Task[None]], limit: float | None) -> None:
    """Wait for `tasks`; after `limit` seconds cancel what is left."""
    if not tasks:
        return
    try:
        await asyncio.wait(tasks, timeout=limit)
    finally:  # also when the caller is cancelled (Ctrl-C): nothing keeps running behind its back
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def run_open_loop(
    client: LoadClient,
    workload: Workload,
    *,
    rate: float,
    seed: int = 0,
    max_concurrency: int | None = None,
    duration_limit_s: float | None = None,
    on_result: OnResult | None = None,
) -> RunResult:
    """Start the workload's sessions at Poisson arrival times of `rate` sessions per second."""
    arrivals = poisson_arrivals(len(workload.sessions), rate, seed)
    results: list[RequestResult] = []
    limiter = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    start = time.perf_counter()

    async def one(session: Session) -> None:
        if limiter is None:
            await _run_session(client, session, start, results, on_result)
            return
        async with limiter:
            await _run_session(client, session, start, results, on_result)

    async def schedule() -> None:
        tasks: list[asyncio.Task[None]] = []
        try:
            for at, session in zip(arrivals, workload.sessions, strict=True):
                delay = at - (time.perf_counter() - start)
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(session)))
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    runner = asyncio.create_task(schedule())
    await _bounded([runner], duration_limit_s)
    with contextlib.suppress(asyncio.CancelledError):
        runner.result()
    return RunResult(
        workload=workload.describe(),
        results=results,
        duration_s=time.perf_counter() - start,
        unfinished=workload.num_requests - len(results),
        rate=rate,
    )


async def run_closed_loop(
    client: LoadClient,
    workload: Workload,
    *,
    concurrency: int,
    duration_limit_s: float | None = None,
    on_result: OnResult | None = None,
) -> RunResult:
    """`concurrency` workers send the workload's sessions in order, each as soon as it is free."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    queue = list(reversed(workload.sessions))
    results: list[RequestResult] = []
    start = time.perf_counter()

    async def worker() -> None:
        while queue:
            await _run_session(client, queue.pop(), start, results, on_result)

    workers = [asyncio.create_task(worker()) for _ in range(min(concurrency, len(queue)))]
    await _bounded(workers, duration_limit_s)
    for task in workers:
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            raise exc
    return RunResult(
        workload=workload.describe(),
        results=results,
        duration_s=time.perf_counter() - start,
        unfinished=workload.num_requests - len(results),
        concurrency=concurrency,
    )
