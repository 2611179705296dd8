"""`--ha-mode active-active` as deployed: two (then three) daemons in their own processes, each behind its
own Envoy, in front of one simulated fleet; the peer channel is CURVE-secured with a shared secret file.

A prefix routed by one replica is routed to the same endpoint by the other (the prefix index is shared);
with the link off (`--peers` empty), the other replica does not know it. A replica that starts later takes
a running one's snapshot before it reports ready, and routes those prefixes like the others at once.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from epp.tools.loadgen.gateway import EppProcess
from epp.tools.proxy import EnvoyConfig, EnvoyProcess
from tests.helpers import free_ports, until
from tests.workers.test_buses import CONFIG as PROFILE  # prefix-cache-scorer alone

pytestmark = pytest.mark.envoy

PREFIXES = 8


def _prompt(group: int, i: int) -> str:
    return f"group {group}: a long shared system prompt for this tenant. " * 24 + f"question {i}"


async def _picked(http: aiohttp.ClientSession, envoy: EnvoyProcess, group: int, i: int) -> str:
    """The endpoint the EPP behind `envoy` picked for a request of `group` (its decision header)."""
    body = {"model": "sim-model", "prompt": _prompt(group, i), "max_tokens": 2}
    async with http.post(f"{envoy.url}/v1/completions", json=body, headers={"x-epp-decision": "1"}) as resp:
        await resp.read()
        assert resp.status == 200
        decision = resp.headers["x-epp-decision"]
    m = re.search(r"picked=(\S+)", decision)
    assert m, decision
    return m.group(1)


def _sample(text: str, name: str) -> float:
    """The sum of the samples of `name` (a family name, or a name with its exact labels)."""
    total = 0.0
    labels = "" if "{" in name else r"(?:\{[^}]*\})?"
    for line in text.splitlines():
        m = re.match(re.escape(name) + labels + r" (\S+)$", line)
        if m:
            total += float(m.group(1))
    return total


async def _metric(http: aiohttp.ClientSession, epp: EppProcess, name: str) -> float:
    async with http.get(epp.metrics_url) as resp:
        return _sample(await resp.text(), name)


@pytest.fixture
async def fleet(start_sim):
    return [await start_sim(model="sim-model", time_scale=0.02, seed=i) for i in range(4)]


class Stack:
    def __init__(self, fleet: list, tmp_path: Path) -> None:
        self.fleet = fleet
        self.tmp_path = tmp_path
        self.secret = tmp_path / "ha-secret"
        self.secret.write_text("the replicas' shared secret, 32+ bytes long\n")
        self.config = tmp_path / "epp.yaml"
        self.config.write_text(PROFILE)
        self.started: list[tuple[EppProcess, EnvoyProcess | None]] = []

    async def replica(self, name: str, ha_port: int, peers: list[int], *, workers: int = 1):
        args = ["--ha-mode", "active-active", "--ha-port", str(ha_port), "--ha-secret-file", str(self.secret)]
        args += ["--enable-decision-header", "--workers", str(workers), "--ha-bootstrap-timeout", "2s"]
        if peers:
            args += ["--peers", ",".join(f"127.0.0.1:{p}" for p in peers)]
        epp = EppProcess(
            [s.address for s in self.fleet],
            config_file=self.config,
            secure_serving=False,
            extra_args=args,
            log_path=self.tmp_path / f"{name}.log",
        )
        self.started.append((epp, None))  # stopped by `stop` even if what follows fails
        await epp.start()
        envoy = EnvoyProcess(
            EnvoyConfig(ext_proc_port=epp.grpc_port, ext_proc_tls=False), self.tmp_path / name
        )
        self.started[self.started.index((epp, None))] = (epp, envoy)
        await envoy.start()
        return epp, envoy

    async def stop(self) -> None:
        for epp, envoy in reversed(self.started):
            if envoy is not None:
                await envoy.stop()
            await epp.stop()
        for epp, _ in self.started:
            assert "Traceback" not in epp.log_text(), epp.log_text()[-3000:]


async def test_replicas_route_a_prefix_alike_and_a_new_one_bootstraps(fleet, tmp_path: Path) -> None:
    stack = Stack(fleet, tmp_path)
    pa, pb, pc = free_ports(3)
    try:
        (a, ea), (b, eb) = await asyncio.gather(
            stack.replica("a", pa, [pb, pc]), stack.replica("b", pb, [pa, pc], workers=2)
        )
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            await until(lambda: _heard(http, a, 1), what="a hears b")
            await until(lambda: _heard(http, b, 1), what="b hears a")
            first = {g: await _picked(http, ea, g, 0) for g in range(PREFIXES)}
            assert len(set(first.values())) >= 2  # the groups spread over the fleet

            async def b_agrees() -> bool:
                return all([await _picked(http, eb, g, 1) == first[g] for g in range(PREFIXES)])

            await until(b_agrees, timeout=5.0, what="b routes a's prefixes where a did")

            # a replica that starts now takes a snapshot first: it routes every prefix alike at once
            c, ec = await stack.replica("c", pc, [pa, pb])
            assert await _metric(http, c, "epp_ha_snapshots_total") == 1  # taken before it was ready
            assert [await _picked(http, ec, g, 2) for g in range(PREFIXES)] == [
                first[g] for g in range(PREFIXES)
            ]
            assert await _metric(http, a, "epp_ha_messages_total") > 0
    finally:
        await stack.stop()


async def _heard(http: aiohttp.ClientSession, epp: EppProcess, peers: int) -> bool:
    return await _metric(http, epp, "epp_ha_peers") >= peers


async def test_without_the_link_the_other_replica_does_not_know(fleet, tmp_path: Path) -> None:
    stack = Stack(fleet, tmp_path)
    pa, pb = free_ports(2)
    try:
        # one after the other: a replica picks its free ports before its process binds them, so two
        # starting at once can pick the same ones
        a, ea = await stack.replica("a", pa, [])
        _, eb = await stack.replica("b", pb, [])
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            first = {g: await _picked(http, ea, g, 0) for g in range(PREFIXES)}
            await asyncio.sleep(0.5)  # what sharing would deliver in milliseconds
            other = {g: await _picked(http, eb, g, 1) for g in range(PREFIXES)}
            assert other != first  # b places the prefixes on its own (ties broken at random), not where a did
            assert await _metric(http, a, "epp_ha_peers") == 0
    finally:
        await stack.stop()


async def test_one_envoy_spreads_streams_over_replicas_and_survives_one_killed(fleet, tmp_path: Path) -> None:
    secret = tmp_path / "ha-secret"
    secret.write_text("the replicas' shared secret, 32+ bytes long\n")
    config = tmp_path / "epp.yaml"
    config.write_text(PROFILE)
    pa, pb = free_ports(2)
    replicas: list[EppProcess] = []
    for name, port, peer in (("a", pa, pb), ("b", pb, pa)):
        epp = EppProcess(
            [s.address for s in fleet],
            config_file=config,
            secure_serving=True,  # TLS to the EPP; Envoy's health checks go to the plaintext health port
            extra_args=[
                *("--ha-mode", "active-active", "--ha-port", str(port), "--ha-secret-file", str(secret)),
                *("--peers", f"127.0.0.1:{peer}", "--ha-bootstrap-timeout", "1s", "--enable-decision-header"),
            ],
            log_path=tmp_path / f"{name}.log",
        )
        replicas.append(epp)
    try:
        await asyncio.gather(*(epp.start() for epp in replicas))
    except BaseException:
        await asyncio.gather(*(epp.stop() for epp in replicas))
        raise
    a, b = replicas
    envoy = EnvoyProcess(
        EnvoyConfig(
            ext_proc_port=a.grpc_port,
            ext_proc_health_port=a.health_port,
            ext_proc_replicas=[("127.0.0.1", b.grpc_port, b.health_port)],
            ext_proc_tls=True,
        ),
        tmp_path / "envoy",
    )
    try:
        await envoy.start()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            await until(lambda: _heard(http, a, 1), what="a hears b")
            first = [await _picked(http, envoy, g, g) for g in range(4)]
            await asyncio.sleep(0.2)  # sharing is eventual: a few ms (the bus gathers 10 ms of changes)
            picks = [await _picked(http, envoy, g % 4, g) for g in range(4, 28)]
            for g in range(4):  # whichever replica routes it now, a prefix stays where it went first
                assert {p for i, p in enumerate(picks) if i % 4 == g} == {first[g]}, (first, picks)
            async with http.get(f"{envoy.admin_url}/clusters") as resp:
                hosts = [ln for ln in (await resp.text()).splitlines() if ln.startswith("ext_proc::127")]
            for epp in replicas:  # the streams went to both replicas, a request's two streams to one
                assert await _metric(http, epp, "inference_objective_request_total") >= 4, "\n".join(hosts)
                assert await _metric(http, epp, 'epp_response_body_total{path="routing-stream"}') == 0
                # paired with its observer (the decision header keeps the routing stream on the response)
                assert await _metric(http, epp, 'epp_response_body_total{path="observer"}') >= 4

            # ---- SIGKILL b under load: a goes on; what fails was b's in flight (or the one stream that
            # found b's port closed before Envoy ejected it)
            stop = asyncio.Event()
            results: list[tuple[float, int]] = []

            async def client(i: int) -> None:
                n = 0
                while not stop.is_set():
                    started = time.monotonic()
                    results.append((started, await _status(http, envoy, i, n)))
                    n += 1

            clients = [asyncio.create_task(client(i)) for i in range(6)]
            await asyncio.sleep(1.0)
            assert b.process is not None
            workers = _children(b.process.pid)
            assert len(workers) == 3  # two workers and the warm spare
            killed_at = time.monotonic()
            os.kill(b.process.pid, signal.SIGKILL)
            await asyncio.sleep(2.0)
            stop.set()
            await asyncio.gather(*clients)
            before = [s for t, s in results if t < killed_at - 0.5]  # long done when b died
            # Envoy health-checks every 0.5 s and ejects a replica at its first refused connection
            after = [s for t, s in results if t > killed_at + 1.0]
            failed = [round(t - killed_at, 3) for t, s in results if s != 200]
            assert before and all(s == 200 for s in before), [s for s in before if s != 200]
            assert after and all(s == 200 for s in after), (
                failed,
                [(round(t - killed_at, 3), s) for t, s in results if s != 200],
            )
            assert len(failed) <= 6 + 2, (
                failed
            )  # b's in-flight share, and a stream or two racing the ejection
        assert a.process is not None
        a_workers = _children(a.process.pid)
    finally:
        await envoy.stop()
        for epp in replicas:
            await epp.stop()
    assert "Traceback" not in a.log_text()
    # a stopped in time, its workers and warm spare with it
    assert not [pid for pid in a_workers if Path(f"/proc/{pid}").exists()]


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


async def _status(http: aiohttp.ClientSession, envoy: EnvoyProcess, i: int, n: int) -> int:
    body = {"model": "sim-model", "prompt": _prompt(i, n), "max_tokens": 8}
    try:
        async with http.post(f"{envoy.url}/v1/completions", json=body) as resp:
            await resp.read()
            return resp.status
    except (TimeoutError, aiohttp.ClientError):
        return 0
