"""The built-in plugins together in the engine, along the per-request path the EPP runs:
parse -> prepare_data -> schedule -> pre_request -> response hooks."""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any

from epp.framework.cycle import CycleState
from epp.framework.handle import SimpleHandle
from epp.framework.types import Endpoint, EndpointMetrics, ResponseInfo, SchedulingResult
from epp.plugins import register_builtins
from epp.registry import PluginRegistry
from epp.scheduling.profile import SchedulerProfile, WeightedScorer
from epp.scheduling.scheduler import Scheduler


def endpoint(i: int, **metrics: Any) -> Endpoint:
    metrics.setdefault("update_time", 1.0)
    return Endpoint(key=f"pod-{i}", ip=f"127.0.0.{i + 10}", port=8000, metrics=EndpointMetrics(**metrics))


class Stack:
    """A default-like configuration built from the registry (what the config builder produces)."""

    def __init__(
        self, scorers: list[tuple[str, float, Any]], picker_params: Any = None, seed: int = 0
    ) -> None:
        reg = PluginRegistry()
        register_builtins(reg)
        self.handle = SimpleHandle(rng=random.Random(seed))
        self.parser = reg.get("openai-parser").build("openai-parser", None, self.handle)
        self.prefix = reg.get("approx-prefix-cache-producer").build("prefix", None, self.handle)
        self.inflight = reg.get("inflight-load-producer").build("inflight", None, self.handle)
        weighted = tuple(
            WeightedScorer(reg.get(t).build(t, params, self.handle), w) for t, w, params in scorers
        )
        picker = reg.get("max-score-picker").build("picker", picker_params, self.handle)
        handler = reg.get("single-profile-handler").build("handler", None, self.handle)
        self.scheduler = Scheduler(handler, {"default": SchedulerProfile("default", (), weighted, picker)})

    def send(
        self, body: dict[str, Any], endpoints: list[Endpoint], path: str = "/v1/completions"
    ) -> SchedulingResult:
        request = self.parser.parse("id", path, {}, json.dumps(body).encode())
        cycle = CycleState()
        for producer in (self.prefix, self.inflight):
            producer.prepare_data(cycle, request, endpoints)
        result = self.scheduler.schedule(request, endpoints, cycle)
        for hook in (self.prefix, self.inflight):
            hook.pre_request(cycle, request, result)
        info = ResponseInfo(status=200, served_endpoint=result.targets[0].address)
        self.prefix.response_received(cycle, request, info, result)
        self.inflight.response_complete(cycle, request, info, result)
        return result


DEFAULT = [
    ("queue-scorer", 2.0, None),
    ("kv-cache-utilization-scorer", 2.0, None),
    ("prefix-cache-scorer", 3.0, None),
]


def test_shortest_queue_wins_under_queue_scorer() -> None:
    eps = [
        endpoint(0, waiting_queue_size=5),
        endpoint(1, waiting_queue_size=1),
        endpoint(2, waiting_queue_size=9),
    ]
    stack = Stack([("queue-scorer", 1.0, None)])
    for i in range(20):
        assert stack.send({"model": "m", "prompt": f"p{i}"}, eps).targets[0].key == "pod-1"


def test_shared_prefixes_stick_and_distinct_prefixes_spread() -> None:
    eps = [endpoint(i, kv_cache_usage=0.2) for i in range(4)]
    stack = Stack(DEFAULT, seed=3)
    system = "You are a meticulous assistant. Follow the house style guide. " * 30
    sticky = {
        stack.send({"model": "m", "prompt": system + f"question {i}"}, eps).targets[0].key for i in range(30)
    }
    assert len(sticky) == 1
    spread = Counter(
        stack.send({"model": "m", "prompt": f"{i} unrelated prompt " * 60}, eps).targets[0].key
        for i in range(40)
    )
    assert len(spread) == 4


def test_chat_conversations_sharing_history_stick() -> None:
    eps = [endpoint(i) for i in range(4)]
    stack = Stack(DEFAULT, seed=1)
    history = [{"role": "system", "content": "long instructions " * 50}]
    picks = set()
    for turn in range(6):
        history.append({"role": "user", "content": f"turn {turn}"})
        picks.add(stack.send({"model": "m", "messages": history}, eps, "/v1/chat/completions").targets[0].key)
        history.append({"role": "assistant", "content": f"answer {turn}"})
    assert len(picks) == 1


def test_an_adapter_request_goes_to_the_endpoint_running_it() -> None:
    eps = [
        endpoint(0, active_models=frozenset({"sql-lora"}), max_active_models=2),
        endpoint(1, active_models=frozenset({"other", "x"}), max_active_models=2),
        endpoint(2, active_models=frozenset({"chat-lora"}), max_active_models=2),
    ]
    stack = Stack([*DEFAULT, ("lora-affinity-scorer", 1.0, None)])
    assert {stack.send({"model": "chat-lora", "prompt": f"q{i}"}, eps).targets[0].key for i in range(10)} == {
        "pod-2"
    }
    assert {stack.send({"model": "sql-lora", "prompt": f"q{i}"}, eps).targets[0].key for i in range(10)} == {
        "pod-0"
    }


def test_fallbacks_are_listed_in_score_order() -> None:
    eps = [endpoint(i, waiting_queue_size=q) for i, q in enumerate([4, 0, 2, 8])]
    stack = Stack([("queue-scorer", 1.0, None)], picker_params={"maxNumOfEndpoints": 3})
    result = stack.send({"model": "m", "prompt": "x"}, eps)
    assert [e.key for e in result.targets] == ["pod-1", "pod-2", "pod-0"]
    assert ",".join(e.address for e in result.targets) == "127.0.0.11:8000,127.0.0.12:8000,127.0.0.10:8000"


def test_token_load_spreads_concurrent_requests() -> None:
    eps = [endpoint(i) for i in range(3)]
    stack = Stack([("token-load-scorer", 1.0, None)], seed=2)
    held: list[tuple[CycleState, Any, SchedulingResult]] = []
    for i in range(3):  # three long requests in flight at once land on three endpoints
        request = stack.parser.parse(
            "id", "/v1/completions", {}, json.dumps({"model": "m", "prompt": "x" * 4000 + str(i)}).encode()
        )
        cycle = CycleState()
        stack.inflight.prepare_data(cycle, request, eps)
        result = stack.scheduler.schedule(request, eps, cycle)
        stack.inflight.pre_request(cycle, request, result)
        held.append((cycle, request, result))
    assert {r.targets[0].key for _, _, r in held} == {"pod-0", "pod-1", "pod-2"}
    for cycle, request, result in held:
        stack.inflight.response_complete(cycle, request, ResponseInfo(), result)
    assert stack.inflight.snapshot() == {}
