"""`passthrough-parser`: no body parsing at all (for protocols the EPP does not understand).

The model comes from a header (`modelHeader`, default `x-gateway-model-name`) when present, else it is
empty; there is no prompt, so prefix-cache plugins see nothing to match.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from epp.framework.handle import Handle
from epp.framework.plugins import PluginKind
from epp.framework.types import ApiKind, InferenceRequest, TypedName
from epp.plugins.common import header_value
from epp.plugins.parsers.openai import DEFAULT_FAIRNESS_ID, FAIRNESS_ID_HEADER, OBJECTIVE_HEADER
from epp.registry import PluginType

__all__ = ["PASSTHROUGH_PARSER", "PassthroughParams", "PassthroughParser"]

TYPE_NAME = "passthrough-parser"
DEFAULT_MODEL_HEADER = "x-gateway-model-name"


class PassthroughParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    modelHeader: str = Field(
        default=DEFAULT_MODEL_HEADER,
        min_length=1,
        description="Request header that carries the model name (the model is empty without it).",
    )


@dataclass(frozen=True, slots=True)
class PassthroughParser:
    typed_name: TypedName
    model_header: str = DEFAULT_MODEL_HEADER

    def parse(self, request_id: str, path: str, headers: Mapping[str, str], body: bytes) -> InferenceRequest:
        model = header_value(headers, self.model_header) or ""
        return InferenceRequest(
            request_id=request_id,
            model=model,
            target_model=model,
            api=ApiKind.NONE,
            headers=headers,
            objective=header_value(headers, OBJECTIVE_HEADER) or "",
            fairness_id=header_value(headers, FAIRNESS_ID_HEADER) or DEFAULT_FAIRNESS_ID,
            size_bytes=len(body),
        )


def _factory(name: str, params: PassthroughParams, handle: Handle) -> PassthroughParser:
    return PassthroughParser(TypedName(TYPE_NAME, name), params.modelHeader.lower())


PASSTHROUGH_PARSER = PluginType(
    type_name=TYPE_NAME,
    params_model=PassthroughParams,
    factory=_factory,
    kinds=frozenset({PluginKind.PARSER}),
    description="Does not parse the body; the model comes from a header (default x-gateway-model-name).",
)
