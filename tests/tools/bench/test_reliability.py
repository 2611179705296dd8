"""`epp bench reliability`: the parts its figures rest on, each against real processes.

- the FailOpen gateway really serves from the pool while the EPP is down (and FailClose refuses);
- generated configs never crash the loader or the pipeline builder (the fuzz scenario's oracle);
- a simulator crashed and restarted comes back on its own port; an EPP process crashed and restarted
  comes back on its own ports;
- the command runs a scenario end to end and writes its table.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import aiohttp
import pytest

from epp.tools.bench.reliability import cli
from epp.tools.bench.reliability.fuzz import fuzz_configs_in_process
from epp.tools.bench.reliability.rig import open_fds, rss_bytes, sim_configs, tree_pids
from epp.tools.loadgen.fleet import SimFleet
from epp.tools.loadgen.gateway import EppProcess, Gateway

BODY = {"model": "sim-model", "prompt": "hello there", "max_tokens": 2}


async def _status(http: aiohttp.ClientSession, url: str) -> int:
    async with http.post(f"{url}/v1/completions", json=BODY) as resp:
        await resp.read()
        return resp.status


@pytest.mark.parametrize("fail_open", [True, False], ids=["FailOpen", "FailClose"])
async def test_a_gateway_without_its_epp_serves_from_the_pool_only_when_failing_open(
    start_sim, tmp_path: Path, fail_open: bool
) -> None:
    sim = await start_sim(model="sim-model", time_scale=0.05)
    gateway = Gateway([sim.address], workdir=tmp_path, failure_mode_allow=fail_open, secure_serving=False)
    async with gateway, aiohttp.ClientSession(trust_env=False) as http:
        assert await _status(http, gateway.url) == 200
        assert sim.stats()["requests_finished"] == 1
        await gateway.epp.stop()
        assert await _status(http, gateway.url) == (200 if fail_open else 500)
        assert sim.stats()["requests_finished"] == (2 if fail_open else 1)


def test_generated_configs_get_a_verdict_never_a_crash() -> None:
    judged = fuzz_configs_in_process(60, "fuzz.yaml")
    counts = judged.counts
    assert counts["crash"] == 0, judged.crashes[:2]
    assert counts["ok"] > 0 and counts["error"] > 0  # the generator reaches both sides
    assert sum(counts.values()) == 60


async def test_crashed_simulator_and_epp_come_back_on_their_ports(tmp_path: Path) -> None:
    async with SimFleet(sim_configs(1), mode="subprocess", log_dir=tmp_path) as fleet:
        address = fleet.addresses[0]
        await fleet.crash(0)
        await fleet.restart(0)
        assert fleet.addresses == [address]
        epp = EppProcess(fleet.addresses, secure_serving=False, log_path=tmp_path / "epp.log")
        async with epp:
            assert epp.pid is not None
            pids = tree_pids(epp.pid)
            assert epp.pid in pids and rss_bytes(pids) > 10 << 20 and open_fds(pids) > 3
            ports = (epp.grpc_port, epp.health_port, epp.metrics_port)
            await epp.crash()
            assert not await epp.is_ready()
            await epp.restart()
            assert (epp.grpc_port, epp.health_port, epp.metrics_port) == ports
            assert await epp.is_ready()


def test_the_command_measures_a_scenario_and_writes_the_table(tmp_path: Path) -> None:
    status = cli.main(["--only", "slow-clients", "--servers", "1", "--out", str(tmp_path)])
    assert status == 0
    table = (tmp_path / "reliability.md").read_text()
    assert "| slow clients | failed checks while held, worst latency | 0, " in table
    doc = json.loads((tmp_path / "reliability.json").read_text())
    assert {r["scenario"] for r in doc["rows"]} == {"slow clients"}
    assert all(r["ok"] is not False for r in doc["rows"])


def test_an_unknown_scenario_is_bad_usage(tmp_path: Path) -> None:
    assert cli.main(["--only", "soak,nope", "--out", str(tmp_path)]) == 2
    assert not os.listdir(tmp_path)
