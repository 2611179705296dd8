"""Metric specs (`name` or `name{label=value,...}`) and the built-in per-engine metric mappings.

A spec names one series family and, optionally, labels that a series must carry (a subset match). Label
values may be written bare (`{request_type=waiting}`, upstream's documented form) or double-quoted. An
empty spec string disables the signal. Among the series a spec matches, the one with the newest timestamp
wins; pages rarely carry timestamps, so usually the first one does (upstream's rule).

An `EngineMapping` says where each scheduling signal lives on one engine's page; `BUILTIN_ENGINES` holds
the four engines of upstream's model-server protocol: `vllm`, `sglang`, `trtllm-serve` and
`triton-tensorrt-llm` (their metric names are tabled in docs/datalayer.md, "Engines and metric names").
A signal may list several specs tried in order: the built-in vLLM mapping reads `vllm:kv_cache_usage_perc`
and falls back to the older `vllm:gpu_cache_usage_perc`, so old and new vLLM servers both work.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from epp.datalayer.promtext import Sample

__all__ = [
    "BUILTIN_ENGINES",
    "DEFAULT_ENGINE",
    "ENGINE_LABEL_KEY",
    "EngineMapping",
    "MetricOverrides",
    "MetricSpec",
    "parse_spec",
]

ENGINE_LABEL_KEY = "inference.networking.k8s.io/engine-type"
DEFAULT_ENGINE = "vllm"

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """A series family name plus the labels a matching series must carry."""

    name: str
    labels: tuple[tuple[str, str], ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(key) == value for key, value in self.labels)

    def select(self, samples: Sequence[Sample]) -> Sample | None:
        """The matching sample with the newest timestamp (no timestamp counts as 0; first wins ties)."""
        best: Sample | None = None
        best_ts = -1
        for s in samples:
            if not self.matches(s.labels):
                continue
            ts = s.timestamp_ms if s.timestamp_ms is not None else 0
            if ts > best_ts:
                best, best_ts = s, ts
        return best

    def __str__(self) -> str:
        if not self.labels:
            return self.name
        return self.name + "{" + ",".join(f"{k}={v}" for k, v in self.labels) + "}"


def parse_spec(text: str) -> MetricSpec | None:
    """Parse `name` or `name{l1=v1,l2="v2"}`; None for an empty string. Raises ValueError with the reason."""
    s = text.strip()
    if not s:
        return None
    brace = s.find("{")
    if brace < 0:
        name, body = s, None
    else:
        if not s.endswith("}"):
            raise ValueError(f"metric spec {text!r}: labels must end with '}}'")
        name, body = s[:brace].strip(), s[brace + 1 : -1]
    if not _METRIC_NAME.match(name):
        raise ValueError(f"metric spec {text!r}: {name!r} is not a valid metric name")
    labels: list[tuple[str, str]] = []
    if body is not None:
        for key, value in _split_labels(text, body):
            if any(k == key for k, _ in labels):
                raise ValueError(f"metric spec {text!r}: label {key!r} given twice")
            labels.append((key, value))
    return MetricSpec(name, tuple(labels))


def _split_labels(text: str, body: str) -> Iterable[tuple[str, str]]:
    pos = 0
    n = len(body)
    while pos < n:
        eq = body.find("=", pos)
        if eq < 0:
            if body[pos:].strip(" ,"):
                raise ValueError(f"metric spec {text!r}: expected label=value, got {body[pos:].strip()!r}")
            return
        key = body[pos:eq].strip()
        if not _LABEL_NAME.match(key):
            raise ValueError(f"metric spec {text!r}: {key!r} is not a valid label name")
        pos = eq + 1
        while pos < n and body[pos] == " ":
            pos += 1
        if pos < n and body[pos] == '"':
            value, pos = _quoted(text, body, pos)
        else:
            comma = body.find(",", pos)
            end = n if comma < 0 else comma
            value = body[pos:end].strip()
            if any(c in value for c in '"{}= \t'):
                raise ValueError(f"metric spec {text!r}: bad label value {value!r}")
            pos = end
        yield key, value
        while pos < n and body[pos] == " ":
            pos += 1
        if pos < n:
            if body[pos] != ",":
                raise ValueError(f"metric spec {text!r}: expected ',' after label {key!r}")
            pos += 1


def _quoted(text: str, body: str, pos: int) -> tuple[str, int]:
    out: list[str] = []
    i = pos + 1
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            out.append("\n" if nxt == "n" else nxt)
            i += 2
            continue
        if c == '"':
            return "".join(out), i + 1
        out.append(c)
        i += 1
    raise ValueError(f"metric spec {text!r}: unterminated quoted label value")


@dataclass(frozen=True, slots=True)
class MetricOverrides:
    """Spec strings from the deprecated `--*-metric` flags, applied to the default engine's mapping.

    `None` leaves a signal as the mapping has it; an empty string disables it.
    """

    queued: str | None = None
    running: str | None = None
    kv_usage: str | None = None
    lora: str | None = None
    cache_info: str | None = None

    def any(self) -> bool:
        return any(
            v is not None for v in (self.queued, self.running, self.kv_usage, self.lora, self.cache_info)
        )


def _one(spec: MetricSpec | None) -> tuple[MetricSpec, ...]:
    return () if spec is None else (spec,)


@dataclass(frozen=True)
class EngineMapping:
    """Where one engine's page keeps each scheduling signal.

    `queued` / `running` / `kv_usage` are tried in order (first spec that yields a value wins). Block size
    and block count come from the values of `cache_block_size` / `cache_num_blocks` when those are set,
    else from the labels named `cache_block_size_label` / `cache_num_blocks_label` on the `cache_info`
    series.
    """

    name: str
    queued: tuple[MetricSpec, ...] = ()
    running: tuple[MetricSpec, ...] = ()
    kv_usage: tuple[MetricSpec, ...] = ()
    lora: MetricSpec | None = None
    cache_info: MetricSpec | None = None
    cache_block_size_label: str = "block_size"
    cache_num_blocks_label: str = "num_gpu_blocks"
    cache_block_size: MetricSpec | None = None
    cache_num_blocks: MetricSpec | None = None
    names: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        specs: list[MetricSpec] = [*self.queued, *self.running, *self.kv_usage]
        for opt in (self.lora, self.cache_info, self.cache_block_size, self.cache_num_blocks):
            if opt is not None:
                specs.append(opt)
        object.__setattr__(self, "names", frozenset(s.name for s in specs))

    @property
    def has_core(self) -> bool:
        """True when at least one load signal (queue, running, KV) is configured."""
        return bool(self.queued or self.running or self.kv_usage)

    @classmethod
    def from_specs(
        cls,
        name: str,
        *,
        queued: str = "",
        running: str = "",
        kv_usage: str = "",
        lora: str = "",
        cache_info: str = "",
        cache_block_size_label: str = "block_size",
        cache_num_blocks_label: str = "num_gpu_blocks",
        cache_block_size: str = "",
        cache_num_blocks: str = "",
    ) -> EngineMapping:
        """Build a mapping from spec strings (raises ValueError naming the bad spec)."""
        return cls(
            name=name,
            queued=_one(parse_spec(queued)),
            running=_one(parse_spec(running)),
            kv_usage=_one(parse_spec(kv_usage)),
            lora=parse_spec(lora),
            cache_info=parse_spec(cache_info),
            cache_block_size_label=cache_block_size_label or "block_size",
            cache_num_blocks_label=cache_num_blocks_label or "num_gpu_blocks",
            cache_block_size=parse_spec(cache_block_size),
            cache_num_blocks=parse_spec(cache_num_blocks),
        )

    def with_overrides(self, overrides: MetricOverrides) -> EngineMapping:
        """This mapping with the deprecated flag specs applied."""
        changes: dict[str, object] = {}
        if overrides.queued is not None:
            changes["queued"] = _one(parse_spec(overrides.queued))
        if overrides.running is not None:
            changes["running"] = _one(parse_spec(overrides.running))
        if overrides.kv_usage is not None:
            changes["kv_usage"] = _one(parse_spec(overrides.kv_usage))
        if overrides.lora is not None:
            changes["lora"] = parse_spec(overrides.lora)
        if overrides.cache_info is not None:
            changes["cache_info"] = parse_spec(overrides.cache_info)
        return replace(self, **changes) if changes else self  # type: ignore[arg-type]


def _spec(text: str) -> MetricSpec:
    spec = parse_spec(text)
    assert spec is not None
    return spec


BUILTIN_ENGINES: Mapping[str, EngineMapping] = {
    m.name: m
    for m in (
        EngineMapping(
            name="vllm",
            queued=(_spec("vllm:num_requests_waiting"),),
            running=(_spec("vllm:num_requests_running"),),
            kv_usage=(_spec("vllm:kv_cache_usage_perc"), _spec("vllm:gpu_cache_usage_perc")),
            lora=_spec("vllm:lora_requests_info"),
            cache_info=_spec("vllm:cache_config_info"),
            cache_block_size_label="block_size",
            cache_num_blocks_label="num_gpu_blocks",
        ),
        EngineMapping(
            name="sglang",
            queued=(_spec("sglang:num_queue_reqs"),),
            running=(_spec("sglang:num_running_reqs"),),
            kv_usage=(_spec("sglang:token_usage"),),
            cache_info=_spec("sglang:cache_config_info"),
            cache_block_size_label="page_size",
            cache_num_blocks_label="num_pages",
        ),
        EngineMapping(
            name="trtllm-serve",
            queued=(_spec("trtllm_num_requests_waiting"),),
            running=(_spec("trtllm_num_requests_running"),),
            kv_usage=(_spec("trtllm_kv_cache_utilization"),),
            cache_block_size=_spec("trtllm_kv_cache_tokens_per_block"),
            cache_num_blocks=_spec("trtllm_kv_cache_max_blocks"),
        ),
        EngineMapping(
            name="triton-tensorrt-llm",
            queued=(_spec("nv_trt_llm_request_metrics{request_type=waiting}"),),
            running=(_spec("nv_trt_llm_request_metrics{request_type=scheduled}"),),
            kv_usage=(_spec("nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=fraction}"),),
            cache_block_size=_spec("nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=tokens_per}"),
            cache_num_blocks=_spec("nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=max}"),
        ),
    )
}
