"""Realistic Prometheus `/metrics` pages as each supported model server writes them.

Used by the tests (fixtures served by real HTTP servers), the scrape benchmark and anything that simulates a
model server. The pages follow the real exposition of each engine: vLLM (Python `prometheus_client`, with
its histograms, `_created` series, process/GC and HTTP-instrumentator metrics), SGLang (also
`prometheus_client`), trtllm-serve and Triton's TensorRT-LLM backend (prometheus-cpp style). Metric names
and labels for the scheduling signals are the engines' own (docs/datalayer.md, "Engines and metric
names"); the rest is filler with the shape and volume of a real page (a vLLM page is 20-80 KB).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "ServerState",
    "fmt_float",
    "page_for_engine",
    "sglang_page",
    "triton_trtllm_page",
    "trtllm_serve_page",
    "vllm_page",
]


@dataclass(frozen=True)
class ServerState:
    """The scheduling-relevant state a page reports (the rest of a page is plausible filler)."""

    model: str = "meta-llama/Llama-3.1-8B-Instruct"
    waiting: float = 0
    running: float = 0
    kv_usage: float = 0.0
    running_loras: Sequence[str] = ()
    waiting_loras: Sequence[str] = ()
    max_loras: int = 0
    block_size: int = 16
    num_blocks: int = 27_000
    lora_info_time: float = 1_732_000_000.0
    served_requests: int = 1_000
    extra_lora_series: Sequence[tuple[Sequence[str], Sequence[str], float]] = field(default_factory=tuple)


def fmt_float(v: float) -> str:
    """Format a sample value as Python's prometheus_client does (Go-style Inf/NaN, `1.0` for ints)."""
    if v == math.inf:
        return "+Inf"
    if v == -math.inf:
        return "-Inf"
    if math.isnan(v):
        return "NaN"
    return repr(float(v))


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{k}="{_esc(v)}"' for k, v in pairs)
    return "{" + inner + "}" if inner else ""


