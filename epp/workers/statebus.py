"""Routing decisions shared between the workers of a pod: a ZeroMQ PUB/SUB mesh over `ipc://`.

Each worker publishes on its own socket (`state-<slot>` in the pod's private directory) and subscribes to
every other slot's; ZeroMQ reconnects by itself when a worker restarts. When the director reports a change
(`Director.on_state_change`: a request scheduled, a first byte, a completion), the bus collects, within
`period` seconds, what every `SharedState` plugin of the live pipeline changed and sends it as one
message; receivers hand each part to their plugin of the same name and parameters.

Message (msgpack): `[1, origin, seq, generation, sent_at, [[plugin, spec, changes], ...]]` where `origin`
is `w<slot>.<incarnation>`, `seq` counts the origin's messages (a gap is a loss: counted, not repaired;
the plugins' changes are built to tolerate it), `generation` is the sender's config generation (for logs
and metrics), `spec` a digest of the plugin's type and parameters (changes of a plugin configured
differently, e.g. mid-reload, are ignored) and `sent_at` wall-clock seconds (the lag metric). The same
messages can cross pods: nothing in them is specific to one machine but the origin names.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

import zmq

from epp.framework.plugins import SharedState
from epp.scheduling.pipeline import Pipeline, PipelineHolder
from epp.workers.codec import pack, unpack
from epp.workers.transport import Inbox, socket

__all__ = ["PROTOCOL_VERSION", "StateBus", "state_address"]

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
_HWM = 10_000


def state_address(directory: str, slot: int) -> str:
    return f"ipc://{directory}/state-{slot}"


def _origin_slot(origin: str) -> tuple[int, int] | None:
    """`w<slot>.<incarnation>` → (slot, incarnation)."""
    head, _, inc = origin.partition(".")
    if not head.startswith("w") or not head[1:].isdigit() or not inc.isdigit():
        return None
    return int(head[1:]), int(inc)


class _Shared:
    """The shared plugins of one pipeline, with their spec digests."""

    __slots__ = ("digests", "pipeline", "plugins")

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.plugins: dict[str, SharedState] = {
            name: p for name, p in pipeline.plugins.items() if isinstance(p, SharedState)
        }
        self.digests = {
            name: hashlib.blake2b(pipeline.plugin_specs.get(name, name).encode(), digest_size=8).hexdigest()
            for name in self.plugins
        }


class StateBus:
    """One worker's end of the mesh."""

    def __init__(
        self,
        holder: PipelineHolder,
        *,
        directory: str,
        slot: int,
        incarnation: int,
        slots: int,
        period: float = 0.002,
        on_message: Callable[[str, float, int], None] | None = None,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        self.holder = holder
        self.slot = slot
        self.origin = f"w{slot}.{incarnation}"
        self.period = period
        self.on_message = on_message  # (direction, lag seconds, parts) for metrics
        context = context or zmq.Context.instance()
        self.pub = socket(context, zmq.PUB, hwm=_HWM)
        self.pub.bind(state_address(directory, slot))
        sub = socket(context, zmq.SUB, hwm=_HWM)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        for other in range(slots):
            if other != slot:
                sub.connect(state_address(directory, other))
        self.inbox = Inbox(sub, self._received)
        self.seq = 0
        self.sent = 0
        self.received = 0
        self.lost = 0
        self._flush_pending = False
        self._shared = _Shared(holder.current)
        self._last_seq: dict[str, int] = {}
        self._incarnations: dict[int, str] = {}
        self._start_sharing(self._shared)
        holder.subscribe(self._on_swap)

    # ---- sending ----------------------------------------------------------------------------------

    def notify(self) -> None:
        """Something may have changed: send it within `period` (one message for everything until then)."""
        if not self._flush_pending:
            self._flush_pending = True
            asyncio.get_running_loop().call_later(self.period, self.flush)

    def flush(self) -> None:
        self._flush_pending = False
        shared = self._shared
        parts: list[list[Any]] = []
        for name, plugin in shared.plugins.items():
            try:
                changes = plugin.export_changes()
            except Exception:
                log.exception("exporting the shared state of %s failed", name)
                continue
            if changes is not None:
                parts.append([name, shared.digests[name], changes])
        if not parts:
            return
        self.seq += 1
        data = pack([PROTOCOL_VERSION, self.origin, self.seq, shared.pipeline.generation, time.time(), parts])
        self.pub.send(data, zmq.NOBLOCK)  # a PUB socket drops what a slow subscriber cannot take
        self.sent += 1
        if self.on_message is not None:
            self.on_message("sent", 0.0, len(parts))

    # ---- receiving --------------------------------------------------------------------------------

    def start(self) -> None:
        """Receive from the other workers (on the event loop, every queued message per wake-up)."""
        self.inbox.start()

    def _received(self, frames: list[bytes]) -> None:
        self.apply(unpack(frames[0]))

    def apply(self, message: list[Any]) -> None:
        version, origin, seq, _generation, sent_at, parts = message
        if version != PROTOCOL_VERSION or origin == self.origin:
            return
        self.received += 1
        self._track(origin, seq)
        shared = self._shared
        applied = 0
        for name, digest, changes in parts:
            plugin = shared.plugins.get(name)
            if plugin is None or shared.digests.get(name) != digest:
                continue
            try:
                plugin.import_changes(origin, changes)
                applied += 1
            except Exception:
                log.exception("importing the shared state of %s from %s failed", name, origin)
        if self.on_message is not None:
            self.on_message("received" if applied else "ignored", max(0.0, time.time() - sent_at), applied)

    def _track(self, origin: str, seq: int) -> None:
        last = self._last_seq.get(origin)
        if last is not None and seq > last + 1:
            self.lost += seq - last - 1
        self._last_seq[origin] = seq
        parsed = _origin_slot(origin)
        if parsed is None:
            return
        slot, incarnation = parsed
        previous = self._incarnations.get(slot)
        if previous != origin:
            if previous is not None and (_origin_slot(previous) or (slot, -1))[1] < incarnation:
                self.forget(previous)  # that worker restarted: what its last run contributed is gone
            self._incarnations[slot] = origin

    def forget_slot(self, slot: int) -> None:
        """The pod process says the worker in `slot` died."""
        origin = self._incarnations.pop(slot, None)
        if origin is not None:
            self.forget(origin)

    def forget(self, origin: str) -> None:
        self._last_seq.pop(origin, None)
        for name, plugin in self._shared.plugins.items():
            try:
                plugin.forget_origin(origin)
            except Exception:
                log.exception("forgetting %s in %s failed", origin, name)

    # ---- lifecycle --------------------------------------------------------------------------------

    def _start_sharing(self, shared: _Shared) -> None:
        for name, plugin in shared.plugins.items():
            try:
                plugin.start_sharing()
            except Exception:
                log.exception("%s cannot share its state", name)

    def _on_swap(self, old: Pipeline, new: Pipeline) -> None:
        self.flush()  # what the old pipeline's plugins still hold goes out first
        self._shared = _Shared(new)
        self._start_sharing(self._shared)

    def close(self) -> None:
        self.pub.close(0)
        self.inbox.close()
