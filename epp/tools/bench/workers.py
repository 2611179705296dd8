"""How decisions scale with `--workers`: `python -m epp.tools.bench.workers --workers 1,2`.

The server is the daemon's decision path as `--workers N` runs it: for N > 1 the pod process with its
`WorkerPool` (N worker processes on one port, the fleet picture and config sent over the control channel,
decisions shared over the state bus), for N = 1 one process (the ext_proc server on the datastore, as
`--workers 1` runs). Both over `--endpoints` static endpoints whose metrics change every 50 ms in the
datastore the scrape loops would publish to, with the built-in default profile. The load client speaks
like the Envoy config we ship (request headers, the buffered body, response headers; the response body
is not asked for) over `--channels` separate HTTP/2 connections, so the kernel spreads them over the
workers, in a closed loop of `--concurrency` streams (or, with `--rate`, an open loop).

Reported per worker count: decisions/s, the server's CPU per decision (the pod process and every worker
added up, from /proc), the client's, how the decisions spread over the workers, the shared-state messages,
and the projected ratio of decisions/s against one worker had the server the cores alone:
`N x CPU per decision (1 worker) / CPU per decision (N workers)` (the machine has 2 cores and the client
runs on them too, so the measured decisions/s of N workers is bounded by the client's share).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc

__all__ = ["WorkersResult", "main", "run"]

METHOD = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]


# ---- the messages of one stream (the shipped Envoy config: BUFFERED request, response body on demand) ----


@dataclass(frozen=True, slots=True)
class Stream:
    headers: bytes
    body: bytes
    response_headers: bytes


def make_streams(count: int, prompt_chars: int, groups: int, seed: int) -> list[Stream]:
    from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as pm
    from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

    rng = random.Random(seed)
    prefixes = ["".join(rng.choice("abcdefghij ") for _ in range(prompt_chars // 2)) for _ in range(groups)]
    out = []
    for i in range(count):
        prompt = prefixes[i % groups] + "".join(rng.choice("klmnopqrst ") for _ in range(prompt_chars // 2))
        body = json.dumps({"model": "bench-model", "prompt": prompt, "max_tokens": 16, "stream": True})
        h = pb.ProcessingRequest()
        for k, v in (
            (":path", "/v1/completions"),
            (":method", "POST"),
            (":authority", "gateway"),
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
            ("x-request-id", str(uuid.UUID(int=rng.getrandbits(128), version=4))),
        ):
            h.request_headers.headers.headers.add(key=k, raw_value=v.encode())
        h.protocol_config.request_body_mode = pm.ProcessingMode.BUFFERED
        h.protocol_config.response_body_mode = pm.ProcessingMode.NONE
        b = pb.ProcessingRequest()
        b.request_body.body = body.encode()
        b.request_body.end_of_stream = True
        rh = pb.ProcessingRequest()
        for k, v in ((":status", "200"), ("content-type", "text/event-stream")):
            rh.response_headers.headers.headers.add(key=k, raw_value=v.encode())
        out.append(Stream(h.SerializeToString(), b.SerializeToString(), rh.SerializeToString()))
    return out


async def one_stream(method: Any, s: Stream) -> None:
    call = method()
    await call.write(s.headers)
    await call.read()  # the headers reply (BUFFERED: at once)
    await call.write(s.body)
    await call.read()  # the routing reply
    await call.write(s.response_headers)
    await call.read()
    await call.done_writing()
    if await call.read() is not _EOF:
        raise RuntimeError("unexpected extra reply")


# ---- CPU accounting ---------------------------------------------------------------------------------


def _cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def tree_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of a process and its children (the pod process and its workers)."""
    out = {pid: _cpu(pid)}
    for child in _children(pid):
        out[child] = _cpu(child)
    return out


# ---- the server under test (its own process) ---------------------------------------------------------


