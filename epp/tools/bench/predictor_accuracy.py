"""Accuracy of the latency predictor on a simulated fleet: `python -m epp.tools.bench.predictor_accuracy`.

Starts `--servers` simulators (in-process), the daemon with `profiles/slo-aware.yaml` and Envoy in front,
and sends `--requests` streamed completions at `--rate` req/s (Poisson): 8 prefix groups with system
prompts of 200 to 3,000 tokens, questions of 20 to 200 tokens, 8 to 64 output tokens. For every
completed request the producer had predicted, it keeps predicted and observed TTFT / TPOT and reports
the median and p90 absolute percentage error (MdAPE), for all of them and for the second half (the model
trained on more samples).

It also keeps every training sample in arrival order and compares models offline (train on the first
60 %, test on the rest): the constant per-endpoint mean, our ridge per group and pooled, ridge without
its interaction terms, and (when installed; not a dependency) LightGBM and scikit-learn's histogram gradient
boosting, with the cost of one prediction for 64 rows.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from epp.plugins.latency.model import fit_ridge, relative_weights
from epp.tools.loadgen.text import synthetic_text

__all__ = ["AccuracyResult", "main", "run"]

PROFILE = Path(__file__).resolve().parents[3] / "profiles" / "slo-aware.yaml"


@dataclass
class AccuracyResult:
    requests: int
    predicted: int
    ttft_mdape: float
    ttft_p90_ape: float
    ttft_mdape_second_half: float
    tpot_mdape: float
    tpot_mdape_second_half: float
    models: dict[str, dict[str, float]] = field(default_factory=dict)

    def as_text(self) -> str:
        lines = [
            f"predictor accuracy: {self.requests} requests, {self.predicted} with a prediction",
            f"TTFT MdAPE {self.ttft_mdape:.1%} (p90 APE {self.ttft_p90_ape:.1%}); second half "
            f"{self.ttft_mdape_second_half:.1%}",
            f"TPOT MdAPE {self.tpot_mdape:.1%}; second half {self.tpot_mdape_second_half:.1%}",
            "offline, train on the first 60 % of samples, test on the rest:",
            f"  {'model':34} {'TTFT MdAPE':>11} {'TPOT MdAPE':>11} {'predict 64':>11}",
        ]
        for name, m in self.models.items():
            lines.append(
                f"  {name:34} {m['ttft_mdape']:10.1%} {m['tpot_mdape']:10.1%} {m['predict_us_64']:9.1f}us"
            )
        return "\n".join(lines)


def _ape(pairs: Sequence[tuple[float, float]]) -> list[float]:
    return sorted(abs(p - o) / o for p, o in pairs if o > 0.0)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _p90(values: list[float]) -> float:
    return values[min(len(values) - 1, int(len(values) * 0.9))] if values else float("nan")


async def _drive(url: str, requests: int, rate: float, seed: int) -> None:
    rng = random.Random(seed)
    systems = [synthetic_text(rng, rng.choice((200, 800, 1500, 3000))) for _ in range(8)]
    sem = asyncio.Semaphore(256)

    async def one(http: aiohttp.ClientSession, i: int) -> None:
        body = {
            "model": "sim",
            "prompt": systems[rng.randrange(len(systems))] + synthetic_text(rng, rng.randint(20, 200)),
            "max_tokens": rng.randint(8, 64),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        async with sem, http.post(f"{url}/v1/completions", json=body) as resp:
            await resp.read()

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        tasks = []
        for i in range(requests):
            tasks.append(asyncio.create_task(one(http, i)))
            await asyncio.sleep(rng.expovariate(rate))
        await asyncio.gather(*tasks, return_exceptions=True)


Predictor = Callable[[np.ndarray, list[str], str], np.ndarray]
Fit = Callable[[np.ndarray, np.ndarray], Any]
Apply = Callable[[Any, np.ndarray], np.ndarray]


def _ridge_fit(x: np.ndarray, yv: np.ndarray) -> np.ndarray:
    return np.array(fit_ridge(x, yv))


def _ridge_fit_relative(x: np.ndarray, yv: np.ndarray) -> np.ndarray:
    return np.array(fit_ridge(x, yv, weights=relative_weights(yv)))


def _ridge_apply(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    out: np.ndarray = x @ w
    return out


def _linear_only(x: np.ndarray) -> np.ndarray:
    """The features without the interaction terms."""
    return x[:, :9]


class _Offline:
    """Samples in arrival order, split 60 % train / 40 % test."""

    def __init__(self, samples: list[tuple[str, tuple[float, ...], float, float]]) -> None:
        cut = int(len(samples) * 0.6)
        train, test = samples[:cut], samples[cut:]
        self.enough = len(train) >= 50 and len(test) >= 20
        self.x_train = np.array([s[1] for s in train])
        self.x_test = np.array([s[1] for s in test])
        self.groups_train = [s[0] for s in train]
        self.groups_test = [s[0] for s in test]
        self.y = {
            "ttft": (np.array([s[2] for s in train]), np.array([s[2] for s in test])),
            "tpot": (np.array([s[3] for s in train]), np.array([s[3] for s in test])),
        }
        self.results: dict[str, dict[str, float]] = {}

    def score(self, predict: Predictor, target: str) -> float:
        observed = self.y[target][1]
        mask = observed > 0.0
        groups = [g for g, m in zip(self.groups_test, mask, strict=True) if m]
        predicted = predict(self.x_test[mask], groups, target)
        return float(np.median(np.abs(predicted - observed[mask]) / observed[mask]))

    def per_group(self, fit: Fit, apply: Apply) -> Predictor:
        """A model per group with 32 samples or more, the pooled one for the others."""
        models: dict[str, dict[str, Any]] = {}
        pooled: dict[str, Any] = {}
        for target, (yt, _) in self.y.items():
            mask = yt > 0.0
            pooled[target] = fit(self.x_train[mask], yt[mask])
            for g in set(self.groups_train):
                sel = np.array([gg == g for gg in self.groups_train]) & mask
                if sel.sum() >= 32:
                    models.setdefault(target, {})[g] = fit(self.x_train[sel], yt[sel])

        def predict(x: np.ndarray, groups: list[str], target: str) -> np.ndarray:
            out = np.empty(len(x))
            for i, g in enumerate(groups):
                out[i] = apply(models.get(target, {}).get(g, pooled[target]), x[i : i + 1])[0]
            return np.maximum(out, 0.0)

        return predict

    def pooled(
        self, fit: Fit, apply: Apply, features: Callable[[np.ndarray], np.ndarray] = lambda x: x
    ) -> Predictor:
        models = {}
        for target, (yt, _) in self.y.items():
            mask = yt > 0.0
            models[target] = fit(features(self.x_train[mask]), yt[mask])

        def predict(x: np.ndarray, groups: list[str], target: str) -> np.ndarray:
            return np.maximum(apply(models[target], features(x)), 0.0)

        return predict

    def cost_us(
        self, fit: Fit, apply: Apply, features: Callable[[np.ndarray], np.ndarray] = lambda x: x
    ) -> float:
        """Microseconds to predict 64 rows with a model of this kind."""
        model = fit(features(self.x_train), self.y["ttft"][0])
        rows = np.repeat(self.x_test[:1], 64, axis=0)
        t0 = time.perf_counter()
        for _ in range(100):
            apply(model, features(rows))
        return (time.perf_counter() - t0) / 100 * 1e6

    def add(self, name: str, predict: Predictor, cost: float) -> None:
        self.results[name] = {
            "ttft_mdape": self.score(predict, "ttft"),
            "tpot_mdape": self.score(predict, "tpot"),
            "predict_us_64": cost,
        }


def _boosted() -> list[tuple[str, Fit]]:
    """Gradient-boosted trees, when installed (not dependencies of epp)."""
    out: list[tuple[str, Fit]] = []
    try:
        import lightgbm  # type: ignore[import-not-found, unused-ignore]

        out.append(
            (
                "LightGBM, pooled",
                lambda x, yv: lightgbm.LGBMRegressor(n_estimators=200, verbose=-1).fit(x, yv),
            )
        )
    except ImportError:
        pass
    try:
        from sklearn.ensemble import (  # type: ignore[import-not-found, unused-ignore]
            HistGradientBoostingRegressor,
        )

        out.append(
            ("sklearn HistGB, pooled", lambda x, yv: HistGradientBoostingRegressor(max_iter=200).fit(x, yv))
        )
    except ImportError:
        pass
    return out


def _compare(samples: list[tuple[str, tuple[float, ...], float, float]]) -> dict[str, dict[str, float]]:
    """Offline comparison on the samples in arrival order (60 % train, 40 % test)."""
    o = _Offline(samples)
    if not o.enough:
        return {}
    o.add(
        "per-endpoint mean", o.per_group(lambda x, yv: float(yv.mean()), lambda m, x: np.full(len(x), m)), 0.0
    )
    ridge_cost = o.cost_us(_ridge_fit, _ridge_apply)
    o.add(
        "ridge, linear terms only",
        o.pooled(_ridge_fit, _ridge_apply, _linear_only),
        o.cost_us(_ridge_fit, _ridge_apply, _linear_only),
    )
    o.add("ridge, pooled", o.pooled(_ridge_fit, _ridge_apply), ridge_cost)
    o.add("ridge per group", o.per_group(_ridge_fit, _ridge_apply), ridge_cost)
    o.add("ridge per group, relative (ours)", o.per_group(_ridge_fit_relative, _ridge_apply), ridge_cost)
    for name, fit in _boosted():
        o.add(name, o.pooled(fit, lambda m, x: m.predict(x)), o.cost_us(fit, lambda m, x: m.predict(x)))
    return o.results


async def run(
    servers: int = 4,
    requests: int = 600,
    rate: float = 20.0,
    seed: int = 0,
    *,
    gpus: Sequence[str] = (),
    time_scale: float = 1.0,
    workload: str = "",
    dump: Path | None = None,
) -> AccuracyResult:
    """`gpus`: one hardware class per server (cycled; empty: all h100-class, unlabelled); `workload`: one
    of `epp bench quality`'s workloads in its full shape (and KV capacity) instead of this tool's own;
    `dump`: write every training sample (group, feature row, TTFT ms, TPOT ms) there as JSON lines."""
    from epp.app import App
    from epp.settings import parse_settings
    from epp.tools.bench.quality import FULL, make_workload
    from epp.tools.loadgen.client import LoadClient
    from epp.tools.loadgen.gateway import ANY_PORTS, epp_flags
    from epp.tools.loadgen.runner import run_open_loop
    from epp.tools.proxy import EnvoyConfig, EnvoyProcess
    from epp.tools.sim.config import GPU_CLASSES, GPU_LABEL, SimConfig
    from epp.tools.sim.server import SimServer

    classes = [gpus[i % len(gpus)] if gpus else None for i in range(servers)]

    def sim_config(i: int, gpu: str | None) -> SimConfig:
        config = SimConfig(model="sim", name=f"sim-{i}", seed=i, gpu=gpu, time_scale=time_scale)
        if not workload:
            return config
        share = GPU_CLASSES[gpu or "h100"].kv_blocks / GPU_CLASSES["h100"].kv_blocks
        return dataclasses.replace(config, kv_blocks=max(1, round(FULL.kv_blocks * share)))  # as quality's

    sims = [SimServer(sim_config(i, gpu)) for i, gpu in enumerate(classes)]
    for sim in sims:
        await sim.start()
    labels = [
        f"{s.address}={GPU_LABEL}={GPU_CLASSES[g].product}" for s, g in zip(sims, classes, strict=True) if g
    ]
    outcomes: list[tuple[float, float, float, float]] = []
    samples: list[tuple[str, tuple[float, ...], float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        settings = parse_settings(
            [
                *epp_flags(
                    [s.address for s in sims],
                    config_file=PROFILE,
                    secure_serving=False,
                    watch_config_file=True,
                ),
                *ANY_PORTS,
                *(["--static-endpoint-labels", ",".join(labels)] if labels else []),
            ],
            environ={},
        )
        app = App(settings)
        await app.start()
        envoy = EnvoyProcess(EnvoyConfig(ext_proc_port=app.grpc_port, ext_proc_tls=False), Path(tmp))
        await envoy.start()
        producer: Any = app.holder.current.plugins["predicted-latency-producer"]
        record = app.metrics.record_latency_outcome

        def capture(model: str, target_model: str, **kw: float) -> None:
            outcomes.append(
                (kw["predicted_ttft"], kw["ttft"], kw.get("predicted_tpot", 0.0), kw.get("tpot", 0.0))
            )
            record(model, target_model, **kw)

        add = producer.buffers.add

        def keep(group: str, row: tuple[float, ...], ttft_ms: float, tpot_ms: float = 0.0) -> None:
            samples.append((group, row, ttft_ms, tpot_ms))
            add(group, row, ttft_ms, tpot_ms)

        app.metrics.record_latency_outcome = capture  # type: ignore[method-assign]
        producer.buffers.add = keep
        try:
            if workload:
                load, session_rate = make_workload(
                    workload, rate, requests / rate, FULL.shapes[workload], seed
                )
                async with LoadClient(envoy.url, api=load.api, model="sim", timeout_s=120.0) as client:
                    await run_open_loop(client, load, rate=session_rate, seed=seed)
            else:
                await _drive(envoy.url, requests, rate, seed)
        finally:
            await envoy.stop()
            await app.stop()
            for sim in sims:
                await sim.stop()
    if dump is not None:
        with dump.open("w") as f:
            for sample in samples:
                f.write(json.dumps(sample) + "\n")
    predicted = [o for o in outcomes if o[0] > 0.0]
    half = predicted[len(predicted) // 2 :]
    ttft = _ape([(p, o) for p, o, _, _ in predicted])
    tpot = [(pt, ot) for _, _, pt, ot in predicted if pt > 0.0 and ot > 0.0]
    return AccuracyResult(
        requests=len(outcomes),
        predicted=len(predicted),
        ttft_mdape=_median(ttft),
        ttft_p90_ape=_p90(ttft),
        ttft_mdape_second_half=_median(_ape([(p, o) for p, o, _, _ in half])),
        tpot_mdape=_median(_ape(tpot)),
        tpot_mdape_second_half=_median(_ape([(pt, ot) for _, _, pt, ot in half if pt > 0.0 and ot > 0.0])),
        models=_compare(samples),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m epp.tools.bench.predictor_accuracy", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--servers", type=int, default=4)
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second (Poisson)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--gpus", default="", help="hardware classes, one per server, cycled (e.g. h100,a100); labelled pods"
    )
    parser.add_argument("--time-scale", type=float, default=1.0, help="the simulators' --time-scale")
    parser.add_argument(
        "--workload",
        default="",
        choices=["", "shared_prefix", "zipf", "mixed", "long_prompt", "multiturn"],
        help="one of `epp bench quality`'s workloads (full shape and KV capacity) instead of this tool's",
    )
    parser.add_argument("--dump", type=Path, help="write every training sample there (JSON lines)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    gpus = [g for g in args.gpus.split(",") if g]
    result = asyncio.run(
        run(
            args.servers,
            args.requests,
            args.rate,
            args.seed,
            gpus=gpus,
            time_scale=args.time_scale,
            workload=args.workload,
            dump=args.dump,
        )
    )
    print(json.dumps(asdict(result), indent=2) if args.json else result.as_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
