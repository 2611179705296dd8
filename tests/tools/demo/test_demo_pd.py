"""`epp demo --pd`: a split fleet (prefill / decode simulators with role labels), pd.yaml vs default."""

from __future__ import annotations

import pytest

from epp.tools.demo.cli import build_parser, options_from_args
from epp.tools.demo.orchestrate import DemoOptions, role_labels, sim_configs
from epp.tools.loadgen.fleet import SimFleet, SimMember


def parse(*argv: str) -> DemoOptions:
    return options_from_args(build_parser().parse_args(list(argv)))


def test_pd_flag_splits_the_fleet_and_picks_the_profiles() -> None:
    options = parse("--pd", "--servers", "5", "--prefill-servers", "2")
    assert options.profiles == ("pd", "default") and options.prefill_servers == 2
    assert [c.role for c in sim_configs(options)] == ["prefill", "prefill", "decode", "decode", "decode"]
    explicit = parse("--pd", "--profile", "x.yaml", "--compare", "none")
    assert explicit.profiles == ("x.yaml",)
    plain = parse()
    assert plain.prefill_servers == 0 and {c.role for c in sim_configs(plain)} == {"both"}
    with pytest.raises(ValueError, match="prefill-servers"):
        parse("--pd", "--servers", "2", "--prefill-servers", "2")


def test_role_labels_name_every_simulator() -> None:
    configs = sim_configs(DemoOptions(servers=3, prefill_servers=1))
    fleet = SimFleet(configs)
    fleet.members = [SimMember(c, c.name, f"http://127.0.0.1:{8000 + i}") for i, c in enumerate(configs)]
    assert role_labels(fleet) == [
        "--static-endpoint-labels",
        "127.0.0.1:8000=llm-d.ai/role=prefill,127.0.0.1:8001=llm-d.ai/role=decode,"
        "127.0.0.1:8002=llm-d.ai/role=decode",
    ]
    plain = sim_configs(DemoOptions(servers=2))
    aggregated = SimFleet(plain)
    aggregated.members = [SimMember(c, c.name, "http://127.0.0.1:1") for c in plain]
    assert role_labels(aggregated) == []
