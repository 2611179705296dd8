"""The generated JSON schema: committed copy up to date, valid, and in agreement with the loader."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from pydantic import BaseModel, ConfigDict

import epp.plugins
from epp.builtins import default_registry
from epp.config import config_schema, load_config, schema_text
from epp.config.problems import issues_from_jsonschema
from epp.errors import ConfigError
from epp.framework.plugins import PluginKind
from epp.registry import PluginType

from .cfg_fakes import fake_registry

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "schemas" / "endpointpickerconfig.schema.json"
HERE = Path(__file__).parent
DOCS = (
    sorted((ROOT / "profiles").glob("*.yaml"))
    + sorted((ROOT / "benchmarks" / "profiles").glob("*.yaml"))
    + sorted((HERE / "valid").glob("*.yaml"))
)

needs_catalogue = pytest.mark.skipif(
    not hasattr(epp.plugins, "register_builtins"), reason="the built-in plugin catalogue is not there yet"
)


@needs_catalogue
def test_committed_schema_is_up_to_date() -> None:
    assert COMMITTED.read_text() == schema_text(default_registry()), (
        "schemas/endpointpickerconfig.schema.json is stale: run `make schema`"
    )


def test_schema_is_valid_draft_2020_12() -> None:
    schema = config_schema(fake_registry())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


def test_each_plugin_type_contributes_its_parameters() -> None:
    registry = fake_registry()
    schema = config_schema(registry)
    spec = schema["$defs"]["PluginSpec"]
    types = [c["if"]["properties"]["type"]["const"] for c in spec["allOf"]]
    assert set(registry.names()) <= set(types)
    # plus the upstream names of renamed types, so old configs validate in editors too
    assert set(spec["properties"]["type"]["enum"]) == set(registry.names()) | {
        "kv-cache-scorer",
        "model-server-protocol-metrics",
    }
    low_queue = schema["$defs"]["params.low-queue-filter"]
    assert low_queue["additionalProperties"] is False and "threshold" in low_queue["properties"]


def test_output_is_deterministic() -> None:
    text = schema_text(fake_registry())
    assert text.endswith("}\n")
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


@needs_catalogue
@pytest.mark.parametrize("path", DOCS, ids=[p.name for p in DOCS])
def test_valid_documents_pass_the_committed_schema(path: Path) -> None:
    validator = jsonschema.Draft202012Validator(json.loads(COMMITTED.read_text()))
    assert list(validator.iter_errors(yaml.safe_load(path.read_text()))) == []


def test_schema_rejects_what_the_loader_rejects() -> None:
    validator = jsonschema.Draft202012Validator(config_schema(fake_registry()))
    doc = {
        "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
        "kind": "EndpointPickerConfig",
        "plugins": [{"type": "low-queue-filter", "parameters": {"treshold": 3}}],
        "schedulingProfiles": [{"name": "p", "plugins": [{"pluginRef": "low-queue-filter", "weight": "1"}]}],
    }
    assert not validator.is_valid(doc)
    issues = issues_from_jsonschema(validator.iter_errors(doc))
    assert [(i.path, i.message) for i in issues] == [
        (
            ("plugins", 0, "parameters", "treshold"),
            "unknown key (known: threshold); did you mean 'threshold'?",
        ),
        (("schedulingProfiles", 0, "plugins", 0, "weight"), "expected a number, got a string '1'"),
    ]


class LaxParams(BaseModel):
    """A third-party model that coerces "5" to 5: only the schema sees the quoted number."""

    model_config = ConfigDict(extra="forbid")
    size: int = 1


def test_schema_findings_the_models_miss_are_reported_once_with_their_line() -> None:
    registry = fake_registry()
    registry.register(
        PluginType("lax-scorer", LaxParams, lambda n, p, h: None, frozenset({PluginKind.SCORER}))
    )
    text = (
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
        "plugins:\n- name: lax\n  type: lax-scorer\n  parameters:\n    size: '5'\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(text, registry=registry, source="lax.yaml", environ={})
    assert [str(p) for p in info.value.problems] == [
        "lax.yaml:7: plugins[0].parameters.size: plugin 'lax' (type: lax-scorer): parameters.size: "
        "expected an integer, got a string '5'"
    ]
