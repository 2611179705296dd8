"""OpenAI-compatible request validation and response shapes, as vLLM's server produces them.

Pure functions: `parse_request` turns a JSON body into a `ParsedRequest` (token ids per prompt, the
adapter, limits, streaming options) or raises `ApiError` with vLLM's status, type and message;
the `*_chunk` / `*_response` builders produce the bodies of streaming and non-streaming replies.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from epp.tools.sim.config import SimConfig
from epp.tools.sim.tokenizer import Tokenizer, render_chat

__all__ = [
    "ApiError",
    "ChoiceState",
    "ParsedRequest",
    "chat_chunk",
    "chat_response",
    "completion_chunk",
    "completion_response",
    "error_body",
    "parse_request",
    "usage_body",
]

Kind = Literal["completion", "chat"]


class ApiError(Exception):
    """An error reply: HTTP status, vLLM error type and message."""

    def __init__(self, status: int, message: str, err_type: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.err_type = err_type or {404: "NotFoundError", 503: "ServiceUnavailableError"}.get(
            status, "BadRequestError" if status < 500 else "InternalServerError"
        )


def error_body(err: ApiError) -> dict[str, Any]:
    return {
        "object": "error",
        "message": err.message,
        "type": err.err_type,
        "param": None,
        "code": err.status,
    }


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    kind: Kind
    model: str
    lora: str | None
    prompts: tuple[tuple[int, ...], ...]
    max_tokens: int
    stream: bool
    include_usage: bool
    continuous_usage: bool


def parse_request(
    kind: Kind, body: Any, config: SimConfig, tokenizer: Tokenizer, *, for_render: bool = False
) -> ParsedRequest:
    """Validate an OpenAI completions / chat body; raise ApiError the way vLLM would."""
    if not isinstance(body, Mapping):
        raise ApiError(400, "The request body must be a JSON object.")
    model = body.get("model")
    if model is None:
        model = config.model
    if not isinstance(model, str):
        raise ApiError(400, "'model' must be a string.")
    if model not in config.served_models:
        raise ApiError(404, f"The model `{model}` does not exist.")
    lora = None if model == config.model else model

    if kind == "completion":
        prompts = _completion_prompts(body.get("prompt"), tokenizer)
    else:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "'messages' must be a non-empty list of messages.")
        try:
            prompts = (tuple(tokenizer.encode(render_chat(messages))),)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from exc

    n = body.get("n", 1)
    if n is not None and (not _is_int(n) or n != 1):
        raise ApiError(400, "Only n=1 is supported by the simulator.")
    max_tokens = _max_tokens(kind, body, config)
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be a boolean.")
    include_usage, continuous = _stream_options(body.get("stream_options"), stream)

    limit = config.effective_max_model_len
    for tokens in prompts:
        if not for_render and len(tokens) + max_tokens > limit:
            raise ApiError(
                400,
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{len(tokens) + max_tokens} tokens ({len(tokens)} in the messages, {max_tokens} in the "
                "completion). Please reduce the length of the messages or completion.",
            )
    return ParsedRequest(kind, model, lora, prompts, max_tokens, stream, include_usage, continuous)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _completion_prompts(prompt: Any, tokenizer: Tokenizer) -> tuple[tuple[int, ...], ...]:
    if prompt is None:
        raise ApiError(400, "'prompt' is required.")
    if isinstance(prompt, str):
        items: list[Any] = [prompt]
    elif isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt):
        items = [prompt]
    elif isinstance(prompt, list) and prompt:
        items = prompt
    else:
        raise ApiError(400, "'prompt' must be a string, a list of strings or a list of token ids.")
    out: list[tuple[int, ...]] = []
    vocab = tokenizer.vocab_size
    for item in items:
        if isinstance(item, str):
            tokens = tuple(tokenizer.encode(item))
        elif isinstance(item, list) and all(_is_int(t) for t in item):
            bad = next((t for t in item if not 0 <= t < vocab), None)
            if bad is not None:
                raise ApiError(400, f"Token id {bad} is out of vocabulary (size {vocab}).")
            tokens = tuple(item)
        else:
            raise ApiError(400, "'prompt' must be a string, a list of strings or a list of token ids.")
        if not tokens:
            raise ApiError(400, "The prompt cannot be empty.")
        out.append(tokens)
    return tuple(out)


def _max_tokens(kind: Kind, body: Mapping[str, Any], config: SimConfig) -> int:
    value = body.get("max_completion_tokens") if kind == "chat" else None
    if value is None:
        value = body.get("max_tokens")
    if value is None:
        return config.default_max_tokens
    if not _is_int(value) or value < 1:
        raise ApiError(400, f"max_tokens must be at least 1, got {value}.")
    return int(value)


def _stream_options(options: Any, stream: bool) -> tuple[bool, bool]:
    if options is None:
        return False, False
    if not stream:
        raise ApiError(400, "Stream options can only be defined when `stream=True`.")
    if not isinstance(options, Mapping):
        raise ApiError(400, "'stream_options' must be an object.")
    include = options.get("include_usage", False)
    continuous = options.get("continuous_usage_stats", False)
    if not isinstance(include, bool | None) or not isinstance(continuous, bool | None):
        raise ApiError(400, "stream_options fields must be booleans.")
    return bool(include), bool(continuous)


# ---- responses -------------------------------------------------------------------------------------


@dataclass(slots=True)
class ChoiceState:
    """What one prompt of a request has produced so far."""

    prompt_tokens: int
    cached_tokens: int = 0
    text: str = ""
    completion_tokens: int = 0
    finish_reason: str | None = None


def usage_body(choices: Sequence[ChoiceState]) -> dict[str, Any]:
    prompt = sum(c.prompt_tokens for c in choices)
    completion = sum(c.completion_tokens for c in choices)
    return {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
        "prompt_tokens_details": {"cached_tokens": sum(c.cached_tokens for c in choices)},
    }


def completion_chunk(
    rid: str, model: str, created: int, index: int, text: str, finish: str | None
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": index, "text": text, "logprobs": None, "finish_reason": finish, "stop_reason": None}
        ],
    }


def chat_chunk(
    rid: str, model: str, created: int, delta: dict[str, Any], finish: str | None
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def completion_response(rid: str, model: str, created: int, choices: Sequence[ChoiceState]) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": i,
                "text": c.text,
                "logprobs": None,
                "finish_reason": c.finish_reason,
                "stop_reason": None,
                "prompt_logprobs": None,
            }
            for i, c in enumerate(choices)
        ],
        "usage": usage_body(choices),
    }


def chat_response(rid: str, model: str, created: int, choice: ChoiceState) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": choice.text, "tool_calls": []},
                "logprobs": None,
                "finish_reason": choice.finish_reason,
                "stop_reason": None,
            }
        ],
        "usage": usage_body([choice]),
    }


def now_created() -> int:
    return int(time.time())
