"""gRPC health (`grpc.health.v1.Health`) driven by a small readiness state the app updates.

Services (upstream `cmd/epp/runner/health.go`, with liveness always SERVING as upstream does under leader
election, so a standby replica is never restarted for being a standby):

| service | status |
|---|---|
| `liveness` | always SERVING |
| `readiness`, `""`, `envoy.service.ext_proc.v3.ExternalProcessor` | SERVING iff ready |
| anything else | leader election on: SERVICE_UNKNOWN; off: as readiness (upstream ignores the name) |

Ready = the endpoint source has synced ∧ the first scrape round is done ∧ (with leader election) leader ∧
the parser supports the pool's protocol ∧ (with `--workers N`) every worker serves ∧ not shutting
down. `Watch` streams changes; `List` reports the
known services.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from epp.extproc.ports import bind_port
from epp.metadata import EXT_PROC_SERVICE

__all__ = ["LIVENESS", "READINESS", "HealthServer", "HealthServicer", "ReadinessState"]

log = logging.getLogger(__name__)

LIVENESS = "liveness"
READINESS = "readiness"
_READINESS_NAMES = frozenset({READINESS, "", EXT_PROC_SERVICE})

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class ReadinessState:
    """What readiness depends on. Update it through the setters so `Watch` streams see the change."""

    def __init__(self, leader_election: bool = False) -> None:
        self.leader_election = leader_election
        self.synced = False
        self.scraped = False
        self.leader = not leader_election
        self.protocol_ok = True
        self.workers_ready = True  # with --workers N: every worker process serves
        self.bootstrapped = True  # active-active: took a peer's snapshot, or found none to take
        self.draining = False
        self._changed = asyncio.Event()  # binds to a loop only when first awaited

    @property
    def ready(self) -> bool:
        return (
            self.synced
            and self.scraped
            and self.leader
            and self.protocol_ok
            and self.workers_ready
            and self.bootstrapped
            and not self.draining
        )

    def set_synced(self, value: bool = True) -> None:
        self.synced = value
        self._notify()

    def set_scraped(self, value: bool = True) -> None:
        self.scraped = value
        self._notify()

    def set_leader(self, value: bool) -> None:
        self.leader = value
        self._notify()

    def set_protocol_ok(self, value: bool) -> None:
        self.protocol_ok = value
        self._notify()

    def set_workers(self, ready: bool) -> None:
        self.workers_ready = ready
        self._notify()

    def set_bootstrapped(self, value: bool) -> None:
        self.bootstrapped = value
        self._notify()

    def set_draining(self) -> None:
        """Shutting down: not ready from now on, whatever the other inputs do meanwhile."""
        self.draining = True
        self._notify()

    def _notify(self) -> None:
        """Wake every watcher (call on the event-loop thread)."""
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    def next_change(self) -> asyncio.Event:
        """An event set at the next change of any input.

        Take it *before* reading the state, then wait on it: a change made between the read and the
        wait still wakes the waiter (waiting for "the next change" after the read would miss it).
        """
        return self._changed


class HealthServicer(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    def __init__(self, readiness: ReadinessState) -> None:
        self.readiness = readiness

    def status(self, service: str) -> Any:
        if service == LIVENESS:
            return SERVING
        ready = SERVING if self.readiness.ready else NOT_SERVING
        if service in _READINESS_NAMES or not self.readiness.leader_election:
            return ready
        return SERVICE_UNKNOWN

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthCheckResponse:
        return health_pb2.HealthCheckResponse(status=self.status(request.service))

    async def List(
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:  # HealthListResponse (newer health protos)
        names = (LIVENESS, READINESS, "", EXT_PROC_SERVICE)
        resp = health_pb2.HealthListResponse()
        for name in names:
            resp.statuses[name].status = self.status(name)
        return resp

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        last = None
        while True:
            changed = self.readiness.next_change()
            current = self.status(request.service)
            if current != last:
                last = current
                yield health_pb2.HealthCheckResponse(status=current)  # the stream may suspend here
            await changed.wait()


class HealthServer:
    """A plaintext gRPC server carrying only the health service (`--grpc-health-port`)."""

    def __init__(self, readiness: ReadinessState) -> None:
        self.readiness = readiness
        self._server: grpc.aio.Server | None = None

    async def start(self, port: int, host: str = "[::]") -> int:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(self.readiness), server)
        bound = bind_port(server, host, port, None)
        await server.start()
        self._server = server
        log.info("gRPC health server listening on %s:%d", host, bound)
        return bound

    async def stop(self, grace: float = 1.0) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop(grace)
