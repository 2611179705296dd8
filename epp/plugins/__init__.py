"""In-tree plugins; `register_builtins` is the one explicit list of built-in plugin types.

Importing this package registers nothing: a registry is filled only by calling `register_builtins`.
"""

from __future__ import annotations

from typing import Any

from epp.plugins.conformance.served_verifier import DESTINATION_ENDPOINT_SERVED_VERIFIER
from epp.plugins.datakeys import INFLIGHT_LOAD, PREFIX_CACHE_MATCH_INFO
from epp.plugins.filters.decision_tree import DECISION_TREE_FILTER
from epp.plugins.filters.header_based_testing import HEADER_BASED_TESTING_FILTER
from epp.plugins.filters.hot_prefix_spill import HOT_PREFIX_SPILL_FILTER
from epp.plugins.filters.least_band import LEAST_KV_CACHE_FILTER, LEAST_QUEUE_FILTER
from epp.plugins.filters.lora_affinity import LORA_AFFINITY_FILTER
from epp.plugins.filters.low_queue import LOW_QUEUE_FILTER
from epp.plugins.filters.prefix_cache_affinity import PREFIX_CACHE_AFFINITY_FILTER
from epp.plugins.filters.role import DECODE_FILTER, PREFILL_FILTER
from epp.plugins.flowcontrol import PLUGIN_TYPES as FLOW_CONTROL_POLICIES
from epp.plugins.kvevents.producer import PRECISE_PREFIX_CACHE_MATCH_INFO, PRECISE_PREFIX_CACHE_PRODUCER
from epp.plugins.kvevents.scorer import PRECISE_PREFIX_CACHE_SCORER
from epp.plugins.latency.admitter import LATENCY_SLO_ADMITTER
from epp.plugins.latency.info import LATENCY_PREDICTION_INFO
from epp.plugins.latency.producer import PREDICTED_LATENCY_PRODUCER
from epp.plugins.latency.scorer import LATENCY_SCORER
from epp.plugins.latency.tier_filter import SLO_HEADROOM_TIER_FILTER
from epp.plugins.parsers.openai import OPENAI_PARSER
from epp.plugins.parsers.passthrough import PASSTHROUGH_PARSER
from epp.plugins.pickers.max_score import MAX_SCORE_PICKER
from epp.plugins.pickers.random_picker import RANDOM_PICKER
from epp.plugins.pickers.weighted_random import WEIGHTED_RANDOM_PICKER
from epp.plugins.producers.approx_prefix import APPROX_PREFIX_CACHE_PRODUCER
from epp.plugins.producers.inflight_load import INFLIGHT_LOAD_PRODUCER
from epp.plugins.producers.prefill_load import PREFILL_LOAD, PREFILL_LOAD_PRODUCER
from epp.plugins.profile.data_parallel import DATA_PARALLEL_PROFILE_HANDLER
from epp.plugins.profile.deciders import ALWAYS_DISAGG_PD_DECIDER, PREFIX_BASED_PD_DECIDER
from epp.plugins.profile.disagg import DISAGG_PROFILE_HANDLER, PD_PROFILE_HANDLER
from epp.plugins.profile.headers import DISAGG_HEADERS_HANDLER, PREFILL_HEADER_HANDLER
from epp.plugins.profile.single_profile import SINGLE_PROFILE_HANDLER
from epp.plugins.saturation import PLUGIN_TYPES as SATURATION_DETECTORS
from epp.plugins.scorers.kv_cache_utilization import KV_CACHE_UTILIZATION_SCORER
from epp.plugins.scorers.lora_affinity import LORA_AFFINITY_SCORER
from epp.plugins.scorers.prefill_cost import PREFILL_COST_SCORER
from epp.plugins.scorers.prefix_cache import PREFIX_CACHE_SCORER
from epp.plugins.scorers.queue import QUEUE_SCORER
from epp.plugins.scorers.running_requests import RUNNING_REQUESTS_SIZE_SCORER
from epp.plugins.scorers.token_load import TOKEN_LOAD_SCORER
from epp.registry import PluginRegistry, PluginType

__all__ = ["BUILTINS", "DEFAULT_PRODUCERS", "register_builtins"]

#: Every built-in plugin type, in the order they are registered.
BUILTINS: tuple[PluginType[Any], ...] = (
    # scorers
    QUEUE_SCORER,
    KV_CACHE_UTILIZATION_SCORER,
    RUNNING_REQUESTS_SIZE_SCORER,
    LORA_AFFINITY_SCORER,
    TOKEN_LOAD_SCORER,
    PREFIX_CACHE_SCORER,
    PREFILL_COST_SCORER,
    PRECISE_PREFIX_CACHE_SCORER,
    LATENCY_SCORER,
    # data producers
    APPROX_PREFIX_CACHE_PRODUCER,
    INFLIGHT_LOAD_PRODUCER,
    PREFILL_LOAD_PRODUCER,
    PRECISE_PREFIX_CACHE_PRODUCER,
    PREDICTED_LATENCY_PRODUCER,
    # admitters
    LATENCY_SLO_ADMITTER,
    # pickers
    MAX_SCORE_PICKER,
    RANDOM_PICKER,
    WEIGHTED_RANDOM_PICKER,
    # profile handlers
    SINGLE_PROFILE_HANDLER,
    DISAGG_PROFILE_HANDLER,
    PD_PROFILE_HANDLER,
    DATA_PARALLEL_PROFILE_HANDLER,
    # P/D deciders and the prefill header (llm-d)
    PREFIX_BASED_PD_DECIDER,
    ALWAYS_DISAGG_PD_DECIDER,
    PREFILL_HEADER_HANDLER,
    DISAGG_HEADERS_HANDLER,
    # filters
    HEADER_BASED_TESTING_FILTER,
    PREFIX_CACHE_AFFINITY_FILTER,
    LOW_QUEUE_FILTER,
    LEAST_QUEUE_FILTER,
    LEAST_KV_CACHE_FILTER,
    LORA_AFFINITY_FILTER,
    DECISION_TREE_FILTER,
    HOT_PREFIX_SPILL_FILTER,
    PREFILL_FILTER,
    DECODE_FILTER,
    SLO_HEADROOM_TIER_FILTER,
    # request parsers
    OPENAI_PARSER,
    PASSTHROUGH_PARSER,
    # response hooks
    DESTINATION_ENDPOINT_SERVED_VERIFIER,
    # saturation detectors and flow-control policies
    *SATURATION_DETECTORS,
    *FLOW_CONTROL_POLICIES,
)

#: data key -> the type created when a consumer needs it and no producer is configured.
DEFAULT_PRODUCERS: dict[str, PluginType[Any]] = {
    PREFIX_CACHE_MATCH_INFO: APPROX_PREFIX_CACHE_PRODUCER,
    INFLIGHT_LOAD: INFLIGHT_LOAD_PRODUCER,
    PREFILL_LOAD: PREFILL_LOAD_PRODUCER,
    PRECISE_PREFIX_CACHE_MATCH_INFO: PRECISE_PREFIX_CACHE_PRODUCER,
    LATENCY_PREDICTION_INFO: PREDICTED_LATENCY_PRODUCER,
}


def register_builtins(registry: PluginRegistry) -> None:
    """Add every built-in plugin type to `registry` (a duplicate name is an error)."""
    for entry in BUILTINS:
        defaults = [key for key, producer in DEFAULT_PRODUCERS.items() if producer is entry]
        registry.register(entry, default_producer_for=defaults)
