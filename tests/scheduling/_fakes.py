"""A multi-role fake plugin for engine tests: Filter + Scorer + Picker with canned results and call counts."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from epp.framework.cycle import CycleState
from epp.framework.plugins import ScorerCategory
from epp.framework.types import (
    Endpoint,
    EndpointMetrics,
    InferenceRequest,
    ProfileRunResult,
    SchedulingResult,
    ScoredEndpoint,
    TypedName,
)


def ep(key: str, queue: int = 0) -> Endpoint:
    return Endpoint(
        key=key,
        ip=f"10.0.0.{sum(key.encode()) % 250 + 1}",
        port=8000,
        metrics=EndpointMetrics(waiting_queue_size=queue, update_time=1.0),
    )


def req() -> InferenceRequest:
    return InferenceRequest(request_id="r", model="m", target_model="m")


class Fake:
    """Filters by `keep` (all when None), scores from `scores`, picks the best `count` by total."""

    category = ScorerCategory.BALANCE

    def __init__(
        self,
        name: str,
        *,
        keep: set[str] | None = None,
        scores: Mapping[str, float] | None = None,
        count: int = 1,
        fail: str = "",
        pick_nothing: bool = False,
    ) -> None:
        self.typed_name = TypedName("fake", name)
        self.keep = keep
        self.scores = dict(scores or {})
        self.count = count
        self.fail = fail
        self.pick_nothing = pick_nothing
        self.calls: dict[str, int] = {"filter": 0, "score": 0, "pick": 0}
        self.seen: list[Any] = []

    def reset(self) -> None:
        self.calls = dict.fromkeys(self.calls, 0)
        self.seen.clear()

    def filter(
        self, cycle: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Sequence[Endpoint]:
        self.calls["filter"] += 1
        if self.fail == "filter":
            raise RuntimeError("filter exploded")
        return [e for e in endpoints if self.keep is None or e.key in self.keep]

    def score(
        self, cycle: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        self.calls["score"] += 1
        if self.fail == "score":
            raise ValueError("scorer exploded")
        return dict(self.scores)

    def pick(
        self, cycle: CycleState, request: InferenceRequest, scored: Sequence[ScoredEndpoint]
    ) -> ProfileRunResult:
        self.calls["pick"] += 1
        self.seen.append({s.endpoint.key: s.score for s in scored})
        if self.fail == "pick":
            raise KeyError("picker exploded")
        if self.pick_nothing:
            return ProfileRunResult(())
        best = sorted(scored, key=lambda s: (-s.score, s.endpoint.key))[: self.count]
        return ProfileRunResult(tuple(s.endpoint for s in best))


class FakeHandler:
    """Runs `plan` (a list of profile-name lists, one per round), then `process` decides."""

    def __init__(
        self,
        plan: Sequence[Sequence[str]] | None = None,
        process: Callable[[Mapping[str, ProfileRunResult | None]], SchedulingResult] | None = None,
        forever: bool = False,
    ) -> None:
        self.typed_name = TypedName("fake-handler", "h")
        self.plan = [list(p) for p in (plan or [["default"]])]
        self.process = process
        self.forever = forever
        self.rounds = 0

    def pick_profiles(self, cycle, request, profiles, results):  # type: ignore[no-untyped-def]
        self.rounds += 1
        if self.forever:
            return [profiles[0]]
        return self.plan.pop(0) if self.plan else []

    def process_results(self, cycle, request, results):  # type: ignore[no-untyped-def]
        if self.process is not None:
            return self.process(results)
        primary = next(iter(results))
        return SchedulingResult(primary_profile=primary, profile_results=dict(results))


class RecordingObserver:
    def __init__(self) -> None:
        self.plugin_calls: list[tuple[str, str]] = []
        self.e2e: list[float] = []

    def plugin_duration(self, extension_point: str, plugin: TypedName, seconds: float) -> None:
        assert seconds >= 0
        self.plugin_calls.append((extension_point, plugin.name))

    def scheduler_duration(self, seconds: float) -> None:
        self.e2e.append(seconds)
