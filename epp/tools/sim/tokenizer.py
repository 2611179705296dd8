"""Prompt tokenization for the simulator and the text it "generates".

The default tokenizer cuts text into 4-character pieces and maps each piece to a stable id (xxhash),
which is close to the ~4 characters per token of Llama-3's BPE on English and, more importantly,
keeps shared text prefixes as shared token prefixes. A real Hugging Face `tokenizer.json` can be
used instead when the optional `tokenizers` package is installed. Chat messages are rendered with a
Llama-3-style template before tokenization, so a shared system prompt is a shared token prefix.
"""

from __future__ import annotations

import importlib
import random
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import xxhash

__all__ = [
    "CharTokenizer",
    "HFTokenizer",
    "Tokenizer",
    "make_tokenizer",
    "next_output_token",
    "render_chat",
]

_RESERVED_IDS = 256  # ids below this are never produced by the char tokenizer (room for specials)


class Tokenizer(Protocol):
    """Text to token ids."""

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...


class CharTokenizer:
    """About 4 characters per token; the same piece always gets the same id."""

    def __init__(self, vocab_size: int = 128256, chars_per_token: int = 4) -> None:
        self._vocab_size = vocab_size
        self._chars = chars_per_token

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def encode(self, text: str) -> list[int]:
        span = self._vocab_size - _RESERVED_IDS
        step = self._chars
        return [
            _RESERVED_IDS + xxhash.xxh32_intdigest(text[i : i + step].encode("utf-8")) % span
            for i in range(0, len(text), step)
        ]


class HFTokenizer:
    """A Hugging Face `tokenizer.json` loaded with the optional `tokenizers` package."""

    def __init__(self, path: str) -> None:
        try:
            module = importlib.import_module("tokenizers")
        except ImportError as exc:
            raise ValueError(
                "--tokenizer needs the optional 'tokenizers' package (pip install tokenizers)"
            ) from exc
        try:
            self._tok: Any = module.Tokenizer.from_file(path)
        except Exception as exc:
            raise ValueError(f"--tokenizer: cannot load {path}: {exc}") from exc

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size())

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)


def make_tokenizer(path: str | None, vocab_size: int) -> Tokenizer:
    """The real tokenizer at `path`, or the 4-characters-per-token approximation."""
    return HFTokenizer(path) if path else CharTokenizer(vocab_size)


def render_chat(messages: Sequence[Mapping[str, Any]]) -> str:
    """Render chat messages with a Llama-3-style template (generation prompt appended).

    Raises ValueError for a message that is not {role: str, content: str | [text parts]}.
    """
    parts = ["<|begin_of_text|>"]
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValueError(f"messages[{i}] must be an object")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise ValueError(f"messages[{i}].role must be a non-empty string")
        parts.append(f"<|start_header_id|>{role}<|end_header_id|>\n\n{_content_text(message, i)}<|eot_id|>")
    parts.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
    return "".join(parts)


def _content_text(message: Mapping[str, Any], i: int) -> str:
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts: list[str] = []
        for j, part in enumerate(content):
            if (
                not isinstance(part, Mapping)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                raise ValueError(
                    f"messages[{i}].content[{j}]: only text parts are supported by this text-only model"
                )
            texts.append(part["text"])
        return "".join(texts)
    raise ValueError(f"messages[{i}].content must be a string or a list of text parts")


_WORDS = (  # noqa: SIM905 - a word list reads better as one string
    "the of and to in is was that for on with as by at from this be are or an it not which have model "
    "server token cache prefix block queue batch request route picker gateway endpoint latency decode "
    "prefill adapter memory scheduler envoy metric score filter pool fleet replica engine stream chunk"
).split(" ")


def next_output_token(rng: random.Random) -> tuple[int, str]:
    """One generated token: a stable id and its text piece (a space and a word)."""
    index = rng.randrange(len(_WORDS))
    return _RESERVED_IDS + index, " " + _WORDS[index]
