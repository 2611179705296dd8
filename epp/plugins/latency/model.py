"""The latency model: ridge regression per endpoint or per hardware class, as an immutable snapshot.

Every prediction is linear in one feature row (`feature_row`):

    x = [1, uncached prompt tokens on the endpoint, input tokens, requested output tokens,
         pending prefill tokens (EPP ledger), waiting requests, running requests, KV-cache use,
         in-flight requests (EPP ledger), and four products: uncached x running, pending x running,
         uncached x KV use, running^2]

with one weight vector for TTFT and one for TPOT (milliseconds). Why linear: an engine step costs a
fixed part plus a part per prefilled token plus a part per running sequence, so TTFT is close to linear in
the prefill ahead of the request and its own uncached tokens, and TPOT in the batch; and a linear model
predicts for 64 endpoints in a few tens of microseconds of pure Python, where a tree ensemble's per-call
overhead alone is larger than the whole budget (docs/plugins/predicted-latency-producer.md has the
measured comparison).

The fit minimises the relative error (weights 1 / y^2, `relative_weights`), not the squared error.
Training (`fit_group`, one group at a time) runs in the producer's background loop over bounded buffers of
recent samples (`SampleBuffers`); a new `ModelSnapshot` replaces the old one with one reference assignment,
so the request path never sees a half-trained model and never takes a lock to read it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "EMPTY_SNAPSHOT",
    "FEATURES",
    "N_FEATURES",
    "GroupModel",
    "ModelSnapshot",
    "SampleBuffers",
    "TargetWeights",
    "concat",
    "feature_row",
    "fit_group",
    "fit_ridge",
    "fold",
    "relative_weights",
]

#: Column names of a feature row (index 0 is the constant 1).
FEATURES = (
    "bias",
    "uncached_tokens",
    "input_tokens",
    "output_tokens",
    "pending_prefill_tokens",
    "waiting_requests",
    "running_requests",
    "kv_cache_usage",
    "inflight_requests",
    # interactions: a prefill is slower in a bigger batch and a fuller cache; queued prefill waits longer
    # in a bigger batch; a step grows with the batch (each folds into the per-endpoint coefficients, so
    # they cost nothing per request)
    "uncached_x_running",
    "pending_x_running",
    "uncached_x_kv",
    "running_squared",
)
N_FEATURES = len(FEATURES)

#: Ridge penalty on standardised features, relative to the number of samples.
RIDGE_ALPHA = 1e-3

#: (weights per FEATURES column) for one target, in milliseconds.
TargetWeights = tuple[float, ...]


def feature_row(
    uncached: float,
    input_tokens: float,
    output_tokens: float,
    pending: float,
    waiting: float,
    running: float,
    kv: float,
    inflight: float,
) -> tuple[float, ...]:
    """The FEATURES row of a request on an endpoint in that state."""
    return (
        1.0,
        uncached,
        input_tokens,
        output_tokens,
        pending,
        waiting,
        running,
        kv,
        inflight,
        uncached * running,
        pending * running,
        uncached * kv,
        running * running,
    )


def fold(
    w: TargetWeights, pending: float, waiting: float, running: float, kv: float, inflight: float
) -> tuple[float, float, float, float]:
    """A model at one endpoint state, as (constant, weight of uncached tokens, of input tokens, of output
    tokens): `w . feature_row(u, i, o, state...) == constant + wu * u + wi * i + wo * o`."""
    constant = (
        w[0]
        + w[4] * pending
        + w[5] * waiting
        + w[6] * running
        + w[7] * kv
        + w[8] * inflight
        + w[10] * pending * running
        + w[12] * running * running
    )
    return constant, w[1] + w[9] * running + w[11] * kv, w[2], w[3]


@dataclass(frozen=True, slots=True)
class GroupModel:
    """The weights of one group; `tpot` is None until enough TPOT samples were seen."""

    ttft: TargetWeights
    tpot: TargetWeights | None
    samples: int


@dataclass(frozen=True, slots=True)
class ModelSnapshot:
    """The models in force: per group (a hardware-class label value, or an endpoint key), and `pooled`
    over every group's samples, used for groups without enough samples of their own."""

    generation: int = 0
    groups: Mapping[str, GroupModel] = field(default_factory=dict)
    pooled: GroupModel | None = None

    @property
    def ready(self) -> bool:
        """There is a pooled model (every group's samples are in it, so every endpoint has a model)."""
        return self.pooled is not None

    @property
    def has_tpot(self) -> bool:
        return self.pooled is not None and self.pooled.tpot is not None

    def model_for(self, group: str) -> GroupModel | None:
        return self.groups.get(group) or self.pooled


EMPTY_SNAPSHOT = ModelSnapshot()


