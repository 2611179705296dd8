"""`epp sim`: run one simulated vLLM-compatible model server until SIGINT/SIGTERM.

Prints one line `epp-sim listening on http://HOST:PORT name=NAME` (flushed) once it serves, so a
parent process started with `--port 0` can read the chosen port from stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence

from epp.tools.sim.config import GPU_CLASSES, ROLES, EngineKind, SimConfig
from epp.tools.sim.server import SimServer

__all__ = ["build_parser", "config_from_args", "main"]

_D = SimConfig()


def build_parser(prog: str = "epp sim") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="A simulated vLLM-compatible model server: OpenAI API, vLLM metrics, prefix cache, LoRA.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = p.add_argument
    add("--host", default=_D.host, help="address to bind")
    add("--port", type=int, default=_D.port, help="port to bind; 0 picks a free one (printed on stdout)")
    add("--name", default="", help="server name reported in x-sim-server (default sim-PORT)")
    add("--model", default=_D.model, help="served (base) model name")
    add(
        "--lora-adapters", default="", help="comma-separated LoRA adapter names served besides the base model"
    )
    add("--max-loras", type=int, default=_D.max_loras, help="LoRA slots: distinct adapters per batch")
    add("--lora-load-ms", type=float, default=_D.lora_load_ms, help="time to make an adapter resident")
    add(
        "--engine",
        choices=[e.value for e in EngineKind],
        default=_D.engine.value,
        help="metric names to export",
    )
    add(
        "--gpu",
        choices=list(GPU_CLASSES),
        default=None,
        help="hardware class: its step-time coefficients, --kv-blocks and --max-num-batched-tokens "
        "(default: h100's); those flags, when given, win",
    )
    add(
        "--kv-blocks",
        type=int,
        default=argparse.SUPPRESS,
        help=f"KV cache size in blocks (h100: {_D.kv_blocks})",
    )
    add("--block-size", type=int, default=_D.block_size, help="tokens per KV block")
    add("--max-model-len", type=int, default=0, help="max prompt+output tokens (0: min(8192, KV capacity))")
    add("--max-num-seqs", type=int, default=_D.max_num_seqs, help="max running sequences per step")
    add(
        "--max-num-batched-tokens",
        type=int,
        default=argparse.SUPPRESS,
        help=f"token budget per step (h100: {_D.max_num_batched_tokens})",
    )
    add(
        "--step-base-ms",
        type=float,
        default=None,
        help=f"fixed cost of an engine step (h100: {_D.step_base_ms})",
    )
    add(
        "--prefill-ms-per-token",
        type=float,
        default=argparse.SUPPRESS,
        help=f"cost per prefilled token (h100: {_D.prefill_ms_per_token})",
    )
    add(
        "--decode-ms-per-seq",
        type=float,
        default=argparse.SUPPRESS,
        help=f"cost per scheduled sequence (h100: {_D.decode_ms_per_seq})",
    )
    add(
        "--time-scale",
        type=float,
        default=_D.time_scale,
        help="multiply all simulated times (0.05 = 20x faster)",
    )
    add("--seed", type=int, default=_D.seed, help="seed for generated text")
    add(
        "--default-max-tokens",
        type=int,
        default=_D.default_max_tokens,
        help="max_tokens when a request has none",
    )
    add(
        "--tokenizer",
        default=None,
        help="path to a Hugging Face tokenizer.json (default: ~4 chars per token)",
    )
    add(
        "--kv-events-endpoint",
        default=None,
        help="ZMQ PUB bind address for KV events, e.g. tcp://127.0.0.1:5557",
    )
    add(
        "--kv-events-topic", default=_D.kv_events_topic, help="ZMQ topic; {host} {port} {model} are filled in"
    )
    add(
        "--role",
        choices=list(ROLES),
        default=_D.role,
        help="P/D role: decode/both fetch the prompt's KV from the prefill server named in "
        "x-prefiller-host-port; prefill ignores that header",
    )
    add(
        "--kv-transfer-gbps",
        type=float,
        default=_D.kv_transfer_gbps,
        help="P/D: GB/s at which KV blocks move in from a prefill server",
    )
    add(
        "--kv-bytes-per-token",
        type=int,
        default=_D.kv_bytes_per_token,
        help="P/D: KV cache bytes per token (transfer size)",
    )
    add("--log-level", default="info", choices=["debug", "info", "warning", "error"], help="log level")
    return p


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """Build and validate the config; raises ValueError naming the bad flag."""
    adapters = tuple(a.strip() for a in args.lora_adapters.split(",")) if args.lora_adapters.strip() else ()
    # a hardware-class flag left out (absent from args) takes the --gpu class's value
    hardware = {
        name: value
        for name in (
            "kv_blocks",
            "max_num_batched_tokens",
            "step_base_ms",
            "prefill_ms_per_token",
            "decode_ms_per_seq",
        )
        if (value := getattr(args, name, None)) is not None
    }
    for name, value in hardware.items():
        if value < 0:  # -1 would mean "the class's value" to SimConfig
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0")
    config = SimConfig(
        host=args.host,
        port=args.port,
        name=args.name,
        model=args.model,
        lora_adapters=adapters,
        max_loras=args.max_loras,
        engine=EngineKind(args.engine),
        gpu=args.gpu,
        block_size=args.block_size,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        lora_load_ms=args.lora_load_ms,
        time_scale=args.time_scale,
        seed=args.seed,
        default_max_tokens=args.default_max_tokens,
        tokenizer=args.tokenizer,
        kv_events_endpoint=args.kv_events_endpoint,
        kv_events_topic=args.kv_events_topic,
        role=args.role,
        kv_transfer_gbps=args.kv_transfer_gbps,
        kv_bytes_per_token=args.kv_bytes_per_token,
        **hardware,
    )
    config.validate()
    return config


async def _serve(config: SimConfig) -> int:
    server = SimServer(config)
    try:
        await server.start()
    except OSError as exc:
        print(f"epp sim: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    print(f"epp-sim listening on {server.url} name={server.name}", flush=True)
    if server.publisher is not None:
        print(f"epp-sim kv-events on {server.publisher.endpoint} topic={server.publisher.topic}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = config_from_args(args)
        return asyncio.run(_serve(config))
    except ValueError as exc:
        print(f"epp sim: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
