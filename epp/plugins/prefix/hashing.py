"""Chained block hashes of a prompt: a block's hash identifies the whole prefix up to and including it.

`seed = xxh64(target_model [NUL cache_salt])`; `hash_i = xxh64(block_i || le64(hash_{i-1}))` with
`hash_{-1} = seed`. Blocks are `block_size_tokens x 4` bytes of the request's prefix material; a trailing
partial block is hashed too; material shorter than one block yields no hashes.
"""

from __future__ import annotations

import xxhash

__all__ = ["AVERAGE_CHARS_PER_TOKEN", "block_hashes", "seed_hash"]

AVERAGE_CHARS_PER_TOKEN = 4

_xxh64 = xxhash.xxh64_intdigest


def seed_hash(target_model: str, cache_salt: str = "") -> int:
    """The chain seed: requests for different models (or salts) never share a block."""
    data = target_model.encode("utf-8", "surrogatepass")
    if cache_salt:
        data += b"\x00" + cache_salt.encode("utf-8", "surrogatepass")
    return int(_xxh64(data))


def block_hashes(material: bytes, seed: int, block_chars: int, max_blocks: int = 0) -> tuple[int, ...]:
    """The chained hashes of `material` cut into `block_chars`-byte blocks (at most `max_blocks`; 0 = all)."""
    n = len(material)
    if n < block_chars or block_chars <= 0:
        return ()
    if max_blocks > 0 and n > max_blocks * block_chars:
        n = max_blocks * block_chars
    out: list[int] = []
    append = out.append
    prev = seed
    for start in range(0, n, block_chars):
        end = start + block_chars
        prev = _xxh64(material[start : end if end < n else n] + prev.to_bytes(8, "little"))
        append(prev)
    return tuple(out)
