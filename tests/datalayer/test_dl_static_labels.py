"""`--static-endpoint-labels`: pod labels for `--static-endpoints` entries (e.g. P/D roles)."""

from __future__ import annotations

import asyncio

import pytest

from epp.datalayer.datastore import Datastore
from epp.datalayer.sources import start_endpoint_source
from epp.errors import SettingsError
from epp.settings import parse_settings


def test_flag_parses_merges_repeats_and_checks_addresses() -> None:
    s = parse_settings(
        [
            "--static-endpoints",
            "127.0.0.1:1,[::1]:2",
            "--static-endpoint-labels",
            "127.0.0.1:1=llm-d.ai/role=prefill,127.0.0.1:1=zone=a",
            "--static-endpoint-labels",
            "[::1]:2=llm-d.ai/role=decode",
        ],
        {},
    )
    assert s.static_endpoint_labels == {
        "127.0.0.1:1": {"llm-d.ai/role": "prefill", "zone": "a"},
        "[::1]:2": {"llm-d.ai/role": "decode"},
    }
    base = ["--static-endpoints", "127.0.0.1:1", "--static-endpoint-labels"]
    with pytest.raises(SettingsError, match="not in --static-endpoints"):
        parse_settings([*base, "127.0.0.1:9=a=b"], {})
    with pytest.raises(SettingsError, match="host:port=key=value"):
        parse_settings([*base, "127.0.0.1:1=a"], {})


def test_the_static_source_publishes_the_labels() -> None:
    async def main() -> dict[str, dict[str, str]]:
        settings = parse_settings(
            [
                "--static-endpoints",
                "127.0.0.1:1,127.0.0.1:2",
                "--static-endpoint-labels",
                "127.0.0.1:2=llm-d.ai/role=decode",
            ],
            {},
        )
        ds = Datastore()
        source = await start_endpoint_source(settings, ds)
        await source.stop()
        return {e.key: dict(e.labels) for e in ds.snapshot()}

    labels = asyncio.run(main())
    assert labels["127.0.0.1:2"]["llm-d.ai/role"] == "decode"
    assert "llm-d.ai/role" not in labels["127.0.0.1:1"]
