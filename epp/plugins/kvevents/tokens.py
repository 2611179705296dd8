"""Token ids of a request as the engine will see them, and their chained block keys.

Both sides of the precise index key a KV block the same way, from token ids only: the key scheme
(`block_keys`, `lora_seed`, `BASE_SEED`) is the data layer's (`epp.datalayer.kvevents.keys`, which keys the
engines' `BlockStored` events) and is re-exported here for the request side.

Request-side token ids (`request_tokens`):
- a completions prompt given as token ids is used as is (exact);
- otherwise, with `tokenizer: char4`, the text is cut into 4-character pieces mapped to stable ids, chat
  messages rendered with a Llama-3-style template first. This reproduces the default tokenizer of the
  simulator (`epp sim`) exactly, and nothing else: a real engine's BPE tokens never match it. The producer
  detects such a mismatch per endpoint and falls back to its approximate index (see `agreement.py`).

`Char4BlockKeys` computes `block_keys(char4_tokens(text), ...)` without tokenizing the whole text.
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping, Sequence
from typing import Any

import xxhash

from epp.datalayer.kvevents.keys import BASE_SEED, block_keys, lora_seed

__all__ = [
    "BASE_SEED",
    "Char4BlockKeys",
    "block_keys",
    "char4_tokens",
    "lora_seed",
    "render_llama3_chat",
    "request_tokens",
]

_RESERVED_IDS = 256
_VOCAB = 128256
_xxh64 = xxhash.xxh64_intdigest
_xxh32 = xxhash.xxh32_intdigest


def char4_tokens(text: str) -> list[int]:
    """`epp sim`'s default tokenizer: 4-character pieces, each mapped to a stable id."""
    span = _VOCAB - _RESERVED_IDS
    return [
        _RESERVED_IDS + _xxh32(text[i : i + 4].encode("utf-8", "surrogatepass")) % span
        for i in range(0, len(text), 4)
    ]


def _char4_packed(chunk: str) -> bytes:
    span = _VOCAB - _RESERVED_IDS
    ids = [
        _RESERVED_IDS + _xxh32(chunk[i : i + 4].encode("utf-8", "surrogatepass")) % span
        for i in range(0, len(chunk), 4)
    ]
    return array("I", ids).tobytes()


class Char4BlockKeys:
    """`block_keys(char4_tokens(text), ...)` without tokenizing the whole text on every request.

    A block of `b` char4 tokens is exactly `4 b` characters of the text, so its packed token ids depend
    on those characters only and are cached (shared system prompts are tokenized once). The cache is a
    plain dict emptied when it holds `max_chunks` chunks. Thread-safe enough: a lost insert only costs a
    recomputation.
    """

    def __init__(self, max_chunks: int = 65_536) -> None:
        self._cache: dict[str, bytes] = {}
        self._max = max_chunks

    def keys(self, text: str, block_size: int, seed: int, max_blocks: int = 0) -> tuple[int, ...]:
        if block_size <= 0:
            return ()
        n = ((len(text) + 3) // 4) // block_size
        if max_blocks > 0:
            n = min(n, max_blocks)
        step = block_size * 4
        cache = self._cache
        out: list[int] = []
        prev = seed
        for start in range(0, n * step, step):
            chunk = text[start : start + step]
            packed = cache.get(chunk)
            if packed is None:
                packed = _char4_packed(chunk)
                if len(cache) >= self._max:
                    cache.clear()
                cache[chunk] = packed
            prev = _xxh64(prev.to_bytes(8, "little") + packed)
            out.append(prev)
        return tuple(out)


def render_llama3_chat(messages: Sequence[Mapping[str, Any]]) -> str | None:
    """Chat messages rendered as `epp sim` (Llama-3 style, generation prompt appended); None if not text."""
    parts = ["<|begin_of_text|>"]
    for message in messages:
        role = message.get("role")
        content = message.get("content")
        if not isinstance(role, str) or not role:
            return None
        if content is None:
            text = ""
        elif isinstance(content, str):
            text = content
        elif isinstance(content, list):
            pieces: list[str] = []
            for part in content:
                if not isinstance(part, Mapping) or part.get("type") != "text":
                    return None
                piece = part.get("text")
                if not isinstance(piece, str):
                    return None
                pieces.append(piece)
            text = "".join(pieces)
        else:
            return None
        parts.append(f"<|start_header_id|>{role}<|end_header_id|>\n\n{text}<|eot_id|>")
    parts.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
    return "".join(parts)


def request_tokens(
    token_ids: Sequence[int] | None,
    prompt: str | None,
    messages: Sequence[Mapping[str, Any]] | None,
    tokenizer: str,
) -> Sequence[int] | None:
    """The request's token ids, or None when this tokenizer mode cannot tell them."""
    if token_ids is not None:
        return token_ids
    if tokenizer != "char4":
        return None
    if prompt is not None:
        return char4_tokens(prompt)
    if messages is not None:
        text = render_llama3_chat(messages)
        return char4_tokens(text) if text is not None else None
    return None
