"""Metrics and logs after real traffic: the daemon (`epp.app.App`) in-process, real Envoy, two simulators.

The EPP's `/metrics` is scraped over HTTP and parsed as Prometheus text. Traffic: streamed chat
completions (usage in the last event), plain completions, two malformed bodies (400), one request whose
endpoint-selection header matches no endpoint (503), and one request of a sheddable objective while the
simulators report a saturated pool (429). Every upstream metric must be present and hold exactly what
the traffic implies: request and error counts by code, token sums equal to the usage the client saw,
running requests back to 0, one per-pod queue series per endpoint, one plugin-duration series per plugin.

Logging runs at `-v 5` (JSON) first, then 4, then 2, on the same daemon: TRACE lines (the scrape loop,
the decision table) appear only at 5, DEBUG decision lines only at 4 and above, and every line of a
request — including one logged by a plugin — carries its request id and model.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from epp.app import App
from epp.builtins import builtin_registry
from epp.framework.cycle import CycleState
from epp.framework.plugins import PluginKind, ScorerCategory
from epp.framework.types import Endpoint, InferenceRequest, TypedName
from epp.logs import configure_logging
from epp.registry import EmptyParams, PluginType
from epp.settings import parse_settings
from epp.tools.loadgen.gateway import ANY_PORTS, epp_flags
from epp.tools.proxy import EnvoyConfig, EnvoyProcess
from epp.tools.sim.metrics import MetricsOverride
from tests.helpers import until

pytestmark = pytest.mark.envoy

SELECT = "test-epp-endpoint-selection"
MODEL = "sim-model"
CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: header-based-testing-filter
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
- type: log-probe-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: header-based-testing-filter
  - pluginRef: queue-scorer
    weight: 2
  - pluginRef: kv-cache-utilization-scorer
    weight: 2
  - pluginRef: prefix-cache-scorer
    weight: 3
  - pluginRef: log-probe-scorer
    weight: 0
"""
PROBE_LOGGER = "tests.log_probe"
#: shared by every chat (several prefix blocks), so the prefix indexer sees hits
#: body sizes of the requests sent by _chat / _completion, in order
SENT: list[int] = []
SYSTEM_PROMPT = "You are a helpful assistant who answers briefly and precisely. " * 20


class LogProbeScorer:
    """A scorer that logs from its own logger, as a third-party plugin would (scores nothing)."""

    category = ScorerCategory.BALANCE

    def __init__(self, name: str) -> None:
        self.typed_name = TypedName("log-probe-scorer", name)
        self.log = logging.getLogger(PROBE_LOGGER)

    def score(
        self, cycle: CycleState, request: InferenceRequest, endpoints: Sequence[Endpoint]
    ) -> Mapping[str, float]:
        self.log.info("probe saw %d endpoints", len(endpoints))
        return {}


def _registry():
    registry = builtin_registry()
    registry.register(
        PluginType(
            type_name="log-probe-scorer",
            params_model=EmptyParams,
            factory=lambda name, params, handle: LogProbeScorer(name),
            kinds=frozenset({PluginKind.SCORER}),
        )
    )
    return registry


# ---- helpers ------------------------------------------------------------------------------------------


class Scrape:
    """One parsed /metrics page."""

    def __init__(self, text: str) -> None:
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples: list[tuple[str, dict[str, str], float]] = [
            (s.name, dict(s.labels), s.value) for f in self.families.values() for s in f.samples
        ]

    def type_of(self, name: str) -> str:
        base = name.removesuffix("_total") if name.endswith("_total") else name
        fam = self.families.get(base) or self.families.get(name)
        assert fam is not None, f"{name} not exported"
        return fam.type

    def series(self, name: str, /, **labels: str) -> list[tuple[dict[str, str], float]]:
        return [
            (lab, v)
            for n, lab, v in self.samples
            if n == name and all(lab.get(k) == want for k, want in labels.items())
        ]

    def value(self, name: str, /, **labels: str) -> float:
        found = self.series(name, **labels)
        assert len(found) == 1, f"{name}{labels}: {found}"
        return found[0][1]

    def total(self, name: str, /, **labels: str) -> float:
        return sum(v for _, v in self.series(name, **labels))


