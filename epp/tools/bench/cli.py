"""`epp bench SUBCOMMAND ...`: the benchmarks, one dispatcher.

| subcommand | what |
|---|---|
| `quality` | scheduling quality: our profiles vs Envoy and the rivals on four workloads (`quality.py`) |
| `overhead` | what the EPP costs: decisions/s, CPU per request and per streamed token, TTFT (`overhead.py`) |
| `crosscheck` | one quality comparison with `inference-perf` as the client (`crosscheck.py`) |
| `reliability` | soak, reloads under load, faults, fuzzing, slow clients: one table (`reliability/`) |
| `install` | install the rival routers / inference-perf into `.cache/bench/venvs/` |
| `schedule`, `scrape`, `extproc`, `overload`, `predictor` | micro-benchmarks (`python -m epp.tools.bench.X`)|

The rivals and inference-perf are installed only by `install`, or by `quality`, `overhead` and
`crosscheck` when given `--install-rivals`; without, a missing one stops the command before it starts
anything ("sglang-router is not installed: run 'epp bench install' or pass --install-rivals", status 2).

Exit status: 0 done (and, for `quality`/`overhead`, every request succeeded); 1 something failed; 2 bad
usage, a rival not installed, or the `bench` extra missing (one line says so: `pip install 'epp[bench]'`);
130 interrupted (Ctrl-C); 143 terminated. Every process a benchmark starts is stopped on exit.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from epp.tools.extras import reports_missing_extras

__all__ = ["main"]

_PASS_THROUGH = {
    "schedule": "epp.tools.bench.schedule",
    "scrape": "epp.tools.bench.scrape",
    "extproc": "epp.tools.bench.extproc",
    "overload": "epp.tools.bench.overload",
    "predictor": "epp.tools.bench.predictor",
}
_OWN = {
    "quality": ("epp.tools.bench.quality_cli", "main"),
    "overhead": ("epp.tools.bench.overhead", "main"),
    "crosscheck": ("epp.tools.bench.crosscheck", "main"),
    "reliability": ("epp.tools.bench.reliability.cli", "main"),
    "install": ("epp.tools.bench.cli", "install_main"),
}

_USAGE = """usage: epp bench {quality,overhead,crosscheck,reliability,install,schedule,scrape,extproc,
                 overload,predictor} [options]

  quality      scheduling quality vs plain Envoy, sglang-router and vllm-router (4 workloads)
  overhead     EPP decisions/s on one core; CPU per request and per streamed token, TTFT added (vs
               Envoy, upstream's full-duplex config, sglang-router, direct)
  crosscheck   the same comparison driven by inference-perf (a client we did not write)
  reliability  soak, config reloads under load, model server / EPP / leader killed, fuzzing, slow
               clients: figures against their limits (docs/reliability.md)
  install      install the rival routers and inference-perf into .cache/bench/venvs/ (quality, overhead
               and crosscheck never install them unless given --install-rivals)
  schedule | scrape | extproc | overload | predictor
               the micro-benchmarks (python -m epp.tools.bench.NAME)

Run 'epp bench SUBCOMMAND --help' for its options.
"""


@reports_missing_extras
def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_USAGE, end="")
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command in _PASS_THROUGH:
        module = importlib.import_module(_PASS_THROUGH[command])
        return int(module.main(rest) or 0)
    if command in _OWN:
        module_name, func_name = _OWN[command]
        func: Callable[[list[str]], int] = getattr(importlib.import_module(module_name), func_name)
        return int(func(rest) or 0)
    print(f"epp bench: unknown subcommand {command!r}\n\n{_USAGE}", end="", file=sys.stderr)
    return 2


def install_main(argv: Sequence[str]) -> int:
    from epp.tools.bench.rivals import TOOLS, InstallError, ensure_tool

    p = argparse.ArgumentParser(
        prog="epp bench install",
        description="Install the benchmarks' third-party tools into .cache/bench/venvs/ (pinned versions).",
    )
    p.add_argument("tools", nargs="*", help=f"any of {', '.join(TOOLS)} (default: all)")
    p.add_argument("--json", action="store_true", help="print {tool: executable} as JSON")
    args = p.parse_args(list(argv))
    unknown = [t for t in args.tools if t not in TOOLS]
    if unknown:
        p.error(f"unknown tool(s) {', '.join(unknown)}; known: {', '.join(TOOLS)}")
    found: dict[str, str] = {}
    for name in args.tools or list(TOOLS):
        try:
            found[name] = str(ensure_tool(name, install=True, say=_say_err))
        except InstallError as exc:
            print(f"epp bench install: {exc}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(found, indent=2))
    else:
        for name, exe in found.items():
            print(f"{name}: {exe}")
    return 0


def _say_err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def out_dir_default(kind: str) -> Path:
    """`bench-results/<kind>-<timestamp>` in the current directory."""
    import time

    return Path("bench-results") / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
