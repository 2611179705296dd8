"""`epp bench crosscheck`: the shared-prefix comparison again, with `inference-perf` as the client.

Our numbers come from our own load client (`epp.tools.loadgen`). To show that they do not depend on it, the
same fleet and routers are driven by the official `inference-perf` tool (kubernetes-sigs, the tool GIE
benchmarks with): its `shared_prefix` data, Poisson load, streaming completions. For each router:
a fresh router, inference-perf's run, the simulators' counters; then a fresh router again and our
client with a workload of the same shape, rate and duration. The report puts both clients' TTFT
percentiles, throughput and hit ratios side by side, and whether the routers rank the same way.

inference-perf needs Python >= 3.12 and a tokenizer; both come without network access to anything but
the package index: its own virtualenv under `.cache/bench/venvs/` (`rivals.py`), and a small byte-level
BPE tokenizer trained once from the Shakespeare corpus that inference-perf ships, saved with
`transformers` as a local tokenizer directory (`.cache/bench/tokenizer-bpe4000/`). It runs with
`HF_HUB_OFFLINE=1` and dead proxies (`offline_env`), in its own process group (stopped as a whole).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from epp.tools.bench.harness import Children, machine_info, run_async_main, tidy_workdir, write_report
from epp.tools.bench.quality import FULL, Bench, QualityOptions, RunRecord
from epp.tools.bench.rivals import cache_root, check_tools, ensure_tool, offline_env
from epp.tools.bench.routers import parse_router, rival_tools
from epp.tools.extras import require
from epp.tools.loadgen.fleet import fleet_stats

__all__ = ["CrossOptions", "build_tokenizer", "ip_config", "main", "parse_ip_summary", "run_crosscheck"]

Say = Callable[[str], None]

_TRAIN = r"""
import pathlib, sys
import inference_perf
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast
out = pathlib.Path(sys.argv[1])
corpus = pathlib.Path(inference_perf.__file__).parent / "assets" / "shakespeare.txt"
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(vocab_size=4000, special_tokens=["<|endoftext|>"],
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
tok.train([str(corpus)], trainer)
eos = "<|endoftext|>"
fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, bos_token=eos, pad_token=eos)
fast.save_pretrained(str(out))
"""


def build_tokenizer(python: Path, say: Say | None = None) -> Path:
    """The local tokenizer directory (trained once, then cached)."""
    out = cache_root() / "tokenizer-bpe4000"
    if (out / "tokenizer.json").is_file() and (out / "tokenizer_config.json").is_file():
        return out
    if say is not None:
        say(f"training a byte-level BPE tokenizer (vocab 4000) from inference-perf's corpus into {out}")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    res = subprocess.run(
        [str(python), "-c", _TRAIN, str(tmp)],
        capture_output=True,
        text=True,
        timeout=600,
        env=offline_env(),
        check=False,
    )
    if res.returncode != 0 or not (tmp / "tokenizer.json").is_file():
        raise RuntimeError(f"tokenizer training failed:\n{res.stderr[-2000:]}")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


@dataclass(frozen=True, slots=True)
class CrossOptions:
    routers: tuple[str, ...] = ("epp:default", "sglang", "vllm", "envoy-rr")
    rate: float = 24.0
    duration_s: int = 20
    groups: int = 32
    system_prompt_len: int = 1500
    question_len: int = 150
    output_len: int = 16
    servers: int = FULL.servers
    kv_blocks: int = FULL.kv_blocks
    time_scale: float = FULL.time_scale
    seed: int = 1
    #: install inference-perf and the rival routers if they are not (else a missing one is an error)
    install_rivals: bool = False


def ip_config(options: CrossOptions, base_url: str, model: str, tokenizer: Path, out: Path) -> dict[str, Any]:
    """inference-perf's config: shared_prefix data, one Poisson stage, streaming completions."""
    total = math.ceil(options.rate * options.duration_s)
    return {
        "api": {"type": "completion", "streaming": True},
        "data": {
            "type": "shared_prefix",
            "shared_prefix": {
                "num_groups": options.groups,
                "num_prompts_per_group": max(1, math.ceil(total / options.groups)),
                "system_prompt_len": options.system_prompt_len,
                "question_len": options.question_len,
                "output_len": options.output_len,
                "seed": options.seed,
            },
        },
        "load": {
            "type": "poisson",
            "stages": [{"rate": options.rate, "duration": options.duration_s}],
            "num_workers": 2,
        },
        "server": {"type": "vllm", "model_name": model, "base_url": base_url, "ignore_eos": True},
        "tokenizer": {"pretrained_model_name_or_path": str(tokenizer)},
        "storage": {"local_storage": {"path": str(out)}},
        "report": {"request_lifecycle": {"summary": True, "per_stage": False, "per_request": False}},
    }


