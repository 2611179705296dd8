"""`epp bench quality --pd N` and the opt-in `long_prompt` workload."""

from __future__ import annotations

import pytest

from epp.tools.bench.quality import SMOKE, WORKLOADS, make_workload
from epp.tools.bench.quality_cli import build_parser, options_from_args


def test_pd_option_and_long_prompt_workload() -> None:
    args = build_parser().parse_args(
        ["--smoke", "--pd", "1", "--workloads", "long_prompt", "--routers", "epp:pd,epp:default"]
    )
    options = options_from_args(args)
    assert options.pd_prefill == 1 and options.workloads == ("long_prompt",)
    assert "long_prompt" not in WORKLOADS  # opt-in: not part of the default sweep
    with pytest.raises(ValueError, match="--pd"):
        options_from_args(build_parser().parse_args(["--smoke", "--pd", "4"]))


def test_long_prompt_workload_is_half_long_unique_prompts() -> None:
    workload, rate = make_workload("long_prompt", 10.0, 10.0, SMOKE.shapes["long_prompt"], seed=0)
    assert workload.name == "long_prompt" and rate == 10.0 and len(workload.sessions) == 100
    unique = [s for s in workload.sessions if s.group == "unique"]
    assert 30 <= len(unique) <= 70
    assert all(t.max_tokens == 64 for s in workload.sessions for t in s.turns)
