"""Rival routers and inference-perf are installed only when asked (`install=True`, `epp bench install`,
`--install-rivals`); otherwise a missing one is an error before anything starts, and pip never runs."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from epp.tools.bench import rivals
from epp.tools.bench.rivals import TOOLS, InstallError, NotInstalled, ensure_tool, installed_tool
from epp.tools.bench.routers import parse_router, rival_tools, start_router

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty tool cache (`EPP_BENCH_CACHE`), and no subprocess may run (no pip, no venv, no probe)."""
    root = tmp_path / "cache"
    monkeypatch.setenv("EPP_BENCH_CACHE", str(root))

    def no_subprocess(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a subprocess was started: {args}")

    monkeypatch.setattr(rivals.subprocess, "run", no_subprocess)
    return root


def _fake_install(root: Path, name: str, requirement: str | None = None) -> Path:
    tool = TOOLS[name]
    venv = root / "venvs" / name
    exe = venv / "bin" / tool.executable
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    (venv / ".epp-bench-installed").write_text((requirement or tool.requirement) + "\n")
    return exe


@pytest.mark.parametrize("name", list(TOOLS))
def test_a_missing_tool_is_an_error_and_nothing_is_installed(cache, name) -> None:
    with pytest.raises(NotInstalled) as info:
        ensure_tool(name)
    assert str(info.value) == f"{name} is not installed: run 'epp bench install' or pass --install-rivals"
    assert isinstance(info.value, InstallError) and not info.value.offline
    assert not cache.exists()  # no virtualenv, not even a lock file


def test_an_installed_tool_is_returned_without_installing(cache) -> None:
    exe = _fake_install(cache, "sglang-router")
    assert ensure_tool("sglang-router") == exe
    assert rivals.ensure_tools(["sglang-router", "sglang-router"]) == {"sglang-router": exe}


def test_another_version_counts_as_not_installed(cache) -> None:
    _fake_install(cache, "vllm-router", "vllm-router==0.0.1")
    assert installed_tool("vllm-router") is None
    with pytest.raises(NotInstalled):
        ensure_tool("vllm-router")


def test_install_true_runs_pip_into_the_tools_venv(tmp_path, monkeypatch) -> None:
    root = tmp_path / "cache"
    monkeypatch.setenv("EPP_BENCH_CACHE", str(root))
    venv = root / "venvs" / "sglang-router"
    commands: list[list[str]] = []

    def run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        commands.append(cmd)
        if cmd[-1] == "sglang-router==0.3.2":  # what pip would leave behind
            (venv / "bin").mkdir(parents=True, exist_ok=True)
            (venv / "bin" / "smg").write_text("#!/bin/sh\n")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(rivals, "_run", run)
    said: list[str] = []
    assert ensure_tool("sglang-router", install=True, say=said.append) == venv / "bin" / "smg"
    assert commands == [
        [sys.executable, "-m", "venv", str(venv)],
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "sglang-router==0.3.2"],
    ]
    assert said and "installing sglang-router==0.3.2" in said[0]
    assert installed_tool("sglang-router") == venv / "bin" / "smg"
    assert ensure_tool("sglang-router") == venv / "bin" / "smg"  # installed now: no flag needed


def test_starting_a_rival_that_is_not_installed_starts_nothing(cache, tmp_path) -> None:
    assert rival_tools([parse_router(r) for r in ("epp:default", "vllm", "sglang", "sglang-router")]) == [
        "vllm-router",
        "sglang-router",
    ]
    with pytest.raises(NotInstalled, match=r"^sglang-router is not installed"):
        asyncio.run(start_router(parse_router("sglang"), ["127.0.0.1:1"], tmp_path / "run"))


def _bench(args: list[str], cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "epp", "bench", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "EPP_BENCH_CACHE": str(cache)},
        timeout=60,
    )


@pytest.mark.parametrize(
    ("args", "tool"),
    [
        (["quality", "--smoke", "--workloads", "zipf", "--routers", "envoy-rr,sglang"], "sglang-router"),
        # a saturation search runs the search routers: vllm-router is needed too
        (["quality", "--workloads", "zipf", "--routers", "envoy-rr", "--search-with", "vllm"], "vllm-router"),
        (["overhead", "--smoke", "--part", "2", "--routers", "envoy-rr,sglang"], "sglang-router"),
        (["crosscheck", "--routers", "envoy-rr"], "inference-perf"),
    ],
)
def test_benchmarks_stop_before_starting_anything_when_a_tool_is_missing(tmp_path, args, tool) -> None:
    cache = tmp_path / "cache"
    res = _bench(args, cache)
    assert res.returncode == 2, res.stdout + res.stderr
    prog = f"epp bench {args[0]}"
    line = f"{prog}: {tool} is not installed: run 'epp bench install' or pass --install-rivals"
    assert res.stderr.splitlines() == [line]
    assert res.stdout == ""
    assert not cache.exists()


def test_install_rivals_flag_reaches_the_options() -> None:
    from epp.tools.bench import crosscheck, overhead, quality_cli

    for parser, make in (
        (quality_cli.build_parser(), quality_cli.options_from_args),
        (overhead.build_parser(), overhead.options_from_args),
    ):
        assert make(parser.parse_args(["--install-rivals"])).install_rivals
        assert not make(parser.parse_args([])).install_rivals
    assert crosscheck.build_parser().parse_args(["--install-rivals"]).install_rivals
    assert not crosscheck.CrossOptions().install_rivals