def parse_ip_summary(doc: dict[str, Any]) -> dict[str, Any]:
    """TTFT percentiles (ms), e2e p90, throughput and counts from `summary_lifecycle_metrics.json`."""
    ok = doc.get("successes") or {}
    lat = ok.get("latency") or {}
    ttft = lat.get("time_to_first_token") or {}
    e2e = lat.get("request_latency") or {}
    thr = ok.get("throughput") or {}
    failures = doc.get("failures") or {}

    def ms(d: dict[str, Any], key: str) -> float | None:
        v = d.get(key)
        return None if v is None else round(float(v) * 1000, 1)

    return {
        "ok": int(ok.get("count") or 0),
        "failed": int(failures.get("count") or 0),
        "ttft_p50_ms": ms(ttft, "median"),
        "ttft_p90_ms": ms(ttft, "p90"),
        "ttft_p99_ms": ms(ttft, "p99"),
        "e2e_p90_ms": ms(e2e, "p90"),
        "output_tokens_per_s": round(float(thr.get("output_tokens_per_sec") or 0.0), 1),
    }


@dataclass(slots=True)
class CrossRow:
    router: str
    client: str  # "inference-perf" or "epp loadgen"
    ok: int
    failed: int
    ttft_p50_ms: float | None
    ttft_p90_ms: float | None
    ttft_p99_ms: float | None
    e2e_p90_ms: float | None
    output_tokens_per_s: float
    hit_ratio: float
    balance_requests: float
    prompt_tokens_per_request: float = 0.0


@dataclass(slots=True)
class CrossResult:
    options: CrossOptions
    rows: list[CrossRow] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)
    tools: dict[str, str] = field(default_factory=dict)
    total_s: float = 0.0

    def ranking(self, client: str) -> list[str]:
        rows = [r for r in self.rows if r.client == client and r.ttft_p90_ms is not None]
        return [r.router for r in sorted(rows, key=lambda r: r.ttft_p90_ms or 0.0)]

    def to_json(self) -> dict[str, Any]:
        return {
            "benchmark": "epp bench crosscheck",
            "machine": self.machine,
            "tools": self.tools,
            "options": asdict(self.options),
            "rows": [asdict(r) for r in self.rows],
            "ranking_by_p90": {c: self.ranking(c) for c in ("inference-perf", "epp loadgen")},
            "total_s": round(self.total_s, 1),
        }


async def _run_ip(
    exe: Path, config: dict[str, Any], workdir: Path, children: Children, timeout: float
) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "config.yml"
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    log = workdir / "inference-perf.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [str(exe), "--config_file", str(cfg)],
            cwd=workdir,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=offline_env(),
            start_new_session=True,
        )
    children.add([proc.pid])
    children.add_group(proc.pid)
    try:
        code = await asyncio.wait_for(asyncio.to_thread(proc.wait), timeout)
    except (TimeoutError, asyncio.CancelledError):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await asyncio.to_thread(proc.wait)
        raise
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        children.discard_group(proc.pid)
    summary = Path(config["storage"]["local_storage"]["path"]) / "summary_lifecycle_metrics.json"
    if code != 0 or not summary.is_file():
        text = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"inference-perf exited with {code}:\n{text}")
    return summary


