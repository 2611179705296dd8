"""What the demo prints: the setup, and one table with a column per profile.

Rows: requests served per endpoint (the simulators' own counters), the fleet's prefix-cache hit ratio
(cached / prompt tokens, from the simulators' counters), TTFT p50 / p90 as the client measured them
through Envoy, end-to-end p90, and failed requests. `as_json` gives the same numbers for scripts.
"""

from __future__ import annotations

from typing import Any

from epp.tools.demo.orchestrate import DemoResult, ProfileRun

__all__ = ["as_json", "render_setup", "render_table", "render_verdict"]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f} ms"


def render_setup(result: DemoResult) -> str:
    o = result.options
    lines = [
        f"fleet: {len(result.servers)} simulated vLLM servers "
        f"(Llama-3.1-8B on one H100, time scale {o.time_scale:g})"
    ]
    for i, (name, address, lora) in enumerate(result.servers):
        extra = f"  LoRA adapters: {', '.join(lora)}" if lora else ""
        role = f"  {o.role(i)}" if o.prefill_servers else ""
        lines.append(f"  {name:<8} {address}{role}{extra}")
    lines.append(
        f"workload: shared prefix, {o.groups} groups x {o.prompts_per_group} prompts "
        f"(system prompt {o.system_prompt_tokens} tokens, question {o.question_tokens}, "
        f"output {o.output_tokens}), {o.api}, streaming, Poisson {o.rate:g} req/s, seed {o.seed}"
    )
    tls = "TLS" if o.secure_serving else "plaintext"
    lines.append(f"gateway: Envoy -> ext_proc ({tls}) -> EPP; profiles: {', '.join(o.profiles)}")
    return "\n".join(lines)


def _endpoint_label(name: str, lora: tuple[str, ...]) -> str:
    return f"{name} (LoRA)" if lora else name


def render_table(result: DemoResult) -> str:
    runs = result.runs
    rows: list[tuple[str, list[str]]] = [("requests per endpoint", ["" for _ in runs])]
    pd = result.options.prefill_servers > 0
    for i, (name, _, lora) in enumerate(result.servers):
        cells = [str(int(r.fleet.per_server.get(name, {}).get("requests_finished", 0))) for r in runs]
        label = _endpoint_label(name, lora)
        if pd:
            label += f" [{result.options.role(i)}]"
        rows.append((f"  {label}", cells))
    if pd:
        transfers = [sum(int(v.get("kv_transfers", 0)) for v in r.fleet.per_server.values()) for r in runs]
        rows.append(("remote prefills (KV pulled)", [str(t) for t in transfers]))
    rows += [
        ("prefix-cache hit ratio", [f"{r.fleet.hit_ratio * 100:.1f} %" for r in runs]),
        ("TTFT p50", [_ms(r.summary.ttft_p50_s) for r in runs]),
        ("TTFT p90", [_ms(r.summary.ttft_p90_s) for r in runs]),
        ("end-to-end p90", [_ms(r.summary.e2e_p90_s) for r in runs]),
        ("errors", [str(r.summary.errors + r.summary.unfinished) for r in runs]),
    ]
    label_w = max(len(label) for label, _ in rows)
    col_w = max(12, *(len(r.profile) for r in runs), *(len(c) for _, cells in rows for c in cells))
    header = " " * label_w + "".join(f"  {r.profile:>{col_w}}" for r in runs)
    lines = [header, "-" * len(header)]
    for label, cells in rows:
        lines.append((f"{label:<{label_w}}" + "".join(f"  {c:>{col_w}}" for c in cells)).rstrip())
    return "\n".join(lines)


def render_verdict(result: DemoResult) -> str:
    """One line per compared profile: how the first profile fares against it."""
    if len(result.runs) < 2:
        return ""
    first = result.runs[0]
    lines = []
    for other in result.runs[1:]:
        hit = (first.fleet.hit_ratio - other.fleet.hit_ratio) * 100
        a, b = first.summary.ttft_p90_s, other.summary.ttft_p90_s
        if a and b:
            ttft = f"TTFT p90 {b / a:.1f}x lower" if b >= a else f"TTFT p90 {a / b:.1f}x higher"
        else:
            ttft = "TTFT p90 not measured"
        lines.append(f"{first.profile} vs {other.profile}: prefix-cache hit ratio {hit:+.1f} points, {ttft}")
    return "\n".join(lines)


def _run_json(run: ProfileRun) -> dict[str, Any]:
    s = run.summary
    return {
        "profile": run.profile,
        "config_file": run.config_file,
        "requests_per_endpoint": {
            name: int(stats.get("requests_finished", 0)) for name, stats in run.fleet.per_server.items()
        },
        "prefix_cache_hit_ratio": run.fleet.hit_ratio,
        "prefix_cache_hits": run.fleet.prefix_cache_hits,
        "prefix_cache_queries": run.fleet.prefix_cache_queries,
        "ttft_p50_s": s.ttft_p50_s,
        "ttft_p90_s": s.ttft_p90_s,
        "ttft_p99_s": s.ttft_p99_s,
        "e2e_p90_s": s.e2e_p90_s,
        "ok": s.ok,
        "errors": s.errors,
        "unfinished": s.unfinished,
        "error_kinds": s.error_kinds,
        "duration_s": s.duration_s,
        "output_tokens_per_s": s.output_tokens_per_s,
        "served_by_header": s.by_backend,
    }


def as_json(result: DemoResult) -> dict[str, Any]:
    o = result.options
    return {
        "workload": result.workload.describe(),
        "rate": o.rate,
        "seed": o.seed,
        "time_scale": o.time_scale,
        "servers": [{"name": n, "address": a, "lora_adapters": list(lo)} for n, a, lo in result.servers],
        "runs": [_run_json(r) for r in result.runs],
        "total_s": result.total_s,
    }
