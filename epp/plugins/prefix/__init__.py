"""The approximate prefix-cache machinery: parameters, block hashing and the per-endpoint LRU index."""
