"""Static check (read by mypy only): each built-in class satisfies the protocols its registry entry lists."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from epp.framework.plugins import (
        DataProducer,
        EndpointObserver,
        Filter,
        Picker,
        PreRequest,
        ProfileHandler,
        RequestParser,
        ResponseComplete,
        ResponseReceived,
        Scorer,
    )
    from epp.framework.types import TypedName
    from epp.plugins.conformance.served_verifier import ServedEndpointVerifier
    from epp.plugins.filters.decision_tree import DecisionTreeFilter
    from epp.plugins.filters.header_based_testing import HeaderBasedTestingFilter
    from epp.plugins.filters.least_band import LeastKvCacheFilter, LeastQueueFilter
    from epp.plugins.filters.lora_affinity import LoraAffinityFilter
    from epp.plugins.filters.low_queue import LowQueueFilter
    from epp.plugins.filters.prefix_cache_affinity import PrefixCacheAffinityFilter
    from epp.plugins.parsers.openai import OpenAIParser
    from epp.plugins.parsers.passthrough import PassthroughParser
    from epp.plugins.pickers.max_score import MaxScorePicker
    from epp.plugins.pickers.random_picker import RandomPicker
    from epp.plugins.pickers.weighted_random import WeightedRandomPicker
    from epp.plugins.producers.approx_prefix import ApproxPrefixCacheProducer
    from epp.plugins.producers.inflight_load import InFlightLoadProducer
    from epp.plugins.profile.single_profile import SingleProfileHandler
    from epp.plugins.scorers.kv_cache_utilization import KvCacheUtilizationScorer
    from epp.plugins.scorers.lora_affinity import LoraAffinityScorer
    from epp.plugins.scorers.prefix_cache import PrefixCacheScorer
    from epp.plugins.scorers.queue import QueueScorer
    from epp.plugins.scorers.running_requests import RunningRequestsSizeScorer
    from epp.plugins.scorers.token_load import TokenLoadScorer

    def _check(
        tn: TypedName, tree: DecisionTreeFilter, prefix: ApproxPrefixCacheProducer, load: InFlightLoadProducer
    ) -> None:
        scorers: list[Scorer] = [
            QueueScorer(tn),
            KvCacheUtilizationScorer(tn),
            RunningRequestsSizeScorer(tn),
            LoraAffinityScorer(tn),
            TokenLoadScorer(tn),
            PrefixCacheScorer(tn),
        ]
        filters: list[Filter] = [
            tree,
            HeaderBasedTestingFilter(tn),
            LeastKvCacheFilter(tn),
            LeastQueueFilter(tn),
            LoraAffinityFilter(tn),
            LowQueueFilter(tn),
            PrefixCacheAffinityFilter(tn),
        ]
        pickers: list[Picker] = [MaxScorePicker(tn), RandomPicker(tn), WeightedRandomPicker(tn)]
        handler: ProfileHandler = SingleProfileHandler(tn)
        parsers: list[RequestParser] = [OpenAIParser(tn), PassthroughParser(tn)]
        producers: list[DataProducer] = [prefix, load]
        pre: list[PreRequest] = [prefix, load]
        received: list[ResponseReceived] = [prefix, ServedEndpointVerifier(tn)]
        complete: ResponseComplete = load
        observers: list[EndpointObserver] = [prefix, load]
        del scorers, filters, pickers, handler, parsers, producers, pre, received, complete, observers
