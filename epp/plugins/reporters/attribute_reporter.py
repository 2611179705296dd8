"""`request-attribute-reporter`: a value computed from the response's usage, reported to the proxy.

Upstream's plugin (GIE `requestcontrol/requestattributereporter`): one attribute, whose CEL `expression`
over `usage` (the response's token usage, numbers as doubles as in a protobuf Struct) gives a number,
optionally only when the CEL `condition` is true. The value, truncated to an integer, is written to the
ext_proc dynamic metadata `<namespace>.<name>` (namespace default `envoy.lb`) of the response's last
message; zero is not written. Evaluated at the end of the response, in memory (no I/O); an evaluation
error is logged and nothing is written. Expressions are compiled at config load (`epp.plugins.reporters.cel`
is the CEL subset supported), so a bad one is a load error at its line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from epp.framework.cycle import CycleState
from epp.framework.handle import Handle
from epp.framework.plugins import PluginKind
from epp.framework.types import InferenceRequest, ResponseInfo, SchedulingResult, TypedName
from epp.plugins.reporters.cel import CelError, CelProgram, compile_cel
from epp.registry import PluginType

__all__ = ["REQUEST_ATTRIBUTE_REPORTER", "RequestAttributeReporter", "usage_of"]

log = logging.getLogger(__name__)

TYPE_NAME = "request-attribute-reporter"
DEFAULT_NAMESPACE = "envoy.lb"
_VARIABLES = frozenset({"usage"})
_STRICT = ConfigDict(extra="forbid", frozen=True)


def _compiles(source: str) -> str:
    try:
        compile_cel(source, _VARIABLES)
    except CelError as exc:
        raise ValueError(f"invalid CEL: {exc}") from None
    return source


class AttributeKey(BaseModel):
    model_config = _STRICT

    namespace: str = Field(
        DEFAULT_NAMESPACE, min_length=1, description="Dynamic-metadata namespace the value is written to."
    )
    name: str = Field(min_length=1, description="Key of the value within the namespace.")


class Attribute(BaseModel):
    model_config = _STRICT

    key: AttributeKey = Field(description="Where in the dynamic metadata the value goes.")
    expression: str = Field(
        min_length=1, description="CEL over `usage` giving a number (truncated to an integer)."
    )
    condition: str = Field(
        "", description="CEL over `usage` giving a bool: report only when true; empty = always."
    )

    @field_validator("expression")
    @classmethod
    def _expression_compiles(cls, value: str) -> str:
        return _compiles(value)

    @field_validator("condition")
    @classmethod
    def _condition_compiles(cls, value: str) -> str:
        return _compiles(value) if value.strip() else ""


class RequestAttributeReporterParams(BaseModel):
    """Exactly one attribute, as upstream."""

    model_config = _STRICT

    attributes: tuple[Attribute, ...] = Field(
        description="The attribute to report (exactly one, as upstream).",
        json_schema_extra={"minItems": 1, "maxItems": 1},
    )

    @field_validator("attributes")
    @classmethod
    def _exactly_one(cls, value: tuple[Attribute, ...]) -> tuple[Attribute, ...]:
        if len(value) != 1:
            raise ValueError(f"exactly one attribute is supported (as upstream), got {len(value)}")
        return value


def usage_of(response: ResponseInfo) -> dict[str, Any]:
    """The response's usage as CEL sees it (upstream: the Usage struct as a protobuf Struct: doubles).

    Empty when the response reported no token usage, so `has(usage.prompt_tokens)` is false.
    """
    if not (response.prompt_tokens or response.completion_tokens):
        return {}
    usage: dict[str, Any] = {
        "prompt_tokens": float(response.prompt_tokens),
        "completion_tokens": float(response.completion_tokens),
        "total_tokens": float(response.prompt_tokens + response.completion_tokens),
    }
    if response.cached_tokens:
        usage["prompt_tokens_details"] = {"cached_tokens": float(response.cached_tokens)}
    return usage


@dataclass(frozen=True, slots=True)
class RequestAttributeReporter:
    typed_name: TypedName
    namespace: str
    key: str
    expression: CelProgram
    condition: CelProgram | None

    def value_for(self, usage: dict[str, Any]) -> int | None:
        """The integer to report for `usage`, or None (condition false, zero, or an evaluation error)."""
        env = {"usage": usage}
        try:
            if self.condition is not None:
                ok = self.condition.evaluate(env)
                if ok is not True:
                    if not isinstance(ok, bool):
                        log.error(
                            "%s: condition %r gave %r, not a bool",
                            self.typed_name.name,
                            self.condition.source,
                            ok,
                        )
                    return None
            value = self.expression.evaluate(env)
        except CelError as exc:
            log.error("%s: cannot evaluate over usage %s: %s", self.typed_name.name, usage, exc)
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            log.error(
                "%s: expression %r gave %r, not a number", self.typed_name.name, self.expression.source, value
            )
            return None
        try:
            number = int(value)
        except (OverflowError, ValueError):
            return None
        return number or None

    def response_complete(
        self, cycle: CycleState, request: InferenceRequest, response: ResponseInfo, result: SchedulingResult
    ) -> None:
        if not response.complete:
            return  # the client went away: there is no last message to carry it
        value = self.value_for(usage_of(response))
        if value is not None:
            response.dynamic_metadata.setdefault(self.namespace, {})[self.key] = float(value)


def _factory(name: str, params: RequestAttributeReporterParams, handle: Handle) -> RequestAttributeReporter:
    (attribute,) = params.attributes
    return RequestAttributeReporter(
        TypedName(TYPE_NAME, name),
        namespace=attribute.key.namespace,
        key=attribute.key.name,
        expression=compile_cel(attribute.expression, _VARIABLES),
        condition=compile_cel(attribute.condition, _VARIABLES) if attribute.condition else None,
    )


REQUEST_ATTRIBUTE_REPORTER = PluginType(
    type_name=TYPE_NAME,
    params_model=RequestAttributeReporterParams,
    factory=_factory,
    kinds=frozenset({PluginKind.RESPONSE_COMPLETE}),
    description="Reports a CEL expression over the response's token usage to the proxy as dynamic metadata.",
)
