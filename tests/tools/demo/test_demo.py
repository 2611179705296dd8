"""`epp demo` end to end (real simulators, Envoy and EPP), its table, and its clean stops."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from epp.tools.demo.cli import build_parser, options_from_args
from epp.tools.demo.orchestrate import resolve_profile

ROOT = Path(__file__).resolve().parents[3]


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _epp(*args: str) -> list[str]:
    return [sys.executable, "-m", "epp", "demo", *args]


def _children(pid: int) -> list[int]:
    """PIDs whose parent is `pid` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[-1].split()[1]) == pid:
                out.append(int(entry))
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def _run_stopping_on_timeout(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """`subprocess.run`, except that a timeout sends SIGTERM (the demo then stops its simulators, EPP
    and Envoy) before SIGKILL, so that a hung run does not leave them loading the rest of the suite."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, preexec_fn=_sigint_default
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"the demo did not finish within {timeout:g}s:\n{out}\n{err}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _table(stdout: str) -> dict[str, list[str]]:
    """The printed table as {row label: cells} (cells split on runs of 2+ spaces)."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if set(line) == {"-"}) - 1
    header = lines[start].split()
    rows: dict[str, list[str]] = {"": header}
    for line in lines[start + 2 :]:
        if not line.strip() or " vs " in line or line.startswith("done in"):
            break
        parts = re.split(r"\s{2,}", line.strip())
        rows[parts[0]] = parts[1:]
    return rows


@pytest.mark.envoy
def test_demo_runs_end_to_end_and_the_default_profile_beats_random(tmp_path) -> None:
    out_json = tmp_path / "demo.json"
    started = time.monotonic()
    res = _run_stopping_on_timeout(
        _epp("--groups", "4", "--prompts-per-group", "8", "--compare", "random", "--json", str(out_json)),
        timeout=90,
    )
    took = time.monotonic() - started
    assert res.returncode == 0, res.stdout + res.stderr
    assert took < 60
    assert "\r" not in res.stderr  # no progress bar when not on a terminal
    table = _table(res.stdout)
    assert table[""] == ["default", "random"]
    endpoints = [k for k in table if k.startswith("sim-")]
    assert endpoints == ["sim-0", "sim-1", "sim-2", "sim-3 (LoRA)"]
    for column in (0, 1):
        assert sum(int(table[e][column]) for e in endpoints) == 32
    default_hit, random_hit = (float(c.rstrip(" %")) for c in table["prefix-cache hit ratio"])
    assert default_hit > random_hit
    assert table["errors"] == ["0", "0"]
    assert all(c.endswith(" ms") for c in table["TTFT p50"] + table["TTFT p90"])
    assert "LoRA adapters: sql-lora, chat-lora" in res.stdout
    assert "everything stopped" in res.stdout

    data = json.loads(out_json.read_text())
    runs = {r["profile"]: r for r in data["runs"]}
    assert runs["default"]["prefix_cache_hit_ratio"] == pytest.approx(default_hit / 100, abs=0.0006)
    assert runs["random"]["prefix_cache_hit_ratio"] == pytest.approx(random_hit / 100, abs=0.0006)
    for run in runs.values():
        assert run["ok"] == 32 and run["errors"] == 0 and run["unfinished"] == 0
        # the client saw the same servers as the servers' own counters
        assert run["served_by_header"] == {k: v for k, v in run["requests_per_endpoint"].items() if v}


@pytest.mark.envoy
@pytest.mark.parametrize(
    ("sig", "code", "word"), [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]
)
def test_ctrl_c_or_sigterm_stops_everything_it_started(sig, code, word) -> None:
    proc = subprocess.Popen(
        _epp("--rate", "8"),  # long enough to be interrupted mid-run
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        # a shell running the suite in the background starts it with SIGINT ignored; Ctrl-C must be live
        preexec_fn=_sigint_default,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "sending" in line:
                break
        else:
            pytest.fail(f"the demo never started sending: {proc.stderr.read() if proc.stderr else ''}")
        children = _children(proc.pid)
        assert len(children) == 6  # four simulators, the EPP and Envoy
        proc.send_signal(sig)  # to the demo only: it must stop its children itself
        rc = proc.wait(timeout=20)
        _, err = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == code, err
    assert word in err
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.05)  # reparented children are reaped by init asynchronously
    assert not [p for p in children if _alive(p)]


def test_bad_profile_is_a_usage_error() -> None:
    res = subprocess.run(
        _epp("--compare", "no-such-profile"), capture_output=True, text=True, timeout=30, cwd=ROOT
    )
    assert res.returncode == 2
    assert "no profile 'no-such-profile'" in res.stderr and "random" in res.stderr
    assert res.stdout == ""


def test_profiles_resolve_by_name_or_path(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    assert resolve_profile("default") == Path("profiles/default.yaml")
    monkeypatch.chdir(tmp_path)  # not the repository: falls back to the source tree's profiles/
    assert resolve_profile("random") == ROOT / "profiles" / "random.yaml"
    own = tmp_path / "mine.yaml"
    own.write_text("kind: EndpointPickerConfig\n")
    assert resolve_profile(str(own)) == own
    with pytest.raises(ValueError, match="no such profile file"):
        resolve_profile(str(tmp_path / "missing" / "x.yaml"))


def test_compare_none_runs_one_profile() -> None:
    options = options_from_args(build_parser().parse_args(["--compare", "none", "--profile", "lora"]))
    assert options.profiles == ("lora",)
    assert options_from_args(build_parser().parse_args([])).profiles == ("default", "random")
