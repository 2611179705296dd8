"""The decision trace as logged: the compact line (DEBUG, x-epp-decision) and the full table (TRACE).

Traces come from the real engine running built-in plugins over endpoints with known metrics.
"""

from __future__ import annotations

import logging

from epp.builtins import builtin_registry
from epp.config import build_pipeline, load_config
from epp.framework.cycle import CycleState
from epp.framework.types import Endpoint, EndpointMetrics, InferenceRequest
from epp.logs import TRACE
from epp.observability.decision import ScoreTable
from epp.scheduling.trace import DecisionTrace, ProfileTrace

CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: least-queue-filter
- type: queue-scorer
- type: kv-cache-utilization-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: least-queue-filter
  - pluginRef: queue-scorer
    weight: 2
  - pluginRef: kv-cache-utilization-scorer
    weight: 2
"""


def _schedule() -> DecisionTrace:
    registry = builtin_registry()
    pipeline = build_pipeline(load_config(CONFIG, registry=registry), registry)
    endpoints = [
        Endpoint(
            f"vllm-{i}-rank-0",
            f"10.0.0.{i}",
            8000,
            metrics=EndpointMetrics(waiting_queue_size=q, kv_cache_usage=kv),
        )
        for i, (q, kv) in enumerate([(0, 0.5), (2, 0.1), (9, 0.2)])
    ]
    request = InferenceRequest(request_id="r", model="m", target_model="m", prompt="hi")
    trace = DecisionTrace()
    pipeline.scheduler.schedule(request, endpoints, CycleState(), trace)
    return trace


def test_compact_line_names_profile_candidates_winner_and_top_scores() -> None:
    trace = _schedule()
    assert (
        trace.compact()
        == "default: candidates=3 picked=vllm-0-rank-0 top=vllm-0-rank-0=3.000,vllm-1-rank-0=1.800"
    )


def test_full_table_has_every_scorer_every_endpoint_and_the_filter_cut() -> None:
    text = str(ScoreTable(_schedule()))
    assert text.splitlines() == [
        "primary profile 'default'",
        "profile 'default': 3 candidates, picked vllm-0-rank-0",
        "  endpoint       queue-scorer x2  kv-cache-utilization-scorer x2  total",
        "* vllm-0-rank-0  1.0000           0.5000                          3.0000",
        "  vllm-1-rank-0  0.0000           0.9000                          1.8000",
        "  vllm-2-rank-0  removed by filter least-queue-filter",
    ]


def test_failed_profile_and_missing_scores() -> None:
    trace = DecisionTrace(
        profiles=[
            ProfileTrace(
                profile="prefill",
                candidates=("a",),
                filters=[("f", ())],
                failure="no endpoints left after filter 'f'",
            ),
            ProfileTrace(
                profile="decode",
                candidates=("a", "b"),
                scores={"s": (1.0, {"a": 0.25})},  # the scorer said nothing about b
                totals={"a": 0.25, "b": 0.0},
                picked=("a",),
            ),
        ]
    )
    assert str(ScoreTable(trace)).splitlines() == [
        "profile 'prefill': 1 candidates, failed: no endpoints left after filter 'f'",
        "  endpoint  total",
        "  a         removed by filter f",
        "profile 'decode': 2 candidates, picked a",
        "  endpoint  s x1    total",
        "* a         0.2500  0.2500",
        "  b         -       0.0000",
    ]
    assert trace.compact() == (
        "prefill: failed (no endpoints left after filter 'f'); "
        "decode: candidates=2 picked=a top=a=0.250,b=0.000"
    )


def test_table_is_rendered_only_when_a_handler_formats_it(caplog) -> None:
    calls = []

    class Counting(ScoreTable):
        def __str__(self) -> str:
            calls.append(1)
            return "table"

    log = logging.getLogger("tests.decision")
    with caplog.at_level(logging.DEBUG, logger="tests.decision"):
        log.log(TRACE, "decision table:\n%s", Counting(DecisionTrace()))  # below the level
    assert not caplog.records and not calls
    with caplog.at_level(TRACE, logger="tests.decision"):
        log.log(TRACE, "decision table:\n%s", Counting(DecisionTrace()))
    assert caplog.records[0].getMessage() == "decision table:\ntable" and calls