async def scrape(http: aiohttp.ClientSession, port: int) -> Scrape:
    async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        assert resp.status == 200
        return Scrape(await resp.text())


class LogCapture:
    """The process's logging as the daemon configures it (`configure_logging`), into a buffer."""

    def __init__(self) -> None:
        self.buf = io.StringIO()
        root = logging.getLogger()
        self._saved = (list(root.handlers), root.level)

    def configure(self, verbosity: int) -> None:
        self.buf.seek(0)
        self.buf.truncate()
        configure_logging(verbosity, "json", stream=self.buf)

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.buf.getvalue().splitlines() if line.strip()]

    def restore(self) -> None:
        root = logging.getLogger()
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in self._saved[0]:
            root.addHandler(h)
        root.setLevel(self._saved[1])
        for name in ("aiohttp", "asyncio", "kubernetes", "urllib3", "grpc", "watchfiles"):
            logging.getLogger(name).setLevel(logging.NOTSET)


# ---- the stack ----------------------------------------------------------------------------------------


@pytest.fixture
async def stack(tmp_path, start_sim):
    sims = [await start_sim(model=MODEL, name=f"sim{i}", time_scale=0.01, seed=i) for i in range(2)]
    settings = parse_settings(
        [
            *epp_flags([s.address for s in sims], config_text=CONFIG, secure_serving=False),
            *ANY_PORTS,
            "--static-objectives=batch=-1",
            "--enable-decision-header",
            "--refresh-prometheus-metrics-interval=100ms",
        ],
        environ={},
    )
    logs = LogCapture()
    logs.configure(5)
    app = App(settings, registry=_registry())
    await app.start()
    envoy = EnvoyProcess(EnvoyConfig(ext_proc_port=app.grpc_port, ext_proc_tls=False), tmp_path)
    await envoy.start()
    try:
        async with aiohttp.ClientSession() as http:
            yield app, envoy, sims, http, logs
    finally:
        await envoy.stop()
        await app.stop()
        logs.restore()


async def _chat(http, url: str, i: int, *, rid: str, extra_headers: dict[str, str] | None = None):
    body = {
        "model": MODEL,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 4 + i % 3,
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": f"question {i}"},
        ],
    }
    headers = {SELECT: "127.0.0.1", "x-request-id": rid, **(extra_headers or {})}
    raw = json.dumps(body).encode()
    SENT.append(len(raw))
    headers["content-type"] = "application/json"
    async with http.post(f"{url}/v1/chat/completions", data=raw, headers=headers) as resp:
        text = (await resp.read()).decode()
        assert resp.status == 200, text
        events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
        usage = next(e["usage"] for e in events if e.get("usage"))
        return usage, dict(resp.headers)


async def _completion(http, url: str, i: int, *, headers: dict[str, str] | None = None):
    body = {"model": MODEL, "prompt": f"complete this sentence number {i} please", "max_tokens": 3}
    raw = json.dumps(body).encode()
    SENT.append(len(raw))
    hdrs = {SELECT: "127.0.0.1", "content-type": "application/json", **(headers or {})}
    async with http.post(f"{url}/v1/completions", data=raw, headers=hdrs) as resp:
        data = await resp.read()
        return resp.status, (json.loads(data) if resp.status == 200 else data.decode()), dict(resp.headers)


