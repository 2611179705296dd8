"""A worker process on its own: the warm spare, waiting to be told which worker to replace, stops on
SIGTERM (what the kernel sends it when the pod process dies, PR_SET_PDEATHSIG) instead of lingering."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import tempfile
from pathlib import Path

import zmq

from epp.settings import parse_settings
from epp.workers.codec import unpack
from tests.helpers import until


async def test_a_waiting_spare_stops_on_sigterm() -> None:
    directory = Path(tempfile.mkdtemp(prefix="epp-w-"))  # ipc paths must stay short
    settings = parse_settings(["--static-endpoints", "127.0.0.1:1", "--secure-serving=false"])
    (directory / "settings.json").write_text(json.dumps(settings.model_dump(mode="json")))
    log = directory / "worker.log"
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    control = context.socket(zmq.ROUTER)
    control.setsockopt(zmq.LINGER, 0)
    control.bind(f"ipc://{directory}/control")
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "epp.workers.worker", "--dir", str(directory)),
            *("--slot", "-1", "--incarnation", "1", "--slots", "2"),
            stdout=out,
            stderr=out,
        )
    try:
        # its hello arrives on the control socket; nobody answers: it waits for an assignment
        hello: list[list[object]] = []

        def said_hello() -> bool:
            try:
                hello.append(unpack(control.recv_multipart(zmq.NOBLOCK)[-1]))
            except zmq.Again:
                return proc.returncode is not None
            return True

        await until(said_hello, what="the spare's hello")
        assert proc.returncode is None, log.read_text()
        assert hello[0][:3] == ["hello", -1, 1]
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0, log.read_text()
        assert "Traceback" not in log.read_text()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        control.close(0)
        context.destroy(0)


async def test_a_worker_whose_pod_process_is_already_gone_exits_at_once() -> None:
    """PDEATHSIG is armed only once the worker runs: if the pod process died before that, the signal never
    comes, so the worker compares its parent with the one it was started for (here: not its parent)."""
    directory = Path(tempfile.mkdtemp(prefix="epp-w-"))
    settings = parse_settings(["--static-endpoints", "127.0.0.1:1", "--secure-serving=false"])
    (directory / "settings.json").write_text(json.dumps(settings.model_dump(mode="json")))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "epp.workers.worker", "--dir", str(directory)),
        *("--slot", "-1", "--incarnation", "1", "--slots", "2", "--parent", "1"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        # without the check it would wait for an assignment forever (nobody binds its control socket)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
