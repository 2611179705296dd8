"""Leader election against kmock (a fake kube-apiserver over real HTTP; no real one is available here).

Two electors share one Lease: exactly one leads; when the leader stops gracefully it releases the lease and
the other takes over within a retry period; readiness (the sink) follows leadership.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator

import grpc
import pytest
from kubernetes import client

from epp.extproc.health import ReadinessState
from epp.k8s.leader import LeaderElector, LeaseSettings, lease_name
from epp.tools.kmock import KmockThread
from tests.helpers import until

FAST = {"lease_duration": 2.0, "renew_deadline": 1.0, "retry_period": 0.1}  # leases are whole seconds


@pytest.fixture
def kmock_api() -> Iterator[KmockThread]:
    server = KmockThread().start()
    yield server
    server.stop()


def _lease(identity: str) -> LeaseSettings:
    return LeaseSettings(name=lease_name("ns1", "pool-a"), namespace="ns1", identity=identity, **FAST)


def _holder(server: KmockThread) -> str:
    api = client.CoordinationV1Api(server.api_client())
    resp = api.read_namespaced_lease(lease_name("ns1", "pool-a"), "ns1", _preload_content=False)
    return json.loads(resp.data)["spec"].get("holderIdentity") or ""


def test_lease_name_matches_upstream() -> None:
    assert lease_name("prod", "llama") == "epp-prod-llama.gateway-api-inference-extension.sigs.k8s.io"


async def test_one_leader_and_graceful_handover(kmock_api: KmockThread) -> None:
    ready_a, ready_b = ReadinessState(leader_election=True), ReadinessState(leader_election=True)
    for r in (ready_a, ready_b):
        r.set_synced(True)
        r.set_scraped(True)
    a = LeaderElector(kmock_api.api_client(), _lease("pod-a"), ready_a)
    await a.start()
    await until(lambda: a.is_leader)
    b = LeaderElector(kmock_api.api_client(), _lease("pod-b"), ready_b)
    await b.start()
    # b keeps retrying but never leads while a renews
    await asyncio.sleep(FAST["lease_duration"] * 1.2)
    assert a.is_leader and not b.is_leader
    assert ready_a.ready and not ready_b.ready
    assert _holder(kmock_api) == "pod-a"

    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await a.stop()  # graceful: releases the lease
    assert not ready_a.ready
    await until(lambda: b.is_leader, timeout=5)
    # a released lease is taken at the next retry, well before the lease would have expired
    assert loop.time() - t0 < FAST["lease_duration"]
    assert ready_b.ready
    assert _holder(kmock_api) == "pod-b"
    await b.stop()
    assert _holder(kmock_api) == ""


async def test_crashed_leader_is_replaced_after_lease_duration(kmock_api: KmockThread) -> None:
    ready_a, ready_b = ReadinessState(leader_election=True), ReadinessState(leader_election=True)
    a = LeaderElector(kmock_api.api_client(), _lease("pod-a"), ready_a)
    await a.start()
    await until(lambda: a.is_leader)
    # simulate a crash: stop renewing without releasing
    assert a._task is not None
    a._task.cancel()
    b = LeaderElector(kmock_api.api_client(), _lease("pod-b"), ready_b)
    await b.start()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await until(lambda: b.is_leader, timeout=10)
    waited = loop.time() - t0
    # b must observe the lease unchanged for a whole lease duration before taking it
    assert waited >= FAST["lease_duration"] - 0.2
    assert _holder(kmock_api) == "pod-b"
    await b.stop()


async def test_a_stopping_leader_releases_the_lease_before_draining_and_never_looks_ready_again(
    kmock_api: KmockThread, monkeypatch, start_sim
) -> None:
    """SIGTERM on the leader: the standby may take over while in-flight streams drain; meanwhile this
    replica's readiness stays NOT_SERVING even though its lease loop would otherwise still be renewing."""
    from envoy.config.core.v3 import base_pb2
    from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
    from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pbg

    from epp.app import App
    from epp.settings import parse_settings
    from epp.tools.loadgen.gateway import epp_flags

    monkeypatch.setenv("POD_NAME", "pool-a-7d9f8b6c5-x2x4z")  # the lease is named after its Deployment
    sim = await start_sim(model="m", name="s0", time_scale=0.01)
    flags = epp_flags([sim.address], secure_serving=False)
    flags += ["--grpc-port=0", "--grpc-health-port=0", "--metrics-port=0", "--pool-namespace=ns1"]
    flags += ["--ha-enable-leader-election", "--ha-lease-duration=2s", "--ha-renew-deadline=1s"]
    settings = parse_settings([*flags, "--ha-retry-period=100ms"], environ={})
    app = App(settings)
    app.k8s_api_client = kmock_api.api_client()
    await app.start()
    stopping: asyncio.Task[None] | None = None
    try:
        await until(lambda: app.readiness.ready)
        assert _holder(kmock_api).startswith("pool-a-7d9f8b6c5-x2x4z_")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            call = pbg.ExternalProcessorStub(channel).Process()
            # request headers only: the stream stays open, waiting for its body, so the drain waits
            msg = pb.ProcessingRequest()
            msg.request_headers.headers.CopyFrom(
                base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=":path", raw_value=b"/v1/completions")])
            )
            await call.write(msg)
            stopping = asyncio.create_task(app.stop())
            await until(lambda: _holder(kmock_api) == "", timeout=5)
            assert not stopping.done()  # released while the stream is still draining
            for _ in range(10):  # several retry periods of the (now stopped) lease loop
                assert not app.readiness.ready
                await asyncio.sleep(FAST["retry_period"])
            assert not stopping.done()
            call.cancel()
        await asyncio.wait_for(stopping, 10)
        assert not app.readiness.ready
    finally:
        if stopping is None:
            await app.stop()