async def test_metrics_and_logs_after_traffic_through_envoy(stack) -> None:
    app, envoy, sims, http, logs = stack
    url = envoy.url
    port = app.metrics_port

    # ---- good traffic: 6 streamed chats, 4 completions ----
    SENT.clear()
    usages = []
    for i in range(6):
        usage, headers = await _chat(http, url, i, rid=f"obs-chat-{i}")
        usages.append(usage)
        assert "x-epp-decision" not in {k.lower() for k in headers}  # not asked for
    for i in range(4):
        status, data, _ = await _completion(http, url, i)
        assert status == 200, data
        usages.append(data["usage"])
    ok = len(usages)

    # ---- the decision header, asked for (enabled by --enable-decision-header) ----
    usage, headers = await _chat(http, url, 99, rid="obs-decision", extra_headers={"x-epp-decision": "1"})
    usages.append(usage)
    ok += 1
    sent_ok = sum(SENT)
    decision = {k.lower(): v for k, v in headers.items()}["x-epp-decision"]
    assert decision.startswith("default: candidates=2 picked=127.0.0.1:"), decision
    assert "top=" in decision

    # ---- errors: 2 x 400, 1 x 503, 1 x 429 ----
    async with http.post(
        f"{url}/v1/completions",
        data=b"{not json",
        headers={SELECT: "127.0.0.1", "content-type": "application/json"},
    ) as resp:
        assert resp.status == 400
    async with http.post(
        f"{url}/v1/completions", json={"prompt": "no model"}, headers={SELECT: "127.0.0.1"}
    ) as resp:
        assert resp.status == 400
    status, _, _ = await _completion(http, url, 50, headers={SELECT: "10.255.255.1"})  # no endpoint selected
    assert status == 503
    for sim in sims:
        sim.set_metrics_override(MetricsOverride(waiting=200, kv=0.99))

    async def saturated() -> bool:
        return all(e.metrics.waiting_queue_size == 200 for e in app.datastore.snapshot())

    await until(saturated, what="the EPP seeing the saturated pool")
    status, body, _ = await _completion(http, url, 60, headers={"x-gateway-inference-objective": "batch"})
    assert status == 429, body
    for sim in sims:
        sim.set_metrics_override(MetricsOverride())

    # ---- scrape ----
    async def settled() -> bool:
        s = await scrape(http, port)
        return (
            s.total("inference_objective_running_requests") == 0
            and s.value("inference_extension_prefix_indexer_size") > 0
            and s.total("inference_pool_per_pod_queue_size") == 0  # the pinned queues are gone
        )

    await until(
        settled, interval=0.02, what="running requests and queues back to 0, the prefix indexer size reported"
    )
    m = await scrape(http, port)
    model = {"model_name": MODEL, "target_model_name": MODEL}

    # every upstream metric of the issue is exported with the upstream type
    expected_types = {
        "inference_objective_request_total": "counter",
        "inference_objective_request_error_total": "counter",
        "inference_objective_request_duration_seconds": "histogram",
        "inference_objective_request_sizes": "histogram",
        "inference_objective_response_sizes": "histogram",
        "inference_objective_input_tokens": "histogram",
        "inference_objective_output_tokens": "histogram",
        "inference_objective_prompt_cached_tokens": "histogram",
        "inference_objective_running_requests": "gauge",
        "inference_objective_normalized_time_per_output_token_seconds": "histogram",
        "inference_pool_average_kv_cache_utilization": "gauge",
        "inference_pool_average_queue_size": "gauge",
        "inference_pool_average_running_requests": "gauge",
        "inference_pool_ready_pods": "gauge",
        "inference_pool_per_pod_queue_size": "gauge",
        "inference_extension_scheduler_e2e_duration_seconds": "histogram",
        "inference_extension_scheduler_attempts_total": "counter",
        "inference_extension_plugin_duration_seconds": "histogram",
        "inference_extension_prefix_indexer_size": "gauge",
        "inference_extension_prefix_indexer_hit_ratio": "histogram",
        "inference_extension_prefix_indexer_hit_bytes": "histogram",
        "inference_extension_info": "gauge",
        "epp_config_reload_total": "counter",
        "epp_config_generation": "gauge",
    }
    for name, kind in expected_types.items():
        assert m.type_of(name) == kind, name

    # requests: only scheduled ones count (as upstream), with the objective's priority label
    assert m.value("inference_objective_request_total", **model, priority="0") == ok
    assert m.total("inference_objective_request_total") == ok
    # errors by code, once each
    errors = {lab["error_code"]: v for lab, v in m.series("inference_objective_request_error_total")}
    assert errors == {"BadRequest": 2, "ServiceUnavailable": 1, "ResourceExhausted": 1}, errors
    assert (
        m.value("inference_objective_request_error_total", error_code="ResourceExhausted", model_name=MODEL)
        == 1
    )
    # latency, sizes, TTFT (streamed only), NTPOT
    assert m.value("inference_objective_request_duration_seconds_count", **model) == ok
    assert m.value("inference_objective_request_duration_seconds_sum", **model) > 0
    assert m.value("inference_objective_request_ttft_seconds_count", **model) == 7  # the streamed chats
    assert m.value("inference_objective_request_sizes_count", **model) == ok
    assert m.value("inference_objective_request_sizes_sum", **model) == sent_ok  # bytes forwarded
    assert m.value("inference_objective_response_sizes_count", **model) == ok
    assert m.value("inference_objective_response_sizes_sum", **model) > 0
    assert m.value("inference_objective_normalized_time_per_output_token_seconds_count", **model) == ok
    # tokens: exactly the usage the clients saw (streamed usage included)
    assert m.value("inference_objective_input_tokens_sum", **model) == sum(u["prompt_tokens"] for u in usages)
    assert m.value("inference_objective_output_tokens_sum", **model) == sum(
        u["completion_tokens"] for u in usages
    )
    assert m.value("inference_objective_input_tokens_count", **model) == ok
    assert m.value("inference_objective_prompt_cached_tokens_count", **model) == ok
    # running requests back to 0
    assert m.value("inference_objective_running_requests", model_name=MODEL) == 0

    # pool gauges: two fresh endpoints, one per-pod series per endpoint
    pool = {"name": "static"}
    assert m.value("inference_pool_ready_pods", **pool) == 2
    per_pod = {lab["model_server_pod"]: v for lab, v in m.series("inference_pool_per_pod_queue_size", **pool)}
    assert set(per_pod) == {s.address for s in sims}
    assert all(v == 0 for v in per_pod.values())  # the override is gone and the queues drained
    for gauge in (
        "inference_pool_average_kv_cache_utilization",
        "inference_pool_average_queue_size",
        "inference_pool_average_running_requests",
    ):
        assert m.value(gauge, **pool) >= 0

    # scheduler: one e2e observation per cycle (the 503 included), attempts by status
    assert m.value("inference_extension_scheduler_e2e_duration_seconds_count") == ok + 1
    assert m.total("inference_extension_scheduler_attempts_total", status="success") == ok
    assert m.total("inference_extension_scheduler_attempts_total", status="failure") == 1
    picked = {
        lab["pod_name"]
        for lab, _ in m.series("inference_extension_scheduler_attempts_total", status="success")
    }
    assert picked <= {s.address for s in sims} and picked

    # one plugin-duration series per plugin and extension point
    plugins = {
        (lab["extension_point"], lab["plugin_type"]): v
        for lab, v in m.series("inference_extension_plugin_duration_seconds_count")
    }
    cycles = ok + 1
    for point, ptype in [
        ("ProfilePicker", "single-profile-handler"),
        ("ProcessProfilesResults", "single-profile-handler"),
        ("Filter", "header-based-testing-filter"),
    ]:
        assert plugins[(point, ptype)] >= cycles, (point, ptype, plugins)
    for point, ptype in [
        ("Scorer", "queue-scorer"),
        ("Scorer", "kv-cache-utilization-scorer"),
        ("Scorer", "prefix-cache-scorer"),
        ("Scorer", "log-probe-scorer"),
        ("Picker", "max-score-picker"),
    ]:
        assert plugins[(point, ptype)] == ok, (point, ptype, plugins)
    assert plugins[("PrepareData", "approx-prefix-cache-producer")] >= ok

    # prefix cache
    # one observation per scheduled request whose prompt fills a block (the chats do; short prompts may not)
    hits = m.value("inference_extension_prefix_indexer_hit_ratio_count")
    assert 7 <= hits <= ok
    assert m.value("inference_extension_prefix_indexer_hit_bytes_count") == hits
    assert m.value("inference_extension_prefix_indexer_hit_ratio_sum") > 0  # the chats share a prefix

    # build info and config
    info = m.series("inference_extension_info")
    assert len(info) == 1 and info[0][1] == 1 and info[0][0]["build_ref"] and info[0][0]["commit"]
    assert m.value("epp_config_generation") == 1

    # ---- logs at -v 5 (everything above ran at 5) ----
    lines = logs.lines()
    levels = {line["level"] for line in lines}
    assert {"trace", "debug", "verbose", "info"} <= levels, levels
    # start-up, once: effective settings and config (as JSON objects too), the endpoints that joined
    assert len([ln for ln in lines if ln["msg"].startswith("epp ") and "settings" in ln]) == 1
    (config_line,) = [ln for ln in lines if ln["msg"].startswith("config loaded from")]
    assert [p["type"] for p in config_line["config"]["plugins"]][:2] == [
        "header-based-testing-filter",
        "queue-scorer",
    ]
    joined = [ln["msg"] for ln in lines if ln["msg"].startswith("endpoints changed")]
    assert joined == [f"endpoints changed: 2 in the pool; added {', '.join(sorted(s.address for s in sims))}"]
    scrape_lines = [ln for ln in lines if ln["logger"] == "epp.datalayer.scraper" and ln["level"] == "trace"]
    assert any(ln["msg"].startswith("scraped 127.0.0.1:") for ln in scrape_lines)
    assert all("request_id" not in ln for ln in scrape_lines)  # background loop: no request context
    by_rid: dict[str, list[dict[str, Any]]] = {}
    for ln in lines:
        if "request_id" in ln:
            by_rid.setdefault(ln["request_id"], []).append(ln)
    for i in range(6):
        mine = by_rid[f"obs-chat-{i}"]
        assert all(ln["model"] == MODEL for ln in mine), mine
        msgs = {(ln["level"], ln["msg"].split(":")[0]) for ln in mine}
        assert ("debug", "scheduled to 127.0.0.1") in msgs, msgs
        assert ("trace", "decision table") in msgs, msgs
        assert ("verbose", "request finished") in msgs, msgs
        probe = [ln for ln in mine if ln["logger"] == PROBE_LOGGER]
        assert len(probe) == 1 and probe[0]["msg"] == "probe saw 2 endpoints"
        table = next(ln for ln in mine if ln["msg"].startswith("decision table"))
        assert table["decision"]["profiles"][0]["picked"], table
        assert "queue-scorer x2" in table["msg"] and "* 127.0.0.1:" in table["msg"]
    rejected = [ln for ln in lines if ln["msg"].startswith("request rejected: 429")]
    assert len(rejected) == 1 and rejected[0]["level"] == "verbose" and rejected[0]["model"] == MODEL
    assert len({ln["request_id"] for ln in lines if ln["logger"] == PROBE_LOGGER}) == ok  # one id each

    # ---- -v 4: DEBUG decision lines, no TRACE at all ----
    logs.configure(4)
    await _chat(http, url, 200, rid="obs-v4")
    await until(_scraped_since(app, app.datastore.clock()), what="a scrape of every endpoint at -v 4")
    lines = logs.lines()
    assert not [ln for ln in lines if ln["level"] == "trace"], "TRACE lines at -v 4"
    mine = [ln for ln in lines if ln.get("request_id") == "obs-v4"]
    assert any(ln["level"] == "debug" and ln["msg"].startswith("scheduled to") for ln in mine), mine

    # ---- -v 2: no per-request lines below INFO ----
    logs.configure(2)
    await _chat(http, url, 201, rid="obs-v2")
    lines = logs.lines()
    assert {ln["level"] for ln in lines} <= {"info", "warning", "error"}, lines
    assert [ln["msg"] for ln in lines if ln.get("request_id") == "obs-v2"] == ["probe saw 2 endpoints"]


def _scraped_since(app: App, t0: float):
    async def pred() -> bool:
        return all(e.metrics.update_time > t0 for e in app.datastore.snapshot())

    return pred
