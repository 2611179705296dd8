"""Reloads under load: 100 config changes through the watched file, 10 of them invalid.

Each change replaces the file the way a ConfigMap update does (a new file renamed over the old one).
Valid changes alternate between two profiles; each must raise `epp_config_generation` by one and put
its hash in `epp_config_hash_info`. Each invalid one must be counted as `result="error"`, leave the
generation and hash alone (the previous pipeline keeps serving) and be logged with `FILE:LINE`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path

from epp.tools.bench.reliability.rig import Row, Traffic, metric_value, metric_values, replace_file, until
from epp.tools.loadgen.gateway import EppProcess, Gateway

__all__ = ["INVALID", "PROFILES", "run_reloads"]

HEAD = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
PROFILES = (
    HEAD
    + """plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: queue-scorer, weight: 2}
  - {pluginRef: kv-cache-utilization-scorer, weight: 2}
  - {pluginRef: prefix-cache-scorer, weight: 3}
""",
    HEAD
    + """plugins:
- type: queue-scorer
- type: least-kv-cache-filter
- type: random-picker
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: least-kv-cache-filter}
  - {pluginRef: queue-scorer, weight: 1}
  - {pluginRef: random-picker}
""",
)

#: (what is wrong, the document); each is refused with a line number in the message
INVALID = (
    ("unknown plugin type", HEAD + "plugins:\n- type: no-such-scorer\n"),
    (
        "pluginRef to an undeclared plugin",
        HEAD
        + "plugins:\n- type: queue-scorer\nschedulingProfiles:\n- name: a\n  plugins:\n  - pluginRef: nope\n",
    ),
    (
        "negative weight",
        HEAD + "plugins:\n- type: queue-scorer\nschedulingProfiles:\n- name: a\n  plugins:\n"
        "  - {pluginRef: queue-scorer, weight: -1}\n",
    ),
    ("YAML syntax error", HEAD + "plugins:\n- type: queue-scorer\n  parameters: {a: [\n"),
    (
        "parameter of the wrong type",
        HEAD + "plugins:\n- type: prefix-cache-scorer\n  parameters:\n    blockSize: lots\n",
    ),
    ("unknown top-level field", HEAD + "plugins:\n- type: queue-scorer\nschedulingProfilez: []\n"),
    ("duplicate plugin name", HEAD + "plugins:\n- type: queue-scorer\n- type: queue-scorer\n"),
    ("wrong kind", "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: Pod\n"),
    ("plugins not a list", HEAD + "plugins: queue-scorer\n"),
    ("unknown parameter", HEAD + "plugins:\n- type: queue-scorer\n  parameters: {bogus: 1}\n"),
)


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def run_reloads(
    gateway: Gateway, config_path: Path, rate: float, changes: int, say: Callable[[str], None]
) -> list[Row]:
    epp = gateway.epp
    assert isinstance(epp, EppProcess)
    url = epp.metrics_url
    invalid_every = max(1, changes // len(INVALID))
    applied = refused = 0
    late: list[str] = []
    kept_old = 0
    with_line = 0
    async with Traffic(gateway.url, rate, seed=21) as traffic:
        live = config_path.read_text()
        valid_n = 0
        for i in range(1, changes + 1):
            before = await metric_values(url)
            generation = metric_value(before, "epp_config_generation")
            errors = metric_value(before, "epp_config_reload_total", result="error")
            if i % invalid_every == 0 and (i // invalid_every) <= len(INVALID):
                what, text = INVALID[i // invalid_every - 1]
                log_mark = len(epp.log_text())
                replace_file(config_path, text)

                async def refused_now(errors: float = errors) -> bool:
                    after = await metric_values(url)
                    return metric_value(after, "epp_config_reload_total", result="error") > errors

                took = await until(refused_now, timeout=10)
                after = await metric_values(url)
                same = metric_value(after, "epp_config_generation") == generation and bool(
                    metric_value(after, "epp_config_hash_info", hash=_hash(live))
                )
                new_log = epp.log_text()[log_mark:]
                located = re.search(rf"{re.escape(config_path.name)}:\d+", new_log) is not None
                if took is None:
                    late.append(f"#{i} ({what}): not refused within 10 s")
                    continue
                refused += 1
                kept_old += same
                with_line += located
                if not located:
                    late.append(f"#{i} ({what}): refused without FILE:LINE in the log")
            else:
                text = PROFILES[(valid_n + 1) % 2]  # the file starts as PROFILES[0]
                valid_n += 1
                replace_file(config_path, text)

                async def applied_now(generation: float = generation) -> bool:
                    after = await metric_values(url)
                    return metric_value(after, "epp_config_generation") == generation + 1

                took = await until(applied_now, timeout=10)
                after = await metric_values(url)
                if took is None or not metric_value(after, "epp_config_hash_info", hash=_hash(text)):
                    late.append(f"#{i}: valid change not applied within 10 s")
                    continue
                applied += 1
                live = text
    for line in late:
        say(f"  reloads: {line}")
    results = traffic.results
    failed = sum(1 for t in results if not t.result.ok)
    n_invalid = min(len(INVALID), changes // invalid_every)
    n_valid = changes - n_invalid
    return [
        Row(
            "reloads",
            "changes (valid + invalid) under load, requests",
            f"{n_valid} + {n_invalid}, {len(results)}",
        ),
        Row(
            "reloads",
            "valid changes applied (generation +1, new hash)",
            f"{applied}/{n_valid}",
            "all",
            applied == n_valid,
        ),
        Row(
            "reloads",
            "invalid changes refused, old pipeline kept",
            f"{refused}/{n_invalid}, {kept_old}/{n_invalid}",
            "all",
            refused == kept_old == n_invalid,
        ),
        Row(
            "reloads",
            "refusals logged with FILE:LINE",
            f"{with_line}/{n_invalid}",
            "all",
            with_line == n_invalid,
        ),
        Row("reloads", "failed requests", str(failed), "0", failed == 0),
    ]
