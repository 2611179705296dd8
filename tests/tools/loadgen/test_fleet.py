"""The fleet launcher (simulators in-process and as subprocesses) and the EPP + Envoy gateway."""

from __future__ import annotations

import os
import random

import aiohttp
import pytest

from epp.tools.loadgen.client import LoadClient
from epp.tools.loadgen.fleet import SimFleet, fleet_stats, sim_argv
from epp.tools.loadgen.gateway import EppProcess, EppServer, Gateway
from epp.tools.loadgen.text import synthetic_text
from epp.tools.loadgen.workloads import Session, Turn
from epp.tools.sim import SimConfig
from epp.tools.sim.cli import build_parser, config_from_args


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def _session(seed: int, tokens: int = 200) -> Session:
    system = synthetic_text(random.Random(seed), tokens)
    return Session(id=f"s{seed}", group="g", turns=(Turn("q", 2),), system=system)


def test_sim_argv_round_trips_through_the_sim_cli() -> None:
    config = SimConfig(
        name="x",
        model="m",
        lora_adapters=("a", "b"),
        max_loras=2,
        kv_blocks=512,
        time_scale=0.25,
        seed=7,
        engine="sglang",
        prefill_ms_per_token=0.05,
    )
    argv = sim_argv(config)
    assert argv[:4] == ["--host", "127.0.0.1", "--port", "0"]
    parsed = config_from_args(build_parser().parse_args(argv))
    assert parsed == config
    assert sim_argv(SimConfig()) == ["--host", "127.0.0.1", "--port", "0"]
    with pytest.raises(ValueError, match="vocab_size"):
        sim_argv(SimConfig(vocab_size=1000))


@pytest.mark.parametrize("mode", ["inprocess", "subprocess"])
async def test_fleet_starts_counts_resets_and_stops(mode) -> None:
    configs = [SimConfig(name=f"f{i}", model="m", time_scale=0.05, seed=i) for i in range(2)]
    fleet = SimFleet(configs, mode=mode)
    await fleet.start()
    try:
        assert fleet.names == ["f0", "f1"]
        assert all(a.startswith("127.0.0.1:") for a in fleet.addresses)
        pids = [m.pid for m in fleet.members]
        assert all(p is None for p in pids) if mode == "inprocess" else all(_alive(p) for p in pids)
        session = _session(1)
        async with LoadClient(f"http://{fleet.addresses[1]}", model="m") as client:
            first, _ = await client.send(session, 0)
            second, _ = await client.send(session, 0)
        assert first.backend == "f1" and second.cached_tokens > 0
        stats = await fleet.stats()
        assert [s["name"] for s in stats] == ["f0", "f1"]
        assert stats[0]["requests_finished"] == 0 and stats[1]["requests_finished"] == 2
        agg = fleet_stats(stats)
        assert agg.requests == 2
        assert agg.prefix_cache_hits == second.cached_tokens
        assert agg.prefix_cache_queries == first.prompt_tokens + second.prompt_tokens
        assert 0 < agg.hit_ratio < 0.5
        assert agg.balance() == 2.0  # all requests on one of two servers
        await fleet.reset()
        assert fleet_stats(await fleet.stats()).requests == 0
        async with LoadClient(f"http://{fleet.addresses[1]}", model="m") as client:
            third, _ = await client.send(session, 0)
        assert third.cached_tokens == 0  # the cache was dropped
    finally:
        await fleet.stop()
    if mode == "subprocess":
        assert not any(_alive(p) for p in pids)
        assert all(m.process is None for m in fleet.members)


async def test_a_simulator_that_cannot_start_stops_the_others(tmp_path) -> None:
    fleet = SimFleet(
        [SimConfig(name="ok"), SimConfig(name="bad", kv_blocks=0)], mode="subprocess", log_dir=tmp_path
    )
    with pytest.raises(RuntimeError, match="--kv-blocks must be >= 1"):
        await fleet.start()
    assert all(m.process is None for m in fleet.members)
    with pytest.raises(ValueError, match="mode must be"):
        SimFleet([], mode="threads")  # type: ignore[arg-type]


async def test_epp_server_waits_for_readiness() -> None:
    async with SimFleet([SimConfig(model="m", time_scale=0.05)]) as fleet:
        epp = EppServer(fleet.addresses, secure_serving=False)
        await epp.start()
        try:
            assert epp.app is not None and epp.app.readiness.ready
            assert epp.grpc_port > 0
            async with aiohttp.ClientSession() as http, http.get(epp.metrics_url) as resp:
                assert resp.status == 200
                assert "inference_pool_ready_pods" in await resp.text()
        finally:
            await epp.stop()
        assert epp.app is None and epp.grpc_port == 0


async def test_epp_process_reports_a_bad_config_and_leaves_nothing_behind(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\nplugins: 3\n"
    )
    epp = EppProcess(["127.0.0.1:1"], config_file=bad, log_path=tmp_path / "epp.log")
    with pytest.raises(RuntimeError, match=r"exited with 2:(.|\n)*bad.yaml:3"):
        await epp.start()
    assert epp.process is None


async def test_epp_process_that_never_gets_ready_times_out_with_its_log_and_is_stopped(tmp_path) -> None:
    # a stand-in "python" that logs a line and then neither serves health nor exits
    hang = tmp_path / "hang.sh"
    hang.write_text("#!/bin/sh\necho 'stuck before listening'\nexec sleep 600\n")
    hang.chmod(0o755)
    epp = EppProcess(["127.0.0.1:1"], python=str(hang), log_path=tmp_path / "epp.log")
    with pytest.raises(
        TimeoutError, match=r"did not report ready (.|\n)*within 1s(.|\n)*stuck before listening"
    ):
        await epp.start(timeout=1.0)
    assert epp.process is None


@pytest.mark.envoy
@pytest.mark.parametrize(
    ("tls", "epp_mode"), [(True, "inprocess"), (False, "inprocess"), (True, "subprocess")]
)
async def test_gateway_routes_through_envoy_and_the_epp(tls, epp_mode, tmp_path) -> None:
    configs = [SimConfig(name=f"g{i}", model="m", time_scale=0.05) for i in range(3)]
    async with SimFleet(configs) as fleet:
        gateway = Gateway(
            fleet.addresses,
            config_file="profiles/default.yaml",
            secure_serving=tls,
            workdir=tmp_path,
            epp_mode=epp_mode,
        )
        await gateway.start()
        try:
            pids = gateway.pids
            assert len(pids) == (2 if epp_mode == "subprocess" else 1)
            assert all(_alive(p) for p in pids)
            session = _session(3, tokens=400)
            async with LoadClient(gateway.url, model="m") as client:
                results = [(await client.send(session, 0))[0] for _ in range(4)]
        finally:
            await gateway.stop()
        assert all(r.ok for r in results), [r.error for r in results]
        # the prefix-cache scorer keeps the same prompt on the same server, which then serves it cached
        assert len({r.backend for r in results}) == 1
        assert results[-1].cached_tokens > 0
        assert not any(_alive(p) for p in pids) and gateway.pids == []
        assert os.path.exists(tmp_path / "envoy.yaml")
        if epp_mode == "subprocess":
            assert "ready" in (tmp_path / "epp.log").read_text()