class _SwitchableProxy:
    """A TCP proxy to kmock that can turn into a black hole: connections accepted, never answered (an
    API server behind a partition or overloaded)."""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("http://").rsplit(":", 1)
        self.target = (host, int(port))
        self.black_hole = False
        self.server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.black_hole:
            while await reader.read(65536):
                pass
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(*self.target)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    if self.black_hole:
                        continue  # swallow: the client waits for an answer that never comes
                    dst.write(data)
                    await dst.drain()
            dst.close()

        for t in (asyncio.create_task(pipe(reader, up_writer)), asyncio.create_task(pipe(up_reader, writer))):
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self.server is not None:
            self.server.close()


async def test_a_leader_cut_off_from_the_api_server_steps_down_by_its_renew_deadline(
    kmock_api: KmockThread,
) -> None:
    """A partitioned leader must stop being ready before a follower can take the lease (lease duration),
    however long the API calls hang: no retries, per-call timeouts within the renew deadline."""
    proxy = _SwitchableProxy(kmock_api.url)
    cfg = client.Configuration()
    cfg.host = await proxy.start()
    ready = ReadinessState(leader_election=True)
    ready.set_synced(True)
    ready.set_scraped(True)
    settings = LeaseSettings(
        name=lease_name("ns1", "pool-a"),
        namespace="ns1",
        identity="pod-a",
        lease_duration=4.0,
        renew_deadline=2.0,
        retry_period=0.2,
    )
    a = LeaderElector(client.ApiClient(cfg), settings, ready)
    await a.start()
    try:
        await until(lambda: a.is_leader)
        proxy.black_hole = True
        loop = asyncio.get_running_loop()
        cut = loop.time()
        await until(lambda: not ready.ready, timeout=10)
        # stepped down within the renew deadline (+ one retry period and scheduling slack), well before
        # the lease (4 s since its last renew) could pass to a follower
        assert loop.time() - cut < settings.renew_deadline + settings.retry_period + 0.8
    finally:
        proxy.black_hole = False
        await a.stop()
        await proxy.stop()


async def test_a_follower_replaces_a_crashed_leader_within_one_lease_duration(kmock_api: KmockThread) -> None:
    """A follower that has been watching the lease takes it within a lease duration of the leader's crash
    (client-go's way can take up to a retry period and a tick more), and not before the leader's lease,
    counted from its last renewal, could have run out."""
    ready_a, ready_b = ReadinessState(leader_election=True), ReadinessState(leader_election=True)
    a = LeaderElector(kmock_api.api_client(), _lease("pod-a"), ready_a)
    await a.start()
    await until(lambda: a.is_leader)
    b = LeaderElector(kmock_api.api_client(), _lease("pod-b"), ready_b)
    await b.start()
    await asyncio.sleep(0.5)  # b follows: several reads of a's renewals
    assert not b.is_leader
    assert a._task is not None
    last_renew = a._last_renew
    a._task.cancel()  # a crash: no release
    crashed = time.monotonic()
    await until(lambda: b.is_leader, timeout=10)
    took = time.monotonic() - crashed
    assert took <= FAST["lease_duration"]
    assert time.monotonic() - last_renew >= FAST["lease_duration"] - 2 * FAST["retry_period"]
    await b.stop()
