"""What `epp.app` runs for `--ha-mode active-active`: the replica's deciders on the state bus, its peer
link, where peers come from (`--peers` or the pod watch), the bootstrap readiness waits for, the metrics.

With `--workers N` the deciders are the workers (they join the bus themselves; the pool relays snapshots);
with one process the pod process is the decider: its director notifies a state bus of its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import Counter

from epp.extproc.health import ReadinessState
from epp.ha.keys import derive_keys, read_secret
from epp.ha.replica import HaReplica, PeerSource
from epp.observability.metrics import EppMetrics
from epp.requestcontrol.director import Director
from epp.scheduling.pipeline import PipelineHolder
from epp.settings import EppSettings
from epp.workers.pool import WorkerPool
from epp.workers.statebus import StateBus

__all__ = ["ActiveActive"]

log = logging.getLogger(__name__)

_GAUGE_INTERVAL = 1.0
#: How long the one decider's bus gathers changes into one message: across replicas, a few ms more of
#: lag buy fewer messages (each costs every peer a wake-up)
HA_PERIOD = 0.01


class ActiveActive:
    def __init__(
        self,
        settings: EppSettings,
        *,
        replica: str,
        holder: PipelineHolder,
        metrics: EppMetrics,
        readiness: ReadinessState,
        pool: WorkerPool | None,
        director: Director | None,
        k8s_client: Callable[[], Any],
        host: str,
    ) -> None:
        self.settings = settings
        self.replica = replica
        self.holder = holder
        self.metrics = metrics
        self.readiness = readiness
        self.pool = pool
        self.director = director
        self.k8s_client = k8s_client
        self.host = host
        self.bus: StateBus | None = None
        self.ha: HaReplica | None = None
        self.port = 0
        self._directory = ""
        self._tasks: list[asyncio.Task[None]] = []
        self._children: dict[str, Counter] = {}

    async def start(self) -> int:
        """Bind the peer port and find the peers; readiness waits for the bootstrap (in the background)."""
        s = self.settings
        keys = derive_keys(read_secret(s.ha_secret_file)) if s.ha_secret_file else None
        snapshot_source: Callable[[], Awaitable[bytes | None]]
        apply: Callable[[bytes], Awaitable[int]]
        if self.pool is not None:
            directory, slots = self.pool.directory, self.pool.count
            snapshot_source, apply = self.pool.snapshot, self.pool.apply_snapshot
        else:
            directory, slots = self._own_bus()
            snapshot_source, apply = self._bus_snapshot, self._bus_apply
        metrics = self.metrics.ha
        ha = self.ha = HaReplica(
            replica=self.replica,
            directory=directory,
            local_slots=slots,
            host=self.host,
            port=s.ha_port,
            keys=keys,
            static_peers=s.peers,
            snapshot_source=snapshot_source,
            apply_snapshot=apply,
            bootstrap_timeout=s.ha_bootstrap_timeout,
            on_lag=metrics.sync_lag.observe,
            on_count=self._count,
            deliver=self.bus.receive if self.bus is not None else None,
        )
        if self.bus is not None:
            self.bus.on_sent = ha.link.publish
        self.port = await ha.start(self._kubernetes_peers(ha) if s.ha_peer_selector else None)
        self.readiness.set_bootstrapped(False)
        self._tasks.append(asyncio.create_task(self._bootstrap(ha), name="ha-bootstrap"))
        self._tasks.append(asyncio.create_task(self._watch_peers(ha), name="ha-peers"))
        return self.port

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.ha is not None:
            await self.ha.stop()
        if self.bus is not None:
            self.bus.close()
        if self._directory:
            shutil.rmtree(self._directory, ignore_errors=True)

    # ---- the pod process as the one decider ---------------------------------------------------------

    def _own_bus(self) -> tuple[str, int]:
        directory = self._directory = tempfile.mkdtemp(prefix="epp-ha-")  # 0700
        bus = self.bus = StateBus(
            self.holder,
            directory=directory,
            slot=0,
            incarnation=1,
            slots=1,
            on_message=self.metrics.sync_message,
            replica=self.replica,
            period=HA_PERIOD,
        )
        bus.start()
        if self.director is not None:
            self.director.on_state_change = bus.notify
        return directory, 1

    async def _bus_snapshot(self) -> bytes | None:
        return self.bus.export_snapshot() if self.bus is not None else None

    async def _bus_apply(self, data: bytes) -> int:
        return self.bus.import_snapshot(data) if self.bus is not None else 0

    # ---- peers, bootstrap, metrics ------------------------------------------------------------------

    def _kubernetes_peers(self, ha: HaReplica) -> PeerSource:
        from epp.k8s.client import load_api_client
        from epp.k8s.peers import KubernetesPeers
        from epp.k8s.pods import parse_selector

        s = self.settings
        return KubernetesPeers(
            self.k8s_client() or load_api_client(),
            namespace=s.pool_namespace,
            selector=parse_selector(s.ha_peer_selector),
            port=s.ha_port,
            own_ip=os.environ.get("POD_IP", ""),
            own_name=os.environ.get("POD_NAME", ""),
            on_peers=ha.set_peers,
        )

    async def _bootstrap(self, ha: HaReplica) -> None:
        await ha.bootstrap()
        if ha.snapshot_applied:
            self.metrics.ha.snapshots.labels("taken").inc()
        self.readiness.set_bootstrapped(True)

    async def _watch_peers(self, ha: HaReplica) -> None:
        """`epp_ha_peers`, and a log line when this replica starts or stops hearing its peers."""
        heard: int | None = None
        loop = asyncio.get_running_loop()
        quiet_until = loop.time() + ha.link.silence  # peers may take that long to be heard at first
        while True:
            count = len(ha.link.peers())
            self.metrics.ha.peers.set(count)
            if count != heard and (count or loop.time() >= quiet_until):
                if count == 0 and ha.link.addresses():
                    log.warning("HA: no peer heard; this replica routes on its own view")
                elif count:
                    log.info("HA: %d peer(s) heard: %s", count, ", ".join(ha.link.peers()))
                heard = count
            await asyncio.sleep(_GAUGE_INTERVAL)

    def _count(self, what: str) -> None:
        child = self._children.get(what)
        if child is None:
            family = self.metrics.ha.snapshots if what == "served" else self.metrics.ha.messages
            child = self._children[what] = family.labels(what)
        child.inc()
