"""Small test-only plugin types for loader and builder tests (the real catalogue lives in epp.plugins).

They use the upstream type names so the configs in these tests read like real ones, but their behaviour
is trivial and their parameters are just enough to exercise validation, forwarding and reuse.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from epp.framework.cycle import CycleState
from epp.framework.handle import Handle
from epp.framework.plugins import PluginKind, ScorerCategory
from epp.framework.types import (
    Endpoint,
    InferenceRequest,
    ProfileRunResult,
    ResponseInfo,
    SchedulingResult,
    ScoredEndpoint,
    TypedName,
)
from epp.registry import EmptyParams, PluginRegistry, PluginType

PREFIX_KEY = "PrefixCacheMatchInfo"
LOAD_KEY = "InFlightLoad"
K = PluginKind


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ThresholdParams(_Params):
    threshold: int = Field(default=128, ge=0)


class PickerParams(_Params):
    max_num_of_endpoints: int = Field(default=1, alias="maxNumOfEndpoints")


class ProducerParams(_Params):
    auto_tune: bool = Field(default=True, alias="autoTune")
    block_size_tokens: int = Field(default=16, gt=0, alias="blockSizeTokens")
    lru_capacity_per_server: int = Field(default=31250, alias="lruCapacityPerServer")


class PrefixScorerParams(_Params):
    """Producer parameters given on the scorer are forwarded to an auto-created producer."""

    block_size_tokens: int | None = Field(default=None, gt=0, alias="blockSizeTokens")
    lru_capacity_per_server: int | None = Field(default=None, alias="lruCapacityPerServer")

    def producer_parameters(self) -> dict[str, Any] | None:
        out = self.model_dump(by_alias=True, exclude_none=True)
        return out or None


class DetectorParams(_Params):
    queue_depth_threshold: int = Field(default=5, gt=0, alias="queueDepthThreshold")
    kv_cache_util_threshold: float = Field(default=0.8, gt=0, le=1, alias="kvCacheUtilThreshold")
    metrics_staleness_threshold: str = Field(default="200ms", alias="metricsStalenessThreshold")


class Ref(_Params):
    plugin_ref: str | None = Field(default=None, alias="pluginRef")
    decision_tree: DecisionTreeParams | None = Field(default=None, alias="decisionTree")


class DecisionTreeParams(_Params):
    current: Ref
    next_on_success: Ref | None = Field(default=None, alias="nextOnSuccess")
    next_on_failure: Ref | None = Field(default=None, alias="nextOnFailure")
    next_on_success_or_failure: Ref | None = Field(default=None, alias="nextOnSuccessOrFailure")


Ref.model_rebuild()


class SourceParams(_Params):
    scheme: str = "http"
    path: str = "/metrics"
    insecure_skip_verify: bool = Field(default=True, alias="insecureSkipVerify")


@dataclass
class Fake:
    """One object that can play every role; records calls."""

    type_name: str
    name: str
    params: Any
    handle: Handle | None = None
    calls: list[str] = field(default_factory=list)
    refs: dict[str, object] = field(default_factory=dict)

    @property
    def typed_name(self) -> TypedName:
        return TypedName(self.type_name, self.name)

    @property
    def category(self) -> ScorerCategory:
        return ScorerCategory.DISTRIBUTION

    def filter(
        self, cycle: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Sequence[Endpoint]:
        return endpoints

    def score(
        self, cycle: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        return {e.key: 0.5 for e in endpoints}

    def pick(
        self, cycle: CycleState, request: InferenceRequest, scored: Sequence[ScoredEndpoint]
    ) -> ProfileRunResult:
        best = sorted(scored, key=lambda s: -s.score)
        return ProfileRunResult(tuple(s.endpoint for s in best[:1]))

    def pick_profiles(self, cycle, request, profiles, results):  # type: ignore[no-untyped-def]
        return [p for p in profiles if p not in results]

    def process_results(self, cycle, request, results):  # type: ignore[no-untyped-def]
        name = next(iter(results))
        return SchedulingResult(name, dict(results))

    def parse(self, request_id: str, path: str, headers: Mapping[str, str], body: bytes) -> InferenceRequest:
        return InferenceRequest(request_id=request_id, model="m", target_model="m")

    def prepare_data(
        self, cycle: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> None:
        self.calls.append("prepare_data")

    def pre_request(self, cycle: CycleState, request: InferenceRequest, result: SchedulingResult) -> None:
        self.calls.append("pre_request")

    def response_complete(
        self, cycle: CycleState, request: InferenceRequest, response: ResponseInfo, result: SchedulingResult
    ) -> None:
        self.calls.append("response_complete")

    def admit(
        self, cycle: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> str | None:
        return None

    def saturation(self, endpoints: Sequence[Endpoint], now: float) -> float:
        return 0.0


def _factory(type_name: str):  # type: ignore[no-untyped-def]
    def make(name: str, params: Any, handle: Handle) -> Fake:
        return Fake(type_name, name, params, handle)

    return make


def _tree_factory(name: str, params: DecisionTreeParams, handle: Handle) -> Fake:
    fake = Fake("decision-tree-filter", name, params, handle)

    def resolve(ref: Ref | None) -> None:
        if ref is None:
            return
        if ref.plugin_ref is not None:
            target = handle.plugin(ref.plugin_ref)
            # every Fake has every method, so judge by the type name
            if not getattr(target, "type_name", "").endswith("-filter"):
                raise ValueError(f"{ref.plugin_ref} is not a filter")
            fake.refs[ref.plugin_ref] = target
        if ref.decision_tree is not None:
            for sub in (
                ref.decision_tree.current,
                ref.decision_tree.next_on_success,
                ref.decision_tree.next_on_failure,
            ):
                resolve(sub)

    for ref in (
        params.current,
        params.next_on_success,
        params.next_on_failure,
        params.next_on_success_or_failure,
    ):
        resolve(ref)
    return fake


def _failing_factory(name: str, params: Any, handle: Handle) -> Fake:
    raise RuntimeError("cannot reach the moon")


def _kindless_factory(name: str, params: Any, handle: Handle) -> object:
    return object()


def fake_registry(
    *, detector: bool = True, data_layer: bool = True, flow_control: bool = False
) -> PluginRegistry:
    """A registry of fake types with the upstream names the loader's defaults use."""
    r = PluginRegistry()

    def add(
        type_name: str,
        kinds: set[PluginKind],
        params: type[BaseModel] = EmptyParams,
        *,
        factory: Any = None,
        consumes: frozenset[str] = frozenset(),
        produces: frozenset[str] = frozenset(),
        stateful: bool = False,
        default_for: tuple[str, ...] = (),
    ) -> None:
        r.register(
            PluginType(
                type_name,
                params,
                factory or _factory(type_name),
                frozenset(kinds),
                description=f"fake {type_name}",
                consumes=consumes,
                produces=produces,
                stateful=stateful,
            ),
            default_producer_for=default_for,
        )

    add("queue-scorer", {K.SCORER})
    add("kv-cache-utilization-scorer", {K.SCORER})
    add("lora-affinity-scorer", {K.SCORER})
    add("prefix-cache-scorer", {K.SCORER}, PrefixScorerParams, consumes=frozenset({PREFIX_KEY}))
    add("token-load-scorer", {K.SCORER}, consumes=frozenset({LOAD_KEY}))
    add(
        "approx-prefix-cache-producer",
        {K.DATA_PRODUCER, K.PRE_REQUEST},
        ProducerParams,
        produces=frozenset({PREFIX_KEY}),
        stateful=True,
        default_for=(PREFIX_KEY,),
    )
    add(
        "inflight-load-producer",
        {K.DATA_PRODUCER, K.PRE_REQUEST, K.RESPONSE_COMPLETE},
        produces=frozenset({LOAD_KEY}),
        stateful=True,
        default_for=(LOAD_KEY,),
    )
    add("max-score-picker", {K.PICKER}, PickerParams)
    add("random-picker", {K.PICKER}, PickerParams)
    add("weighted-random-picker", {K.PICKER}, PickerParams)
    add("single-profile-handler", {K.PROFILE_HANDLER})
    add("fake-multi-profile-handler", {K.PROFILE_HANDLER})
    add("openai-parser", {K.PARSER})
    add("passthrough-parser", {K.PARSER})
    add("low-queue-filter", {K.FILTER}, ThresholdParams)
    add("least-queue-filter", {K.FILTER})
    add("least-kv-cache-filter", {K.FILTER})
    add("lora-affinity-filter", {K.FILTER}, ThresholdParams)
    add("header-based-testing-filter", {K.FILTER})
    add("decision-tree-filter", {K.FILTER}, DecisionTreeParams, factory=_tree_factory)
    add("test-admitter", {K.ADMITTER})
    add("failing-scorer", {K.SCORER}, factory=_failing_factory)
    add("kindless-scorer", {K.SCORER}, factory=_kindless_factory)
    if detector:
        add("utilization-detector", {K.SATURATION_DETECTOR, K.FILTER}, DetectorParams)
    if data_layer:
        add("metrics-data-source", {K.DATA_SOURCE}, SourceParams)
        add("core-metrics-extractor", {K.METRICS_EXTRACTOR})
    if flow_control:
        add("global-strict-fairness-policy", {K.FAIRNESS_POLICY})
        add("round-robin-fairness-policy", {K.FAIRNESS_POLICY})
        add("fcfs-ordering-policy", {K.ORDERING_POLICY})
        add("static-usage-limit-policy", {K.USAGE_LIMIT_POLICY})
    return r
