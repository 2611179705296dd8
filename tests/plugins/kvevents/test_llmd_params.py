"""llm-d's nested parameters of `precise-prefix-cache-scorer`: mapped onto the flat ones (llm-d's defaults
when its shape is used), every key without an equivalent refused at its own line with the reason, and a
flat key set twice (flat and llm-d) refused."""

from __future__ import annotations

import pytest

from epp.builtins import default_registry
from epp.config.loader import load_config
from epp.errors import ConfigError
from epp.plugins.kvevents.llmd import LLMD_SOCKET_PORT
from epp.plugins.kvevents.params import PreciseParamOverrides

HEAD = (
    "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"
    "plugins:\n- type: precise-prefix-cache-scorer\n"
)


def test_the_nested_keys_map_onto_the_flat_ones() -> None:
    params = PreciseParamOverrides.model_validate(
        {
            "tokenProcessorConfig": {"blockSize": 64, "hashSeed": ""},
            "indexerConfig": {
                "kvBlockIndexConfig": {"inMemoryConfig": {"size": 1000}},
                "kvCacheBackendConfigs": [{"name": "gpu", "weight": 1.0}, {"name": "cpu", "weight": 0.8}],
            },
            "kvEventsConfig": {"topicFilter": "kv@x", "podDiscoveryConfig": {"socketPort": 5556}},
            "speculativeIndexing": True,
            "speculativeTTL": "3s",
            "tokenizer": "char4",
        }
    )
    assert params.producer_parameters() == {
        "blockSizeTokens": 64,
        "maxBlocksPerEndpoint": 1000,
        "otherTierWeight": 0.8,
        "topicFilter": "kv@x",
        "kvEventsAddress": "tcp://{ip}:5556",
        "speculativeTtlSeconds": 3.0,
        "tokenizer": "char4",
    }


def test_llm_ds_defaults_apply_once_its_shape_is_used_and_not_otherwise() -> None:
    llmd = PreciseParamOverrides.model_validate({"tokenProcessorConfig": {"blockSize": 16}})
    assert llmd.producer_parameters() == {
        "blockSizeTokens": 16,
        "kvEventsAddress": f"tcp://{{ip}}:{LLMD_SOCKET_PORT}",
        "topicFilter": "kv@",
        "speculativeTtlSeconds": 0.0,
    }
    assert PreciseParamOverrides.model_validate({"blockSizeTokens": 16}).producer_parameters() == {
        "blockSizeTokens": 16
    }


@pytest.mark.parametrize(
    ("yaml_params", "line", "path", "reason"),
    [
        (
            "    indexerConfig:\n      kvBlockIndexConfig:\n        redisConfig: {address: r:6379}\n",
            8,
            "indexerConfig.kvBlockIndexConfig.redisConfig",
            "no Redis backend",
        ),
        (
            "    indexerConfig:\n      tokenizersPoolConfig: {workers: 4}\n",
            7,
            "indexerConfig.tokenizersPoolConfig",
            "no in-process tokenizer",
        ),
        (
            "    kvEventsConfig:\n      podDiscoveryConfig:\n        podNamespace: llm\n",
            8,
            "kvEventsConfig.podDiscoveryConfig.podNamespace",
            "no separate pod watch",
        ),
        (
            "    kvEventsConfig:\n      zmqEndpoint: tcp://*:5557\n",
            7,
            "kvEventsConfig.zmqEndpoint",
            "no central socket",
        ),
        (
            "    indexerConfig:\n      kvBlockIndexConfig:\n        inMemoryConfig: {podCacheSize: 10}\n",
            8,
            "indexerConfig.kvBlockIndexConfig.inMemoryConfig.podCacheSize",
            "no cap of endpoints per block",
        ),
    ],
)
def test_a_key_without_an_equivalent_is_refused_at_its_line_with_the_reason(
    yaml_params: str, line: int, path: str, reason: str
) -> None:
    text = HEAD + "  parameters:\n" + yaml_params
    with pytest.raises(ConfigError) as err:
        load_config(text, registry=default_registry(), source="llmd.yaml", log_warnings=False)
    problems = [p for p in err.value.problems if p.path.endswith(path)]
    assert problems, err.value
    assert problems[0].line == line
    assert "not supported" in problems[0].message and reason in problems[0].message


def test_llm_ds_empty_string_default_is_accepted() -> None:
    params = PreciseParamOverrides.model_validate({"kvEventsConfig": {"zmqEndpoint": ""}})
    assert params.producer_parameters() is not None


def test_the_same_setting_given_flat_and_nested_is_refused() -> None:
    with pytest.raises(ValueError, match=r"'blockSizeTokens' and llm-d's 'tokenProcessorConfig\.blockSize'"):
        PreciseParamOverrides.model_validate(
            {"blockSizeTokens": 16, "tokenProcessorConfig": {"blockSize": 64}}
        )
