"""Daemon settings: upstream flag names and defaults, Go durations and booleans, EPP_* environment."""

from __future__ import annotations

import logging

import pytest

from epp.errors import SettingsError
from epp.settings import EppSettings, HelpRequested, LogFormat, ModelServerType, flag_help, parse_settings

POOL = ["--pool-name", "pool"]


def parse(*argv: str, env: dict[str, str] | None = None) -> EppSettings:
    return parse_settings(list(argv), env or {})


def test_defaults_are_the_contracts() -> None:
    s = parse(*POOL)
    assert (s.grpc_port, s.grpc_health_port, s.metrics_port) == (9002, 9003, 9090)
    assert s.config_file is None and s.config_text is None and s.watch_config_file is True
    assert s.pool_name == "pool" and s.pool_namespace == "default"
    assert s.pool_group == "inference.networking.k8s.io"
    assert s.ha_enable_leader_election is False and s.secure_serving is True and s.cert_path is None
    assert (s.refresh_metrics_interval, s.refresh_prometheus_metrics_interval) == (0.05, 5.0)
    assert s.metrics_staleness_threshold == 2.0
    assert s.disable_endpoint_subset_filter is False
    assert s.v == s.verbosity == 2
    assert s.log_format is LogFormat.CONSOLE and s.model_server_type is ModelServerType.VLLM
    assert s.max_request_body_bytes == 67108864 and s.enable_decision_header is False
    assert (s.ha_lease_duration, s.ha_renew_deadline, s.ha_retry_period) == (15.0, 10.0, 2.0)
    assert s.config_reload_debounce == 0.2
    assert s.metrics_bearer_token_file is None and s.kubeconfig is None
    assert s.static_endpoints == () and s.static_objectives == {} and s.endpoint_target_ports == ()
    assert s.deprecated_metric_overrides == {}


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("50ms", 0.05), ("2s", 2.0), ("1m", 60.0), ("1h30m", 5400.0), ("1.5s", 1.5), ("100us", 1e-4)],
)
def test_go_durations(value: str, seconds: float) -> None:
    assert parse(*POOL, f"--refresh-metrics-interval={value}").refresh_metrics_interval == pytest.approx(
        seconds
    )
    assert parse(*POOL, "--metrics-staleness-threshold", value).metrics_staleness_threshold == pytest.approx(
        seconds
    )


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--secure-serving"], True),
        (["--secure-serving=false"], False),
        (["--secure-serving=true"], True),
        (["--secure-serving", "false"], False),
        (["--secure-serving", "False"], False),
        (["--secure-serving=0"], False),
        (["--secure-serving=T"], True),
        (["--secure-serving=false", "--secure-serving"], True),
    ],
)
def test_booleans(argv: list[str], expected: bool) -> None:
    assert parse(*POOL, *argv).secure_serving is expected


def test_boolean_followed_by_a_flag_is_true() -> None:
    s = parse("--ha-enable-leader-election", "--pool-name", "p")
    assert s.ha_enable_leader_election is True and s.pool_name == "p"


@pytest.mark.parametrize("argv", [["-v", "5"], ["-v=5"], ["--v=5"], ["--v", "5"], ["-v5"]])
def test_verbosity_spellings(argv: list[str]) -> None:
    assert parse(*POOL, *argv).v == 5


def test_port_zero_means_any_free_port() -> None:
    s = parse(*POOL, "--grpc-port=0", "--grpc-health-port=0", "--metrics-port=0")
    assert (s.grpc_port, s.grpc_health_port, s.metrics_port) == (0, 0, 0)


def test_values_may_start_with_a_dash() -> None:
    assert parse("--static-endpoints", "a:1", "--static-objectives", "-x=1").static_objectives == {"-x": 1}


def test_values_with_equals_or_space() -> None:
    s = parse("--pool-name=a", "--grpc-port", "7000", "--metrics-port=7001", "--config-text", "kind: x=y")
    assert (s.pool_name, s.grpc_port, s.metrics_port, s.config_text) == ("a", 7000, 7001, "kind: x=y")


def test_environment_and_flags_flags_win() -> None:
    env = {
        "EPP_GRPC_PORT": "7100",
        "EPP_METRICS_PORT": "7200",
        "EPP_SECURE_SERVING": "false",
        "EPP_REFRESH_METRICS_INTERVAL": "200ms",
        "EPP_POOL_NAME": "from-env",
        "EPP_V": "4",
    }
    s = parse("--grpc-port", "7300", env=env)
    assert s.grpc_port == 7300  # flag
    assert s.metrics_port == 7200  # environment
    assert s.secure_serving is False and s.refresh_metrics_interval == 0.2
    assert s.pool_name == "from-env" and s.v == 4