class _Page:
    """Accumulates families in prometheus_client's text format."""

    def __init__(self, rng: random.Random, created: float) -> None:
        self.lines: list[str] = []
        self.rng = rng
        self.created = created

    def header(self, name: str, help_text: str, typ: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {typ}")

    def sample(self, name: str, labels: Sequence[tuple[str, str]], value: float) -> None:
        self.lines.append(f"{name}{_labels(labels)} {fmt_float(value)}")

    def gauge(
        self, name: str, help_text: str, series: Sequence[tuple[Sequence[tuple[str, str]], float]]
    ) -> None:
        self.header(name, help_text, "gauge")
        for labels, value in series:
            self.sample(name, labels, value)

    def counter(
        self,
        name: str,
        help_text: str,
        series: Sequence[tuple[Sequence[tuple[str, str]], float]],
        created: bool = True,
    ) -> None:
        base = name[: -len("_total")] if name.endswith("_total") else name
        self.header(name, help_text, "counter")
        for labels, value in series:
            self.sample(name, labels, value)
        if created:
            self.header(base + "_created", help_text, "gauge")
            for labels, _ in series:
                self.sample(base + "_created", labels, self.created)

    def histogram(
        self,
        name: str,
        help_text: str,
        buckets: Sequence[float],
        label_sets: Sequence[Sequence[tuple[str, str]]],
        scale: float,
        count: int,
        created: bool = True,
    ) -> None:
        self.header(name, help_text, "histogram")
        for labels in label_sets:
            cumulative = 0
            for le in buckets:
                # A plausible, monotone distribution: more mass near `scale`.
                share = 1.0 / (1.0 + math.exp(-(math.log(max(le, 1e-9)) - math.log(scale)) * 2.0))
                cumulative = max(cumulative, int(count * share))
                self.sample(name + "_bucket", [*labels, ("le", fmt_float(le))], float(cumulative))
            self.sample(name + "_bucket", [*labels, ("le", "+Inf")], float(count))
            self.sample(name + "_count", labels, float(count))
            total = count * scale * (0.8 + 0.4 * self.rng.random())
            self.sample(name + "_sum", labels, total)
        if created:
            self.header(name + "_created", help_text, "gauge")
            for labels in label_sets:
                self.sample(name + "_created", labels, self.created)

    def summary(self, name: str, help_text: str, label_sets: Sequence[Sequence[tuple[str, str]]]) -> None:
        self.header(name, help_text, "summary")
        for labels in label_sets:
            n = self.rng.randint(10, 5000)
            self.sample(name + "_count", labels, float(n))
            self.sample(name + "_sum", labels, float(n * self.rng.randint(50, 4000)))
        self.header(name + "_created", help_text, "gauge")
        for labels in label_sets:
            self.sample(name + "_created", labels, self.created)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _python_process_metrics(p: _Page) -> None:
    p.counter(
        "python_gc_objects_collected_total",
        "Objects collected during gc",
        [([("generation", str(g))], float(p.rng.randint(100, 90000))) for g in range(3)],
        created=False,
    )
    p.counter(
        "python_gc_objects_uncollectable_total",
        "Uncollectable objects found during GC",
        [([("generation", str(g))], 0.0) for g in range(3)],
        created=False,
    )
    p.counter(
        "python_gc_collections_total",
        "Number of times this generation was collected",
        [([("generation", str(g))], float(p.rng.randint(10, 9000))) for g in range(3)],
        created=False,
    )
    p.gauge(
        "python_info",
        "Python platform information",
        [
            (
                [
                    ("implementation", "CPython"),
                    ("major", "3"),
                    ("minor", "12"),
                    ("patchlevel", "9"),
                    ("version", "3.12.9"),
                ],
                1.0,
            )
        ],
    )
    p.gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.", [([], 1.2e11)])
    p.gauge("process_resident_memory_bytes", "Resident memory size in bytes.", [([], 6.4e9)])
    p.gauge(
        "process_start_time_seconds", "Start time of the process since unix epoch in seconds.", [([], 1.73e9)]
    )
    p.counter(
        "process_cpu_seconds_total",
        "Total user and system CPU time spent in seconds.",
        [([], 1234.5)],
        created=False,
    )
    p.gauge("process_open_fds", "Number of open file descriptors.", [([], 212.0)])
    p.gauge("process_max_fds", "Maximum number of open file descriptors.", [([], 1048576.0)])


_HTTP_HANDLERS = ("/v1/completions", "/v1/chat/completions", "/metrics", "/health", "/v1/models", "/tokenize")


def _http_instrumentator_metrics(p: _Page) -> None:
    series = []
    for handler in _HTTP_HANDLERS:
        method = "GET" if handler in ("/metrics", "/health", "/v1/models") else "POST"
        for status in ("2xx", "4xx"):
            series.append(
                (
                    [("handler", handler), ("method", method), ("status", status)],
                    float(p.rng.randint(0, 99999)),
                )
            )
    p.counter("http_requests_total", "Total number of requests by method, status and handler.", series)
    label_sets = [[("handler", h)] for h in _HTTP_HANDLERS]
    p.summary("http_request_size_bytes", "Content length of incoming requests by handler.", label_sets)
    p.summary("http_response_size_bytes", "Content length of outgoing responses by handler.", label_sets)
    highr = [0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0]
    highr += [7.5, 10.0, 30.0, 60.0]
    p.histogram(
        "http_request_duration_highr_seconds",
        "Latency with many buckets but no API specific labels. "
        "Made for more accurate percentile calculations. ",
        highr,
        [[]],
        0.5,
        p.rng.randint(1000, 90000),
    )
    sets = []
    for handler in _HTTP_HANDLERS:
        method = "GET" if handler in ("/metrics", "/health", "/v1/models") else "POST"
        sets.append([("handler", handler), ("method", method)])
    p.histogram(
        "http_request_duration_seconds",
        "Latency with only few buckets by handler. "
        "Made to be only used if aggregation by handler is important. ",
        [0.1, 0.5, 1.0],
        sets,
        0.3,
        p.rng.randint(1000, 90000),
    )


# latency buckets the engines share between their histograms
_VLLM_TTFT_BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5)
_VLLM_TTFT_BUCKETS += (0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0)
_VLLM_E2E_BUCKETS: tuple[float, ...] = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0)
_VLLM_E2E_BUCKETS += (40.0, 50.0, 60.0, 120.0, 240.0, 480.0)
_SGLANG_LATENCY_BUCKETS: tuple[float, ...] = (0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 20.0)
_SGLANG_LATENCY_BUCKETS += (40.0, 60.0, 80.0, 100.0, 200.0, 400.0)


