"""The simulator's settings (one frozen value built from flags or by tests) and their defaults.

The step-time defaults model Llama-3.1-8B (bf16) on one H100 SXM served by vLLM; docs/simulator.md
gives the source figures and the arithmetic. The KV capacity is deliberately small so that cache
pressure (eviction, admission waits) shows with modest workloads. `gpu` picks another hardware class
(`GPU_CLASSES`: its step-time coefficients, KV capacity and token budget); a field given explicitly
wins over the class.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["GPU_CLASSES", "GPU_CLASS_FIELDS", "GPU_LABEL", "ROLES", "EngineKind", "GpuClass", "SimConfig"]

#: P/D roles (`--role`): a prefill server ignores `x-prefiller-host-port`, decode and both honour it.
ROLES = ("prefill", "decode", "both")


@dataclass(frozen=True, slots=True)
class GpuClass:
    """One hardware class (`--gpu`): Llama-3.1-8B bf16 on one such GPU under vLLM (docs/simulator.md)."""

    name: str
    product: str  # what NVIDIA GPU feature discovery puts in the `nvidia.com/gpu.product` label
    step_base_ms: float
    prefill_ms_per_token: float
    decode_ms_per_seq: float
    kv_blocks: int  # scaled like the H100 default: ~1/12 of what the GPU really holds
    max_num_batched_tokens: int

    @property
    def relative_speed(self) -> float:
        """Work per second relative to the H100 class (mean of the decode-step and prefill slowdowns)."""
        h100 = GPU_CLASSES["h100"]
        slowdown = (
            self.step_base_ms / h100.step_base_ms + self.prefill_ms_per_token / h100.prefill_ms_per_token
        ) / 2
        return 1.0 / slowdown


#: The hardware classes. `h100` is the simulator's default calibration.
GPU_CLASSES: dict[str, GpuClass] = {
    c.name: c
    for c in (
        GpuClass("h100", "NVIDIA-H100-80GB-HBM3", 7.0, 0.04, 0.1, 2048, 8192),
        GpuClass("a100", "NVIDIA-A100-SXM4-80GB", 11.0, 0.09, 0.14, 2048, 2048),
        GpuClass("l4", "NVIDIA-L4", 70.0, 0.27, 0.7, 160, 2048),
    )
}
#: The pod label a fleet's hardware class travels in (set by NVIDIA GPU feature discovery on nodes;
#: `epp bench quality` gives it to the EPP per endpoint with `--static-endpoint-labels`).
GPU_LABEL = "nvidia.com/gpu.product"
#: Fields a hardware class fills when left at this value (no valid setting is negative).
_UNSET = -1
#: The SimConfig fields a hardware class sets.
GPU_CLASS_FIELDS = (
    "step_base_ms",
    "prefill_ms_per_token",
    "decode_ms_per_seq",
    "kv_blocks",
    "max_num_batched_tokens",
)


class EngineKind(StrEnum):
    """Which engine's metric names and native probe endpoints the server imitates."""

    VLLM = "vllm"
    SGLANG = "sglang"


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Everything one simulated model server needs to know. `validate()` names the first bad field."""

    host: str = "127.0.0.1"
    port: int = 0
    name: str = ""
    model: str = "meta-llama/Llama-3.1-8B-Instruct"
    lora_adapters: tuple[str, ...] = ()
    max_loras: int = 1
    engine: EngineKind = EngineKind.VLLM
    # Hardware class (`GPU_CLASSES`): None behaves as h100. The fields set to -1 below take the
    # class's value; any other value is an explicit setting and wins. (`dataclasses.replace` passes
    # the resolved values on, so replacing `gpu` alone keeps the old class's figures.)
    gpu: str | None = None
    # KV cache: a deliberately small pool (h100: 2048 blocks x 16 tokens = 32768 tokens).
    kv_blocks: int = _UNSET
    block_size: int = 16
    max_model_len: int = 0  # 0: min(8192, kv_blocks * block_size)
    # Scheduler limits (vLLM names and semantics).
    max_num_seqs: int = 256
    max_num_batched_tokens: int = _UNSET
    # Step time = base + prefill_tokens * per_token + scheduled_seqs * per_seq (milliseconds).
    step_base_ms: float = _UNSET
    prefill_ms_per_token: float = _UNSET
    decode_ms_per_seq: float = _UNSET
    lora_load_ms: float = 25.0
    time_scale: float = 1.0
    seed: int = 0
    default_max_tokens: int = 16
    vocab_size: int = 128256
    tokenizer: str | None = None
    kv_events_endpoint: str | None = None
    kv_events_topic: str = "kv@{host}:{port}@{model}"
    # P/D disaggregation: which stage this server serves, and how fast KV moves in from a prefill server.
    role: str = "both"
    kv_transfer_gbps: float = 25.0  # GB/s between servers (a 200 Gbit/s RDMA NIC)
    kv_bytes_per_token: int = 131072  # Llama-3.1-8B: 2 x 32 layers x 8 KV heads x 128 dims x 2 bytes

    def __post_init__(self) -> None:
        # Accept plain strings and lists from in-process callers.
        object.__setattr__(self, "engine", EngineKind(self.engine))
        object.__setattr__(self, "lora_adapters", tuple(self.lora_adapters))
        # an unknown class is reported by validate(); its fields get the h100 values meanwhile
        hw = GPU_CLASSES.get(self.gpu or "h100", GPU_CLASSES["h100"])
        for name in GPU_CLASS_FIELDS:
            if getattr(self, name) == _UNSET:
                object.__setattr__(self, name, getattr(hw, name))

    @property
    def gpu_class(self) -> GpuClass:
        """The hardware class (h100 when `gpu` is None)."""
        return GPU_CLASSES[self.gpu or "h100"]

    @property
    def effective_max_model_len(self) -> int:
        capacity = self.kv_blocks * self.block_size
        return min(self.max_model_len or 8192, capacity)

    @property
    def served_models(self) -> tuple[str, ...]:
        return (self.model, *self.lora_adapters)

    def validate(self) -> None:
        """Raise ValueError naming the flag when a setting is out of range."""
        checks: list[tuple[bool, str]] = [
            (0 <= self.port <= 65535, "--port must be 0..65535"),
            (
                self.gpu is None or self.gpu in GPU_CLASSES,
                f"--gpu must be one of {', '.join(GPU_CLASSES)}",
            ),
            (bool(self.model.strip()), "--model must not be empty"),
            (self.kv_blocks >= 1, "--kv-blocks must be >= 1"),
            (self.block_size >= 1, "--block-size must be >= 1"),
            (self.max_model_len >= 0, "--max-model-len must be >= 0"),
            (self.max_num_seqs >= 1, "--max-num-seqs must be >= 1"),
            (self.max_num_batched_tokens >= 1, "--max-num-batched-tokens must be >= 1"),
            (self.max_loras >= 1, "--max-loras must be >= 1"),
            (self.step_base_ms >= 0, "--step-base-ms must be >= 0"),
            (self.prefill_ms_per_token >= 0, "--prefill-ms-per-token must be >= 0"),
            (self.decode_ms_per_seq >= 0, "--decode-ms-per-seq must be >= 0"),
            (self.lora_load_ms >= 0, "--lora-load-ms must be >= 0"),
            (self.time_scale > 0, "--time-scale must be > 0"),
            (self.default_max_tokens >= 1, "--default-max-tokens must be >= 1"),
            (self.vocab_size >= 256, "--vocab-size must be >= 256"),
            (self.role in ROLES, f"--role must be one of {', '.join(ROLES)}"),
            (self.kv_transfer_gbps > 0, "--kv-transfer-gbps must be > 0"),
            (self.kv_bytes_per_token >= 1, "--kv-bytes-per-token must be >= 1"),
            (
                self.step_base_ms + self.prefill_ms_per_token + self.decode_ms_per_seq > 0,
                "the step-time coefficients must not all be zero",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        names = list(self.lora_adapters)
        if any(not a.strip() or "," in a for a in names):
            raise ValueError("--lora-adapters must be a comma-separated list of non-empty names")
        if len(set(names)) != len(names):
            raise ValueError("--lora-adapters has a duplicate name")
        if self.model in names:
            raise ValueError("--lora-adapters must not repeat the base --model name")
