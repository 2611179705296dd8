"""Turning pydantic and jsonschema errors into short, located messages.

Both validators report against the same document, so both are rendered in the same vocabulary: a path
into the YAML and a message such as `unknown key (known: name, type, parameters)`, `missing required key
'type'` or `expected a number, got a string '2'`. The loader attaches file and line.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import jsonschema  # type: ignore[import-untyped]
from pydantic import BaseModel, ValidationError

from epp.config.api import describe_value
from epp.config.yamlpos import YamlPath

__all__ = ["Issue", "issues_from_jsonschema", "issues_from_pydantic", "known_keys", "unknown_key_message"]


@dataclass(frozen=True, slots=True)
class Issue:
    """A problem at a path, before it is given a file and a line."""

    path: YamlPath
    message: str


_TYPE_WORDS: dict[str, str] = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "a boolean (true or false)",
    "bool_parsing": "a boolean (true or false)",
    "list_type": "a list",
    "tuple_type": "a list",
    "set_type": "a list",
    "frozen_set_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "dataclass_type": "a mapping",
}

_JSON_TYPE_WORDS: dict[str, str] = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean (true or false)",
    "array": "a list",
    "object": "a mapping",
    "null": "null",
}


def _field_key(name: str, info: Any) -> str:
    alias = info.validation_alias if isinstance(info.validation_alias, str) else info.alias
    return alias if isinstance(alias, str) else name


def known_keys(model: type[BaseModel]) -> list[str]:
    """The keys a model accepts in YAML (aliases where it has them), in declaration order."""
    return [_field_key(name, info) for name, info in model.model_fields.items()]


def unknown_key_message(noun: str, key: Any, known: Sequence[str]) -> str:
    if not known:
        return f"unknown {noun} (this takes no {noun}s)"
    msg = f"unknown {noun} (known: {', '.join(known)})"
    close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
    if close:
        msg += f"; did you mean '{close[0]}'?"
    return msg


def _unwrap(annotation: Any) -> Any:
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin is typing.Union or origin is types.UnionType:
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return None
            annotation = args[0]
        else:
            return annotation


def _model_at(model: type[BaseModel] | None, loc: Sequence[Any]) -> type[BaseModel] | None:
    """The model that validates the mapping at `loc` below `model`, when it can be worked out."""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        if current is None:
            return None
        origin = typing.get_origin(current)
        if isinstance(part, int) and origin in (list, tuple, set, frozenset, typing.Sequence):
            args = typing.get_args(current)
            current = args[0] if args else None
        elif isinstance(current, type) and issubclass(current, BaseModel):
            for name, info in current.model_fields.items():
                if part in (name, _field_key(name, info)):
                    current = info.annotation
                    break
            else:
                return None
        elif origin is dict:
            current = typing.get_args(current)[1]
        else:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _pydantic_message(err: Any, model: type[BaseModel] | None, noun: str) -> str:
    kind: str = err["type"]
    loc = tuple(err["loc"])
    value = err.get("input")
    if kind == "extra_forbidden":
        parent = _model_at(model, loc[:-1])
        return unknown_key_message(noun, loc[-1] if loc else "", known_keys(parent) if parent else [])
    if kind == "missing":
        return f"missing required {noun} '{loc[-1]}'" if loc else f"missing required {noun}"
    if kind in ("value_error", "assertion_error"):
        ctx = err.get("ctx") or {}
        return str(ctx.get("error") or err["msg"])
    if kind in _TYPE_WORDS:
        return f"expected {_TYPE_WORDS[kind]}, got {describe_value(value)}"
    if kind == "literal_error":
        return f"must be {(err.get('ctx') or {}).get('expected', '?')}, got {describe_value(value)}"
    if kind == "string_too_short" and (err.get("ctx") or {}).get("min_length") == 1:
        return "must not be empty"
    msg: str = err["msg"]
    if msg.startswith("Input should be "):
        msg = "must be " + msg[len("Input should be ") :]
    elif msg and msg[0].isupper() and not msg[:2].isupper():
        msg = msg[0].lower() + msg[1:]
    return f"{msg}, got {describe_value(value)}"


def issues_from_pydantic(
    exc: ValidationError, model: type[BaseModel] | None, *, noun: str = "key", prefix: YamlPath = ()
) -> list[Issue]:
    """One issue per pydantic error; `prefix` is where the validated value sits in the document."""
    out: list[Issue] = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        out.append(Issue((*prefix, *loc), _pydantic_message(err, model, noun)))
    return out


def _is_null_branch(errors: list[jsonschema.ValidationError]) -> bool:
    return len(errors) == 1 and errors[0].validator == "type" and errors[0].validator_value == "null"


def _is_type_error_here(error: jsonschema.ValidationError) -> bool:
    return error.validator == "type" and not error.relative_path


def _describe_expected(error: jsonschema.ValidationError) -> str:
    node: jsonschema.ValidationError | None = error
    while node is not None:
        schema = node.schema
        if isinstance(schema, dict) and isinstance(schema.get("description"), str):
            return str(schema["description"])
        node = node.parent
    return f"a value matching the pattern {error.validator_value!r}"


NounFor = Callable[[YamlPath], str]


def _schema_error_issues(
    error: jsonschema.ValidationError, noun_for: NounFor, prefix: YamlPath
) -> list[Issue]:
    path: YamlPath = (*prefix, *error.absolute_path)
    noun = noun_for(path)
    instance = error.instance
    validator = error.validator
    value = error.validator_value
    if validator in ("anyOf", "oneOf") and error.context:
        branches: dict[Any, list[jsonschema.ValidationError]] = {}
        for sub in error.context:
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
        # an optional key is `anyOf: [X, null]`: what matters is why X failed, every reason of it
        real = [errs for errs in branches.values() if not _is_null_branch(errs)]
        # of `anyOf: [integer, string-with-pattern]`, explain the branch of the value's own type
        right_type = [errs for errs in real if not any(_is_type_error_here(e) for e in errs)]
        if len(right_type) == 1:
            real = right_type
        if len(real) == 1:
            out: list[Issue] = []
            for sub in real[0]:
                out.extend(_schema_error_issues(sub, noun_for, prefix))
            return out
        best = jsonschema.exceptions.best_match([e for errs in real for e in errs])
        if best is not None:
            return _schema_error_issues(best, noun_for, prefix)
    if validator == "additionalProperties" and isinstance(instance, dict):
        known = list((error.schema.get("properties") or {}) if isinstance(error.schema, dict) else [])
        return [
            Issue((*path, key), unknown_key_message(noun, key, known)) for key in instance if key not in known
        ]
    if validator == "required" and isinstance(instance, dict):
        return [
            Issue((*path, key), f"missing required {noun} '{key}'") for key in value if key not in instance
        ]
    if validator == "type":
        wanted = value if isinstance(value, list) else [value]
        words = " or ".join(_JSON_TYPE_WORDS.get(str(w), str(w)) for w in wanted)
        msg = f"expected {words}, got {describe_value(instance)}"
    elif validator == "const":
        msg = f"must be {value!r}, got {describe_value(instance)}"
    elif validator == "enum":
        shown = ", ".join(str(v) for v in value[:40]) + (", ..." if len(value) > 40 else "")
        msg = f"must be one of: {shown}; got {describe_value(instance)}"
    elif validator == "pattern":
        msg = f"expected {_describe_expected(error)}, got {describe_value(instance)}"
    elif validator in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        op = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[
            str(validator)
        ]
        msg = f"must be {op} {value}, got {describe_value(instance)}"
    elif validator == "minLength" and value == 1:
        msg = "must not be empty"
    elif validator in ("minLength", "maxLength", "minItems", "maxItems"):
        what = "characters" if "Length" in str(validator) else "items"
        bound = "at least" if str(validator).startswith("min") else "at most"
        msg = f"must have {bound} {value} {what}"
    else:
        msg = error.message
    return [Issue(path, msg)]


def issues_from_jsonschema(
    errors: Iterable[jsonschema.ValidationError],
    *,
    noun_for: NounFor = lambda _path: "key",
    prefix: YamlPath = (),
) -> list[Issue]:
    """Issues for jsonschema errors, in the same words as `issues_from_pydantic`.

    `noun_for(path)` names what the keys at a path are ("key", or "parameter" inside plugin parameters).
    """
    out: list[Issue] = []
    for error in errors:
        out.extend(_schema_error_issues(error, noun_for, prefix))
    return out