def _one_two_five(max_value: int) -> list[float]:
    out: list[float] = []
    mantissas = (1, 2, 5)
    exponent = 0
    while True:
        for m in mantissas:
            v = m * 10**exponent
            if v > max_value:
                return out
            out.append(float(v))
        exponent += 1


_VLLM_ITL_BUCKETS: tuple[float, ...] = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0)
_VLLM_ITL_BUCKETS += (2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)

LabelSets = list[list[tuple[str, str]]]


def vllm_page(
    state: ServerState,
    *,
    legacy_kv_name: bool = False,
    engines: int = 1,
    seed: int = 0,
    max_model_len: int = 131_072,
) -> str:
    """A vLLM (V1 engine, 0.10/0.11-era) `/metrics` page; about 50 KB with one engine.

    `legacy_kv_name` reports KV usage as `vllm:gpu_cache_usage_perc` (older servers) instead of
    `vllm:kv_cache_usage_perc`. `engines` > 1 adds per-engine series (data parallel in one process).
    """
    rng = random.Random(seed)
    p = _Page(rng, created=1_732_000_000.5)
    _python_process_metrics(p)
    _http_instrumentator_metrics(p)
    engine_sets: LabelSets = [[("model_name", state.model), ("engine", str(e))] for e in range(engines)]
    _vllm_state_gauges(p, state, engine_sets, legacy_kv_name)
    _vllm_counters(p, engine_sets)
    _vllm_request_histograms(p, engine_sets, state.served_requests, max_model_len)
    _vllm_latency_histograms(p, engine_sets, state.served_requests)
    _vllm_cache_config(p, state, engines)
    _vllm_lora_info(p, state)
    return p.text()


def _vllm_state_gauges(p: _Page, state: ServerState, engine_sets: LabelSets, legacy_kv_name: bool) -> None:
    """The scheduling signals: running and waiting requests, sleep state, KV-cache usage."""
    p.gauge(
        "vllm:num_requests_running",
        "Number of requests in model execution batches.",
        [(ls, float(state.running)) for ls in engine_sets],
    )
    p.gauge(
        "vllm:num_requests_waiting",
        "Number of requests waiting to be processed.",
        [(ls, float(state.waiting)) for ls in engine_sets],
    )
    kv_name = "vllm:gpu_cache_usage_perc" if legacy_kv_name else "vllm:kv_cache_usage_perc"
    p.gauge(
        "vllm:engine_sleep_state",
        "Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means engine is awake; "
        "weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep level 2.",
        [
            ([*ls, ("sleep_state", s)], 1.0 if s == "awake" else 0.0)
            for ls in engine_sets
            for s in ("awake", "weights_offloaded", "discard_all")
        ],
    )
    p.gauge(
        kv_name,
        "KV-cache usage. 1 means 100 percent usage.",
        [(ls, state.kv_usage) for ls in engine_sets],
    )


def _vllm_counters(p: _Page, engine_sets: LabelSets) -> None:
    """Prefix-cache queries and hits, preemptions, tokens and finished requests (random totals)."""
    rng = p.rng
    p.counter(
        "vllm:prefix_cache_queries_total",
        "Prefix cache queries, in terms of number of queried tokens.",
        [(ls, float(rng.randint(10**5, 10**8))) for ls in engine_sets],
    )
    p.counter(
        "vllm:prefix_cache_hits_total",
        "Prefix cache hits, in terms of number of cached tokens.",
        [(ls, float(rng.randint(10**4, 10**7))) for ls in engine_sets],
    )
    p.counter(
        "vllm:num_preemptions_total",
        "Cumulative number of preemption from the engine.",
        [(ls, 0.0) for ls in engine_sets],
    )
    p.counter(
        "vllm:prompt_tokens_total",
        "Number of prefill tokens processed.",
        [(ls, float(rng.randint(10**5, 10**8))) for ls in engine_sets],
    )
    p.counter(
        "vllm:generation_tokens_total",
        "Number of generation tokens processed.",
        [(ls, float(rng.randint(10**5, 10**8))) for ls in engine_sets],
    )
    p.counter(
        "vllm:request_success_total",
        "Count of successfully processed requests.",
        [
            ([*ls, ("finished_reason", r)], float(rng.randint(0, 10**5)))
            for ls in engine_sets
            for r in ("stop", "length", "abort")
        ],
    )


