"""Seeded synthetic prompt text whose length is given in (approximate) tokens.

The simulator counts about 4 characters per token (docs/simulator.md), so `tokens` x 4 characters of
text makes a prompt of `tokens` tokens there. Text is lowercase pseudo-words (a fixed vocabulary of
4096) drawn with a `random.Random`, so the same generator state gives the same text, and two draws
practically never share a first block.
"""

from __future__ import annotations

import random

__all__ = ["CHARS_PER_TOKEN", "synthetic_text"]

CHARS_PER_TOKEN = 4


def _vocabulary(size: int = 4096) -> tuple[str, ...]:
    rng = random.Random(20240601)  # fixed: the vocabulary is part of what a seed reproduces
    letters = "abcdefghijklmnopqrstuvwxyz"
    return tuple("".join(rng.choices(letters, k=rng.randint(2, 9))) for _ in range(size))


_WORDS = _vocabulary()
_MEAN_WORD = sum(len(w) + 1 for w in _WORDS) / len(_WORDS)


def synthetic_text(rng: random.Random, tokens: int) -> str:
    """`tokens` x CHARS_PER_TOKEN characters of space-separated pseudo-words drawn with `rng`."""
    if tokens < 0:
        raise ValueError(f"tokens must be >= 0, got {tokens}")
    size = tokens * CHARS_PER_TOKEN
    text = ""
    while len(text) < size:
        words = rng.choices(_WORDS, k=int(size / _MEAN_WORD) + 8)
        text = f"{text} {' '.join(words)}" if text else " ".join(words)
    return text[:size]