def _row_from_record(r: RunRecord, prompt_tokens: float) -> CrossRow:
    return CrossRow(
        router=r.router,
        client="epp loadgen",
        ok=r.ok,
        failed=r.failed,
        ttft_p50_ms=r.ttft_p50_ms,
        ttft_p90_ms=r.ttft_p90_ms,
        ttft_p99_ms=r.ttft_p99_ms,
        e2e_p90_ms=r.e2e_p90_ms,
        output_tokens_per_s=r.output_tokens_per_s,
        hit_ratio=r.hit_ratio,
        balance_requests=r.balance_requests,
        prompt_tokens_per_request=prompt_tokens,
    )


async def run_crosscheck(options: CrossOptions, say: Say, children: Children) -> CrossResult:
    result = CrossResult(options=options)
    begin = time.perf_counter()
    exe = await asyncio.to_thread(ensure_tool, "inference-perf", install=options.install_rivals, say=say)
    tokenizer = await asyncio.to_thread(build_tokenizer, exe.parent / "python", say)
    shape = {
        "groups": options.groups,
        "system_prompt_len": options.system_prompt_len,
        "question_len": options.question_len,
        "output_len": options.output_len,
    }
    sizing = replace(
        FULL,
        servers=options.servers,
        kv_blocks=options.kv_blocks,
        time_scale=options.time_scale,
        duration_s=float(options.duration_s),
        shapes={**FULL.shapes, "shared_prefix": shape},
    )
    qopts = QualityOptions(
        sizing=sizing,
        workloads=("shared_prefix",),
        routers=options.routers,
        seed=options.seed,
        install_rivals=options.install_rivals,
    )
    workdir = Path(tempfile.mkdtemp(prefix="epp-bench-crosscheck-"))
    bench = Bench(qopts, say, children, workdir)
    ok = False
    try:
        await bench.start()
        for name in options.routers:
            spec = parse_router(name)
            async with bench.router_session(
                spec, "completions", f"ip-{spec.name.replace(':', '-')}"
            ) as router:
                out = workdir / f"inference-perf-{spec.name.replace(':', '-')}"
                config = ip_config(options, router.url, bench.model, tokenizer, out / "report")
                say(f"inference-perf -> {spec.name}: {options.rate:g} req/s for {options.duration_s}s")
                summary = await _run_ip(exe, config, out, children, timeout=options.duration_s * 4 + 180)
                stats = fleet_stats(await bench.fleet.stats())
            parsed = parse_ip_summary(json.loads(summary.read_text()))
            prompt = sum(int(s.get("prompt_tokens", 0)) for s in stats.per_server.values())
            ip_row = CrossRow(
                router=spec.name,
                client="inference-perf",
                hit_ratio=round(stats.hit_ratio, 4),
                balance_requests=round(stats.balance("requests_finished"), 3),
                prompt_tokens_per_request=round(prompt / max(1, stats.requests), 1),
                **parsed,
            )
            result.rows.append(ip_row)
            say(f"  {_line(ip_row)}")
            record = await bench.run(
                spec,
                "shared_prefix",
                options.rate,
                multiplier=None,
                purpose="crosscheck",
                duration_s=float(options.duration_s),
            )
            own = _row_from_record(record, 0.0)
            result.rows.append(own)
            say(f"  {_line(own)}")
        ok = True
    finally:
        await bench.stop()
        tidy_workdir(workdir, ok, say)
    result.tools = {"inference-perf": "inference-perf==0.7.0"}
    result.total_s = time.perf_counter() - begin
    return result


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def _line(r: CrossRow) -> str:
    ttft = f"{_fmt(r.ttft_p50_ms)}/{_fmt(r.ttft_p90_ms)}/{_fmt(r.ttft_p99_ms)}"
    return (
        f"{r.client} via {r.router}: {r.ok} ok, {r.failed} failed, TTFT p50/p90/p99 {ttft} ms, "
        f"{r.output_tokens_per_s:.0f} tok/s, hit {r.hit_ratio:.3f}"
    )


