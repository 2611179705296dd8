"""Active-passive HA: a coordination.k8s.io/v1 Lease elector on asyncio.

The semantics are client-go's leader election (which upstream's controller-runtime uses): lease 15 s,
renew deadline 10 s, retry 2 s; a candidate takes the lease when it is empty or when the holder has not
renewed it for a lease duration *as observed locally* (so clocks need not agree; counted from the read
before the one that saw the last renewal, and tried again the moment it runs out, so a crashed leader is
replaced within one lease duration); the leader renews every
retry period and steps down when it could not renew within the renew deadline; on graceful shutdown the
leader releases the lease (empty holder) so a follower takes over at its next retry instead of waiting for
expiry. Updates carry the resourceVersion read, so two candidates racing for the lease cannot both win on
a real API server.

The blocking `kubernetes` client calls run in worker threads; the loop is never blocked. Every replica
keeps serving gRPC; `ReadinessState.set_leader` makes only the leader ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime as dt
import json
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["LeaderElector", "LeaseSettings", "lease_name", "start_leader_election"]

log = logging.getLogger(__name__)

LEASE_SUFFIX = "gateway-api-inference-extension.sigs.k8s.io"
_DEPLOYMENT_FROM_POD = re.compile(r"^(.+)-[a-z0-9]+-[a-z0-9]+$")


class LeadershipSink(Protocol):
    def set_leader(self, value: bool) -> None: ...


@dataclass(frozen=True, slots=True)
class LeaseSettings:
    name: str
    namespace: str
    identity: str
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0


def lease_name(namespace: str, pool_name: str) -> str:
    """Upstream's lease name: `epp-<ns>-<pool>.gateway-api-inference-extension.sigs.k8s.io`."""
    return f"epp-{namespace}-{pool_name}.{LEASE_SUFFIX}"


def _now_micro() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_CALL_TIMEOUT = 5.0  # seconds per lease API call


def _without_retries(api_client: Any) -> Any:
    """A CoordinationV1Api on its own connection pool with urllib3's retries off: the client's default
    3 retries would turn one unanswered call into four, and a leader into one for ~20 s past its
    renew deadline."""
    from kubernetes import client

    cfg = copy.copy(api_client.configuration)
    cfg.retries = False
    return client.CoordinationV1Api(client.ApiClient(cfg))


