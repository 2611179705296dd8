"""The pod process's side of `--ha-mode active-active`: its peer link, where peers come from, the
bootstrap before ready, and the decider state bus when the pod process decides itself (`--workers 1`).

Start order: the link binds its port; peers come from `--peers` at once, or from the pod watch
(`peer_source`, e.g. `epp.k8s.peers.KubernetesPeers`); the replica asks them for a snapshot (at most
`--ha-bootstrap-timeout` in all) and applies the first it gets; then it is `bootstrapped` (a readiness
condition). A replica that hears nobody routes on its own view: `epp_ha_peers` says so.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from epp.ha.keys import PeerKeys
from epp.ha.link import PeerLink
from epp.workers.statebus import peers_address, state_address

__all__ = ["HaReplica", "PeerSource", "replica_id"]

log = logging.getLogger(__name__)


class PeerSource(Protocol):
    """Where peer addresses come from (beside a static list): started with the callback to call."""

    def start(self) -> None: ...

    async def stop(self) -> None: ...


def replica_id() -> str:
    """This process's name among the replicas: the pod (or host) name and a random suffix, so a
    container restarted under the same pod name is a new replica to its peers."""
    name = os.environ.get("POD_NAME") or socket.gethostname() or "epp"
    return f"{name}-{secrets.token_hex(3)}"


class HaReplica:
    def __init__(
        self,
        *,
        replica: str,
        directory: str,
        local_slots: int,
        host: str,
        port: int,
        keys: PeerKeys | None,
        static_peers: Sequence[str] = (),
        snapshot_source: Callable[[], Awaitable[bytes | None]] | None = None,
        apply_snapshot: Callable[[bytes], Awaitable[int]] | None = None,
        bootstrap_timeout: float = 3.0,
        on_lag: Callable[[float], None] | None = None,
        on_count: Callable[[str], None] | None = None,
        heartbeat: float = 1.0,
        silence: float = 5.0,
        deliver: Callable[[bytes], None] | None = None,
    ) -> None:
        """`deliver`: the pod process is the one decider (its bus gives `link.publish` its messages, and
        takes its peers' from `deliver`); else the deciders are `local_slots` processes on ipc."""
        self.replica = replica
        self.directory = directory
        self.static_peers = list(static_peers)
        self.apply_snapshot = apply_snapshot
        self.bootstrap_timeout = bootstrap_timeout
        self.peer_source: PeerSource | None = None
        self.bootstrapped = asyncio.Event()
        self.snapshot_applied = 0
        self.link = PeerLink(
            replica=replica,
            local_sources=[] if deliver else [state_address(directory, slot) for slot in range(local_slots)],
            local_sink="" if deliver else peers_address(directory),
            deliver=deliver,
            host=host,
            port=port,
            keys=keys,
            snapshot_source=snapshot_source,
            on_lag=on_lag,
            on_count=on_count,
            heartbeat=heartbeat,
            silence=silence,
        )
        self._peers_known = asyncio.Event()

    @property
    def sink(self) -> str:
        """The address the local deciders subscribe to, for what peers send."""
        return peers_address(self.directory)

    def set_peers(self, addresses: Sequence[str]) -> None:
        self.link.set_peers(addresses)
        self._peers_known.set()

    async def start(self, peer_source: PeerSource | None = None) -> int:
        """Bind the peer port, find the peers, bootstrap; returns the peer port."""
        port = await self.link.start()
        if keys_missing := self.link.keys is None:
            log.warning("HA peer channel on port %d is unauthenticated (no --ha-secret-file)", port)
        log.info(
            "HA active-active: replica %s, peer port %d%s",
            self.replica,
            port,
            "" if keys_missing else ", CURVE",
        )
        if self.static_peers:
            self.set_peers(self.static_peers)
        elif peer_source is not None:
            self.peer_source = peer_source
            peer_source.start()
        else:
            self._peers_known.set()
        return port

    async def bootstrap(self) -> None:
        """Take a peer's snapshot (within `bootstrap_timeout`), then say bootstrapped, snapshot or not."""
        try:
            async with asyncio.timeout(self.bootstrap_timeout):
                await self._peers_known.wait()
                if self.link.addresses():
                    data = await self.link.bootstrap(timeout=self.bootstrap_timeout)
                    if data is not None and self.apply_snapshot is not None:
                        self.snapshot_applied = await self.apply_snapshot(data)
                        log.info("HA: took a snapshot of %d bytes from a peer", len(data))
        except TimeoutError:
            log.info(
                "HA: no peer snapshot within %.1fs; routing on this replica's own view",
                self.bootstrap_timeout,
            )
        self.bootstrapped.set()

    async def stop(self) -> None:
        if self.peer_source is not None:
            await self.peer_source.stop()
        await self.link.close()
