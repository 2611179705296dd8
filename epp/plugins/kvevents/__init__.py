"""Precise prefix-cache state from the model servers' KV-cache events (vLLM's ZMQ `BlockStored` /
`BlockRemoved` / `AllBlocksCleared`): request-side token keys, the event wire format, the index, the ZMQ
subscriber, and the `precise-prefix-cache-producer` / `precise-prefix-cache-scorer` plugins."""