def test_environment_lists() -> None:
    s = parse(
        env={"EPP_STATIC_ENDPOINTS": "127.0.0.1:8000,127.0.0.1:8001", "EPP_STATIC_OBJECTIVES": "a=1,b=-2"}
    )
    assert s.static_endpoints == ("127.0.0.1:8000", "127.0.0.1:8001")
    assert s.static_objectives == {"a": 1, "b": -2}


def test_pool_namespace_from_namespace_env_unless_given() -> None:
    assert parse(*POOL, env={"NAMESPACE": "team-a"}).pool_namespace == "team-a"
    assert parse(*POOL, "--pool-namespace", "x", env={"NAMESPACE": "team-a"}).pool_namespace == "x"
    assert parse(*POOL, env={"EPP_POOL_NAMESPACE": "y", "NAMESPACE": "team-a"}).pool_namespace == "y"


def test_endpoint_sources() -> None:
    s = parse("--static-endpoints", "127.0.0.1:8000,[fd00::1]:8001,10.1.2.3:8000")
    assert s.static_endpoints == ("127.0.0.1:8000", "[fd00::1]:8001", "10.1.2.3:8000")
    s = parse("--endpoint-selector", "app=vllm,tier=gpu", "--endpoint-target-ports", "3000,3001")
    assert s.endpoint_target_ports == (3000, 3001)
    s = parse("--endpoint-selector=app=vllm", "--endpoint-target-ports=3000", "--endpoint-target-ports=3001")
    assert s.endpoint_target_ports == (3000, 3001)


def test_static_objectives() -> None:
    s = parse("--static-endpoints", "127.0.0.1:1", "--static-objectives", "chat=10,batch=-1")
    assert s.static_objectives == {"chat": 10, "batch": -1}


def test_upstream_chart_arguments_are_accepted() -> None:
    s = parse(
        "--pool-name",
        "vllm-llama3",
        "--pool-namespace",
        "default",
        "--pool-group",
        "inference.networking.k8s.io",
        "--zap-encoder",
        "json",
        "--config-file",
        "/config/default-plugins.yaml",
        "--ha-enable-leader-election",
        "--tracing=false",
        "--metrics-endpoint-auth=false",
        "--zap-devel",
        "--zap-log-level=debug",
        "--enable-pprof=true",
        "--health-checking",
        "--enable-cert-reload=false",
        "--model-server-metrics-port=8000",
        "--model-server-metrics-path",
        "/metrics",
        "--model-server-metrics-scheme=http",
        "--model-server-metrics-https-insecure-skip-verify",
    )
    assert s.pool_name == "vllm-llama3" and s.config_file == "/config/default-plugins.yaml"
    assert s.log_format is LogFormat.JSON  # from --zap-encoder
    assert s.ha_enable_leader_election is True
    assert s.enable_cert_reload is False  # acted on, not ignored
    assert parse(*POOL).enable_cert_reload is True


def test_log_format_flag_wins_over_zap_encoder() -> None:
    assert parse(*POOL, "--zap-encoder=json", "--log-format=console").log_format is LogFormat.CONSOLE


def test_deprecated_metric_flags_are_kept_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="epp.settings"):
        s = parse(
            *POOL,
            "--total-queued-requests-metric=sglang:num_queue_reqs",
            "--kv-cache-usage-percentage-metric",
            "x",
        )
    assert s.total_queued_requests_metric == "sglang:num_queue_reqs"
    assert s.deprecated_metric_overrides == {
        "queued_requests": "sglang:num_queue_reqs",
        "kv_cache_usage": "x",
    }
    assert "--total-queued-requests-metric is deprecated" in caplog.text


def test_unknown_environment_variable_is_warned(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="epp.settings"):
        parse(*POOL, env={"EPP_GRPC_PRT": "1"})
    assert "EPP_GRPC_PRT is not a setting" in caplog.text


