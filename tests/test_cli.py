"""The `epp` command line, run as users run it (a subprocess of the installed console script)."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

import epp.plugins
from epp import cli

ROOT = Path(__file__).resolve().parents[1]
EPP = ROOT / ".venv" / "bin" / "epp"
COMMAND = [str(EPP)] if EPP.exists() else [sys.executable, "-m", "epp"]
PROFILES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "profiles").glob("*.yaml"))
INVALID = ROOT / "tests" / "config" / "invalid"

needs_catalogue = pytest.mark.skipif(
    not hasattr(epp.plugins, "register_builtins"), reason="the built-in plugin catalogue is not there yet"
)


def run(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("EPP_")}
    full_env.update(env or {})
    return subprocess.run(
        [*COMMAND, *args], cwd=ROOT, capture_output=True, text=True, input=stdin, env=full_env, timeout=60
    )


@needs_catalogue
def test_validate_profiles_exits_0_with_one_line_each() -> None:
    proc = run("validate", *PROFILES)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines == [line for line in lines if " ok — " in line] and len(lines) == len(PROFILES)
    assert "profiles/default.yaml: ok — 3 plugins, profiles: default" in lines
    assert proc.stderr == ""


@needs_catalogue
def test_validate_invalid_file_exits_1_with_file_line_path_message() -> None:
    bad = str((INVALID / "many-problems.yaml").relative_to(ROOT))
    proc = run("validate", PROFILES[0], bad)
    assert proc.returncode == 1
    out = proc.stdout.splitlines()
    assert out[0].startswith(f"{PROFILES[0]}: ok")
    assert out[1:] == [
        f"{bad}:10: featureGates[0]: unknown feature gate 'nope' "
        "(known: dataLayer, enableLegacyMetrics, flowControl, prepareDataPlugins)",
        f"{bad}:13: plugins[0].parameters.x: plugin 'queue-scorer' (type: queue-scorer): parameters.x: "
        "unknown parameter (this takes no parameters)",
        *out[3:],
    ]
    assert len(out) == 7
    assert out[3].startswith(f"{bad}:14: plugins[1].type: unknown plugin type 'nonexistent' (known: ")
    assert out[6] == f"{bad}:21: parser.pluginRef: plugin 'queue-scorer' (type: queue-scorer) is not a parser"


@needs_catalogue
def test_validate_warnings_go_to_stderr_and_effective_config_to_stdout() -> None:
    old = str((ROOT / "tests" / "config" / "valid" / "v13-data-key.yaml").relative_to(ROOT))
    proc = run("validate", "--effective", old)
    assert proc.returncode == 0
    assert proc.stderr.strip() == (
        f"{old}:9: data: warning: 'data' is the deprecated v1.3/v1.4 name of 'dataLayer'; rename it"
    )
    assert proc.stdout.startswith(f"{old}: ok — 4 plugins, profiles: default\napiVersion: ")
    assert "  - pluginRef: max-score-picker\n" in proc.stdout


@needs_catalogue
def test_validate_reads_stdin() -> None:
    proc = run("validate", "-", stdin="apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: Nope\n")
    assert proc.returncode == 1
    assert proc.stdout == "<stdin>:2: kind: must be 'EndpointPickerConfig', got a string 'Nope'\n"


def test_validate_without_files_is_a_usage_error() -> None:
    proc = run("validate")
    assert proc.returncode == 2 and "usage: epp validate" in proc.stderr


def test_validate_missing_file() -> None:
    proc = run("validate", "no/such.yaml")
    assert proc.returncode == 1
    assert proc.stdout.startswith("no/such.yaml:1: <root>: cannot read the config file: No such file")


@needs_catalogue
def test_schema_prints_the_committed_schema() -> None:
    proc = run("schema")
    assert proc.returncode == 0
    assert proc.stdout == (ROOT / "schemas" / "endpointpickerconfig.schema.json").read_text()
    assert run("schema", "extra").returncode == 2


@pytest.mark.parametrize("args", [["--help"], ["serve", "--help"], ["-h"]])
def test_help_lists_the_flags(args: list[str]) -> None:
    proc = run(*args)
    assert proc.returncode == 0
    for flag in (
        "--grpc-port int",
        "--config-file",
        "--static-endpoints",
        "--pool-name",
        "-v, --v",
        "(default 9002)",
    ):
        assert flag in proc.stdout


def test_daemon_without_an_endpoint_source_exits_2() -> None:
    proc = run()
    assert proc.returncode == 2
    assert proc.stderr.startswith("epp: exactly one endpoint source is required")
    assert run("serve", "--pool-name", "p", "--config-file", "a", "--config-text", "b").returncode == 2


def test_daemon_with_a_bad_config_exits_2_naming_file_line_and_path(tmp_path: Path) -> None:
    config = tmp_path / "epp.yaml"
    config.write_text(
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\nplugins: 3\n"
    )
    proc = run("--static-endpoints", "127.0.0.1:9", "--config-file", str(config))
    assert proc.returncode == 2
    assert f"{config}:3: plugins: expected a list, got an integer (3)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_env_flags_reach_the_daemon_settings() -> None:
    proc = run(env={"EPP_STATIC_ENDPOINTS": "127.0.0.1:9", "EPP_GRPC_PORT": "nope"})
    assert proc.returncode == 2 and "EPP_GRPC_PORT: must be a valid integer" in proc.stderr


def test_version() -> None:
    proc = run("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("epp ")


# ---- lazy subcommands, in process -----------------------------------------------------------------


def test_lazy_tool_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    module = types.ModuleType("epp_test_fake_tool")
    module.main = lambda argv: seen.append(argv) or 3  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "epp_test_fake_tool", module)
    monkeypatch.setitem(cli._LAZY_TOOLS, "sim", ("epp_test_fake_tool", "main"))
    assert cli.main(["sim", "--port", "1"]) == 3
    assert seen == [["--port", "1"]]


def test_missing_lazy_tool_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(cli._LAZY_TOOLS, "demo", ("epp.no_such_module_here", "main"))
    assert cli.main(["demo"]) == 1
    assert capsys.readouterr().err == (
        "epp: 'demo' is not available in this build (module epp.no_such_module_here is missing)\n"
    )
