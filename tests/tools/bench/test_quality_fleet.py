"""`epp bench quality --fleet mixed` / `--gpus`: the fleet it builds (configuration only, nothing runs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from epp.settings.values import parse_endpoint_labels
from epp.tools.bench.harness import Children
from epp.tools.bench.quality import FULL, SMOKE, Bench, QualityOptions, QualityResult, fleet_gpus, fleet_name
from epp.tools.bench.quality_cli import build_parser, options_from_args
from epp.tools.bench.quality_report import render_markdown
from epp.tools.bench.saturation import SaturationSearch
from epp.tools.sim.config import GPU_LABEL

ROUTERS = ["--routers", "epp:recommended,sglang,vllm"]


def options(*argv: str) -> QualityOptions:
    return options_from_args(build_parser().parse_args([*argv, *ROUTERS]))


def bench(opts: QualityOptions, tmp_path: Path) -> Bench:
    """A Bench that has not started its fleet; members get fake loopback addresses for the labels."""
    b = Bench(opts, lambda _: None, Children(), tmp_path)
    for i, member in enumerate(b.fleet.members):
        member.url = f"http://127.0.0.1:{9000 + i}"
    return b


def test_the_default_fleet_is_unchanged(tmp_path: Path) -> None:
    opts = options()
    assert opts.gpus == () and opts.fleet == "default"
    assert opts.sizing.start_rates == FULL.start_rates
    b = bench(opts, tmp_path)
    assert len(b.fleet.members) == FULL.servers
    for m in b.fleet.members:
        assert m.config.gpu is None and m.config.kv_blocks == FULL.kv_blocks and m.config.step_base_ms == 7.0
    assert "--static-endpoint-labels" not in b.epp_args()
    assert options("--fleet", "default").gpus == ()


def test_fleet_mixed_is_half_h100_half_a100_labelled_for_the_epp(tmp_path: Path) -> None:
    opts = options("--fleet", "mixed")
    assert opts.gpus == ("h100",) * 4 + ("a100",) * 4 and opts.fleet == "4xh100+4xa100"
    # the search starts at the fleet's share of the default fleet's rates (~0.76x: half at ~0.52x)
    ratio = opts.sizing.start_rates["zipf"] / FULL.start_rates["zipf"]
    assert 0.7 < ratio < 0.8
    b = bench(opts, tmp_path)
    configs = [m.config for m in b.fleet.members]
    assert [c.gpu for c in configs] == list(opts.gpus)
    assert [c.step_base_ms for c in configs] == [7.0] * 4 + [11.0] * 4
    assert [c.prefill_ms_per_token for c in configs] == [0.04] * 4 + [0.09] * 4
    assert all(c.kv_blocks == FULL.kv_blocks and c.time_scale == FULL.time_scale for c in configs)
    args = b.epp_args()
    labels = parse_endpoint_labels(args[args.index("--static-endpoint-labels") + 1])
    assert labels["127.0.0.1:9000"] == {GPU_LABEL: "NVIDIA-H100-80GB-HBM3"}
    assert labels["127.0.0.1:9007"] == {GPU_LABEL: "NVIDIA-A100-SXM4-80GB"}
    assert len(labels) == 8


def test_gpus_list_sets_the_servers_and_scales_kv_by_class(tmp_path: Path) -> None:
    opts = options("--smoke", "--gpus", "h100,a100,l4")
    assert opts.sizing.servers == 3 and opts.fleet == "1xh100+1xa100+1xl4"
    b = bench(opts, tmp_path)
    # --kv-blocks counts H100-class blocks: an L4 gets 160/2048 of them
    assert [m.config.kv_blocks for m in b.fleet.members] == [1024, 1024, 80]
    assert [m.config.gpu for m in b.fleet.members] == ["h100", "a100", "l4"]
    # smoke runs at given rates: the fleet's share of the smoke rates
    assert opts.saturation["zipf"] < SMOKE.start_rates["zipf"]


def test_pd_and_hardware_labels_go_together(tmp_path: Path) -> None:
    opts = options("--smoke", "--fleet", "mixed", "--pd", "1")
    args = bench(opts, tmp_path).epp_args()
    assert args.count("--static-endpoint-labels") == 1
    labels = parse_endpoint_labels(args[args.index("--static-endpoint-labels") + 1])
    assert labels["127.0.0.1:9000"] == {"llm-d.ai/role": "prefill", GPU_LABEL: "NVIDIA-H100-80GB-HBM3"}
    assert labels["127.0.0.1:9003"] == {"llm-d.ai/role": "decode", GPU_LABEL: "NVIDIA-A100-SXM4-80GB"}


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--fleet", "mixed", "--gpus", "h100,a100"], "not both"),
        (["--gpus", "h100,tpu"], "tpu"),
        (["--gpus", "h100,a100", "--servers", "4"], "--servers"),
    ],
)
def test_bad_fleets_are_refused(argv: list[str], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        options(*argv)


def test_rates_from_another_fleet_are_refused(tmp_path: Path) -> None:
    earlier = tmp_path / "quality.json"
    earlier.write_text(json.dumps({"options": {}, "saturation": {"zipf": {"rate": 20.0}}}))  # before fleets
    assert options("--saturation-from", str(earlier)).saturation == {"zipf": 20.0}
    with pytest.raises(ValueError, match="default fleet"):
        options("--fleet", "mixed", "--saturation-from", str(earlier))


def test_reports_say_which_fleet_ran() -> None:
    opts = options("--fleet", "mixed", "--workloads", "zipf")
    result = QualityResult(options=opts)
    search = SaturationSearch.given("zipf", 12.0)
    search.fleet = opts.fleet
    result.saturation["zipf"] = search
    doc = result.to_json()
    assert doc["options"]["fleet"] == "4xh100+4xa100" and doc["options"]["gpus"][-1] == "a100"
    assert doc["saturation"]["zipf"]["fleet"] == "4xh100+4xa100"
    assert SaturationSearch.from_json("zipf", doc["saturation"]["zipf"]).fleet == "4xh100+4xa100"
    text = render_markdown(result)
    assert "4xh100+4xa100 fleet" in text and "sim-7 a100" in text


def test_fleet_helpers() -> None:
    assert fleet_gpus("default", 8) == ()
    assert fleet_gpus("mixed", 3) == ("h100", "h100", "a100")
    assert fleet_name(()) == "default"
    assert fleet_name(("a100", "h100", "a100")) == "2xa100+1xh100"
    with pytest.raises(ValueError):
        fleet_gpus("huge", 4)
