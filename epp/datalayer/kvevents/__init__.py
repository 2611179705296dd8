"""The KV-event source: what each model server's KV cache holds, as its engine reports it over ZMQ.

Modules by job (only `subscriber`, `discovery` and `source` do I/O; plugins import the others):
- `events` — the event value types (`Stored`, `Removed`, `AllCleared`, `EventBatch`);
- `wire` — decoding vLLM's msgpack event batches;
- `keys` — the chained block keys both sides of the index use (token ids → key);
- `index` — `PreciseIndex`, the per-endpoint index of reported blocks (written by the source, read by
  plugins);
- `subscription` — `KVEventSubscription` (what a plugin asks to be subscribed to) and the
  `KVEventConsumer` protocol the plugin runtime recognizes;
- `addresses` — where an endpoint publishes: explicit map, template, or a `/kv_event_sources` answer;
- `discovery` — `GET /kv_event_sources` (aiohttp);
- `subscriber` — one ZMQ SUB socket per endpoint, batches applied to the index;
- `source` — `KVEventSource` (one subscription, following the datastore's endpoints) and
  `KVEventSources` (the process's sources, shared by the plugins that declare the same subscription).

docs/datalayer.md ("KV-event source") describes it as a whole.
"""