class _Ring:
    """The last `capacity` samples of one group, as numpy rows (no conversion when fitting)."""

    __slots__ = ("added", "fitted", "n", "next", "rows", "tpot", "ttft")

    def __init__(self, capacity: int) -> None:
        self.rows = np.zeros((capacity, N_FEATURES), dtype=np.float64)
        self.ttft = np.zeros(capacity, dtype=np.float64)
        self.tpot = np.zeros(capacity, dtype=np.float64)
        self.n = 0
        self.next = 0
        self.added = 0
        self.fitted = 0  # `added` when this group was last fitted

    def add(self, row: tuple[float, ...], ttft_ms: float, tpot_ms: float) -> None:
        i = self.next
        self.rows[i] = row
        self.ttft[i] = ttft_ms
        self.tpot[i] = tpot_ms
        capacity = self.ttft.shape[0]
        self.next = (i + 1) % capacity
        self.n = min(self.n + 1, capacity)
        self.added += 1

    def latest(self, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Copies of the most recent `count` samples (fewer when there are fewer)."""
        n = min(count, self.n)
        idx = (self.next - n + np.arange(n)) % self.ttft.shape[0]
        return self.rows[idx], self.ttft[idx], self.tpot[idx]


class SampleBuffers:
    """The most recent samples of each group (bounded), added from the response hooks of any thread.

    A sample is the feature row at dispatch, the observed TTFT and the observed TPOT (ms; TPOT 0: not
    measured).
    """

    def __init__(self, max_per_group: int) -> None:
        self.max_per_group = max_per_group
        self._lock = threading.Lock()
        self._groups: dict[str, _Ring] = {}
        self.added = 0

    def add(self, group: str, row: tuple[float, ...], ttft_ms: float, tpot_ms: float = 0.0) -> None:
        with self._lock:
            ring = self._groups.get(group)
            if ring is None:
                ring = self._groups[group] = _Ring(self.max_per_group)
            ring.add(row, ttft_ms, tpot_ms)
            self.added += 1

    def groups(self) -> list[str]:
        with self._lock:
            return list(self._groups)

    def stale(self) -> list[str]:
        """Groups with samples added since they were last fitted."""
        with self._lock:
            return [g for g, r in self._groups.items() if r.added != r.fitted]

    def take(self, group: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Copies of the group's samples (rows, TTFT, TPOT), marking it fitted; None if it has none."""
        with self._lock:
            ring = self._groups.get(group)
            if ring is None:
                return None
            ring.fitted = ring.added
            return ring.latest(ring.n)

    def latest(self, group: str, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Copies of the group's latest `count` samples (fewer if it has fewer); None if it has none."""
        with self._lock:
            ring = self._groups.get(group)
            return None if ring is None else ring.latest(count)

    def latest_of_each(
        self, total: int, at_least: int = 1
    ) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
        """Every group's most recent samples, an equal share of `total` each (at least `at_least`):
        (group, rows, TTFT, TPOT), groups without samples left out."""
        names = self.groups()
        if not names:
            return []
        share = max(at_least, total // len(names))
        out = []
        for name in names:
            data = self.latest(name, share)
            if data is not None and data[0].shape[0]:
                out.append((name, *data))
        return out

    def retain(self, groups: Iterable[str]) -> None:
        keep = set(groups)
        with self._lock:
            for g in [g for g in self._groups if g not in keep]:
                del self._groups[g]


def fit_ridge(
    x: np.ndarray, y: np.ndarray, alpha: float = RIDGE_ALPHA, weights: np.ndarray | None = None
) -> TargetWeights:
    """(Weighted) ridge regression with an unpenalised intercept: features are standardised, the penalty
    is `alpha` x the total weight (x samples when unweighted); returns weights on the original scale,
    `x[:, 0]` being the constant column."""
    wts = np.ones(x.shape[0]) if weights is None else weights
    total = float(wts.sum())
    z = x[:, 1:]
    mu = (wts @ z) / total
    sd = z.std(axis=0)
    sd[sd == 0.0] = 1.0
    zs = (z - mu) / sd
    y_mean = float(wts @ y) / total
    zw = zs * wts[:, None]
    a = zw.T @ zs + alpha * total * np.eye(zs.shape[1])
    w = np.linalg.solve(a, zw.T @ (y - y_mean)) / sd
    bias = y_mean - float(mu @ w)
    return (bias, *(float(v) for v in w))


def relative_weights(y: np.ndarray) -> np.ndarray:
    """Sample weights that make least squares minimise the relative error (1 / y^2, y floored at 1 ms).

    Latencies near saturation are heavy-tailed: unweighted, a few samples caught behind a preemption or a
    burst pull the fit towards them and every ordinary prediction is off by tens of percent. Measured on
    the benchmark fleets (`python -m epp.tools.bench.predictor_accuracy --dump`, offline): TTFT median
    error 21-26 % -> 14-15 %, mean absolute error down a quarter to a half.
    """
    floored = np.maximum(y, 1.0)
    weights: np.ndarray = 1.0 / (floored * floored)
    return weights


def fit_group(data: tuple[np.ndarray, np.ndarray, np.ndarray] | None, min_samples: int) -> GroupModel | None:
    """A group's model from its samples (None below `min_samples`); TPOT only from samples that have it."""
    if data is None:
        return None
    rows, ttft, tpot = data
    if rows.shape[0] < min_samples:
        return None
    has_tpot = tpot > 0.0
    tpot_weights = None
    if int(has_tpot.sum()) >= min_samples:
        y = tpot[has_tpot]
        tpot_weights = fit_ridge(rows[has_tpot], y, weights=relative_weights(y))
    return GroupModel(fit_ridge(rows, ttft, weights=relative_weights(ttft)), tpot_weights, int(rows.shape[0]))


def concat(
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        np.concatenate([p[2] for p in parts]),
    )
