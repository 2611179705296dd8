"""The `precise-prefix-cache-producer` / `precise-prefix-cache-scorer` plugins: prefix matches from the
model servers' KV-cache events. Here: request-side token keys (`tokens`), the hooks (`producer`), the
guard against a tokenizer mismatch (`agreement`), speculative entries (`speculation`), the parameters and
the scorer. The events are received, decoded and indexed by the data layer (`epp.datalayer.kvevents`);
these plugins only read its index."""
