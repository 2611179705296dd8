"""The KV-event subscriber: one ZMQ SUB socket per endpoint, each batch applied to the precise index.

`run(desired, interval)` reconciles every `interval` seconds: a socket is opened for each endpoint in
`desired()` (endpoint key → ZMQ address) and closed when the endpoint leaves or its address changes; a
socket whose connect failed, or whose reader ended, is reopened at the next round. Messages are decoded
off the request path (this runs in the KV-event source's background task, `source.py`); malformed
messages are counted and dropped, sequence gaps (lost messages: the publisher drops when its queue is
full) are counted. Per-endpoint sockets, not one socket connected to all, so a batch is attributed to its
endpoint whatever its topic says.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Mapping

import zmq
import zmq.asyncio

from epp.datalayer.kvevents.index import PreciseIndex
from epp.datalayer.kvevents.wire import decode_message

__all__ = ["KVEventSubscriber", "sleep_or_wake"]

log = logging.getLogger(__name__)


async def sleep_or_wake(wake: asyncio.Event | None, timeout: float) -> None:
    """Sleep `timeout` seconds, or less if `wake` gets set (and clear it)."""
    if wake is None:
        await asyncio.sleep(timeout)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(wake.wait(), timeout)
    wake.clear()


class KVEventSubscriber:
    def __init__(self, index: PreciseIndex, *, topic_filter: str = "", hwm: int = 100_000) -> None:
        self.index = index
        self.topic_filter = topic_filter.encode("utf-8")
        self.hwm = hwm
        self.received: Counter[str] = Counter()
        self.malformed: Counter[str] = Counter()
        self.gaps: Counter[str] = Counter()
        self.connected: dict[str, str] = {}
        self._warned: set[str] = set()

    async def run(
        self,
        desired: Callable[[], Mapping[str, str]],
        interval: float,
        wake: asyncio.Event | None = None,
    ) -> None:
        """Reconcile every `interval` seconds, and at once whenever `wake` is set (new endpoints or
        addresses: every event published before the subscription connects is lost to the index)."""
        ctx = zmq.asyncio.Context()
        tasks: dict[str, tuple[str, asyncio.Task[None]]] = {}
        try:
            while True:
                want = desired()
                for key, (address, task) in list(tasks.items()):
                    if want.get(key) != address or task.done():
                        task.cancel()
                        del tasks[key]
                        self.connected.pop(key, None)
                for key, address in want.items():
                    if key not in tasks:
                        tasks[key] = (address, asyncio.create_task(self._read(ctx, key, address)))
                await sleep_or_wake(wake, interval)
        finally:
            for _, task in tasks.values():
                task.cancel()
            await asyncio.gather(*(t for _, t in tasks.values()), return_exceptions=True)
            self.connected.clear()
            ctx.destroy(linger=0)

    async def _read(self, ctx: zmq.asyncio.Context, key: str, address: str) -> None:
        sock = ctx.socket(zmq.SUB)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, self.hwm)
            sock.setsockopt(zmq.SUBSCRIBE, self.topic_filter)
            try:
                sock.connect(address)
            except zmq.ZMQError as exc:
                if address not in self._warned:
                    self._warned.add(address)
                    log.warning("KV events of %s: cannot connect to %s: %s", key, address, exc)
                return
            self.connected[key] = address
            log.info("KV events of %s: subscribed to %s", key, address)
            last: int | None = None
            while True:
                frames = await sock.recv_multipart()
                try:
                    _topic, batch = decode_message(frames)
                except ValueError as exc:
                    self.malformed[key] += 1
                    log.debug("KV events of %s: dropped a malformed message: %s", key, exc)
                    continue
                if batch.seq is not None:
                    if last is not None and batch.seq > last + 1:
                        self.gaps[key] += batch.seq - last - 1
                    last = batch.seq
                self.received[key] += 1
                self.index.apply(key, batch)
        finally:
            with contextlib.suppress(Exception):
                sock.close(linger=0)
