"""`epp --workers 2` as deployed: the daemon in its own process, its workers, a real Envoy, simulators.

One picture for the pod (one /metrics adding up the workers, one readiness), a reload reaching every
worker as one generation, and a worker killed with SIGKILL under load: only the requests it had in flight
fail, and it serves again within 2 seconds.
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
from tests.helpers import until

pytestmark = pytest.mark.envoy

PROFILE = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: prefill-cost-scorer
- type: prefix-cache-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: prefill-cost-scorer
    weight: 2
  - pluginRef: prefix-cache-scorer
    weight: {weight}
"""


_ANY_LABELS = r"(?:\{[^}]*\})?"


def _sample(text: str, name: str, labels: str = "") -> float:
    """The sum of the samples named `name` (with exactly `labels` when given)."""
    pattern = "^" + re.escape(name) + (re.escape(labels) if labels else _ANY_LABELS) + r" (\S+)$"
    total = 0.0
    for line in text.splitlines():
        m = re.match(pattern, line)
        if m:
            total += float(m.group(1))
    return total


async def _metrics(http: aiohttp.ClientSession, epp: EppProcess) -> str:
    async with http.get(epp.metrics_url) as resp:
        assert resp.status == 200
        return await resp.text()


def _worker_pids(log: str) -> dict[int, int]:
    """The latest pid of each worker slot, from the daemon's log."""
    out: dict[int, int] = {}
    for m in re.finditer(r"worker (\d+) \(pid (\d+)\) ready", log):
        out[int(m.group(1))] = int(m.group(2))
    return out


async def _complete(http: aiohttp.ClientSession, url: str, i: int, max_tokens: int = 4) -> int:
    body = {
        "model": "sim-model",
        "prompt": f"shared system prompt {i % 3} " * 40 + f"question {i}",
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    try:
        async with http.post(f"{url}/v1/completions", json=body) as resp:
            text = await resp.text()
            if resp.status != 200 or "[DONE]" not in text:
                return 0
            return 200
    except (TimeoutError, aiohttp.ClientError):
        return 0


@pytest.fixture
async def fleet(start_sim):
    return [await start_sim(model="sim-model", time_scale=0.05, seed=i) for i in range(2)]


async def test_two_workers_one_picture_one_reload_and_a_killed_worker_comes_back(
    fleet, tmp_path: Path
) -> None:
    config = tmp_path / "config" / "epp.yaml"
    config.parent.mkdir()
    config.write_text(PROFILE.format(weight=1))
    epp = EppProcess(
        [s.address for s in fleet],
        config_file=config,
        secure_serving=False,
        extra_args=["--workers", "2", "--watch-config-file=true", "--config-reload-debounce", "50ms"],
        log_path=tmp_path / "epp.log",
    )
    await epp.start()
    envoy = EnvoyProcess(
        EnvoyConfig(ext_proc_port=epp.grpc_port, ext_proc_tls=False), tmp_path, concurrency=2
    )
    try:
        await envoy.start()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            text = await _metrics(http, epp)
            assert _sample(text, "epp_workers", '{state="ready"}') == 2
            pids = _worker_pids(epp.log_text())
            assert set(pids) == {0, 1} and epp.pid not in pids.values()

            # ---- one picture: requests spread over the workers, one /metrics adding them up
            statuses = await asyncio.gather(*(_complete(http, envoy.url, i) for i in range(40)))
            assert statuses == [200] * 40

            async def counted() -> bool:
                t = await _metrics(http, epp)
                return _sample(t, "inference_objective_request_total") == 40 and (
                    _sample(t, "inference_objective_output_tokens_count") == 40
                )

            await until(counted, interval=0.05)
            text = await _metrics(http, epp)
            assert _sample(text, "inference_objective_running_requests") == 0
            assert text.count("# TYPE inference_objective_request_total counter") == 1

            # ---- a reload reaches every worker as one generation
            config.write_text(PROFILE.format(weight=3))

            async def reloaded() -> bool:
                return "config generation 2 is live on all 2 workers" in epp.log_text()

            await until(reloaded, interval=0.05)
            assert _sample(await _metrics(http, epp), "epp_config_generation") == 2

            # ---- SIGKILL one worker under load
            stop = asyncio.Event()
            results: list[tuple[float, int]] = []

            async def client(i: int) -> None:
                n = 0
                while not stop.is_set():
                    started = time.monotonic()
                    results.append((started, await _complete(http, envoy.url, i * 1000 + n, max_tokens=16)))
                    n += 1

            async def spare_waiting() -> bool:
                return _sample(await _metrics(http, epp), "epp_workers", '{state="spare"}') == 1

            # the steady state: a warm spare waits to replace a dead worker
            await until(spare_waiting, interval=0.05)
            clients = [asyncio.create_task(client(i)) for i in range(8)]
            await asyncio.sleep(1.0)
            counted_before = _sample(await _metrics(http, epp), "inference_objective_request_total")
            victim = pids[0]
            killed_at = time.monotonic()
            os.kill(victim, signal.SIGKILL)

            async def back() -> bool:
                fresh = _worker_pids(epp.log_text())
                if fresh.get(0, victim) == victim:
                    return False
                return _sample(await _metrics(http, epp), "epp_workers", '{state="ready"}') == 2

            recovery = await until(back, timeout=10.0, interval=0.02)
            await asyncio.sleep(1.5)
            stop.set()
            await asyncio.gather(*clients)
            assert recovery < 2.0, f"the killed worker served again after {recovery:.2f}s"
            failed = [t for t, status in results if status != 200]
            # only requests in flight on the killed worker fail: at most one per client, started before the
            # kill; everything started once it was back succeeds
            assert len(failed) <= 8
            # (a request sent in the instant before Envoy saw the worker's connection close is one of its too)
            late = [round(t - killed_at, 3) for t in failed if t > killed_at + 0.1]
            assert not late, f"requests started after the kill failed: {late}"
            after = [status for t, status in results if t > killed_at + recovery]
            assert after and all(s == 200 for s in after)
            text = await _metrics(http, epp)
            assert _sample(text, "epp_worker_restarts_total") == 1
            # what the killed worker had counted is kept: the pod's counter did not go backwards
            assert _sample(text, "inference_objective_request_total") >= counted_before + len(after)
    finally:
        await envoy.stop()
        await epp.stop()
    log = epp.log_text()
    assert "Traceback" not in log.split("exited with status")[0]  # nothing failed before the kill