def _vllm_request_histograms(p: _Page, engine_sets: LabelSets, n: int, max_model_len: int) -> None:
    """The per-request size histograms: prompt and generated tokens, tokens per step, parameters."""
    token_buckets = _one_two_five(max_model_len)
    p.histogram(
        "vllm:request_prompt_tokens",
        "Number of prefill tokens processed.",
        token_buckets,
        engine_sets,
        900,
        n,
    )
    p.histogram(
        "vllm:request_generation_tokens",
        "Number of generation tokens processed.",
        token_buckets,
        engine_sets,
        300,
        n,
    )
    iteration = [1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0]
    p.histogram(
        "vllm:iteration_tokens_total",
        "Histogram of number of tokens per engine_step.",
        iteration,
        engine_sets,
        256,
        n * 20,
    )
    p.histogram(
        "vllm:request_max_num_generation_tokens",
        "Histogram of maximum number of requested generation tokens.",
        token_buckets,
        engine_sets,
        1024,
        n,
    )
    p.histogram(
        "vllm:request_params_n",
        "Histogram of the n request parameter.",
        [1.0, 2.0, 5.0, 10.0, 20.0],
        engine_sets,
        1,
        n,
    )
    p.histogram(
        "vllm:request_params_max_tokens",
        "Histogram of the max_tokens request parameter.",
        token_buckets,
        engine_sets,
        1024,
        n,
    )


def _vllm_latency_histograms(p: _Page, engine_sets: LabelSets, n: int) -> None:
    """TTFT, time per output token, inter-token latency and the phases of a request."""
    ttft = [*_VLLM_TTFT_BUCKETS, 80.0, 160.0, 640.0, 2560.0]
    p.histogram(
        "vllm:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        ttft,
        engine_sets,
        0.2,
        n,
    )
    itl = list(_VLLM_ITL_BUCKETS)
    p.histogram(
        "vllm:time_per_output_token_seconds",
        "Histogram of time per output token in seconds.",
        itl,
        engine_sets,
        0.03,
        n * 200,
    )
    p.histogram(
        "vllm:inter_token_latency_seconds",
        "Histogram of inter-token latency in seconds.",
        itl,
        engine_sets,
        0.03,
        n * 200,
    )
    e2e = [*_VLLM_E2E_BUCKETS, 960.0, 1920.0, 7680.0]
    for name, help_text, scale in (
        ("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", 6.0),
        ("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.", 0.05),
        ("vllm:request_inference_time_seconds", "Histogram of time spent in RUNNING phase for request.", 5.0),
        ("vllm:request_prefill_time_seconds", "Histogram of time spent in PREFILL phase for request.", 0.2),
        ("vllm:request_decode_time_seconds", "Histogram of time spent in DECODE phase for request.", 5.0),
    ):
        p.histogram(name, help_text, e2e, engine_sets, scale, n)


def _vllm_cache_config(p: _Page, state: ServerState, engines: int) -> None:
    """`vllm:cache_config_info`, one series per engine (block size and count as labels)."""
    p.gauge(
        "vllm:cache_config_info",
        "Information of the LLMEngine CacheConfig",
        [
            (
                [
                    ("block_size", str(state.block_size)),
                    ("cache_dtype", "auto"),
                    ("calculate_kv_scales", "False"),
                    ("cpu_offload_gb", "0"),
                    ("enable_prefix_caching", "True"),
                    ("engine", str(e)),
                    ("gpu_memory_utilization", "0.9"),
                    ("is_attention_free", "False"),
                    ("num_cpu_blocks", "None"),
                    ("num_gpu_blocks", str(state.num_blocks)),
                    ("num_gpu_blocks_override", "None"),
                    ("prefix_caching_hash_algo", "sha256"),
                    ("sliding_window", "None"),
                    ("swap_space", "4"),
                    ("swap_space_bytes", "4294967296"),
                ],
                1.0,
            )
            for e in range(engines)
        ],
    )


