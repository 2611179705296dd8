"""One replica's end of the peer channel (`--ha-mode active-active`): its deciders' shared state, to and
from the other replicas, over ZeroMQ on TCP.

Inside a replica the deciders (the workers, or the pod process itself with `--workers 1`) already share
their routing decisions on the pod's state bus (`epp.workers.statebus`, `ipc://`). The link relays that
bus across replicas and runs in the pod process:

    deciders ─ipc─▶ [SUB] link [DEALER per peer] ═tcp═▶ [ROUTER] peer's link [PUB] ─ipc─▶ its deciders

- out: every message of a local decider goes to every peer, as it is (one `DEALER` per peer, `IMMEDIATE`:
  a peer that is not connected gets nothing rather than a backlog of stale state; a full queue drops);
- in: what peers send arrives on the link's `ROUTER` and is published, as it is, on the pod's
  `state-peers` socket, to which every local decider subscribes;
- every `heartbeat` seconds each link greets its peers, so `peers()` says who was heard lately (a peer
  silent for `silence` seconds no longer counts; the deciders forget what its deciders contributed by the
  same rule, `StateBus` tracks every origin);
- bootstrap: a new replica asks one peer after another for a snapshot of its shared state (`q`), applies
  the first one that comes (`S`), then reports ready (`bootstrap`).

Frames, peer → peer: `[b"s", state message]`, `[b"h"]` (heartbeat), `[b"q"]` (snapshot request); the
answer `[b"S", snapshot]` (empty: nothing to give). The routing id of a link's DEALERs is its replica id.
With `keys` (`epp.ha.keys`) the channel is CURVE-encrypted and only peers holding the shared secret get
in; without, it is plain TCP (for loopback tests and trusted networks; the daemon logs it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

import msgpack
import zmq
from zmq.auth.thread import ThreadAuthenticator

from epp.ha.keys import PeerKeys
from epp.workers.transport import Inbox, socket

__all__ = ["LinkStats", "PeerLink", "message_header"]

log = logging.getLogger(__name__)

_STATE, _HEARTBEAT, _ASK, _SNAPSHOT = b"s", b"h", b"q", b"S"
_HWM = 10_000
_ZAP_DOMAIN = "epp-ha"
_LAG_SAMPLE = 8  # the lag histogram takes one message in 8 (its header is read apart)


def message_header(data: bytes) -> tuple[str, float] | None:
    """(origin, sent_at) of a state-bus message, read without decoding its parts; None if malformed."""
    try:
        unpacker = msgpack.Unpacker(raw=False)
        unpacker.feed(data)
        if unpacker.read_array_header() < 6:
            return None
        unpacker.skip()  # version
        origin = unpacker.unpack()
        unpacker.skip()  # seq
        unpacker.skip()  # generation
        sent_at = unpacker.unpack()
    except (ValueError, msgpack.UnpackException, msgpack.OutOfData):
        return None
    if not isinstance(origin, str) or not isinstance(sent_at, int | float):
        return None
    return origin, float(sent_at)


@dataclass(slots=True)
class LinkStats:
    """What the link counted (read by the metrics collector)."""

    sent: int = 0
    received: int = 0
    dropped: int = 0
    served: int = 0  # snapshots


class _Curve:
    """The ZAP handler that admits only peers holding the client key derived from the shared secret."""

    def __init__(self, allowed: bytes) -> None:
        self.allowed = allowed

    def callback(self, domain: str, client_key: bytes) -> bool:
        return client_key == self.allowed


class PeerLink:
    def __init__(
        self,
        *,
        replica: str,
        local_sources: Sequence[str] = (),
        local_sink: str = "",
        deliver: Callable[[bytes], None] | None = None,
        host: str = "0.0.0.0",
        port: int = 0,
        keys: PeerKeys | None = None,
        snapshot_source: Callable[[], Awaitable[bytes | None]] | None = None,
        on_lag: Callable[[float], None] | None = None,
        on_count: Callable[[str], None] | None = None,
        heartbeat: float = 1.0,
        silence: float = 5.0,
    ) -> None:
        self.replica = replica
        self.on_count = on_count  # "sent", "received", "dropped", "served": for the metrics
        self.keys = keys
        self.heartbeat = heartbeat
        self.silence = silence
        self.snapshot_source = snapshot_source
        self.on_lag = on_lag
        self.stats = LinkStats()
        self.port = 0
        self._host = host
        self._want_port = port
        self._local_sources = list(local_sources)
        self._local_sink = local_sink
        # in one process: the decider's bus hands its messages to `publish` and takes its peers' from
        # `deliver`, no ipc hop (two event-loop wake-ups less per message)
        self._deliver = deliver
        self._context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._auth: ThreadAuthenticator | None = None
        self._dealers: dict[str, tuple[zmq.Socket[bytes], Inbox]] = {}
        self._heard: dict[str, float] = {}
        self._answers: asyncio.Queue[bytes] | None = None
        self._received = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._router: zmq.Socket[bytes] | None = None
        self._router_inbox: Inbox | None = None
        self._sink: zmq.Socket[bytes] | None = None
        self._source_inbox: Inbox | None = None

    # ---- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> int:
        """Bind the peer port and the local ends; returns the peer port (a free one for port 0)."""
        router = socket(self._context, zmq.ROUTER, hwm=_HWM)
        if self.keys is not None:
            self._auth = ThreadAuthenticator(self._context, log=logging.getLogger("epp.ha.zap"))
            self._auth.start()
            self._auth.configure_curve_callback(
                _ZAP_DOMAIN, credentials_provider=_Curve(self.keys.client_public)
            )
            router.setsockopt(zmq.CURVE_SERVER, 1)
            router.setsockopt(zmq.CURVE_SECRETKEY, self.keys.server_secret)
            router.setsockopt(zmq.ZAP_DOMAIN, _ZAP_DOMAIN.encode())
        host = "*" if self._host in ("", "0.0.0.0", "::", "[::]") else self._host
        if self._want_port:
            router.bind(f"tcp://{host}:{self._want_port}")
            self.port = self._want_port
        else:
            self.port = router.bind_to_random_port(f"tcp://{host}")
        self._router = router
        self._router_inbox = Inbox(router, self._from_peer)
        self._router_inbox.start()

        local: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()  # ipc: no ZAP handler there
        if self._local_sink:
            sink = socket(local, zmq.PUB, hwm=_HWM)
            sink.bind(self._local_sink)
            self._sink = sink
        if self._local_sources:
            source = socket(local, zmq.SUB, hwm=_HWM)
            source.setsockopt(zmq.SUBSCRIBE, b"")
            for address in self._local_sources:
                source.connect(address)
            self._source_inbox = Inbox(source, self._from_local)
            self._source_inbox.start()
        self._schedule_heartbeat()
        return self.port

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for address in list(self._dealers):
            self._drop_peer(address)
        for inbox in (self._router_inbox, self._source_inbox):
            if inbox is not None:
                inbox.close()
        if self._sink is not None:
            self._sink.close(0)
        if self._auth is not None:
            self._auth.stop()
        self._context.destroy(linger=0)

    # ---- peers ------------------------------------------------------------------------------------

    def set_peers(self, addresses: Iterable[str]) -> None:
        """The other replicas' peer addresses (`host:port`) now: new ones are connected, gone ones closed."""
        wanted = {a for a in addresses if a}
        for address in [a for a in self._dealers if a not in wanted]:
            self._drop_peer(address)
        for address in sorted(wanted - self._dealers.keys()):
            self._add_peer(address)

    def addresses(self) -> list[str]:
        return sorted(self._dealers)

    def peers(self) -> list[str]:
        """The replicas heard from within the last `silence` seconds."""
        now = time.monotonic()
        return sorted(r for r, at in self._heard.items() if now - at <= self.silence)

    def _add_peer(self, address: str) -> None:
        dealer = socket(self._context, zmq.DEALER, hwm=_HWM)
        dealer.setsockopt(zmq.ROUTING_ID, self.replica.encode())
        dealer.setsockopt(zmq.IMMEDIATE, 1)
        dealer.setsockopt(zmq.HEARTBEAT_IVL, int(self.heartbeat * 1000))
        dealer.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(self.silence * 1000))
        dealer.setsockopt(zmq.RECONNECT_IVL, 100)
        dealer.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        if self.keys is not None:
            dealer.setsockopt(zmq.CURVE_SERVERKEY, self.keys.server_public)
            dealer.setsockopt(zmq.CURVE_PUBLICKEY, self.keys.client_public)
            dealer.setsockopt(zmq.CURVE_SECRETKEY, self.keys.client_secret)
        dealer.connect(f"tcp://{address}")
        inbox = Inbox(dealer, self._from_answer)
        inbox.start()
        self._dealers[address] = (dealer, inbox)
        log.info("HA peer %s added", address)

    def _drop_peer(self, address: str) -> None:
        found = self._dealers.pop(address, None)
        if found is None:
            return
        inbox = found[1]
        inbox.close()  # closes the DEALER too
        log.info("HA peer %s removed", address)

    def _send_all(self, frames: list[bytes]) -> None:
        for dealer, inbox in self._dealers.values():
            try:
                dealer.send_multipart(frames, zmq.NOBLOCK)
            except zmq.Again:  # not connected (yet), or its queue is full: this message is lost for it
                if frames[0] == _STATE:
                    self._count("dropped")
                continue
            if self._answers is not None:
                # a send may take the edge of an arriving answer: look (only answers to our snapshot
                # request ever arrive on a DEALER, so outside a bootstrap there is nothing to miss)
                inbox.kick()

    # ---- traffic ----------------------------------------------------------------------------------

    def _count(self, what: str) -> None:
        stats = self.stats
        setattr(stats, what, getattr(stats, what) + 1)
        if self.on_count is not None:
            self.on_count(what)

    def publish(self, data: bytes) -> None:
        """A local decider's state-bus message, to every peer."""
        self._count("sent")
        self._send_all([_STATE, data])

    def _from_local(self, frames: list[bytes]) -> None:
        self.publish(frames[0])

    def _from_peer(self, frames: list[bytes]) -> None:
        if len(frames) < 2:
            return
        sender = frames[0].decode("utf-8", "replace")
        kind = frames[1]
        self._heard[sender] = time.monotonic()
        if kind == _STATE and len(frames) >= 3:
            self._count("received")
            if self._deliver is not None:
                self._deliver(frames[2])
            elif self._sink is not None:
                try:
                    self._sink.send(frames[2], zmq.NOBLOCK)
                except zmq.Again:
                    self._count("dropped")
            self._received += 1
            if self.on_lag is not None and self._received % _LAG_SAMPLE == 1:
                header = message_header(frames[2])
                if header is not None:
                    self.on_lag(max(0.0, time.time() - header[1]))
        elif kind == _ASK:
            self._spawn(self._answer(frames[0]))

    async def _answer(self, routing_id: bytes) -> None:
        data = b""
        if self.snapshot_source is not None:
            try:
                data = await self.snapshot_source() or b""
            except Exception:
                log.exception("making a snapshot for peer %s failed", routing_id.decode("utf-8", "replace"))
        if self._router is None:
            return
        try:
            self._router.send_multipart([routing_id, _SNAPSHOT, data], zmq.NOBLOCK)
        except zmq.Again:
            return
        if self._router_inbox is not None:
            self._router_inbox.kick()
        self._count("served")

    def _from_answer(self, frames: list[bytes]) -> None:
        if len(frames) >= 2 and frames[0] == _SNAPSHOT and self._answers is not None:
            self._answers.put_nowait(frames[1])

    async def bootstrap(self, *, timeout: float = 2.0) -> bytes | None:
        """A snapshot of the shared state from the first peer that gives one within `timeout` seconds
        (every peer is asked as soon as its connection is up); None when none did (the first replica,
        or peers all gone), early once every peer answered that it had nothing."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        asked: set[str] = set()
        empty = 0  # peers that answered they had nothing
        answers: asyncio.Queue[bytes] = asyncio.Queue()
        self._answers = answers
        try:
            while loop.time() < deadline:
                for address, (dealer, inbox) in list(self._dealers.items()):
                    if address in asked:
                        continue
                    try:  # IMMEDIATE: the request only leaves once the connection is up
                        dealer.send_multipart([_ASK], zmq.NOBLOCK)
                    except zmq.Again:
                        continue
                    asked.add(address)
                    inbox.kick()
                try:
                    data = await asyncio.wait_for(answers.get(), min(0.05, max(0.0, deadline - loop.time())))
                except TimeoutError:
                    continue
                if data:
                    return data
                empty += 1
                if empty >= len(self._dealers):
                    return None
        finally:
            self._answers = None
        log.info(
            "no HA peer gave a snapshot within %.1fs (%d of %d asked)",
            timeout,
            len(asked),
            len(self._dealers),
        )
        return None

    # ---- heartbeats -------------------------------------------------------------------------------

    def _schedule_heartbeat(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self.heartbeat, self._beat)

    def _beat(self) -> None:
        self._send_all([_HEARTBEAT])
        now = time.monotonic()
        for replica in [r for r, at in self._heard.items() if now - at > 10 * self.silence]:
            del self._heard[replica]  # long gone: keep the table small
        self._schedule_heartbeat()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