def render_markdown(result: CrossResult) -> str:
    o, m = result.options, result.machine
    lines = [
        "# epp bench crosscheck (inference-perf vs our client)",
        "",
        f"Machine: {m.get('nproc')} CPUs ({m.get('cpu_model')}), load average {m.get('load_average')}. "
        f"Fleet: {o.servers} simulators, {o.kv_blocks} KV blocks, time scale {o.time_scale:g}. Workload: "
        f"shared_prefix, {o.groups} groups, system prompt {o.system_prompt_len} / question "
        f"{o.question_len} / output {o.output_len} tokens, Poisson {o.rate:g} req/s for {o.duration_s} s.",
        "",
        "| router | client | ok | failed | TTFT p50 ms | p90 | p99 | e2e p90 | out tok/s | hit "
        "| max/mean req |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result.rows:
        ttft = f"{_fmt(r.ttft_p50_ms)} | {_fmt(r.ttft_p90_ms)} | {_fmt(r.ttft_p99_ms)}"
        lines.append(
            f"| {r.router} | {r.client} | {r.ok} | {r.failed} | {ttft} | {_fmt(r.e2e_p90_ms)} | "
            f"{r.output_tokens_per_s:.0f} | {r.hit_ratio:.3f} | {r.balance_requests:.2f} |"
        )
    ip, own = result.ranking("inference-perf"), result.ranking("epp loadgen")
    lines += [
        "",
        f"Routers by p90 TTFT, inference-perf: {' < '.join(ip)}",
        f"Routers by p90 TTFT, our client: {' < '.join(own)}",
        f"Same order: {'yes' if ip == own else 'no'}",
        "",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    d = CrossOptions()
    p = argparse.ArgumentParser(prog="epp bench crosscheck", description=__doc__.split("\n\n")[0])
    add = p.add_argument
    add("--routers", default=",".join(d.routers), help="comma-separated routers (as for `epp bench quality`)")
    add("--rate", type=float, default=d.rate, help="requests/s (Poisson)")
    add("--duration", type=int, default=d.duration_s, help="seconds of load per run")
    add("--servers", type=int, default=d.servers, help="simulators")
    add("--time-scale", type=float, default=d.time_scale, help="simulator time scale")
    add("--groups", type=int, default=d.groups, help="shared-prefix groups")
    add(
        "--install-rivals",
        action="store_true",
        help="install inference-perf and the rival routers into .cache/bench/venvs/ if they are not (else "
        "a missing one is an error; 'epp bench install' installs them beforehand)",
    )
    add("--out", default=None, help="output directory (default bench-results/crosscheck-TIME)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from epp.tools.bench.cli import out_dir_default

    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    routers = tuple(x.strip() for x in args.routers.split(",") if x.strip())
    try:
        for r in routers:
            parse_router(r)
        if args.rate <= 0 or args.duration < 1 or args.servers < 2 or args.groups < 1:
            raise ValueError("need --rate > 0, --duration >= 1, --servers >= 2, --groups >= 1")
    except ValueError as exc:
        print(f"epp bench crosscheck: {exc}", file=sys.stderr)
        return 2
    specs = [parse_router(r) for r in routers]
    require("epp bench crosscheck", "bench", envoy=any(s.needs_envoy for s in specs))
    options = CrossOptions(
        routers=routers,
        rate=args.rate,
        duration_s=args.duration,
        servers=args.servers,
        time_scale=args.time_scale,
        groups=args.groups,
        install_rivals=args.install_rivals,
    )

    def say(text: str) -> None:
        print(text, flush=True)

    tools = ["inference-perf", *rival_tools(specs)]
    status = check_tools("epp bench crosscheck", tools, install=options.install_rivals, say=say)
    if status:
        return status
    out_dir = Path(args.out) if args.out else out_dir_default("crosscheck")
    machine = machine_info()

    async def go(children: Children) -> CrossResult:
        return await run_crosscheck(options, say, children)

    status, result = run_async_main("epp bench crosscheck", go)
    if result is None:
        return status
    result.machine = {**machine, "load_average_end": machine_info()["load_average"]}
    write_report(out_dir, "crosscheck", result.to_json(), render_markdown(result))
    return 1 if any(r.failed for r in result.rows) else 0
