"""The scheduling-quality types are registered with their kinds and data keys, documented, and listed."""

from __future__ import annotations

import pytest

from epp.framework.plugins import PluginKind

from .._kit import assert_builds_with_defaults, assert_documented, registry

NEW_TYPES = {
    "prefill-cost-scorer": {PluginKind.SCORER},
    "prefill-load-producer": {
        PluginKind.DATA_PRODUCER,
        PluginKind.PRE_REQUEST,
        PluginKind.RESPONSE_RECEIVED,
        PluginKind.RESPONSE_COMPLETE,
    },
    "hot-prefix-spill-filter": {PluginKind.FILTER},
    "precise-prefix-cache-producer": {
        PluginKind.DATA_PRODUCER,
        PluginKind.PRE_REQUEST,
        PluginKind.RESPONSE_COMPLETE,
    },
    "precise-prefix-cache-scorer": {PluginKind.SCORER, PluginKind.ENDPOINT_EXTRACTOR},
}


@pytest.mark.parametrize("type_name", sorted(NEW_TYPES))
def test_registered_with_kinds_and_builds_with_defaults(type_name: str) -> None:
    assert_builds_with_defaults(type_name, NEW_TYPES[type_name])


@pytest.mark.parametrize("type_name", sorted(NEW_TYPES))
def test_documented(type_name: str) -> None:
    assert_documented(type_name)


def test_default_producers_of_the_new_data_keys() -> None:
    reg = registry()
    assert reg.default_producer("PrefillLoad") == "prefill-load-producer"
    assert reg.default_producer("PrecisePrefixCacheMatchInfo") == "precise-prefix-cache-producer"
    assert reg.default_producer("PrefixCacheMatchInfo") == "approx-prefix-cache-producer"
    assert reg.get("precise-prefix-cache-producer").produces == {
        "PrefixCacheMatchInfo",
        "PrecisePrefixCacheMatchInfo",
    }
    for stateful in ("prefill-load-producer", "precise-prefix-cache-producer"):
        assert reg.get(stateful).stateful
