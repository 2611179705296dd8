"""The Grafana dashboard and the alert examples reference only metrics the EPP exports.

Every PromQL expression (dashboard targets and template queries, the alert rules in docs/observability.md)
is parsed down to its metric names (label matchers, ranges, strings, grouping clauses, functions and
keywords removed; `_bucket` / `_sum` / `_count` stripped) and each must be registered in `EppMetrics`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry

from epp.observability.metrics import EppMetrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docs" / "dashboards" / "epp.json"
DOC = ROOT / "docs" / "observability.md"

_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
_KEYWORDS |= {"offset", "inf", "nan"}
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values, legend text)
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # range selectors, subqueries
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\$\{?\w+\}?", " ", s)  # Grafana variables
    s = re.sub(r"\b\d+(?:ms|s|m|h|d|w|y)\b", " ", s)  # durations
    s = re.sub(r"\b\d+(?:\.\d+)?(?:e[+-]?\d+)?\b", " ", s)  # numbers
    names = set()
    for m in _IDENT.finditer(s):
        word = m.group(0)
        rest = s[m.end() :].lstrip()
        if rest.startswith("(") or word.lower() in _KEYWORDS:
            continue  # a function call or a keyword
        names.add(word)
    return names


def base_name(name: str, histograms: set[str]) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in histograms:
            return name[: -len(suffix)]
    return name


def _registry() -> tuple[set[str], set[str]]:
    metrics = EppMetrics(CollectorRegistry())
    names = set(metrics.metric_names())
    histograms = {f.name for f in metrics.registry.collect() if f.type == "histogram"}
    return names, histograms


def _dashboard_exprs() -> list[tuple[str, str]]:
    d = json.loads(DASHBOARD.read_text())
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                out.append((p["title"], t["expr"]))
            walk(p.get("panels", []))

    walk(d["panels"])
    for var in d["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", query)
            assert inner, query
            out.append((f"variable {var['name']}", inner.group(1)))
    return out


def test_parser_finds_metric_names_and_skips_the_rest() -> None:
    expr = (
        "histogram_quantile(0.99, sum by(le, plugin_name) "
        '(rate(foo_seconds_bucket{a="x",b=~"$v"}[$__rate_interval])))'
        " / on(name) group_left(pod) bar_total offset 5m > 0.5 and baz"
    )
    assert metric_names(expr) == {"foo_seconds_bucket", "bar_total", "baz"}
    assert metric_names("time() - max(epp_config_generation)") == {"epp_config_generation"}


def test_every_dashboard_metric_exists() -> None:
    names, histograms = _registry()
    exprs = _dashboard_exprs()
    assert len(exprs) > 40
    for title, expr in exprs:
        found = metric_names(expr)
        assert found, f"{title}: no metric in {expr!r}"
        missing = {n for n in found if base_name(n, histograms) not in names}
        assert not missing, f"panel {title!r} references unknown metrics {missing}"


def test_dashboard_covers_what_operators_need() -> None:
    used = set()
    _, histograms = _registry()
    for _, expr in _dashboard_exprs():
        used |= {base_name(n, histograms) for n in metric_names(expr)}
    wanted = {
        "inference_objective_request_total",
        "inference_objective_request_error_total",
        "inference_objective_request_duration_seconds",
        "inference_objective_request_ttft_seconds",
        "inference_objective_normalized_time_per_output_token_seconds",
        "inference_objective_running_requests",
        "inference_objective_input_tokens",
        "inference_objective_output_tokens",
        "inference_pool_average_kv_cache_utilization",
        "inference_pool_average_queue_size",
        "inference_pool_per_pod_queue_size",
        "inference_pool_ready_pods",
        "inference_extension_scheduler_e2e_duration_seconds",
        "inference_extension_plugin_duration_seconds",
        "inference_extension_prefix_indexer_hit_ratio",
        "epp_config_reload_total",
    }
    assert wanted <= used, wanted - used
    d = json.loads(DASHBOARD.read_text())
    assert d["uid"] and d["title"]
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))


def test_alert_examples_in_the_docs_reference_existing_metrics() -> None:
    names, histograms = _registry()
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.S)
    rules = [
        rule
        for block in blocks
        if "alert:" in block
        for group in yaml.safe_load(block)["groups"]
        for rule in group["rules"]
    ]
    assert len(rules) >= 4
    for rule in rules:
        found = metric_names(rule["expr"])
        assert found, rule["alert"]
        missing = {n for n in found if base_name(n, histograms) not in names}
        assert not missing, f"alert {rule['alert']} references unknown metrics {missing}"