async def _serve(workers: int, endpoints: int, port_file: Path) -> None:
    import logging

    from prometheus_client import CollectorRegistry

    from epp.builtins import builtin_registry
    from epp.config import build_pipeline, load_config
    from epp.datalayer.datastore import Datastore
    from epp.extproc.health import ReadinessState
    from epp.observability.metrics import EppMetrics
    from epp.scheduling.pipeline import PipelineHolder
    from epp.settings import parse_settings
    from epp.tools.bench.extproc import _bench_endpoints, _churn_metrics
    from epp.workers.pool import WorkerPool

    logging.basicConfig(level=logging.WARNING)
    rng = random.Random(1)
    addresses = [f"10.0.{i // 250}.{i % 250 + 1}:8000" for i in range(endpoints)]
    flags = ["--static-endpoints", ",".join(addresses), "--secure-serving=false", "--grpc-port", "0"]
    settings = parse_settings([*flags, "--bind-address", "127.0.0.1", "--workers", str(workers), "-v", "1"])
    registry = builtin_registry()
    metrics = EppMetrics(CollectorRegistry())
    holder = PipelineHolder(build_pipeline(load_config(None, registry=registry), registry))
    datastore = Datastore()
    datastore.set_endpoints(_bench_endpoints(addresses, rng))
    datastore.mark_synced()
    if workers == 1:  # `--workers 1`: the daemon is one process, no pool (what the others compare with)
        await _serve_single(holder, datastore, metrics, rng, port_file)
        return
    readiness = ReadinessState()
    pool = WorkerPool(
        settings,
        workers,
        datastore=datastore,
        holder=holder,
        readiness=readiness,
        metrics=metrics,
        host="127.0.0.1",
    )
    port = await pool.start()
    churner = asyncio.create_task(_churn_metrics(datastore, 0.05, rng))
    while not readiness.workers_ready:
        await asyncio.sleep(0.05)
    port_file.write_text(str(port))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    churner.cancel()
    await pool.collect()
    families = {f.name: f for f in pool.collector.collect()}
    sync = families.get("epp_worker_sync_messages")
    sent = sum(
        s.value
        for s in (sync.samples if sync else ())
        if s.name.endswith("_total") and s.labels["direction"] == "sent"
    )
    (port_file.parent / "sync").write_text(str(sent))
    await pool.stop()


async def _serve_single(
    holder: Any, datastore: Any, metrics: Any, rng: random.Random, port_file: Path
) -> None:
    from epp.extproc.server import ExtProcServer
    from epp.tools.bench.extproc import _churn_metrics

    server = ExtProcServer(holder, datastore, metrics)
    port = await server.start(0, host="127.0.0.1")
    churner = asyncio.create_task(_churn_metrics(datastore, 0.05, rng))
    port_file.write_text(str(port))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    churner.cancel()
    await server.stop(0)


# ---- the client ---------------------------------------------------------------------------------------


@dataclass
class WorkersResult:
    workers: int
    seconds: float
    completed: int
    errors: int
    server_cpu_s: float
    client_cpu_s: float
    per_process_cpu_s: list[float] = field(default_factory=list)
    sync_messages: float = 0.0

    @property
    def throughput(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0

    @property
    def server_us(self) -> float:
        return 1e6 * self.server_cpu_s / self.completed if self.completed else float("nan")

    @property
    def client_us(self) -> float:
        return 1e6 * self.client_cpu_s / self.completed if self.completed else float("nan")


async def _open(
    methods: list[Any],
    streams: Sequence[Stream],
    rate: float,
    duration: float,
    warmup: float,
    pid: int,
    result: WorkersResult,
    chans: list[grpc.aio.Channel],
) -> WorkersResult:
    """Streams started at a fixed rate (evenly spaced): CPU per decision at an equal, unsaturated load."""
    tasks: set[asyncio.Task[None]] = set()
    measuring = False

    async def one(n: int) -> None:
        try:
            await one_stream(methods[n % len(methods)], streams[n % len(streams)])
            if measuring:
                result.completed += 1
        except Exception:
            if measuring:
                result.errors += 1

    total = int((warmup + duration) * rate)
    first = int(warmup * rate)
    start = time.perf_counter()
    before: dict[int, float] = {}
    client0 = 0.0
    measured_from = start
    for n in range(total):
        delay = start + n / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if n == first:
            measuring = True
            before = tree_cpu(pid)
            client0 = time.process_time()
            measured_from = time.perf_counter()
        task = asyncio.create_task(one(n))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    return await _measured(result, pid, before, client0, measured_from, chans)


async def _measured(
    result: WorkersResult,
    pid: int,
    before: dict[int, float],
    client0: float,
    start: float,
    chans: list[grpc.aio.Channel],
) -> WorkersResult:
    """Fill in the window's duration and CPU (client, and every server process since `before`)."""
    result.seconds = time.perf_counter() - start
    result.client_cpu_s = time.process_time() - client0
    after = tree_cpu(pid)
    result.per_process_cpu_s = [round(after[p] - before.get(p, 0.0), 3) for p in after]
    result.server_cpu_s = sum(after.values()) - sum(v for p, v in before.items() if p in after)
    for ch in chans:
        await ch.close(None)
    return result


async def _load(
    port: int,
    streams: Sequence[Stream],
    concurrency: int,
    channels: int,
    duration: float,
    warmup: float,
    pid: int,
    rate: float = 0.0,
) -> WorkersResult:
    opts = [("grpc.use_local_subchannel_pool", 1)]  # one connection per channel, not one shared
    chans = [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=opts) for _ in range(channels)]
    methods = [ch.stream_stream(METHOD, None, None) for ch in chans]
    result = WorkersResult(0, duration, 0, 0, 0.0, 0.0)
    stop_at = 0.0
    measuring = False

    async def worker(k: int) -> None:
        i = k
        method = methods[k % channels]
        while time.perf_counter() < stop_at:
            try:
                await one_stream(method, streams[i % len(streams)])
                if measuring:
                    result.completed += 1
            except Exception:
                if measuring:
                    result.errors += 1
            i += concurrency

    if rate > 0:
        return await _open(methods, streams, rate, duration, warmup, pid, result, chans)
    stop_at = time.perf_counter() + warmup
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    measuring = True
    before = tree_cpu(pid)
    client0 = time.process_time()
    start = time.perf_counter()
    stop_at = start + duration
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return await _measured(result, pid, before, client0, start, chans)


