"""Chained block keys over token ids: how the precise index names a KV block, on both of its sides.

Engine block hashes are opaque and differ between engines and versions, so a block is keyed by its token
ids only:

    key_i = xxh64(le64(key_{i-1}) || little-endian uint32 token ids of block i),  key_{-1} = seed

with `seed` = xxh64 of the LoRA adapter name, or `BASE_SEED` (0) for the base model. Only full blocks get
keys (engines cache only full blocks). A key therefore names a whole prefix, like the engine's own chain
hash. The index computes them from `BlockStored` token ids (chaining on from the parent's key); the
request side (`epp.plugins.kvevents.tokens`) from the request's token ids.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

import xxhash

__all__ = ["BASE_SEED", "block_keys", "lora_seed"]

BASE_SEED = 0
_MASK32 = 0xFFFFFFFF
_xxh64 = xxhash.xxh64_intdigest

if array("I").itemsize != 4:  # pragma: no cover - every supported platform has a 32-bit "I"
    raise ImportError("array('I') is not 32 bits wide on this platform")


def lora_seed(lora_name: str | None) -> int:
    """The chain seed of a LoRA adapter's blocks (BASE_SEED for the base model)."""
    return int(_xxh64(lora_name.encode("utf-8", "surrogatepass"))) if lora_name else BASE_SEED


def block_keys(tokens: Sequence[int], block_size: int, seed: int, max_blocks: int = 0) -> tuple[int, ...]:
    """Chained keys of the full `block_size`-token blocks of `tokens` (at most `max_blocks`; 0 = all)."""
    if block_size <= 0:
        return ()
    n = len(tokens) // block_size
    if max_blocks > 0:
        n = min(n, max_blocks)
    if n == 0:
        return ()
    head = tokens[: n * block_size]
    try:
        data = array("I", head).tobytes()
    except (OverflowError, TypeError):  # ids outside uint32: keep their low 32 bits
        data = array("I", (int(t) & _MASK32 for t in head)).tobytes()
    step = block_size * 4
    out: list[int] = []
    prev = seed
    for start in range(0, n * step, step):
        prev = _xxh64(prev.to_bytes(8, "little") + data[start : start + step])
        out.append(prev)
    return tuple(out)