@pytest.mark.parametrize(
    ("argv", "env", "fragment"),
    [
        ([], {}, "exactly one endpoint source is required"),
        (["--pool-name", "p", "--static-endpoints", "a:1"], {}, "got --static-endpoints and --pool-name"),
        (["--pool-name", "p", "--endpoint-selector", "a=b"], {}, "got --pool-name and --endpoint-selector"),
        ([*POOL, "--config-file", "a", "--config-text", "b"], {}, "mutually exclusive"),
        ([*POOL, "--pool-group", "inference.networking.x-k8s.io"], {}, "v1alpha2 InferencePool"),
        ([*POOL, "--refresh-metrics-interval", "5"], {}, "--refresh-metrics-interval: invalid duration '5'"),
        ([*POOL, "--refresh-metrics-interval=0s"], {}, "--refresh-metrics-interval: must be greater than 0"),
        ([*POOL, "--grpc-prot", "1"], {}, "unknown flag --grpc-prot; did you mean --grpc-port?"),
        ([*POOL, "-pool-name", "x"], {}, "long flags take two dashes (--pool-name)"),
        ([*POOL, "serve-now"], {}, "unexpected argument 'serve-now'"),
        (["--pool-name"], {}, "flag --pool-name needs a value"),
        (["--pool-name", "--grpc-port=1"], {}, "flag --pool-name needs a value"),
        (["--pool-name", "--help"], {}, "flag --pool-name needs a value"),
        ([*POOL, "--secure-serving=maybe"], {}, "flag --secure-serving: expected true or false, got 'maybe'"),
        ([*POOL, "--grpc-port", "70000"], {}, "--grpc-port: must be less than or equal to 65535"),
        ([*POOL, "--grpc-port", "9090"], {}, "--metrics-port and --grpc-port are both 9090"),
        ([*POOL], {"EPP_GRPC_PORT": "abc"}, "EPP_GRPC_PORT: must be a valid integer"),
        (["--static-endpoints", "fd00::1:80"], {}, "an IPv6 address needs brackets: [fd00::1]:80"),
        (["--static-endpoints", "localhost"], {}, "expected host:port, got 'localhost'"),
        (["--endpoint-selector", "app=x"], {}, "--endpoint-selector needs --endpoint-target-ports"),
        (
            [*POOL, "--endpoint-target-ports", "80"],
            {},
            "--endpoint-target-ports only applies with --endpoint-selector",
        ),
        (["--endpoint-selector", "app", "--endpoint-target-ports", "80"], {}, "expected key=value pairs"),
        (
            ["--endpoint-selector", "a=b", "--endpoint-target-ports", "1,2,3,4,5,6,7,8,9"],
            {},
            "at most 8 target ports",
        ),
        (
            [*POOL, "--ha-renew-deadline", "20s"],
            {},
            "--ha-lease-duration > --ha-renew-deadline > --ha-retry-period",
        ),
        ([*POOL, "--log-format", "xml"], {}, "--log-format: must be 'console' or 'json'"),
        ([*POOL, "--model-server-type", "tgi"], {}, "--model-server-type: must be"),
        (
            [*POOL, "--static-objectives", "a=1"],
            {},
            "--static-objectives only applies with --static-endpoints",
        ),
        (["--static-endpoints", "a:1", "--static-objectives", "a"], {}, "expected name=priority, got 'a'"),
        ([*POOL, "-v", "x"], {}, "-v: must be a valid integer"),
    ],
)
def test_bad_settings_are_settings_errors(argv: list[str], env: dict[str, str], fragment: str) -> None:
    with pytest.raises(SettingsError) as info:
        parse(*argv, env=env)
    assert fragment in str(info.value)


def test_help_lists_every_flag_with_its_default() -> None:
    with pytest.raises(HelpRequested) as info:
        parse("--help")
    text = info.value.text
    assert text == flag_help()
    for field in EppSettings.model_fields:
        flag = "--v" if field == "v" else f"--{field.replace('_', '-')}"
        line = next((ln for ln in text.splitlines() if ln.lstrip().startswith((flag + " ", "-v, --v"))), None)
        if line is None or "(default" not in line:  # long names put the description on the next line
            lines = text.splitlines()
            i = next(i for i, ln in enumerate(lines) if ln.strip().startswith(flag))
            line = lines[i] + lines[i + 1]
        assert "(default " in line, flag
    for expected in ("--grpc-port int", "(default 9002)", "(default 50ms)", "(default true)", "(default 2)"):
        assert expected in text
    assert "--zap-encoder" in text and "EPP_GRPC_PORT" in text