async def run(args: argparse.Namespace) -> list[WorkersResult]:
    """Every worker count once per round, rounds one after the other (slow drifts of the machine then
    hit every count alike); the report takes each count's median round."""
    out = []
    for _ in range(args.rounds):
        out += await _round(args)
    return out


async def _round(args: argparse.Namespace) -> list[WorkersResult]:
    streams = make_streams(1024, args.prompt_chars, 16, 0)
    out = []
    for n in args.workers:
        d = Path(tempfile.mkdtemp(prefix="epp-bw-"))
        port_file = d / "port"
        cmd = [
            sys.executable,
            "-m",
            "epp.tools.bench.workers",
            "--serve",
            str(n),
            "--endpoints",
            str(args.endpoints),
        ]
        proc = subprocess.Popen([*cmd, "--port-file", str(port_file)], stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while not (port_file.exists() and port_file.read_text()):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the bench server with {n} workers did not start")
                await asyncio.sleep(0.05)
            port = int(port_file.read_text())
            r = await _load(
                port,
                streams,
                args.concurrency,
                args.channels,
                args.duration,
                args.warmup,
                proc.pid,
                args.rate,
            )
            r.workers = n
        finally:
            proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(proc.wait, 30)
        sync_file = d / "sync"
        r.sync_messages = float(sync_file.read_text()) if sync_file.exists() else 0.0
        out.append(r)
        print(
            f"workers {n}: {r.throughput:.0f} decisions/s, server {r.server_us:.0f} µs CPU/decision "
            f"(processes: {r.per_process_cpu_s} s), client {r.client_us:.0f} µs, errors {r.errors}, "
            f"sync messages {r.sync_messages:.0f}",
            flush=True,
        )
    return out


def medians(results: Sequence[WorkersResult]) -> list[WorkersResult]:
    """Per worker count, the round with the median server CPU per decision."""
    out = []
    for n in sorted({r.workers for r in results}):
        runs = sorted((r for r in results if r.workers == n), key=lambda r: r.server_us)
        out.append(runs[len(runs) // 2])
    return out


def report(results: Sequence[WorkersResult]) -> str:
    results = medians(results)
    base = next((r for r in results if r.workers == 1), None)
    lines = [
        "| workers | decisions/s | server CPU/decision | client CPU/decision | CPU per process (s) | "
        "sync messages | CPU/decision vs 1 worker | projected decisions/s vs 1 worker |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ratio = r.server_us / base.server_us if base else float("nan")
        projected = r.workers / ratio if base else float("nan")
        lines.append(
            f"| {r.workers} | {r.throughput:.0f} | {r.server_us:.0f} µs | {r.client_us:.0f} µs | "
            f"{r.per_process_cpu_s} | {r.sync_messages:.0f} | {ratio:.2f} | {projected:.2f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m epp.tools.bench.workers", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--workers", default="1,2", help="worker counts to measure (default 1,2)")
    p.add_argument("--endpoints", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=32, help="closed loop: streams at once")
    p.add_argument("--rate", type=float, default=0.0, help="open loop: decisions per second (0: closed loop)")
    p.add_argument("--channels", type=int, default=16, help="client HTTP/2 connections")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--prompt-chars", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=1, help="measure every count this many times")
    p.add_argument("--json", action="store_true")
    p.add_argument("--serve", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--port-file", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        asyncio.run(_serve(args.serve, args.endpoints, Path(args.port_file)))
        return 0
    args.workers = [int(x) for x in str(args.workers).split(",") if x.strip()]
    results = asyncio.run(run(args))
    if args.json:
        print(json.dumps([{**asdict(r), "throughput": r.throughput} for r in results], indent=2))
    else:
        print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
