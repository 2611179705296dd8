"""Token usage from model-server responses: JSON bodies and SSE streams.

JSON: the `usage` object (`prompt_tokens`/`completion_tokens`, or `input_tokens`/`output_tokens` for the
Responses and Conversations APIs), cached prompt tokens from `prompt_tokens_details.cached_tokens` (OpenAI's
spelling), upstream's `prompt_token_details` and the Responses API's `input_tokens_details`.

SSE: events are reassembled across chunks (upstream scans each chunk on its own and misses an event split
between two chunks); the last event whose JSON carries a non-empty usage wins (with vLLM's
`continuous_usage_stats` every event carries the running totals), including the Responses API's
`{"type": "response.completed", "response": {"usage": ...}}`. A chunk of whole events without the word
`usage` is skipped without being split into lines: most chunks of a stream cost one substring search.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = ["SseUsageScanner", "Usage", "usage_from_json_body", "usage_from_object"]

_DECODER = json.JSONDecoder()
#: Give up on an SSE line that grows beyond this without a newline (hostile or broken stream).
MAX_SSE_LINE = 1 << 20
#: Bodies larger than this are not fully parsed when the fast `usage` lookup fails.
MAX_FULL_PARSE = 8 << 20


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


def _count(value: Any) -> int:
    return value if type(value) is int and value >= 0 else 0


def usage_from_object(obj: Any) -> Usage | None:
    """The usage in a decoded response object or SSE event, or None when it has none."""
    if not isinstance(obj, dict):
        return None
    usage = obj.get("usage")
    if not isinstance(usage, dict) or not usage:
        inner = obj.get("response")
        usage = inner.get("usage") if isinstance(inner, dict) else None
        if not isinstance(usage, dict) or not usage:
            return None
    prompt = usage.get("prompt_tokens")
    if prompt is None:
        prompt = usage.get("input_tokens")
    completion = usage.get("completion_tokens")
    if completion is None:
        completion = usage.get("output_tokens")
    details = (
        usage.get("prompt_tokens_details")
        or usage.get("prompt_token_details")
        or usage.get("input_tokens_details")
    )
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return Usage(_count(prompt), _count(completion), _count(cached))


def usage_from_json_body(body: bytes) -> Usage | None:
    """Usage from a complete JSON response body; None when absent or the body is not JSON."""
    key = body.rfind(b'"usage"')
    if key < 0:
        return None
    # fast path: decode just the object after the last "usage" key (it is at the end in every server's
    # output), without parsing a possibly large body
    rest = body[key + 7 :].lstrip()
    if rest.startswith(b":"):
        try:
            value, _ = _DECODER.raw_decode(rest[1:].lstrip().decode("utf-8", "replace"))
        except (ValueError, RecursionError):  # RecursionError: a pathologically nested value
            value = None
        if isinstance(value, dict):
            found = usage_from_object({"usage": value})
            if found is not None:
                return found
    if len(body) > MAX_FULL_PARSE:
        return None
    try:
        return usage_from_object(json.loads(body))
    except (ValueError, RecursionError):
        return None


class SseUsageScanner:
    """Feed it the SSE body chunk by chunk; `usage` is the last usage an event carried so far."""

    __slots__ = ("_carry", "_data", "usage")

    def __init__(self) -> None:
        self._carry = b""
        self._data: list[bytes] = []
        self.usage: Usage | None = None

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        if not self._carry and not self._data and chunk.endswith(b"\n\n") and b"usage" not in chunk:
            return  # whole events, none of which can carry usage
        buf = self._carry + chunk if self._carry else chunk
        end = buf.rfind(b"\n")
        if end < 0:
            self._carry = buf if len(buf) <= MAX_SSE_LINE else b""
            return
        self._carry = buf[end + 1 :]
        if len(self._carry) > MAX_SSE_LINE:
            self._carry = b""
        self._lines(buf[:end].split(b"\n"))

    def finish(self) -> None:
        """End of stream: the last line and event count even without their terminating newlines."""
        if self._carry:
            carry, self._carry = self._carry, b""
            self._lines(carry.split(b"\n"))
        if self._data:
            self._dispatch()

    def _lines(self, lines: list[bytes]) -> None:
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if self._data:
                    self._dispatch()
                continue
            if line.startswith(b"data:"):
                value = line[6:] if line.startswith(b"data: ") else line[5:]
                if value == b"[DONE]":
                    continue
                self._data.append(value)
                if len(self._data) == 1 and value.endswith(b"}"):
                    # the common case: one complete JSON object per line; do not wait for the blank line
                    self._dispatch()

    def _dispatch(self) -> None:
        data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
        self._data = []
        if b"usage" not in data:
            return
        try:
            found = usage_from_object(json.loads(data))
        except (ValueError, RecursionError):
            return
        if found is not None:
            self.usage = found
