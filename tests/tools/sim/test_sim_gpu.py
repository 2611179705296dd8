"""Hardware classes (`--gpu`): each sets the step-time coefficients, the KV capacity and the token budget
documented in docs/simulator.md; explicit settings win; no class is today's calibration."""

from __future__ import annotations

import pytest

from epp.tools.loadgen.fleet import sim_argv
from epp.tools.sim.cli import build_parser, config_from_args, main
from epp.tools.sim.config import GPU_CLASSES, SimConfig
from epp.tools.sim.engine import Engine

#: docs/simulator.md, "Hardware classes": step base, per prefill token, per sequence (ms), KV blocks, budget
DOCUMENTED = {
    "h100": (7.0, 0.04, 0.1, 2048, 8192),
    "a100": (11.0, 0.09, 0.14, 2048, 2048),
    "l4": (70.0, 0.27, 0.7, 160, 2048),
}


def hardware(config: SimConfig) -> tuple[float, float, float, int, int]:
    return (
        config.step_base_ms,
        config.prefill_ms_per_token,
        config.decode_ms_per_seq,
        config.kv_blocks,
        config.max_num_batched_tokens,
    )


@pytest.mark.parametrize("gpu", sorted(DOCUMENTED))
def test_each_class_has_its_documented_figures(gpu: str) -> None:
    config = SimConfig(gpu=gpu)
    config.validate()
    assert hardware(config) == DOCUMENTED[gpu]
    assert config.gpu_class is GPU_CLASSES[gpu]


def test_no_class_is_the_h100_calibration_unchanged() -> None:
    assert SimConfig().gpu is None
    assert hardware(SimConfig()) == DOCUMENTED["h100"]
    assert SimConfig().gpu_class.name == "h100"
    assert GPU_CLASSES["h100"].relative_speed == 1.0
    assert 0.45 < GPU_CLASSES["a100"].relative_speed < 0.6  # "about 2x slower"
    assert GPU_CLASSES["l4"].relative_speed < 0.2


def step_ms(config: SimConfig, prompt_tokens: int) -> float:
    """Simulated milliseconds of the one step that prefills a `prompt_tokens` prompt (fake clock)."""
    engine = Engine(config)
    engine.add_request("r", [1000 + i for i in range(prompt_tokens)], 4, None, 0.0)
    result = engine.step(0.0)
    assert result.prefill_tokens == prompt_tokens and result.scheduled_seqs == 1
    return result.duration * 1000


@pytest.mark.parametrize("gpu", sorted(DOCUMENTED))
def test_a_class_changes_the_step_time(gpu: str) -> None:
    base, per_token, per_seq, _, _ = DOCUMENTED[gpu]
    assert step_ms(SimConfig(gpu=gpu), 1000) == pytest.approx(base + per_token * 1000 + per_seq)


def test_a100_prefill_and_decode_are_slower_than_h100() -> None:
    h100, a100 = SimConfig(gpu="h100"), SimConfig(gpu="a100")
    # a 1,000-token prefill step: 47.1 ms vs 101.1 ms
    assert step_ms(a100, 1000) / step_ms(h100, 1000) == pytest.approx(101.14 / 47.1, rel=1e-3)
    # a decode step of 8 sequences: 7.8 ms vs 12.12 ms
    decode_ms = {}
    for name, config in (("h100", h100), ("a100", a100)):
        engine = Engine(config)
        for i in range(8):
            engine.add_request(f"r{i}", [2000 + i * 100 + j for j in range(16)], 4, None, 0.0)
        now = engine.step(0.0).end  # the 8 prefills
        decode = engine.step(now)
        assert decode.decode_seqs == 8 and decode.prefill_tokens == 0
        decode_ms[name] = decode.duration * 1000
    assert decode_ms["h100"] == pytest.approx(7.0 + 8 * 0.1)
    assert decode_ms["a100"] == pytest.approx(11.0 + 8 * 0.14)


def test_a_class_changes_the_kv_capacity_and_the_context_limit() -> None:
    l4 = Engine(SimConfig(gpu="l4"))
    assert l4.pool.num_blocks == 160 and l4.pool.num_free == 160
    assert SimConfig(gpu="l4").effective_max_model_len == 160 * 16
    assert Engine(SimConfig(gpu="a100")).pool.num_blocks == 2048


def test_explicit_settings_win_over_the_class() -> None:
    config = SimConfig(gpu="l4", kv_blocks=2048, step_base_ms=7.0)
    assert (config.kv_blocks, config.step_base_ms) == (2048, 7.0)
    assert config.prefill_ms_per_token == 0.27  # the rest still comes from the class
    with pytest.raises(ValueError, match="--gpu"):
        SimConfig(gpu="tpu").validate()


def test_cli_gpu_flag_and_overrides() -> None:
    parse = build_parser().parse_args
    assert hardware(config_from_args(parse(["--gpu", "a100"]))) == DOCUMENTED["a100"]
    assert hardware(config_from_args(parse([]))) == DOCUMENTED["h100"]
    # an explicit flag equal to the h100 default still wins on another class
    config = config_from_args(
        parse(["--gpu", "l4", "--kv-blocks", "2048", "--max-num-batched-tokens", "8192"])
    )
    assert (config.kv_blocks, config.max_num_batched_tokens, config.step_base_ms) == (2048, 8192, 70.0)


@pytest.mark.parametrize(
    ("argv", "needle"), [(["--kv-blocks", "-1"], "--kv-blocks"), (["--step-base-ms", "-1"], "--step")]
)
def test_negative_hardware_flags_exit_2(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert needle in capsys.readouterr().err


def test_an_unknown_class_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--gpu", "tpu"])
    assert exc.value.code == 2 and "--gpu" in capsys.readouterr().err


@pytest.mark.parametrize(
    "config",
    [
        SimConfig(gpu="a100"),
        SimConfig(gpu="l4", kv_blocks=2048),
        SimConfig(gpu="a100", step_base_ms=7.0),
        SimConfig(name="plain", kv_blocks=512),
    ],
)
def test_subprocess_flags_rebuild_the_same_config(config: SimConfig) -> None:
    assert config_from_args(build_parser().parse_args(sim_argv(config))) == config
