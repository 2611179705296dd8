"""The daemon as users run it: `epp [FLAGS]` in its own process, checked over its real ports.

Start-up with one dead static endpoint must still reach readiness (the dead one is retried, never fatal),
SIGHUP re-reads the config file, SIGTERM stops cleanly with exit status 0.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.helpers import free_ports, until

EPP = str(Path(sys.executable).with_name("epp"))


async def _health(port: int, service: str) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        try:
            resp = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
        except grpc.aio.AioRpcError:
            return -1
        return int(resp.status)


async def _metric(port: int, name: str) -> str:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    return "\n".join(line for line in text.splitlines() if line.startswith(name))


async def test_daemon_ready_with_a_dead_endpoint_reloads_on_sighup_and_stops_on_sigterm(
    tmp_path: Path, start_sim
) -> None:
    sim = await start_sim(model="m", name="live", time_scale=0.01)
    dead_port, grpc_port, health_port, metrics_port = free_ports(4)
    dead = f"127.0.0.1:{dead_port}"  # nothing listens there
    config = tmp_path / "epp.yaml"
    config.write_text(Path("profiles/default.yaml").read_text())
    log = (tmp_path / "epp.log").open("w")
    proc = subprocess.Popen(
        [
            EPP,
            f"--static-endpoints={sim.address},{dead}",
            f"--config-file={config}",
            "--watch-config-file=false",
            "--bind-address=127.0.0.1",
            f"--grpc-port={grpc_port}",
            f"--grpc-health-port={health_port}",
            f"--metrics-port={metrics_port}",
            "-v=3",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "EPP_LOG_FORMAT": "json"},
    )
    try:
        await until(
            lambda: _is(health_port, "readiness", health_pb2.HealthCheckResponse.SERVING), 15, interval=0.05
        )
        assert await _health(health_port, "liveness") == health_pb2.HealthCheckResponse.SERVING
        assert await _health(health_port, "") == health_pb2.HealthCheckResponse.SERVING
        # the ext_proc port answers TLS (secure serving is on by default)
        with socket.create_connection(("127.0.0.1", grpc_port), timeout=2):
            pass
        assert "generation 1.0" in (await _metric(metrics_port, "epp_config_generation")).replace(
            "epp_config_generation ", "generation "
        )

        config.write_text(Path("profiles/least-loaded.yaml").read_text())
        proc.send_signal(signal.SIGHUP)

        async def reloaded() -> bool:
            return "epp_config_generation 2.0" in await _metric(metrics_port, "epp_config_generation")

        await until(reloaded, 10, interval=0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
    text = (tmp_path / "epp.log").read_text()
    assert code == 0, text
    assert '"msg": "epp stopped"' in text
    assert dead in text  # the unreachable endpoint was logged, not fatal


async def _is(port: int, service: str, status: int) -> bool:
    return await _health(port, service) == status


def test_kubernetes_mode_without_credentials_is_a_clear_usage_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    env["KUBECONFIG"] = str(tmp_path / "no-such-kubeconfig")
    grpc_port, health_port, metrics_port = free_ports(3)
    ports = [
        f"--grpc-port={grpc_port}",
        f"--grpc-health-port={health_port}",
        f"--metrics-port={metrics_port}",
    ]
    for extra in ([], [f"--kubeconfig={tmp_path / 'missing'}"]):
        res = subprocess.run(
            [EPP, "--pool-name=p", "--bind-address=127.0.0.1", *ports, *extra],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert res.returncode == 2, res.stderr
        assert "Traceback" not in res.stderr
        said = [line for line in res.stderr.splitlines() if line.startswith("epp: ")]
        assert said and ("no Kubernetes credentials" in said[0] or "--kubeconfig" in said[0]), res.stderr
