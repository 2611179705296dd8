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
differently, e.g. mid-reload, are ignored) and `sent_at` wall-clock seconds (the lag metric). A message
with no parts is a heartbeat: every bus sends one when it sent nothing for `heartbeat` seconds, and an
origin not heard for `silence` seconds is forgotten (what it contributed is dropped).

Across replicas (`--ha-mode active-active`) origins carry the replica id (`<replica>/w<slot>.<inc>`) and
the bus also subscribes to `extra_sources` (the pod's `state-peers` socket, fed by `epp.ha.link`).
`export_snapshot` / `import_snapshot` carry the full shared state of the plugins that can give it
(`SharedSnapshot`) to a replica that starts.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import zmq

from epp.framework.plugins import SharedSnapshot, SharedState
from epp.scheduling.pipeline import Pipeline, PipelineHolder
from epp.workers.codec import pack, unpack
from epp.workers.transport import Inbox, socket

__all__ = ["PROTOCOL_VERSION", "StateBus", "peers_address", "state_address"]

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
_HWM = 10_000


def state_address(directory: str, slot: int) -> str:
    return f"ipc://{directory}/state-{slot}"


def peers_address(directory: str) -> str:
    """Where the pod's peer link publishes what the other replicas' deciders sent."""
    return f"ipc://{directory}/state-peers"


def _origin_slot(origin: str) -> tuple[str, int, int] | None:
    """`[<replica>/]w<slot>.<incarnation>` → (replica, slot, incarnation)."""
    replica, _, local = origin.rpartition("/")
    head, _, inc = local.partition(".")
    if not head.startswith("w") or not head[1:].isdigit() or not inc.isdigit():
        return None
    return replica, int(head[1:]), int(inc)


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
        replica: str = "",
        extra_sources: Sequence[str] = (),
        heartbeat: float = 1.0,
        silence: float = 5.0,
    ) -> None:
        self.holder = holder
        self.slot = slot
        self.replica = replica
        #: in one process with a peer link: every message sent goes to it too (`PeerLink.publish`)
        self.on_sent: Callable[[bytes], None] | None = None
        self.origin = f"{replica}/w{slot}.{incarnation}" if replica else f"w{slot}.{incarnation}"
        self.period = period
        self.heartbeat = heartbeat
        self.silence = silence
        self.on_message = on_message  # (direction, lag seconds, parts) for metrics
        context = context or zmq.Context.instance()
        self.pub = socket(context, zmq.PUB, hwm=_HWM)
        self.pub.bind(state_address(directory, slot))
        sub = socket(context, zmq.SUB, hwm=_HWM)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        for other in range(slots):
            if other != slot:
                sub.connect(state_address(directory, other))
        for address in extra_sources:
            sub.connect(address)
        self.inbox = Inbox(sub, self._received)
        self.seq = 0
        self.sent = 0
        self.received = 0
        self.lost = 0
        self._flush_pending = False
        self._shared = _Shared(holder.current)
        self._last_seq: dict[str, int] = {}
        self._heard: dict[str, float] = {}
        self._incarnations: dict[tuple[str, int], str] = {}
        self._slots: dict[str, tuple[str, int]] = {}  # origin -> (replica, slot), parsed once
        self._last_sent = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._flush_timer: asyncio.TimerHandle | None = None
        self._start_sharing(self._shared)
        holder.subscribe(self._on_swap)

    # ---- sending ----------------------------------------------------------------------------------

    def notify(self) -> None:
        """Something may have changed: send it within `period` (one message for everything until then)."""
        if not self._flush_pending:
            self._flush_pending = True
            self._flush_timer = asyncio.get_running_loop().call_later(self.period, self.flush)

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
        if parts:
            self._send(parts)

    def _send(self, parts: list[list[Any]]) -> None:
        self.seq += 1
        generation = self._shared.pipeline.generation
        data = pack([PROTOCOL_VERSION, self.origin, self.seq, generation, time.time(), parts])
        try:
            self.pub.send(data, zmq.NOBLOCK)  # a PUB socket drops what a slow subscriber cannot take
        except zmq.Again:
            return
        if self.on_sent is not None:
            self.on_sent(data)
        self._last_sent = time.monotonic()
        if parts:
            self.sent += 1
            if self.on_message is not None:
                self.on_message("sent", 0.0, len(parts))

    def _tick(self) -> None:
        """Every `heartbeat` seconds: say we are here if we said nothing, forget origins gone silent."""
        now = time.monotonic()
        if now - self._last_sent >= self.heartbeat:
            self._send([])
        for origin in [o for o, at in self._heard.items() if now - at > self.silence]:
            log.info("shared state: %s went silent; forgetting what it contributed", origin)
            self.forget(origin)
        self._timer = asyncio.get_running_loop().call_later(self.heartbeat, self._tick)

    def origins(self) -> list[str]:
        """The other deciders heard from within `silence` seconds."""
        now = time.monotonic()
        return sorted(o for o, at in self._heard.items() if now - at <= self.silence)

    # ---- receiving --------------------------------------------------------------------------------

    def start(self) -> None:
        """Receive from the other deciders (on the event loop, every queued message per wake-up) and
        start the heartbeat."""
        self.inbox.start()
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.heartbeat, self._tick)

    def _received(self, frames: list[bytes]) -> None:
        self.apply(unpack(frames[0]))

    def receive(self, data: bytes) -> None:
        """A message handed over in process (a peer's, from `epp.ha.link`)."""
        self.apply(unpack(data))

    def apply(self, message: list[Any]) -> None:
        version, origin, seq, _generation, sent_at, parts = message
        if version != PROTOCOL_VERSION or origin == self.origin:
            return
        self._heard[origin] = time.monotonic()
        self._track(origin, seq)
        if not parts:
            return  # a heartbeat
        self.received += 1
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
        if self._incarnations.get(self._slots.get(origin, ("", -1))) == origin:
            return  # the usual case: an origin already known as its slot's current incarnation
        parsed = _origin_slot(origin)
        if parsed is None:
            return
        replica, slot, incarnation = parsed
        self._slots[origin] = (replica, slot)
        previous = self._incarnations.get((replica, slot))
        if previous != origin:
            if previous is not None and (_origin_slot(previous) or (replica, slot, -1))[2] < incarnation:
                self.forget(previous)  # that worker restarted: what its last run contributed is gone
            self._incarnations[(replica, slot)] = origin

    def forget_slot(self, slot: int) -> None:
        """The pod process says the worker in `slot` (of this replica) died."""
        origin = self._incarnations.pop((self.replica, slot), None)
        if origin is not None:
            self.forget(origin)

    def forget(self, origin: str) -> None:
        self._last_seq.pop(origin, None)
        self._heard.pop(origin, None)
        self._slots.pop(origin, None)
        parsed = _origin_slot(origin)
        if parsed is not None and self._incarnations.get(parsed[:2]) == origin:
            del self._incarnations[parsed[:2]]
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

    # ---- snapshots (a replica that starts) --------------------------------------------------------

    def export_snapshot(self) -> bytes | None:
        """The full shared state of the live pipeline's plugins that can give it; None if none can."""
        shared = self._shared
        parts: list[list[Any]] = []
        for name, sharing in shared.plugins.items():
            plugin: object = sharing
            if not isinstance(plugin, SharedSnapshot):
                continue
            try:
                parts.append([name, shared.digests[name], plugin.export_snapshot()])
            except Exception:
                log.exception("exporting the snapshot of %s failed", name)
        if not parts:
            return None
        return pack([PROTOCOL_VERSION, self.origin, shared.pipeline.generation, parts])

    def import_snapshot(self, data: bytes) -> int:
        """Apply a peer's snapshot to the plugins of the same name and parameters; returns how many did."""
        version, origin, _generation, parts = unpack(data)
        if version != PROTOCOL_VERSION:
            return 0
        shared = self._shared
        applied = 0
        for name, digest, snapshot in parts:
            plugin: object = shared.plugins.get(name)
            if not isinstance(plugin, SharedSnapshot) or shared.digests.get(name) != digest:
                continue
            try:
                plugin.import_snapshot(origin, snapshot)
                applied += 1
            except Exception:
                log.exception("importing the snapshot of %s from %s failed", name, origin)
        return applied

    def close(self) -> None:
        for timer in (self._timer, self._flush_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._flush_timer = None
        self.pub.close(0)
        self.inbox.close()
