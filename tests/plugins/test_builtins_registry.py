"""The built-in catalogue: every upstream type name, its kinds, data keys and parameter schema."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pydantic
import pytest

from epp.framework.plugins import PluginKind
from epp.plugins import BUILTINS, register_builtins
from epp.registry import DuplicatePluginType, PluginRegistry

from ._kit import handle, registry

EXPECTED = {
    "queue-scorer": {PluginKind.SCORER},
    "kv-cache-utilization-scorer": {PluginKind.SCORER},
    "running-requests-size-scorer": {PluginKind.SCORER},
    "lora-affinity-scorer": {PluginKind.SCORER},
    "token-load-scorer": {PluginKind.SCORER},
    "prefix-cache-scorer": {PluginKind.SCORER},
    "approx-prefix-cache-producer": {
        PluginKind.DATA_PRODUCER,
        PluginKind.PRE_REQUEST,
        PluginKind.RESPONSE_RECEIVED,
    },
    "inflight-load-producer": {
        PluginKind.DATA_PRODUCER,
        PluginKind.PRE_REQUEST,
        PluginKind.RESPONSE_COMPLETE,
    },
    "max-score-picker": {PluginKind.PICKER},
    "random-picker": {PluginKind.PICKER},
    "weighted-random-picker": {PluginKind.PICKER},
    "single-profile-handler": {PluginKind.PROFILE_HANDLER},
    "header-based-testing-filter": {PluginKind.FILTER},
    "prefix-cache-affinity-filter": {PluginKind.FILTER},
    "low-queue-filter": {PluginKind.FILTER},
    "least-queue-filter": {PluginKind.FILTER},
    "least-kv-cache-filter": {PluginKind.FILTER},
    "lora-affinity-filter": {PluginKind.FILTER},
    "decision-tree-filter": {PluginKind.FILTER},
    "openai-parser": {PluginKind.PARSER},
    "passthrough-parser": {PluginKind.PARSER},
    "destination-endpoint-served-verifier": {PluginKind.RESPONSE_RECEIVED},
}

PARAMETERS = {
    "token-load-scorer": {"queueThresholdTokens"},
    "prefix-cache-scorer": {
        "autoTune",
        "blockSizeTokens",
        "blockSize",
        "hashBlockSize",
        "maxPrefixBlocksToMatch",
        "maxPrefixTokensToMatch",
        "lruCapacityPerServer",
    },
    "approx-prefix-cache-producer": {
        "autoTune",
        "blockSizeTokens",
        "blockSize",
        "hashBlockSize",
        "maxPrefixBlocksToMatch",
        "maxPrefixTokensToMatch",
        "lruCapacityPerServer",
    },
    "max-score-picker": {"maxNumOfEndpoints"},
    "random-picker": {"maxNumOfEndpoints"},
    "weighted-random-picker": {"maxNumOfEndpoints"},
    "prefix-cache-affinity-filter": {"affinityThreshold", "explorationProbability", "maxTTFTPenaltyMs"},
    "low-queue-filter": {"threshold"},
    "lora-affinity-filter": {"threshold"},
    "decision-tree-filter": {"current", "nextOnSuccess", "nextOnFailure", "nextOnSuccessOrFailure"},
    "passthrough-parser": {"modelHeader"},
}


def test_every_upstream_type_is_registered_with_its_kinds() -> None:
    reg = registry()
    for type_name, kinds in EXPECTED.items():
        assert type_name in reg, type_name
        assert reg.get(type_name).kinds == kinds, type_name


@pytest.mark.parametrize("type_name", sorted(EXPECTED))
def test_parameters_appear_in_the_json_schema_with_descriptions(type_name: str) -> None:
    schema = registry().get(type_name).params_model.model_json_schema()
    json.dumps(schema)  # serialisable
    if "$ref" in schema:  # recursive models (decision-tree-filter) put the root in $defs
        schema = schema["$defs"][schema["$ref"].rsplit("/", 1)[-1]]
    assert schema.get("additionalProperties") is False
    props = schema.get("properties", {})
    assert set(props) == PARAMETERS.get(type_name, set())
    for name, prop in props.items():
        assert prop.get("description"), f"{type_name}.{name} has no description"


@pytest.mark.parametrize("type_name", sorted(set(EXPECTED) - {"decision-tree-filter"}))
def test_every_type_builds_with_default_parameters(type_name: str) -> None:
    plugin = registry().get(type_name).build("my-name", None, handle())
    assert plugin.typed_name.type == type_name
    assert plugin.typed_name.name == "my-name"


@pytest.mark.parametrize("type_name", sorted(EXPECTED))
def test_unknown_parameter_keys_are_rejected(type_name: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="bogus"):
        registry().get(type_name).build("x", {"bogus": 1}, handle())


def test_default_producers_and_data_keys() -> None:
    reg = registry()
    assert reg.default_producer("PrefixCacheMatchInfo") == "approx-prefix-cache-producer"
    assert reg.default_producer("InFlightLoad") == "inflight-load-producer"
    assert reg.get("prefix-cache-scorer").consumes == {"PrefixCacheMatchInfo"}
    assert reg.get("prefix-cache-affinity-filter").consumes == {"PrefixCacheMatchInfo"}
    assert reg.get("token-load-scorer").consumes == {"InFlightLoad"}
    assert reg.get("approx-prefix-cache-producer").produces == {"PrefixCacheMatchInfo"}
    assert reg.get("inflight-load-producer").produces == {"InFlightLoad"}
    assert reg.get("approx-prefix-cache-producer").stateful
    assert reg.get("inflight-load-producer").stateful


def test_registering_twice_is_an_error() -> None:
    reg = registry()
    with pytest.raises(DuplicatePluginType):
        register_builtins(reg)


def test_builtins_hold_distinct_names() -> None:
    names = [t.type_name for t in BUILTINS]
    assert len(names) == len(set(names))


def test_importing_the_package_registers_nothing() -> None:
    # a fresh interpreter: importing every plugin module leaves a new registry empty
    code = (
        "import epp.plugins, pkgutil, importlib\n"
        "for sub in ('scorers', 'producers', 'prefix', 'pickers', 'profile', 'filters', 'parsers'):\n"
        "    pkg = importlib.import_module('epp.plugins.' + sub)\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        importlib.import_module(m.name)\n"
        "from epp.registry import PluginRegistry\n"
        "assert len(PluginRegistry()) == 0\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


def test_scorers_declare_a_category() -> None:
    reg = registry()
    categories = {}
    for type_name, kinds in EXPECTED.items():
        if PluginKind.SCORER in kinds:
            categories[type_name] = reg.get(type_name).build("s", None, handle()).category.value
    assert categories == {
        "queue-scorer": "distribution",
        "kv-cache-utilization-scorer": "distribution",
        "running-requests-size-scorer": "distribution",
        "lora-affinity-scorer": "affinity",
        "token-load-scorer": "distribution",
        "prefix-cache-scorer": "affinity",
    }


def test_plugin_modules_import_cleanly() -> None:
    for entry in BUILTINS:
        module = importlib.import_module(entry.factory.__module__)
        assert module.__doc__, f"{module.__name__} has no docstring"
    assert isinstance(PluginRegistry(), PluginRegistry)
