"""`epp bench` dispatch and flag errors (fast: nothing is started)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from epp.tools.bench import cli
from epp.tools.bench.quality import FULL
from epp.tools.bench.quality_cli import build_parser, options_from_args

ROOT = Path(__file__).resolve().parents[3]


def test_usage_and_unknown_subcommand(capsys) -> None:
    assert cli.main(["--help"]) == 0
    assert "quality" in capsys.readouterr().out
    assert cli.main([]) == 2
    assert cli.main(["nope"]) == 2
    assert "unknown subcommand 'nope'" in capsys.readouterr().err


def test_the_console_script_dispatches_bench_and_its_pass_throughs() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "epp", "bench", "schedule", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert res.returncode == 0 and "epp.tools.bench.schedule" in res.stdout
    res = subprocess.run(
        [sys.executable, "-m", "epp", "bench", "quality", "--workloads", "nope"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert res.returncode == 2 and "unknown workload(s) nope" in res.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--routers", "haproxy"], "unknown router 'haproxy'"),
        (["--routers", "epp:no-such-profile"], "no profile 'no-such-profile'"),
        (["--servers", "1"], "--servers >= 2"),
        (["--factor", "0.5"], "--factor must be > 1"),
    ],
)
def test_bad_quality_flags(argv, message) -> None:
    args = build_parser().parse_args(argv)
    with pytest.raises(ValueError, match=message):
        options_from_args(args)


def test_smoke_options_and_saturation_scaling(tmp_path) -> None:
    smoke = options_from_args(build_parser().parse_args(["--smoke"]))
    assert smoke.smoke and smoke.routers == ("epp:default", "envoy-rr", "sglang", "vllm")
    assert set(smoke.saturation) == {"shared_prefix", "zipf", "mixed", "multiturn"}  # no search
    full = options_from_args(build_parser().parse_args(["--time-scale", "16", "--servers", "4"]))
    assert full.sizing.start_rates["zipf"] == pytest.approx(FULL.start_rates["zipf"] * 0.5 * 0.5)
    assert full.scrape_interval == pytest.approx(0.8)
    prior = tmp_path / "q.json"
    prior.write_text('{"saturation": {"zipf": {"rate": 33.0}}}')
    again = options_from_args(
        build_parser().parse_args(["--saturation-from", str(prior), "--saturation", "mixed=5"])
    )
    assert again.saturation == {"zipf": 33.0, "mixed": 5.0}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--saturation", "zipf=-1"])


def test_only_profiles_subscribing_to_kv_events_make_the_fleet_publish_them() -> None:
    from epp.tools.bench.routers import parse_router

    assert parse_router("epp:benchmarks/profiles/recommended-precise.yaml").needs_kv_events
    assert not parse_router("epp:recommended").needs_kv_events
    assert not parse_router("sglang").needs_kv_events
    with_precise = options_from_args(
        build_parser().parse_args(
            ["--routers", "epp:default,epp:benchmarks/profiles/recommended-precise.yaml"]
        )
    )
    assert [r.needs_kv_events for r in with_precise.router_specs] == [False, True]


def test_plaintext_epp_router_spec() -> None:
    from epp.tools.bench.routers import parse_router

    tls, plain = parse_router("epp:default"), parse_router("epp-plaintext:default")
    assert (tls.name, tls.policy) == ("epp:default", "")
    assert (plain.name, plain.kind, plain.policy) == ("epp-plaintext:default", "epp", "plaintext")
    assert plain.profile == tls.profile


def test_epp_router_spec_takes_a_worker_count() -> None:
    import pytest

    from epp.tools.bench.routers import parse_router

    two = parse_router("epp:recommended@2")
    assert (two.name, two.workers) == ("epp:recommended@2", 2)
    assert two.profile == parse_router("epp:recommended").profile
    assert parse_router("epp:recommended").workers is None
    assert parse_router("epp-duplex:default@1").workers == 1
    for bad in ("epp:recommended@0", "epp:recommended@x", "epp:recommended@65"):
        with pytest.raises(ValueError, match="worker count"):
            parse_router(bad)


def test_epp_router_spec_takes_replicas_with_or_without_sync() -> None:
    import pytest

    from epp.tools.bench.routers import parse_router

    three = parse_router("epp:recommended@1*3")
    assert (three.name, three.workers, three.replicas, three.sync) == ("epp:recommended@1*3", 1, 3, True)
    apart = parse_router("epp:recommended*3-nosync")
    assert (apart.replicas, apart.sync, apart.workers) == (3, False, None)
    assert parse_router("epp:recommended").replicas is None
    for bad in ("epp:recommended*1", "epp:recommended*x", "epp:recommended*3-off", "epp:recommended*17"):
        with pytest.raises(ValueError, match="replica count"):
            parse_router(bad)


def test_envoy_config_for_replicas_keeps_a_request_on_one_replica() -> None:
    from epp.tools.proxy.envoy_config import OBSERVER_FILTER, ROUTING_FILTER, EnvoyConfig, bootstrap

    doc = bootstrap(
        EnvoyConfig(ext_proc_port=1, ext_proc_health_port=2, ext_proc_replicas=[("h", 3, 4), ("h", 5, 6)])
    )
    clusters = {c["name"]: c for c in doc["static_resources"]["clusters"]}
    assert {"ext_proc", "ext_proc_r0", "ext_proc_r1", "ext_proc_r2"} <= clusters.keys()
    r1 = clusters["ext_proc_r1"]["load_assignment"]["endpoints"]
    assert [g["priority"] for g in r1] == [0, 1]  # replica 1 first, the others as its failover
    assert r1[0]["lb_endpoints"][0]["endpoint"]["health_check_config"] == {"port_value": 4}
    assert clusters["ext_proc_r1"]["health_checks"][0]["grpc_health_check"] == {"service_name": "readiness"}
    hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    regexes = [r["match"]["headers"][0]["string_match"]["safe_regex"]["regex"] for r in routes[:3]]
    assert regexes == ["^[01234].*", "^[56789].*", "^[abcdef].*"]  # every hex digit, once
    for i, route in enumerate(routes[:3]):
        per_filter = route["typed_per_filter_config"]
        clusters_used = {
            f["overrides"]["grpc_service"]["envoy_grpc"]["cluster_name"] for f in per_filter.values()
        }
        assert per_filter.keys() == {ROUTING_FILTER, OBSERVER_FILTER} and clusters_used == {f"ext_proc_r{i}"}
    assert "headers" not in routes[3]["match"]  # a request id that is not hex: the shared cluster
    import pytest

    with pytest.raises(ValueError, match="at most 16"):
        bootstrap(EnvoyConfig(ext_proc_replicas=[("h", p, p + 1) for p in range(2, 36, 2)]))


def test_envoy_config_limits_streams_per_ext_proc_connection() -> None:
    from epp.tools.proxy.envoy_config import EnvoyConfig, bootstrap

    def h2(cfg: EnvoyConfig) -> dict:
        cluster = next(c for c in bootstrap(cfg)["static_resources"]["clusters"] if c["name"] == "ext_proc")
        options = cluster["typed_extension_protocol_options"][
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        ]
        return options["explicit_http_config"]["http2_protocol_options"]

    assert h2(EnvoyConfig()) == {}
    assert h2(EnvoyConfig(ext_proc_max_streams=16)) == {"max_concurrent_streams": 16}
