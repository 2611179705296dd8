"""The JSON schema (draft 2020-12) of EndpointPickerConfig, generated from the models and the registry.

The base document comes from `epp.config.api`; each registered plugin type adds an `if`/`then` clause
that checks `parameters` against that type's own parameters model when `type` names it. The output is
deterministic (sorted keys), so the committed `schemas/endpointpickerconfig.schema.json` can be compared
with `epp schema` byte for byte.
"""

from __future__ import annotations

import functools
import json
import logging
from typing import Any

import jsonschema  # type: ignore[import-untyped]
from pydantic import BaseModel
from pydantic.errors import PydanticInvalidForJsonSchema, PydanticUserError

from epp.config.api import LEGACY_TYPE_NAMES, EndpointPickerConfig
from epp.registry import PluginRegistry, PluginType

__all__ = ["config_schema", "params_def_name", "schema_text", "schema_validator"]

log = logging.getLogger(__name__)

_DRAFT = "https://json-schema.org/draft/2020-12/schema"


def params_def_name(type_name: str) -> str:
    """The `$defs` key of a plugin type's parameters schema."""
    return f"params.{type_name}"


def _strip_titles(node: Any) -> Any:
    """Drop pydantic's generated `title`s (noise such as "Pluginref"); keep property names called title."""
    if isinstance(node, dict):
        return {k: _strip_titles(v) for k, v in node.items() if not (k == "title" and isinstance(v, str))}
    if isinstance(node, list):
        return [_strip_titles(v) for v in node]
    return node


def _model_schema(model: type[BaseModel], prefix: str) -> tuple[dict[str, Any], dict[str, Any]]:
    schema = model.model_json_schema(by_alias=True, ref_template=f"#/$defs/{prefix}{{model}}")
    defs = schema.pop("$defs", {})
    return schema, {f"{prefix}{name}": value for name, value in defs.items()}


def _plugin_schemas(types: tuple[PluginType[Any], ...]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    clauses: list[dict[str, Any]] = []
    defs: dict[str, Any] = {}
    for ptype in types:
        name = ptype.type_name
        try:
            params, nested = _model_schema(ptype.params_model, f"{params_def_name(name)}.")
        except (PydanticInvalidForJsonSchema, PydanticUserError) as exc:
            log.warning("no JSON schema for the parameters of plugin type %s: %s", name, exc)
            params, nested = {"type": "object"}, {}
        if ptype.description:
            params["description"] = ptype.description
        defs[params_def_name(name)] = params
        defs.update(nested)
        clauses.append(_params_clause(name, name))
    return clauses, defs


def _params_clause(type_name: str, params_of: str) -> dict[str, Any]:
    """`if type == type_name then parameters follow params_of's schema` (params_of differs for old names)."""
    return {
        "if": {"properties": {"type": {"const": type_name}}, "required": ["type"]},
        "then": {
            "properties": {
                "parameters": {"anyOf": [{"$ref": f"#/$defs/{params_def_name(params_of)}"}, {"type": "null"}]}
            }
        },
    }


@functools.lru_cache(maxsize=8)
def _schema_for(types: tuple[PluginType[Any], ...]) -> str:
    root, defs = _model_schema(EndpointPickerConfig, "")
    clauses, plugin_defs = _plugin_schemas(types)
    spec = defs["PluginSpec"]
    if types:
        known = {t.type_name for t in types}
        renamed = {old: new for old, new in LEGACY_TYPE_NAMES.items() if new in known and old not in known}
        spec["properties"]["type"]["enum"] = sorted(known | set(renamed))
        for old, new in sorted(renamed.items()):
            clauses.append(_params_clause(old, new))
        spec["allOf"] = clauses
    defs.update(plugin_defs)
    root["$defs"] = defs
    root["$schema"] = _DRAFT
    root["description"] = (
        "EndpointPickerConfig of the epp Endpoint Picker (upstream Gateway API Inference Extension format); "
        "each plugin's parameters are checked against its type's schema."
    )
    schema = _strip_titles(root)
    schema["title"] = "EndpointPickerConfig"
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _types(registry: PluginRegistry) -> tuple[PluginType[Any], ...]:
    return tuple(registry)  # sorted by type name


def schema_text(registry: PluginRegistry) -> str:
    """What `epp schema` prints: the schema as sorted, indented JSON with a trailing newline."""
    return _schema_for(_types(registry))


def config_schema(registry: PluginRegistry) -> dict[str, Any]:
    """The schema as a fresh dict."""
    result: dict[str, Any] = json.loads(schema_text(registry))
    return result


@functools.lru_cache(maxsize=8)
def _validator_for(text: str) -> jsonschema.Draft202012Validator:
    schema = json.loads(text)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def schema_validator(registry: PluginRegistry) -> jsonschema.Draft202012Validator:
    """A compiled validator for the registry's schema (cached while the registry's types are unchanged)."""
    return _validator_for(schema_text(registry))