def _vllm_lora_info(p: _Page, state: ServerState) -> None:
    """`vllm:lora_requests_info` (only with LoRA enabled): the current series, then any earlier ones."""
    if state.max_loras <= 0:
        return
    history = [(state.running_loras, state.waiting_loras, state.lora_info_time), *state.extra_lora_series]
    lora_series: list[tuple[Sequence[tuple[str, str]], float]] = [
        (
            [
                ("max_lora", str(state.max_loras)),
                ("running_lora_adapters", ",".join(running)),
                ("waiting_lora_adapters", ",".join(waiting)),
            ],
            ts,
        )
        for running, waiting, ts in history
    ]
    p.gauge("vllm:lora_requests_info", "Running stats on lora requests.", lora_series)


def sglang_page(state: ServerState, *, seed: int = 0) -> str:
    """An SGLang (0.4/0.5-era) `/metrics` page, with `sglang:cache_config_info` (page_size, num_pages)."""
    rng = random.Random(seed)
    p = _Page(rng, created=1_732_000_000.25)
    _python_process_metrics(p)
    base = [("model_name", state.model), ("engine_type", "unified"), ("tp_rank", "0"), ("pp_rank", "0")]
    p.counter(
        "sglang:prompt_tokens_total",
        "Number of prefill tokens processed.",
        [(base, float(rng.randint(1, 10**8)))],
    )
    p.counter(
        "sglang:generation_tokens_total",
        "Number of generation tokens processed.",
        [(base, float(rng.randint(1, 10**8)))],
    )
    p.counter(
        "sglang:num_requests_total", "Number of requests processed.", [(base, float(state.served_requests))]
    )
    p.gauge("sglang:num_running_reqs", "The number of running requests.", [(base, float(state.running))])
    p.gauge("sglang:num_used_tokens", "The number of used tokens.", [(base, float(rng.randint(0, 10**6)))])
    p.gauge("sglang:token_usage", "The token usage.", [(base, state.kv_usage)])
    p.gauge("sglang:gen_throughput", "The generation throughput (token/s).", [(base, 1234.5)])
    p.gauge(
        "sglang:num_queue_reqs",
        "The number of requests in the waiting queue.",
        [(base, float(state.waiting))],
    )
    p.gauge(
        "sglang:num_grammar_queue_reqs", "The number of requests in the grammar waiting queue.", [(base, 0.0)]
    )
    p.gauge("sglang:cache_hit_rate", "The prefix cache hit rate.", [(base, 0.41)])
    p.gauge(
        "sglang:spec_accept_length", "The average acceptance length of speculative decoding.", [(base, 0.0)]
    )
    p.gauge(
        "sglang:cache_config_info",
        "Information of the cache configuration",
        [
            (
                [
                    ("model_name", state.model),
                    ("num_pages", str(state.num_blocks)),
                    ("page_size", str(state.block_size)),
                ],
                1.0,
            )
        ],
    )
    n = state.served_requests
    ttft = list(_SGLANG_LATENCY_BUCKETS)
    p.histogram(
        "sglang:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        ttft,
        [base],
        0.3,
        n,
    )
    itl = [0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.025, 0.03, 0.035, 0.04, 0.06, 0.08, 0.1, 0.2, 0.4]
    itl += [0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0]
    p.histogram(
        "sglang:inter_token_latency_seconds",
        "Histogram of inter-token latency in seconds.",
        itl,
        [base],
        0.02,
        n * 200,
    )
    e2e = [*_SGLANG_LATENCY_BUCKETS, 800.0]
    p.histogram(
        "sglang:e2e_request_latency_seconds",
        "Histogram of End-to-end request latency in seconds",
        e2e,
        [base],
        5.0,
        n,
    )
    return p.text()


