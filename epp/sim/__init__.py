"""A simulated vLLM-compatible model server (`epp sim`)."""
