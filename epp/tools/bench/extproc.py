"""Benchmark of the ext_proc path: `python -m epp.tools.bench.extproc`.

Part 1, the EPP alone: a gRPC load client that speaks like Envoy in FULL_DUPLEX_STREAMED mode (request
headers + body, then response headers + body, per stream; messages pre-serialised so the client stays
cheap) drives

- `epp`: the real ExtProcServer with the default config (queue-scorer x2, kv-cache-utilization-scorer x2,
  prefix-cache-scorer x3) over N static endpoints whose metrics are refreshed every 50 ms, and
- `noop`: a bare grpc.aio ext_proc server that answers with prebuilt replies (no parsing, no scheduling;
  the same replies at the same moments as the EPP), the ceiling of the gRPC plumbing itself,

each in its own process pinned to one CPU (`taskset -c 0`), the client pinned to another. Closed loop
(max decisions/s at a fixed concurrency) and open loop (latency at a fixed rate). Latency = time from the
first request message to the routing reply (what Envoy waits for before forwarding).

Part 2 (`--envoy`), through a real Envoy: HTTP latency of Envoy + EPP (FULL_DUPLEX_STREAMED, plaintext)
routing over 4 instant-answer backends vs the same Envoy routing straight to one of them, at fixed rates,
in the same run; the difference is what the EPP adds.

`--profile FILE` runs the EPP server under cProfile and writes the stats there. `--py-spy FILE` samples the
running EPP server with py-spy (not a dependency: install it in a throwaway venv and pass its path in
`$PY_SPY` or have it on `$PATH`) during the closed-loop run, and prints where the server's time went.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc

from epp.tools.extras import reports_missing_extras, require

__all__ = ["LoadResult", "main", "run_closed_loop", "run_open_loop"]

METHOD = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]  # (grpc-stubs lacks it)


# ---- payloads -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Exchange:
    """One request's messages, serialised, in the order Envoy sends them for an HTTP/1.1 request:
    (request headers, request body, empty end-of-stream chunk), (response headers, body, end-of-stream)."""

    request: tuple[bytes, bytes, bytes]
    response: tuple[bytes, bytes, bytes]


def make_exchanges(count: int, prompt_chars: int, groups: int, seed: int) -> list[Exchange]:
    """Shared-prefix completions requests (half the prompt shared within a group) and JSON responses."""
    from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as pm
    from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

    rng = random.Random(seed)
    prefixes = ["".join(rng.choice("abcdefghij ") for _ in range(prompt_chars // 2)) for _ in range(groups)]
    out = []
    for i in range(count):
        prompt = prefixes[i % groups] + "".join(rng.choice("klmnopqrst ") for _ in range(prompt_chars // 2))
        body = json.dumps({"model": "bench-model", "prompt": prompt, "max_tokens": 16}).encode()
        h = pb.ProcessingRequest()
        for k, v in (
            (":path", "/v1/completions"),
            (":method", "POST"),
            (":authority", "gateway"),
            (":scheme", "http"),
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
            ("user-agent", "bench"),
            ("x-forwarded-proto", "http"),
            ("x-request-id", str(uuid.UUID(int=rng.getrandbits(128), version=4))),
        ):
            h.request_headers.headers.headers.add(key=k, raw_value=v.encode())
        h.protocol_config.request_body_mode = pm.ProcessingMode.FULL_DUPLEX_STREAMED
        h.protocol_config.response_body_mode = pm.ProcessingMode.FULL_DUPLEX_STREAMED
        b = pb.ProcessingRequest()
        b.request_body.body = body
        b_eos = pb.ProcessingRequest()
        b_eos.request_body.end_of_stream = True
        rh = pb.ProcessingRequest()
        for k, v in ((":status", "200"), ("content-type", "application/json"), ("content-length", "180")):
            rh.response_headers.headers.headers.add(key=k, raw_value=v.encode())
        # the upstream.address attribute (the endpoint that served) is added per stream: see served_headers
        rb = pb.ProcessingRequest()
        rb.response_body.body = json.dumps(
            {
                "object": "text_completion",
                "model": "bench-model",
                "choices": [{"index": 0, "text": "x" * 64}],
                "usage": {"prompt_tokens": prompt_chars // 4, "completion_tokens": 16},
            }
        ).encode()
        rb_eos = pb.ProcessingRequest()
        rb_eos.response_body.end_of_stream = True
        out.append(
            Exchange(
                (h.SerializeToString(), b.SerializeToString(), b_eos.SerializeToString()),
                (rh.SerializeToString(), rb.SerializeToString(), rb_eos.SerializeToString()),
            )
        )
    return out


# ---- the load client ----------------------------------------------------------------------------------

#: (routing reply, response headers) -> the response headers naming the routed endpoint as the one that served
_SERVED: dict[tuple[bytes, bytes], bytes] = {}


def served_headers(routing_reply: bytes, response_headers: bytes) -> bytes:
    """The response-headers message with Envoy's `upstream.address` attribute set to the endpoint the routing
    reply chose (what Envoy reports when that endpoint served, as it does without retries). Cached per
    distinct reply, so the client stays cheap."""
    key = (routing_reply, response_headers)
    out = _SERVED.get(key)
    if out is None:
        from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

        reply = pb.ProcessingResponse.FromString(routing_reply)
        lb = reply.dynamic_metadata.fields["envoy.lb"].struct_value.fields
        msg = pb.ProcessingRequest.FromString(response_headers)
        msg.attributes["envoy.filters.http.ext_proc"].update(
            {"upstream.address": lb["x-gateway-destination-endpoint"].string_value.split(",")[0]}
        )
        out = _SERVED[key] = msg.SerializeToString()
    return out


@dataclass
class LoadResult:
    server: str
    mode: str
    seconds: float
    completed: int
    errors: int
    rate: float = 0.0
    concurrency: int = 0
    server_cpu_s: float = 0.0  # CPU the server process used during the measured window
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def cpu_us_per_request(self) -> float:
        return (
            1e6 * self.server_cpu_s / self.completed if self.completed and self.server_cpu_s else float("nan")
        )

    @property
    def throughput(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        data = sorted(self.latencies_ms)
        return data[min(len(data) - 1, int(q * len(data)))]

    def summary(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "latencies_ms"}
        d.update(
            throughput=round(self.throughput, 1),
            p50_ms=round(self.percentile(0.50), 3),
            p90_ms=round(self.percentile(0.90), 3),
            p99_ms=round(self.percentile(0.99), 3),
            mean_ms=round(statistics.fmean(self.latencies_ms), 3) if self.latencies_ms else None,
            cpu_us_per_request=round(self.cpu_us_per_request, 1),
        )
        return d


async def _one_stream(call_factory: Callable[[], Any], ex: Exchange) -> float:
    """One Envoy-like stream; returns the routing latency in seconds. Raises on a protocol surprise."""
    call = call_factory()
    t0 = time.perf_counter()
    await call.write(ex.request[0])
    await call.write(ex.request[1])
    await call.write(ex.request[2])
    head = await call.read()
    routed = time.perf_counter() - t0
    body = await call.read()
    if head is _EOF or body is _EOF:
        raise RuntimeError("stream ended before the routing replies")
    await call.write(served_headers(head, ex.response[0]))
    await call.read()
    await call.write(ex.response[1])
    await call.write(ex.response[2])
    await call.read()
    await call.done_writing()
    if await call.read() is not _EOF:
        raise RuntimeError("unexpected extra reply")
    return routed


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc; 0.0 where unavailable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _raw_process(channel: grpc.aio.Channel) -> Callable[[], Any]:
    """The Process method without (de)serialisers: pre-serialised bytes in, raw bytes out."""
    method: Any = channel.stream_stream(METHOD, None, None)
    return lambda: method()


def _channel(port: int) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(
        f"127.0.0.1:{port}",
        options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)],
    )


async def run_closed_loop(
    port: int,
    exchanges: Sequence[Exchange],
    concurrency: int,
    duration: float,
    warmup: float,
    server: str,
    server_pid: int = 0,
) -> LoadResult:
    """`concurrency` streams back to back for `duration` seconds (after `warmup`): max decisions/s."""
    async with _channel(port) as channel:
        process = _raw_process(channel)
        stop_at = 0.0
        measuring = False
        result = LoadResult(server, "closed", duration, 0, 0, concurrency=concurrency)

        async def worker(offset: int) -> None:
            i = offset
            while time.perf_counter() < stop_at:
                ex = exchanges[i % len(exchanges)]
                i += concurrency
                try:
                    latency = await _one_stream(process, ex)
                except Exception:
                    if measuring:
                        result.errors += 1
                    continue
                if measuring:
                    result.completed += 1
                    result.latencies_ms.append(latency * 1000)

        stop_at = time.perf_counter() + warmup
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        measuring = True
        cpu0 = process_cpu_seconds(server_pid) if server_pid else 0.0
        start = time.perf_counter()
        stop_at = start + duration
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        result.seconds = time.perf_counter() - start
        if server_pid:
            result.server_cpu_s = process_cpu_seconds(server_pid) - cpu0
        return result


async def run_open_loop(
    port: int,
    exchanges: Sequence[Exchange],
    rate: float,
    duration: float,
    warmup: float,
    server: str,
    server_pid: int = 0,
) -> LoadResult:
    """Streams started at a fixed `rate` (evenly spaced) for `duration` seconds: latency under load."""
    async with _channel(port) as channel:
        process = _raw_process(channel)
        result = LoadResult(server, "open", duration, 0, 0, rate=rate)
        tasks: set[asyncio.Task[None]] = set()

        async def one(ex: Exchange, measure: bool) -> None:
            try:
                latency = await _one_stream(process, ex)
            except Exception:
                if measure:
                    result.errors += 1
                return
            if measure:
                result.completed += 1
                result.latencies_ms.append(latency * 1000)

        interval = 1.0 / rate
        start = time.perf_counter()
        total = int((warmup + duration) * rate)
        first_measured = int(warmup * rate)
        cpu0 = 0.0
        for n in range(total):
            due = start + n * interval
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if n == first_measured and server_pid:
                cpu0 = process_cpu_seconds(server_pid)
            task = asyncio.create_task(one(exchanges[n % len(exchanges)], n >= first_measured))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
        if server_pid:
            result.server_cpu_s = process_cpu_seconds(server_pid) - cpu0
        return result


# ---- the servers under test (run in their own processes) ---------------------------------------------


def _pin(cpu: int | None) -> None:
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {cpu})


async def _serve_noop(port_file: Path, destination: str = "10.0.0.1:8000") -> None:
    from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
    from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pbg

    from epp.extproc import messages as m

    dest = destination.encode()
    head = m.headers_response(
        False,
        [("x-gateway-destination-endpoint", dest)],
        clear_route_cache=True,
        metadata=m.destination_metadata(dest.decode()),
    )
    cont = m.continue_headers(True)

    class Noop(pbg.ExternalProcessorServicer):  # type: ignore[misc]
        # reads and writes on the context, as the EPP's servicer does, so the two differ only in the work
        async def Process(self, request_iterator: Any, context: Any) -> None:
            body = b""
            eof = grpc.aio.EOF  # type: ignore[attr-defined]
            while True:
                msg = await context.read()
                if msg is eof:
                    return
                kind = msg.WhichOneof("request")
                if kind == "request_body":
                    body += msg.request_body.body
                    if msg.request_body.end_of_stream:
                        await context.write(head)
                        r = pb.ProcessingResponse()
                        sr = r.request_body.response.body_mutation.streamed_response
                        sr.body = body
                        sr.end_of_stream = True
                        body = b""
                        await context.write(r)
                elif kind == "response_headers":
                    await context.write(cont)
                elif kind == "response_body":
                    body += msg.response_body.body
                    if msg.response_body.end_of_stream:
                        r = pb.ProcessingResponse()
                        sr = r.response_body.response.body_mutation.streamed_response
                        sr.body = body
                        sr.end_of_stream = True
                        await context.write(r)

    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    pbg.add_ExternalProcessorServicer_to_server(Noop(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    port_file.write_text(str(port))
    await server.wait_for_termination()


def _bench_endpoints(addresses: Sequence[str], rng: random.Random) -> list[Any]:
    from epp.framework.types import Endpoint, EndpointMetrics

    out = []
    for addr in addresses:
        host, _, port = addr.rpartition(":")
        out.append(
            Endpoint(
                key=addr,
                ip=host,
                port=int(port),
                metrics=EndpointMetrics(
                    waiting_queue_size=rng.randrange(0, 8),
                    kv_cache_usage=rng.random() * 0.9,
                    update_time=time.monotonic(),
                ),
            )
        )
    return out


async def _churn_metrics(datastore: Any, interval: float, rng: random.Random) -> None:
    """Refresh every endpoint's metrics every `interval`, one endpoint at a time, evenly spread over the
    interval: what the scrape loops publish (one loop per endpoint, staggered), so the datastore changes
    ~1,300 times a second with 64 endpoints at 50 ms, i.e. between almost any two requests."""
    import dataclasses

    while True:
        endpoints = datastore.snapshot()
        step = interval / max(1, len(endpoints))
        for ep in endpoints:
            await asyncio.sleep(step)
            current = datastore.get(ep.key)
            if current is None:
                continue
            m = current.metrics
            metrics = dataclasses.replace(
                m,
                waiting_queue_size=max(0, m.waiting_queue_size + rng.randint(-1, 1)),
                kv_cache_usage=min(0.95, max(0.0, m.kv_cache_usage + rng.uniform(-0.02, 0.02))),
                update_time=time.monotonic(),
            )
            datastore.update_metrics(ep.key, metrics)


async def _serve_epp(port_file: Path, endpoints: Sequence[str], churn: float, tls: bool) -> None:
    import logging

    from prometheus_client import CollectorRegistry

    from epp.builtins import builtin_registry
    from epp.config import build_pipeline, load_config
    from epp.datalayer.datastore import Datastore
    from epp.extproc.server import ExtProcServer
    from epp.extproc.tls import TlsOptions
    from epp.observability.metrics import EppMetrics
    from epp.scheduling.pipeline import PipelineHolder

    logging.basicConfig(level=logging.WARNING)
    rng = random.Random(1)
    registry = builtin_registry()
    metrics = EppMetrics(CollectorRegistry())
    pipeline = build_pipeline(
        load_config(None, registry=registry),
        registry,
        observer=metrics,
        metrics=metrics,
        rng=random.Random(2),
    )
    datastore = Datastore()
    datastore.set_endpoints(_bench_endpoints(endpoints, rng))
    datastore.mark_synced()
    server = ExtProcServer(PipelineHolder(pipeline), datastore, metrics)
    port = await server.start(0, tls=TlsOptions() if tls else None, host="127.0.0.1")
    churner = asyncio.create_task(_churn_metrics(datastore, churn, rng)) if churn > 0 else None
    port_file.write_text(str(port))
    try:
        await server.wait_for_termination()
    finally:
        if churner is not None:
            churner.cancel()


async def _serve_backend(port_file: Path, count: int) -> None:
    """Instant-answer HTTP/1.1 model servers on `count` ports (keep-alive, fixed JSON with usage)."""
    body = json.dumps(
        {"object": "text_completion", "model": "bench-model", "choices": [{"text": "x"}],
         "usage": {"prompt_tokens": 10, "completion_tokens": 1}}
    ).encode()  # fmt: skip
    reply = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )

    class Proto(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.buf = b""

        def data_received(self, data: bytes) -> None:
            self.buf += data
            while True:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = self.buf[:end].lower()
                length = 0
                chunked = b"transfer-encoding: chunked" in head
                for line in head.split(b"\r\n"):
                    if line.startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                rest = self.buf[end + 4 :]
                if chunked:
                    term = rest.find(b"0\r\n\r\n")
                    if term < 0:
                        return
                    self.buf = rest[term + 5 :]
                else:
                    if len(rest) < length:
                        return
                    self.buf = rest[length:]
                self.transport.write(reply)

    loop = asyncio.get_running_loop()
    ports = []
    for _ in range(count):
        srv = await loop.create_server(Proto, "127.0.0.1", 0)
        ports.append(srv.sockets[0].getsockname()[1])
    port_file.write_text(",".join(map(str, ports)))
    await asyncio.Event().wait()


def serve_main(args: argparse.Namespace) -> None:
    _pin(args.cpu)
    if os.environ.get("EPP_BENCH_GC"):
        import gc

        gc.set_threshold(*(int(x) for x in os.environ["EPP_BENCH_GC"].split(",")))
    port_file = Path(args.port_file)
    if args.kind == "noop":
        coro: Any = _serve_noop(port_file, args.endpoint_list.split(",")[0] or "10.0.0.1:8000")
    elif args.kind == "backend":
        coro = _serve_backend(port_file, args.count)
    else:
        endpoints = args.endpoint_list.split(",") if args.endpoint_list else [
            f"10.0.{i // 250}.{i % 250 + 1}:8000" for i in range(args.endpoints)
        ]  # fmt: skip
        coro = _serve_epp(port_file, endpoints, args.churn, tls=False)
    profiler = cProfile.Profile() if args.profile else None

    def finish(*_: Any) -> None:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
        os._exit(0)

    signal.signal(signal.SIGTERM, finish)
    if profiler is not None:
        profiler.enable()
    asyncio.run(coro)


class ServerProcess:
    """A `serve` subprocess of this module; the bound port(s) come back through a file."""

    def __init__(self, kind: str, cpu: int | None, extra: Sequence[str] = ()) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="epp-bench-"))
        self.port_file = self.dir / "port"
        cmd = [
            sys.executable,
            "-m",
            "epp.tools.bench.extproc",
            "serve",
            "--kind",
            kind,
            "--port-file",
            str(self.port_file),
        ]
        if cpu is not None and shutil.which("taskset"):
            cmd = ["taskset", "-c", str(cpu), *cmd]
        self.proc = subprocess.Popen([*cmd, *extra], stdin=subprocess.DEVNULL)

    async def ports(self, timeout: float = 30.0) -> list[int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.port_file.exists() and self.port_file.read_text().strip():
                return [int(p) for p in self.port_file.read_text().split(",")]
            if self.proc.poll() is not None:
                raise RuntimeError(f"bench server exited with {self.proc.returncode}")
            await asyncio.sleep(0.05)
        raise RuntimeError("bench server did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


# ---- where the time goes (py-spy) ---------------------------------------------------------------------

#: (category, path fragments) checked from the innermost frame outwards; the first match wins.
PROFILE_CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "metrics (prometheus_client)",
        ("prometheus_client/", "epp/observability/metrics", "epp/requestcontrol/meter"),
    ),
    ("request parsing (openai-parser)", ("epp/plugins/parsers/",)),
    ("prefix-cache producer (hash, match, record)", ("epp/plugins/producers/", "epp/plugins/prefix/")),
    ("scorers, picker, profile handler", ("epp/plugins/",)),
    ("scheduler engine", ("epp/scheduling/",)),
    ("datastore", ("epp/datalayer/",)),
    ("ext_proc wire + director (ours)", ("epp/extproc/", "epp/requestcontrol/")),
    ("metrics churn (benchmark only)", ("_churn_metrics",)),
)


def profile_summary(raw_path: str) -> list[tuple[str, float]]:
    """Shares of py-spy samples (raw/collapsed format) per category; the rest is gRPC + asyncio."""
    counts: dict[str, int] = {}
    total = 0
    for line in Path(raw_path).read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        total += int(n)
        category = "gRPC + asyncio plumbing (incl. idle polling)"
        for frame in reversed(stack.split(";")):
            if frame.startswith("ExtProcServicer.Process "):
                break  # the stream loop itself: its samples are gRPC reads and writes
            hit = next((c for c, frags in PROFILE_CATEGORIES if any(f in frame for f in frags)), None)
            if hit is not None:
                category = hit
                break
        counts[category] = counts.get(category, 0) + int(n)
    return sorted(((c, n / total) for c, n in counts.items()), key=lambda kv: -kv[1]) if total else []


def _start_py_spy(pid: int, out: str, duration: float) -> subprocess.Popen[bytes] | None:
    exe = os.environ.get("PY_SPY") or shutil.which("py-spy")
    if not exe:
        print("py-spy not found (set $PY_SPY): no profile", file=sys.stderr)
        return None
    cmd = [exe, "record", "--pid", str(pid), "--duration", str(int(duration)), "--rate", "250"]
    cmd += ["--format", "raw", "--nonblocking", "-o", out]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# ---- through Envoy -----------------------------------------------------------------------------------


async def _http_load(
    url: str, body: bytes, rate: float, duration: float, warmup: float, name: str, server_pid: int = 0
) -> LoadResult:
    import aiohttp

    result = LoadResult(name, "open", duration, 0, 0, rate=rate)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as http:
        tasks: set[asyncio.Task[None]] = set()

        async def one(measure: bool) -> None:
            t0 = time.perf_counter()
            try:
                async with http.post(url, data=body, headers={"content-type": "application/json"}) as resp:
                    await resp.read()
                    ok = resp.status == 200
            except aiohttp.ClientError:
                ok = False
            if not measure:
                return
            if ok:
                result.completed += 1
                result.latencies_ms.append((time.perf_counter() - t0) * 1000)
            else:
                result.errors += 1

        start = time.perf_counter()
        first_measured = int(warmup * rate)
        cpu0 = 0.0
        for n in range(int((warmup + duration) * rate)):
            delay = start + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if n == first_measured and server_pid:
                cpu0 = process_cpu_seconds(server_pid)
            task = asyncio.create_task(one(n >= first_measured))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
        if server_pid:
            result.server_cpu_s = process_cpu_seconds(server_pid) - cpu0
    return result


async def run_envoy(args: argparse.Namespace, epp_cpu: int | None) -> list[LoadResult]:
    from epp.tools.proxy import EnvoyConfig, EnvoyProcess

    backend = ServerProcess("backend", None, ["--count", "4"])
    results: list[LoadResult] = []
    try:
        ports = await backend.ports()
        addresses = [f"127.0.0.1:{p}" for p in ports]
        epp = ServerProcess(
            "epp", epp_cpu, ["--endpoint-list", ",".join(addresses), "--churn", str(args.churn)]
        )
        # the floor of the protocol in Python: the no-op ext_proc server (prebuilt replies, routing every
        # request to the first backend) behind the same Envoy, pinned like the EPP
        noop = ServerProcess("noop", epp_cpu, ["--endpoint-list", addresses[0]])
        try:
            (epp_port,) = await epp.ports()
            (noop_port,) = await noop.ports()
            body = json.dumps({"model": "bench-model", "prompt": "p" * args.prompt_chars}).encode()
            # the baseline: the same Envoy routing to a fixed endpoint (no ext_proc at all)
            baseline = EnvoyProcess(EnvoyConfig(routing="round_robin", static_endpoints=addresses[:1]))
            routed = EnvoyProcess(EnvoyConfig(ext_proc_port=epp_port, ext_proc_tls=False))
            floor = EnvoyProcess(EnvoyConfig(ext_proc_port=noop_port, ext_proc_tls=False))
            async with baseline, routed, floor:
                for rate in args.envoy_rates:
                    results.append(
                        await _http_load(
                            f"{floor.url}/v1/completions",
                            body,
                            rate,
                            args.duration,
                            args.warmup,
                            "envoy+noop",
                            noop.proc.pid,
                        )
                    )
                    results.append(
                        await _http_load(
                            f"{baseline.url}/v1/completions",
                            body,
                            rate,
                            args.duration,
                            args.warmup,
                            "envoy-fixed",
                        )
                    )
                    results.append(
                        await _http_load(
                            f"{routed.url}/v1/completions",
                            body,
                            rate,
                            args.duration,
                            args.warmup,
                            "envoy+epp",
                            epp.proc.pid,
                        )
                    )
        finally:
            epp.stop()
            noop.stop()
    finally:
        backend.stop()
    return results


# ---- main ------------------------------------------------------------------------------------------


async def run_direct(args: argparse.Namespace, server_cpu: int | None) -> list[LoadResult]:
    exchanges = make_exchanges(args.payloads, args.prompt_chars, args.groups, args.seed)
    results: list[LoadResult] = []
    if args.target_port:  # a server started elsewhere (e.g. under a profiler)
        port = args.target_port
        results.append(
            await run_closed_loop(port, exchanges, args.concurrency, args.duration, args.warmup, "target")
        )
        for rate in args.rates:
            results.append(await run_open_loop(port, exchanges, rate, args.duration, args.warmup, "target"))
        return results
    for kind in ("noop", "epp"):
        extra = ["--endpoints", str(args.endpoints), "--churn", str(args.churn)]
        if kind == "epp" and args.profile:
            extra += ["--profile", args.profile]
        server = ServerProcess(kind, server_cpu, extra)
        try:
            (port,) = await server.ports()
            pid = server.proc.pid
            spy = None
            if kind == "epp" and args.py_spy:
                spy = _start_py_spy(pid, args.py_spy, args.warmup + args.duration)
            results.append(
                await run_closed_loop(
                    port, exchanges, args.concurrency, args.duration, args.warmup, kind, pid
                )
            )
            if spy is not None:
                await asyncio.to_thread(spy.wait, 30)
            for rate in args.rates:
                results.append(
                    await run_open_loop(port, exchanges, rate, args.duration, args.warmup, kind, pid)
                )
        finally:
            server.stop()
    return results


def _table(results: Sequence[LoadResult]) -> str:
    lines = [
        "| server | load | completed | errors | throughput/s | p50 ms | p90 ms | p99 ms | server CPU/req |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        load = f"closed c={r.concurrency}" if r.mode == "closed" else f"open {r.rate:g}/s"
        lines.append(
            f"| {r.server} | {load} | {r.completed} | {r.errors} | {r.throughput:.0f} | "
            f"{r.percentile(0.5):.2f} | {r.percentile(0.9):.2f} | {r.percentile(0.99):.2f} | "
            + (f"{r.cpu_us_per_request:.0f} us |" if r.server_cpu_s else "- |")
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m epp.tools.bench.extproc", description=__doc__.split("\n\n")[0]
    )
    sub = p.add_subparsers(dest="command")
    s = sub.add_parser("serve", help="(internal) run a server under test")
    s.add_argument("--kind", choices=["epp", "noop", "backend"], required=True)
    s.add_argument("--port-file", required=True)
    s.add_argument("--endpoints", type=int, default=64)
    s.add_argument("--endpoint-list", default="")
    s.add_argument("--churn", type=float, default=0.05)
    s.add_argument("--count", type=int, default=4)
    s.add_argument("--cpu", type=int, default=None)
    s.add_argument("--profile", default="")
    p.add_argument("--endpoints", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--rates", type=float, nargs="*", default=[500.0])
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--prompt-chars", type=int, default=2000)
    p.add_argument("--groups", type=int, default=16)
    p.add_argument("--payloads", type=int, default=1024)
    p.add_argument("--churn", type=float, default=0.05, help="metrics refresh interval (0 = static metrics)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--envoy", action="store_true", help="also measure through real Envoy")
    p.add_argument("--envoy-rates", type=float, nargs="*", default=[200.0, 500.0])
    p.add_argument("--no-direct", action="store_true", help="skip the EPP-alone part")
    p.add_argument("--profile", default="", help="write a cProfile of the EPP server to this file")
    p.add_argument("--target-port", type=int, default=0, help="only drive an already running server")
    p.add_argument("--py-spy", default="", help="sample the EPP server with py-spy into this raw file")
    p.add_argument("--json", default="", help="write the results as JSON to this file")
    return p.parse_args(argv)


@reports_missing_extras
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "serve":
        serve_main(args)
        return 0
    if args.envoy:
        require("epp bench extproc --envoy", "bench", envoy=True)
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    server_cpu = 0 if ncpu >= 2 else None
    if ncpu >= 2:
        _pin(1)  # the client on its own core
    results: list[LoadResult] = []
    if not args.no_direct:
        results += asyncio.run(run_direct(args, server_cpu))
    if args.envoy:
        results += asyncio.run(run_envoy(args, server_cpu))
    print(f"ext_proc benchmark: {args.endpoints} endpoints, {args.prompt_chars}-char prompts, "
          f"server pinned to cpu {server_cpu}, client on cpu {1 if ncpu >= 2 else 'any'}")  # fmt: skip
    print(_table(results))
    direct = {(r.server, r.mode): r for r in results if r.server in ("epp", "noop")}
    if ("epp", "closed") in direct and ("noop", "closed") in direct:
        epp, noop = direct["epp", "closed"], direct["noop", "closed"]
        print(f"epp / noop throughput: {epp.throughput / max(1e-9, noop.throughput):.2f}")
        if epp.server_cpu_s and noop.server_cpu_s:
            # CPU per request is less sensitive to other load on the machine than wall-clock throughput
            ratio = noop.cpu_us_per_request / epp.cpu_us_per_request
            print(
                f"epp / noop by server CPU per request: {ratio:.2f} "
                f"(noop {noop.cpu_us_per_request:.0f} us, epp {epp.cpu_us_per_request:.0f} us, "
                f"difference {epp.cpu_us_per_request - noop.cpu_us_per_request:.0f} us)"
            )
    if args.py_spy and Path(args.py_spy).exists():
        print("where the EPP server's time went (py-spy samples, closed loop):")
        for category, share in profile_summary(args.py_spy):
            print(f"  {100 * share:5.1f} %  {category}")
    if args.json:
        Path(args.json).write_text(json.dumps([r.summary() for r in results], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