def trtllm_serve_page(state: ServerState, *, seed: int = 0) -> str:
    """A trtllm-serve `/metrics` page (block size and block count reported as values)."""
    rng = random.Random(seed)
    p = _Page(rng, created=1_732_000_000.75)
    _python_process_metrics(p)
    base = [("model_name", state.model), ("engine_type", "trtllm")]
    p.gauge(
        "trtllm_num_requests_waiting",
        "Number of requests waiting to be processed.",
        [(base, float(state.waiting))],
    )
    p.gauge(
        "trtllm_num_requests_running",
        "Number of requests currently being processed.",
        [(base, float(state.running))],
    )
    p.gauge("trtllm_kv_cache_utilization", "KV cache utilization (0-1).", [(base, state.kv_usage)])
    p.gauge(
        "trtllm_kv_cache_tokens_per_block", "Tokens per KV cache block.", [(base, float(state.block_size))]
    )
    p.gauge(
        "trtllm_kv_cache_max_blocks", "Maximum number of KV cache blocks.", [(base, float(state.num_blocks))]
    )
    p.gauge("trtllm_kv_cache_hit_rate", "KV cache reuse hit rate.", [(base, 0.37)])
    p.counter(
        "trtllm_request_success_total",
        "Count of successfully processed requests.",
        [([*base, ("finished_reason", r)], float(rng.randint(0, 10**5))) for r in ("stop", "length")],
    )
    n = state.served_requests
    ttft = list(_VLLM_TTFT_BUCKETS)
    p.histogram(
        "trtllm_time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        ttft,
        [base],
        0.1,
        n,
    )
    e2e = list(_VLLM_E2E_BUCKETS)
    p.histogram(
        "trtllm_e2e_request_latency_seconds",
        "Histogram of end to end request latency in seconds.",
        e2e,
        [base],
        4.0,
        n,
    )
    p.histogram(
        "trtllm_request_queue_time_seconds",
        "Histogram of time spent in WAITING phase for request.",
        e2e,
        [base],
        0.05,
        n,
    )
    return p.text()


class _TritonPage:
    """Families in Triton's (prometheus-cpp) text format: no `_created` series, integers without `.0`."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(
        self, name: str, help_text: str, typ: str, series: Sequence[tuple[Sequence[tuple[str, str]], float]]
    ) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {typ}")
        for labels, value in series:
            v = int(value) if float(value).is_integer() and abs(value) < 1e15 else value
            self.lines.append(f"{name}{_labels(labels)} {v}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


_TRITON_MODELS = (("ensemble", "1"), ("preprocessing", "1"), ("tensorrt_llm", "1"), ("postprocessing", "1"))
_TRT = (("model", "tensorrt_llm"), ("version", "1"))


def triton_trtllm_page(state: ServerState, *, seed: int = 0) -> str:
    """A Triton Inference Server page with the TensorRT-LLM backend's `nv_trt_llm_*` families."""
    rng = random.Random(seed)
    page = _TritonPage()
    _triton_inference_families(page, rng)
    _trt_llm_families(page, state, rng)
    _triton_hardware_families(page)
    return page.text()


def _triton_inference_families(page: _TritonPage, rng: random.Random) -> None:
    """Triton's per-model request counters and pending requests, for the ensemble and its steps."""
    for name, help_text in (
        ("nv_inference_request_success", "Number of successful inference requests, all batch sizes"),
        ("nv_inference_request_failure", "Number of failed inference requests, all batch sizes"),
        ("nv_inference_count", "Number of inferences performed (does not include cached requests)"),
        (
            "nv_inference_exec_count",
            "Number of model executions performed (does not include cached requests)",
        ),
        ("nv_inference_request_duration_us", "Cumulative inference request duration in microseconds"),
        ("nv_inference_queue_duration_us", "Cumulative inference queuing duration in microseconds"),
        ("nv_inference_compute_input_duration_us", "Cumulative compute input duration in microseconds"),
        ("nv_inference_compute_infer_duration_us", "Cumulative compute inference duration in microseconds"),
        (
            "nv_inference_compute_output_duration_us",
            "Cumulative inference compute output duration in microseconds",
        ),
    ):
        page.family(
            name,
            help_text,
            "counter",
            [([("model", m), ("version", v)], float(rng.randint(0, 10**7))) for m, v in _TRITON_MODELS],
        )
    page.family(
        "nv_inference_pending_request_count",
        "Instantaneous number of pending requests awaiting execution per-model.",
        "gauge",
        [([("model", m), ("version", v)], 0.0) for m, v in _TRITON_MODELS],
    )


