"""Every built-in plugin of the scheduling catalogue has a docs/plugins/<type>.md page with the standard
sections, listing each of its parameters."""

from __future__ import annotations

import pytest

from ._kit import assert_documented
from .test_builtins_registry import EXPECTED


@pytest.mark.parametrize("type_name", sorted(EXPECTED))
def test_plugin_page(type_name: str) -> None:
    assert_documented(type_name)