class LeaderElector:
    """Runs the election loop; `is_leader` and the sink follow the lease."""

    def __init__(
        self,
        api_client: Any,
        lease: LeaseSettings,
        sink: LeadershipSink,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api: Any = _without_retries(api_client)
        self.lease = lease
        self.sink = sink
        self.clock = clock
        self.is_leader = False
        self._observed_record: tuple[str, str, int] | None = None
        self._observed_at = 0.0
        self._previous_read: float | None = None
        self._expires_at: float | None = None  # of another holder's lease, as observed here
        self._last_renew = 0.0
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.transitions_seen = 0

    # ---- API calls (worker threads) -------------------------------------------------------------

    def _read(self, timeout: float = _CALL_TIMEOUT) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            resp = self._api.read_namespaced_lease(
                self.lease.name, self.lease.namespace, _preload_content=False, _request_timeout=timeout
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        data: dict[str, Any] = json.loads(resp.data)
        return data

    def _create(self, spec: dict[str, Any], timeout: float) -> None:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.lease.name, "namespace": self.lease.namespace},
            "spec": spec,
        }
        self._api.create_namespaced_lease(self.lease.namespace, body, _request_timeout=timeout)

    def _replace(self, current: dict[str, Any], spec: dict[str, Any], timeout: float = _CALL_TIMEOUT) -> None:
        body = dict(current)
        body["spec"] = spec
        self._api.replace_namespaced_lease(
            self.lease.name, self.lease.namespace, body, _request_timeout=timeout
        )

    # ---- election -------------------------------------------------------------------------------

    def _spec(self, transitions: int, acquire_time: str | None) -> dict[str, Any]:
        now = _now_micro()
        return {
            "holderIdentity": self.lease.identity,
            "leaseDurationSeconds": int(self.lease.lease_duration),
            "acquireTime": acquire_time or now,
            "renewTime": now,
            "leaseTransitions": transitions,
        }

    def _call_timeout(self) -> float:
        """Per API call: a leader's attempt (two calls) must end before its renew deadline passes, so that
        it steps down in time even when the API server accepts connections and never answers."""
        if not self.is_leader:
            return _CALL_TIMEOUT
        left = self._last_renew + self.lease.renew_deadline - self.clock()
        return max(0.2, min(_CALL_TIMEOUT, left / 2))

    def _try_acquire_or_renew(self) -> bool:
        """One attempt (in a worker thread); True when we hold the lease afterwards."""
        now = self.clock()
        timeout = self._call_timeout()
        current = self._read(timeout)
        if current is None:
            self._create(self._spec(0, None), timeout)
            self._observed_at = now
            return True
        spec = current.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, str(spec.get("renewTime") or ""), int(spec.get("leaseTransitions") or 0))
        duration = float(spec.get("leaseDurationSeconds") or self.lease.lease_duration)
        previous_read, self._previous_read = self._previous_read, now
        if record != self._observed_record:
            self._observed_record = record
            self._observed_at = self._renewed_after(previous_read, now, duration)
        self._expires_at = None
        if holder and holder != self.lease.identity and self._observed_at + duration > now:
            self._expires_at = self._observed_at + duration
            return False  # someone else holds a live lease
        transitions = record[2] if holder == self.lease.identity else record[2] + 1
        acquire = spec.get("acquireTime") if holder == self.lease.identity else None
        self._replace(current, self._spec(transitions, acquire), timeout)
        self._observed_at = now
        return True

    def _renewed_after(self, previous_read: float | None, now: float, duration: float) -> float:
        """When a new record was written, at the earliest, on our clock: after our previous read began.

        client-go counts from the read that saw the change, which lags the renewal by up to a retry
        period, so a crashed leader is replaced up to a retry period (and a tick) after its lease
        duration. Counting from the previous read is still safe: the leader stopped acting by its renew
        deadline (checked every retry period) after that renewal, and the lease duration exceeds renew
        deadline + two retry periods (15 s > 10 s + 2 x 2 s by default). Without that margin, or a
        regular previous read, we count from now, as client-go.
        """
        margin = duration - self.lease.renew_deadline - 2 * self.lease.retry_period
        if previous_read is None or margin <= 0 or now - previous_read > 1.5 * self.lease.retry_period:
            return now
        return previous_read

    def _release(self) -> None:
        current = self._read()
        if current is None:
            return
        spec = dict(current.get("spec") or {})
        if spec.get("holderIdentity") != self.lease.identity:
            return
        spec.update({"holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": _now_micro()})
        self._replace(current, spec)

    def _set_leader(self, value: bool) -> None:
        if value != self.is_leader:
            self.is_leader = value
            self.transitions_seen += 1
            log.info(
                "%s the leader (lease %s/%s, identity %s)",
                "became" if value else "no longer",
                self.lease.namespace,
                self.lease.name,
                self.lease.identity,
            )
        self.sink.set_leader(value)

    async def run(self) -> None:
        self._set_leader(False)
        while not self._stopping.is_set():
            try:
                held = await asyncio.to_thread(self._try_acquire_or_renew)
                if held:
                    self._last_renew = self.clock()
            except Exception as exc:
                log.warning("lease %s: acquire/renew failed: %s", self.lease.name, exc)
                # a leader keeps leading through API hiccups until the renew deadline passes
                held = self.is_leader and self.clock() - self._last_renew < self.lease.renew_deadline
            self._set_leader(held)
            delay = self.lease.retry_period
            if not held and self._expires_at is not None:  # try again the moment the lease expires
                delay = min(delay, max(0.0, self._expires_at - self.clock()) + 0.01)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="leader-election")

    async def stop(self) -> None:
        """Stop campaigning; release the lease if we hold it (graceful shutdown)."""
        self._stopping.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if self.is_leader:
            try:
                await asyncio.to_thread(self._release)
                log.info("released lease %s/%s", self.lease.namespace, self.lease.name)
            except Exception as exc:
                log.warning("could not release lease %s: %s", self.lease.name, exc)
        self._set_leader(False)


def _identity() -> str:
    pod = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{pod}_{uuid.uuid4()}"


def _lease_owner_name(settings: Any) -> str:
    if getattr(settings, "pool_name", ""):
        return str(settings.pool_name)
    pod = os.environ.get("POD_NAME", "")
    m = _DEPLOYMENT_FROM_POD.match(pod)
    return m.group(1) if m else (pod or "epp")


async def start_leader_election(
    settings: Any, sink: LeadershipSink, *, api_client: Any = None
) -> LeaderElector:
    """Build the elector from the daemon settings and start campaigning."""
    from epp.k8s.client import load_api_client, resolve_namespace

    namespace = resolve_namespace(getattr(settings, "pool_namespace", None))
    lease = LeaseSettings(
        name=lease_name(namespace, _lease_owner_name(settings)),
        namespace=namespace,
        identity=_identity(),
        lease_duration=float(settings.ha_lease_duration),
        renew_deadline=float(settings.ha_renew_deadline),
        retry_period=float(settings.ha_retry_period),
    )
    elector = LeaderElector(api_client or load_api_client(), lease, sink)
    await elector.start()
    return elector
