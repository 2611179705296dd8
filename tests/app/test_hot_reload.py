"""Hot reload of a ConfigMap-mounted config under traffic, through real Envoy to simulated model servers.

The whole daemon (`epp.app.App`) runs in-process with `--config-file` pointing into a kubelet-style
ConfigMap directory (`config.yaml -> ..data/config.yaml`, `..data -> ..<ts>`). Two simulators have pinned
metrics so each config has one right answer: config QUEUE (queue-scorer only) must pick the short queue,
config KV (kv-cache-utilization-scorer only) the low KV usage. Swapping the `..data` link must move traffic
within 2 s, a bad document must change nothing (and say why in the log and the metrics), and repeated
swaps under continuous traffic must fail no request.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import aiohttp
import pytest

from epp.app import App
from epp.settings import parse_settings
from epp.tools.loadgen.gateway import ANY_PORTS, epp_flags
from epp.tools.proxy import EnvoyConfig, EnvoyProcess
from epp.tools.sim.metrics import MetricsOverride
from tests.helpers import until

pytestmark = pytest.mark.envoy

HEADER = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
QUEUE_ONLY = (
    HEADER
    + "plugins:\n- type: queue-scorer\nschedulingProfiles:\n- name: default\n  plugins:\n"
    + "  - pluginRef: queue-scorer\n"
)
KV_ONLY = (
    HEADER
    + "plugins:\n- type: kv-cache-utilization-scorer\nschedulingProfiles:\n- name: default\n  plugins:\n"
    + "  - pluginRef: kv-cache-utilization-scorer\n    weight: 2\n"
)
BROKEN = HEADER + "plugins:\n- type: queue-scorer\n  parameters:\n    nosuchparam: 1\n"


class ConfigMapDir:
    def __init__(self, root: Path, content: str) -> None:
        self.root = root
        self.n = 0
        self._write(content)
        os.symlink("..data/config.yaml", root / "config.yaml")

    @property
    def path(self) -> Path:
        return self.root / "config.yaml"

    def _write(self, content: str) -> None:
        self.n += 1
        target = self.root / f"..2026_{self.n:04d}"
        target.mkdir()
        (target / "config.yaml").write_text(content)
        tmp = self.root / "..data_tmp"
        os.symlink(target.name, tmp)
        os.replace(tmp, self.root / "..data")

    def update(self, content: str) -> None:
        self._write(content)


async def _served_by(http: aiohttp.ClientSession, url: str, i: int) -> tuple[int, str]:
    body = {"model": "sim", "prompt": f"request number {i} with some text", "max_tokens": 2}
    async with http.post(f"{url}/v1/completions", json=body) as resp:
        await resp.read()
        return resp.status, resp.headers.get("x-sim-server", "")


async def _until_served_by(http: aiohttp.ClientSession, url: str, name: str, timeout: float) -> float:
    """Send requests until `name` serves one (every one answered 200), and the next 5 too; the seconds
    until the first."""
    i = 0

    async def served() -> str:
        nonlocal i
        i += 1
        status, server = await _served_by(http, url, i)
        assert status == 200
        return server if server == name else ""

    took = await until(served, timeout, interval=0.05, what=f"requests served by {name!r}")
    for j in range(5):  # and it stays there
        assert (await _served_by(http, url, 1000 + i + j)) == (200, name)
    return took


@pytest.fixture
async def stack(tmp_path: Path, start_sim):
    # "shortq" has the short queue but a full KV cache; "lowkv" the opposite.
    sims = {
        "shortq": await start_sim(model="sim", name="shortq", time_scale=0.01, seed=1),
        "lowkv": await start_sim(model="sim", name="lowkv", time_scale=0.01, seed=2),
    }
    sims["shortq"].set_metrics_override(MetricsOverride(waiting=0, kv=0.9))
    sims["lowkv"].set_metrics_override(MetricsOverride(waiting=8, kv=0.1))
    (tmp_path / "cm").mkdir()
    cm = ConfigMapDir(tmp_path / "cm", QUEUE_ONLY)
    settings = parse_settings(
        [
            *epp_flags(
                [s.address for s in sims.values()],
                config_file=cm.path,
                secure_serving=False,
                watch_config_file=True,
            ),
            *ANY_PORTS,
            "--config-reload-debounce=50ms",
        ],
        environ={},
    )
    app = App(settings)
    await app.start()
    envoy = EnvoyProcess(EnvoyConfig(ext_proc_port=app.grpc_port, ext_proc_tls=False), tmp_path)
    await envoy.start()
    try:
        yield app, envoy, cm
    finally:
        await envoy.stop()
        await app.stop()


async def test_reload_moves_traffic_and_bad_edit_keeps_old_pipeline(stack, caplog) -> None:
    app, envoy, cm = stack
    registry = app.metrics.registry
    async with aiohttp.ClientSession() as http:
        await _until_served_by(http, envoy.url, "shortq", timeout=5)  # QUEUE_ONLY: short queue wins
        assert app.holder.current.generation == 1

        cm.update(KV_ONLY)
        took = await _until_served_by(http, envoy.url, "lowkv", timeout=2)
        assert took < 2.0
        assert app.holder.current.generation == 2
        assert registry.get_sample_value("epp_config_reload_total", {"result": "success"}) == 1.0

        caplog.set_level(logging.ERROR, logger="epp.config.reloader")
        cm.update(BROKEN)
        await until(
            lambda: registry.get_sample_value("epp_config_reload_total", {"result": "error"}) == 1.0,
            5,
            what="the bad edit reported",
        )
        # routing unchanged, generation unchanged, the log says where and why
        for i in range(10):
            assert await _served_by(http, envoy.url, 5000 + i) == (200, "lowkv")
        assert app.holder.current.generation == 2
        errors = "\n".join(r.getMessage() for r in caplog.records)
        assert f"{cm.path}:6: plugins[0].parameters.nosuchparam" in errors
        assert registry.get_sample_value("epp_config_generation") == 2.0

        # an emptied file (an edit caught half-written) is refused too, not run as the built-in default
        cm.update("# being edited\n")
        await until(
            lambda: registry.get_sample_value("epp_config_reload_total", {"result": "error"}) == 2.0,
            5,
            what="the emptied file reported",
        )
        assert app.holder.current.generation == 2
        assert await _served_by(http, envoy.url, 6000) == (200, "lowkv")
        assert "the file is empty (or only comments)" in "\n".join(r.getMessage() for r in caplog.records)


async def test_repeated_reloads_under_traffic_fail_no_request(stack) -> None:
    app, envoy, cm = stack
    failures: list[int] = []
    served = 0
    stop = asyncio.Event()

    async def client(http: aiohttp.ClientSession, cid: int) -> None:
        nonlocal served
        i = 0
        while not stop.is_set():
            i += 1
            status, _ = await _served_by(http, envoy.url, cid * 100000 + i)
            if status != 200:
                failures.append(status)
            served += 1

    async with aiohttp.ClientSession() as http:
        clients = [asyncio.create_task(client(http, c)) for c in range(4)]
        for n in range(10):
            before = app.holder.current.generation
            cm.update(KV_ONLY if n % 2 == 0 else QUEUE_ONLY)
            # generous: CI machines are slow; the 2 s bound is tested above
            await until(lambda b=before: app.holder.current.generation != b, 15, what="the reload")
        stop.set()
        await asyncio.gather(*clients)
    assert app.holder.current.generation == 11
    assert served > 50
    assert failures == []
