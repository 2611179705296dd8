"""`epp -v N --log-format json` as users run it: TRACE lines only at -v 5, every line valid JSON.

Two daemons scrape the same simulator, one at `-v 5` and one at `-v 4`. Readiness means every endpoint
has been scraped once, so by then the `-v 5` daemon must have logged a TRACE scrape line and the `-v 4`
one must have logged DEBUG lines but no TRACE line at all.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from epp.tools.sim.server import SimServer
from tests.helpers import free_ports, until

EPP = str(Path(sys.executable).with_name("epp"))


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _start(tmp_path: Path, sim: SimServer, v: int) -> tuple[subprocess.Popen, Path]:
    log_path = tmp_path / f"epp-v{v}.log"
    grpc_port, health_port, metrics_port = free_ports(3)
    args = [
        EPP,
        f"--static-endpoints={sim.address}",
        "--bind-address=127.0.0.1",
        f"--grpc-port={grpc_port}",
        f"--grpc-health-port={health_port}",
        f"--metrics-port={metrics_port}",
        "--secure-serving=false",
        f"-v={v}",
        "--log-format=json",
    ]
    with log_path.open("w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    return proc, log_path


async def _until_logged(path: Path, pred, timeout: float = 20.0) -> None:
    def logged() -> bool:
        text = path.read_text()
        complete = text[: text.rfind("\n") + 1]  # ignore a line still being written
        return any(pred(json.loads(line)) for line in complete.splitlines() if line.strip())

    try:
        await until(logged, timeout, interval=0.05)
    except AssertionError:
        raise AssertionError(f"not logged in {timeout}s:\n{path.read_text()[-2000:]}") from None


async def test_trace_only_at_v5_and_json_lines(tmp_path: Path, start_sim) -> None:
    sim = await start_sim(model="m", name="sim", time_scale=0.01)
    procs = []
    try:
        p5, log5 = _start(tmp_path, sim, 5)
        procs.append(p5)
        p4, log4 = _start(tmp_path, sim, 4)
        procs.append(p4)

        def ready(line: dict) -> bool:
            return line["msg"].startswith("endpoints synced (1) and scraped once")

        await _until_logged(log5, ready)
        await _until_logged(log4, ready)
        await _until_logged(
            log5, lambda ln: ln["level"] == "trace" and ln["msg"].startswith("scraped 127.0.0.1:")
        )
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            assert proc.wait(timeout=15) == 0

    lines5, lines4 = _lines(log5), _lines(log4)  # every line parses as JSON
    assert {"info", "debug", "trace"} <= {ln["level"] for ln in lines5}
    levels4 = {ln["level"] for ln in lines4}
    assert "debug" in levels4 and "trace" not in levels4, levels4
    for lines in (lines5, lines4):
        starts = [
            ln for ln in lines if ln["msg"].startswith("epp 0") and "starting with settings" in ln["msg"]
        ]
        assert len(starts) == 1 and starts[0]["settings"]["static_endpoints"] == [sim.address]
        assert len([ln for ln in lines if ln["msg"].startswith("config loaded from <default>")]) == 1
        assert all("request_id" not in ln for ln in lines)  # no request was sent
        assert lines[-1]["msg"] == "epp stopped"
