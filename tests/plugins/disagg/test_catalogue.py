"""The llm-d P/D and data-parallel types are registered with their kinds, build, and are documented."""

from __future__ import annotations

import pytest

from epp.framework.plugins import PluginKind

from .._kit import assert_builds_with_defaults, assert_documented, handle, registry
from ..prefill.test_catalogue_entries import NEW_TYPES as OTHER_NEW_TYPES
from ..test_builtins_registry import EXPECTED

NEW_TYPES = {
    "disagg-profile-handler": {PluginKind.PROFILE_HANDLER, PluginKind.PRE_REQUEST},
    "pd-profile-handler": {PluginKind.PROFILE_HANDLER},
    "data-parallel-profile-handler": {PluginKind.PROFILE_HANDLER},
    "prefix-based-pd-decider": set(),
    "always-disagg-pd-decider": set(),
    "prefill-header-handler": {PluginKind.PRE_REQUEST},
    "disagg-headers-handler": {PluginKind.PRE_REQUEST},
    "prefill-filter": {PluginKind.FILTER},
    "decode-filter": {PluginKind.FILTER},
}

#: Types whose factory needs another plugin (a decider) declared first.
NEEDS_DECIDER = {"pd-profile-handler"}


def test_not_listed_twice() -> None:
    assert not set(NEW_TYPES) & (set(EXPECTED) | set(OTHER_NEW_TYPES))


@pytest.mark.parametrize("type_name", sorted(NEW_TYPES))
def test_registered_with_kinds_and_builds_with_defaults(type_name: str) -> None:
    h = handle()
    if type_name in NEEDS_DECIDER:
        h.plugins["prefix-based-pd-decider"] = (
            registry().get("prefix-based-pd-decider").build("prefix-based-pd-decider", None, h)
        )
    assert_builds_with_defaults(type_name, NEW_TYPES[type_name], h)


@pytest.mark.parametrize("type_name", sorted(NEW_TYPES))
def test_documented(type_name: str) -> None:
    assert_documented(type_name)


def test_prefix_decider_consumes_the_prefix_match() -> None:
    assert registry().get("prefix-based-pd-decider").consumes == {"PrefixCacheMatchInfo"}
