"""`openai-parser`: OpenAI-style JSON bodies (completions, chat, responses, conversations, embeddings).

The API is chosen by the path's suffix (query string and trailing slash ignored; default completions):

| suffix | required | prefix material (what the prefix-cache index hashes) |
|---|---|---|
| `/conversations` | non-empty `items` list | JSON of `items` |
| `/responses` | `input` | JSON of `[instructions, tools, input]` (those present) |
| `/chat/completions` | non-empty `messages` list of objects | JSON of `messages` (the whole conversation) |
| `/completions` (or anything else) | non-empty `prompt` | prompt text, or token ids as little-endian uint32 |
| `/embeddings` | `input` | JSON of `input` |

JSON material is canonical (sorted keys, no spaces) so equal conversations hash equally. Then `model` must
be a string. Every failure is a `RequestError(BAD_REQUEST)` with upstream's message; hostile bodies (deep
nesting, huge numbers, NaN, invalid UTF-8, wrong types) never raise anything else.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from epp.errors import ErrorCode, RequestError
from epp.framework.handle import Handle
from epp.framework.plugins import PluginKind
from epp.framework.types import ApiKind, InferenceRequest, TypedName
from epp.plugins.common import header_value
from epp.registry import EmptyParams, PluginType

__all__ = [
    "FAIRNESS_ID_HEADER",
    "OBJECTIVE_HEADER",
    "OPENAI_PARSER",
    "OpenAIParser",
    "api_for_path",
    "bad_request",
]

TYPE_NAME = "openai-parser"
OBJECTIVE_HEADER = "x-gateway-inference-objective"
FAIRNESS_ID_HEADER = "x-gateway-inference-fairness-id"
DEFAULT_FAIRNESS_ID = "default-flow"

_MAX_TOKEN_ID = 2**32 - 1

# (suffix, api) in matching order: "/chat/completions" must be tried before "/completions"
_SUFFIXES: tuple[tuple[str, ApiKind], ...] = (
    ("/conversations", ApiKind.CONVERSATIONS),
    ("/responses", ApiKind.RESPONSES),
    ("/chat/completions", ApiKind.CHAT_COMPLETIONS),
    ("/completions", ApiKind.COMPLETIONS),
    ("/embeddings", ApiKind.EMBEDDINGS),
)

_MESSAGES = {
    ApiKind.CONVERSATIONS: "invalid conversations request: must have items field",
    ApiKind.RESPONSES: "invalid responses request: must have input field",
    ApiKind.CHAT_COMPLETIONS: "invalid chat completions request: must have valid messages field",
    ApiKind.COMPLETIONS: "invalid completions request: must have prompt field",
    ApiKind.EMBEDDINGS: "invalid embeddings request: must have input field",
}


def bad_request(message: str) -> RequestError:
    return RequestError(ErrorCode.BAD_REQUEST, message)


def api_for_path(path: str) -> ApiKind:
    """The API a request path addresses; anything unrecognised is completions (as upstream)."""
    path = path.split("?", 1)[0].split("#", 1)[0].rstrip("/")
    for suffix, api in _SUFFIXES:
        if path.endswith(suffix):
            return api
    return ApiKind.COMPLETIONS


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:32]} is out of range")
    return value


#: One decoder for every request (`json.loads` with hooks would build a new JSONDecoder per call).
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_parse_float)


def _decode(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
        if text.startswith("\ufeff"):  # as json.loads says it
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        return _DECODER.decode(text)
    except UnicodeDecodeError:
        raise bad_request("error unmarshaling request body: body is not valid UTF-8") from None
    except RecursionError:
        raise bad_request("error unmarshaling request body: JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, oversized integers, rejected constants
        raise bad_request(f"error unmarshaling request body: {_short(str(exc))}") from None


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _canonical_json(value: Any) -> bytes:
    try:
        text = json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    except (RecursionError, ValueError, TypeError):
        raise bad_request("error unmarshaling request body: JSON nested too deeply") from None
    return text.encode("utf-8", "surrogatepass")


def _is_token_list(value: list[Any]) -> bool:
    return all(type(t) is int and 0 <= t <= _MAX_TOKEN_ID for t in value)


def _pack_tokens(tokens: list[int]) -> bytes:
    return struct.pack(f"<{len(tokens)}I", *tokens)


@dataclass(frozen=True, slots=True)
class _Prompt:
    material: bytes
    prompt: str | None = None
    token_ids: tuple[int, ...] | None = None


def _completions_prompt(prompt: Any) -> _Prompt | None:
    """Accepts a string, a list of strings, a list of token ids, or a list of token-id lists."""
    if isinstance(prompt, str):
        return _Prompt(prompt.encode("utf-8", "surrogatepass"), prompt=prompt) if prompt else None
    if not isinstance(prompt, list) or not prompt:
        return None
    if all(isinstance(p, str) for p in prompt):
        if len(prompt) == 1:
            return _completions_prompt(prompt[0])
        return _Prompt(_canonical_json(prompt))
    if _is_token_list(prompt):
        return _Prompt(_pack_tokens(prompt), token_ids=tuple(prompt))
    if all(isinstance(p, list) and p and _is_token_list(p) for p in prompt):
        flat = [t for p in prompt for t in p]
        return _Prompt(_pack_tokens(flat), token_ids=tuple(flat))
    return None


def _required(api: ApiKind, body: dict[str, Any]) -> tuple[_Prompt, list[Any] | None]:
    """The prefix material (and chat messages) of a body, or a 400 naming the missing field."""
    if api is ApiKind.CHAT_COMPLETIONS:
        messages = body.get("messages")
        if isinstance(messages, list) and messages and all(isinstance(m, dict) for m in messages):
            return _Prompt(_canonical_json(messages)), messages
    elif api is ApiKind.COMPLETIONS:
        prompt = _completions_prompt(body.get("prompt"))
        if prompt is not None:
            return prompt, None
    elif api is ApiKind.CONVERSATIONS:
        items = body.get("items")
        if isinstance(items, list) and items:
            return _Prompt(_canonical_json(items)), None
    elif api is ApiKind.RESPONSES:
        if body.get("input") is not None:
            parts = [body[k] for k in ("instructions", "tools", "input") if body.get(k) is not None]
            return _Prompt(_canonical_json(parts)), None
    elif api is ApiKind.EMBEDDINGS and body.get("input") is not None:
        return _Prompt(_canonical_json(body["input"])), None
    raise bad_request(_MESSAGES[api])


@dataclass(frozen=True, slots=True)
class OpenAIParser:
    typed_name: TypedName

    def parse(self, request_id: str, path: str, headers: Mapping[str, str], body: bytes) -> InferenceRequest:
        decoded = _decode(body)
        if not isinstance(decoded, dict):
            raise bad_request("error unmarshaling request body: the body must be a JSON object")
        api = api_for_path(path or "/v1/completions")
        prompt, messages = _required(api, decoded)
        model = decoded.get("model")
        if not isinstance(model, str):
            raise bad_request("model not found in request body")
        salt = decoded.get("cache_salt")
        if salt is not None and not isinstance(salt, str):
            raise bad_request("cache_salt must be a string")
        return InferenceRequest(
            request_id=request_id,
            model=model,
            target_model=model,
            api=api,
            prefix_material=prompt.material,
            prompt=prompt.prompt,
            messages=messages,
            token_ids=prompt.token_ids,
            body=decoded,
            headers=headers,
            objective=header_value(headers, OBJECTIVE_HEADER) or "",
            fairness_id=header_value(headers, FAIRNESS_ID_HEADER) or DEFAULT_FAIRNESS_ID,
            cache_salt=salt or "",
            stream=decoded.get("stream") is True,
            size_bytes=len(body),
        )


def _factory(name: str, params: EmptyParams, handle: Handle) -> OpenAIParser:
    return OpenAIParser(TypedName(TYPE_NAME, name))


OPENAI_PARSER = PluginType(
    type_name=TYPE_NAME,
    params_model=EmptyParams,
    factory=_factory,
    kinds=frozenset({PluginKind.PARSER}),
    description="Parses OpenAI-style JSON bodies (completions, chat, responses, conversations, embeddings).",
)