def _trt_llm_families(page: _TritonPage, state: ServerState, rng: random.Random) -> None:
    """The TensorRT-LLM backend's own families: requests, memory, KV-cache blocks, batcher, general."""
    trt = list(_TRT)
    page.family(
        "nv_trt_llm_request_metrics",
        "TRT LLM request metrics",
        "gauge",
        [
            (
                [("model", "tensorrt_llm"), ("request_type", "context"), ("version", "1")],
                float(rng.randint(0, 4)),
            ),
            (
                [("model", "tensorrt_llm"), ("request_type", "scheduled"), ("version", "1")],
                float(state.running),
            ),
            ([("model", "tensorrt_llm"), ("request_type", "max"), ("version", "1")], 512.0),
            ([("model", "tensorrt_llm"), ("request_type", "active"), ("version", "1")], float(state.running)),
            (
                [("model", "tensorrt_llm"), ("request_type", "waiting"), ("version", "1")],
                float(state.waiting),
            ),
        ],
    )
    page.family(
        "nv_trt_llm_runtime_memory_metrics",
        "TRT LLM runtime memory metrics",
        "gauge",
        [([("memory_type", t), *trt], float(rng.randint(0, 10**9))) for t in ("pinned", "gpu", "cpu")],
    )
    used = int(state.kv_usage * state.num_blocks) if math.isfinite(state.kv_usage) else 0
    page.family(
        "nv_trt_llm_kv_cache_block_metrics",
        "TRT LLM KV cache block metrics",
        "gauge",
        [
            ([("kv_cache_block_type", "fraction"), *trt], state.kv_usage),
            ([("kv_cache_block_type", "tokens_per"), *trt], float(state.block_size)),
            ([("kv_cache_block_type", "used"), *trt], float(used)),
            ([("kv_cache_block_type", "free"), *trt], float(max(0, state.num_blocks - used))),
            ([("kv_cache_block_type", "max"), *trt], float(state.num_blocks)),
        ],
    )
    page.family(
        "nv_trt_llm_inflight_batcher_metrics",
        "TRT LLM inflight_batcher-specific metrics",
        "gauge",
        [
            ([("inflight_batcher_specific_metric", k), *trt], float(rng.randint(0, 5000)))
            for k in ("total_context_tokens", "generation_requests", "micro_batch_id", "paused_requests")
        ],
    )
    page.family(
        "nv_trt_llm_general_metrics",
        "General TRT LLM metrics",
        "gauge",
        [
            ([("general_type", "iteration_counter"), *trt], float(rng.randint(0, 10**6))),
            ([("general_type", "timestamp"), *trt], 1_732_000_000.0),
        ],
    )


def _triton_hardware_families(page: _TritonPage) -> None:
    """GPU and CPU utilisation, memory, power and energy (constants: filler with the real names)."""
    gpu = [("gpu_uuid", "GPU-6a1f0a4e-5a4b-1c3d-9e8f-0123456789ab")]
    for name, help_text, value in (
        ("nv_gpu_utilization", "GPU utilization rate [0.0 - 1.0)", 0.87),
        ("nv_gpu_memory_total_bytes", "GPU total memory, in bytes", 85899345920.0),
        ("nv_gpu_memory_used_bytes", "GPU used memory, in bytes", 76235669504.0),
        ("nv_gpu_power_usage", "GPU power usage in watts", 612.3),
        ("nv_gpu_power_limit", "GPU power management limit in watts", 700.0),
    ):
        page.family(name, help_text, "gauge", [(gpu, value)])
    page.family(
        "nv_energy_consumption",
        "GPU energy consumption in joules since the Triton Server started",
        "counter",
        [(gpu, 9.1e7)],
    )
    page.family("nv_cpu_utilization", "CPU utilization rate [0.0 - 1.0]", "gauge", [([], 0.12)])
    page.family("nv_cpu_memory_total_bytes", "CPU total memory (RAM), in bytes", "gauge", [([], 2.1e12)])
    page.family("nv_cpu_memory_used_bytes", "CPU used memory (RAM), in bytes", "gauge", [([], 3.4e11)])


def page_for_engine(engine: str, state: ServerState, *, seed: int = 0) -> str:
    """The page a server of the given built-in engine type would serve."""
    if engine == "vllm":
        return vllm_page(state, seed=seed)
    if engine == "sglang":
        return sglang_page(state, seed=seed)
    if engine == "trtllm-serve":
        return trtllm_serve_page(state, seed=seed)
    if engine == "triton-tensorrt-llm":
        return triton_trtllm_page(state, seed=seed)
    raise ValueError(f"unknown engine {engine!r}")
