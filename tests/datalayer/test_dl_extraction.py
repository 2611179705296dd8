"""Metric specs, the per-engine mappings and extraction into EndpointMetrics, and the plugin parameters."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from epp.datalayer.extractor import CoreMetricsExtractor
from epp.datalayer.metric_spec import (
    BUILTIN_ENGINES,
    ENGINE_LABEL_KEY,
    EngineMapping,
    MetricOverrides,
    MetricSpec,
    parse_spec,
)
from epp.datalayer.plugin_types import (
    CORE_METRICS_EXTRACTOR,
    METRICS_DATA_SOURCE,
    CoreMetricsExtractorParams,
)
from epp.datalayer.promtext import Sample, scan
from epp.framework.handle import SimpleHandle
from epp.framework.plugins import PluginKind
from epp.framework.types import Endpoint, EndpointMetrics
from epp.tools.engine_pages import ServerState, page_for_engine, vllm_page

# ---- specs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("vllm:num_requests_waiting", MetricSpec("vllm:num_requests_waiting")),
        (" name ", MetricSpec("name")),
        ("m{request_type=waiting}", MetricSpec("m", (("request_type", "waiting"),))),
        ('m{a="x,y", b = c}', MetricSpec("m", (("a", "x,y"), ("b", "c")))),
        ("m{}", MetricSpec("m")),
        ('m{a="q\\"uote"}', MetricSpec("m", (("a", 'q"uote'),))),
    ],
)
def test_spec_grammar(text, expected):
    assert parse_spec(text) == expected


def test_empty_spec_disables():
    assert parse_spec("") is None and parse_spec("   ") is None


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("9bad", "not a valid metric name"),
        ("m{a=b", "must end with '}'"),
        ("m{a}", "expected label=value"),
        ("m{1a=b}", "not a valid label name"),
        ("m{a=b,a=c}", "given twice"),
        ('m{a="open}', "unterminated"),
        ("m{a=b c=d}", "bad label value"),
    ],
)
def test_bad_specs_say_why(text, fragment):
    with pytest.raises(ValueError, match=fragment):
        parse_spec(text)


def test_subset_match_and_newest_timestamp_wins():
    spec = MetricSpec("m", (("t", "x"),))
    samples = [
        Sample("m", {"t": "y"}, 1.0),
        Sample("m", {"t": "x", "extra": "1"}, 2.0),
        Sample("m", {"t": "x"}, 3.0),
        Sample("m", {"t": "x"}, 4.0, 10),
        Sample("m", {"t": "x"}, 5.0, 5),
    ]
    assert spec.select(samples).value == 4.0
    assert spec.select(samples[:3]).value == 2.0  # no timestamps: the first match
    assert MetricSpec("m", (("t", "z"),)).select(samples) is None
    assert str(spec) == "m{t=x}"


def test_builtin_engines_follow_the_reference_table():
    assert set(BUILTIN_ENGINES) == {"vllm", "sglang", "trtllm-serve", "triton-tensorrt-llm"}
    vllm = BUILTIN_ENGINES["vllm"]
    assert [str(s) for s in vllm.kv_usage] == ["vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"]
    assert (
        str(BUILTIN_ENGINES["triton-tensorrt-llm"].queued[0])
        == "nv_trt_llm_request_metrics{request_type=waiting}"
    )
    assert (
        BUILTIN_ENGINES["triton-tensorrt-llm"].lora is None and BUILTIN_ENGINES["trtllm-serve"].lora is None
    )
    assert BUILTIN_ENGINES["sglang"].cache_block_size_label == "page_size"
    assert BUILTIN_ENGINES["sglang"].cache_num_blocks_label == "num_pages"
    assert str(BUILTIN_ENGINES["trtllm-serve"].cache_num_blocks) == "trtllm_kv_cache_max_blocks"


# ---- extraction -----------------------------------------------------------------------------------


NEVER = EndpointMetrics()


def extract(ext: CoreMetricsExtractor, page: str, labels=None, previous=NEVER, now=100.0):
    mapping = ext.mapping_for(labels or {})
    return ext.extract(mapping, scan(page, mapping.names).samples, previous, now)


@pytest.mark.parametrize("engine", sorted(BUILTIN_ENGINES))
def test_every_engine_reads_its_fixture(engine):
    state = ServerState(waiting=11, running=3, kv_usage=0.875, block_size=128, num_blocks=999)
    result = extract(CoreMetricsExtractor(), page_for_engine(engine, state), {ENGINE_LABEL_KEY: engine})
    m = result.metrics
    assert (m.waiting_queue_size, m.running_requests_size, m.kv_cache_usage) == (11, 3, 0.875)
    assert (m.cache_block_size, m.cache_num_blocks) == (128, 999)
    assert result.fresh and result.missing == () and m.update_time == 100.0


def test_old_vllm_kv_name_is_understood():
    page = vllm_page(ServerState(kv_usage=0.33), legacy_kv_name=True)
    assert "vllm:kv_cache_usage_perc" not in page
    assert extract(CoreMetricsExtractor(), page).metrics.kv_cache_usage == 0.33


LORA = "vllm:lora_requests_info"
LORA_PAGE = f"""\
vllm:num_requests_waiting 0
{LORA}{{max_lora="4",running_lora_adapters="",waiting_lora_adapters=""}} 1700000100
{LORA}{{max_lora="4",running_lora_adapters="sql-lora, chat-lora",waiting_lora_adapters=" x "}} 1700000050
{LORA}{{max_lora="4",running_lora_adapters="old",waiting_lora_adapters=""}} 1700000010
"""


def test_lora_uses_latest_non_empty_series_and_trims_names():
    m = extract(CoreMetricsExtractor(), LORA_PAGE).metrics
    assert m.active_models == {"sql-lora", "chat-lora"}
    assert m.waiting_models == {"x"}
    assert m.max_active_models == 4


def test_lora_with_only_empty_series_still_reads_max_lora():
    page = 'vllm:lora_requests_info{max_lora="2",running_lora_adapters="",waiting_lora_adapters=""} 5\n'
    previous = EndpointMetrics(active_models=frozenset({"gone"}))
    m = extract(CoreMetricsExtractor(), page, previous=previous).metrics
    assert m.active_models == frozenset() and m.max_active_models == 2


def test_partial_page_keeps_previous_values():
    previous = EndpointMetrics(
        waiting_queue_size=5, running_requests_size=6, kv_cache_usage=0.5, update_time=1.0
    )
    page = "vllm:num_requests_running 2\nvllm:kv_cache_usage_perc NaN\nvllm:num_requests_waiting +Inf\n"
    result = extract(CoreMetricsExtractor(), page, previous=previous)
    assert (result.metrics.waiting_queue_size, result.metrics.running_requests_size) == (5, 2)
    assert result.metrics.kv_cache_usage == 0.5
    assert result.missing == ("queued", "kv_usage")
    assert result.fresh and result.metrics.update_time == 100.0


def test_nothing_found_is_not_fresh():
    previous = EndpointMetrics(waiting_queue_size=5, update_time=1.0)
    result = extract(CoreMetricsExtractor(), "something_else 1\n", previous=previous)
    assert not result.fresh and result.metrics == previous


def test_negative_and_fractional_counts_are_sane():
    m = extract(
        CoreMetricsExtractor(), "vllm:num_requests_waiting -3\nvllm:num_requests_running 2.9\n"
    ).metrics
    assert m.waiting_queue_size == 0 and m.running_requests_size == 2


def test_unknown_engine_label_falls_back_to_default(caplog):
    ext = CoreMetricsExtractor(default_engine="sglang")
    assert ext.mapping_for({ENGINE_LABEL_KEY: "mystery"}).name == "sglang"
    assert ext.mapping_for({}).name == "sglang"
    assert ext.mapping_for({ENGINE_LABEL_KEY: "vllm"}).name == "vllm"
    assert "mystery" in caplog.text


def test_custom_engine_label_key():
    ext = CoreMetricsExtractor(engine_label_key="example.com/engine")
    assert ext.mapping_for({"example.com/engine": "trtllm-serve"}).name == "trtllm-serve"
    assert ext.mapping_for({ENGINE_LABEL_KEY: "trtllm-serve"}).name == "vllm"


def test_deprecated_flag_overrides_apply_to_the_default_engine():
    ext = CoreMetricsExtractor(overrides=MetricOverrides(queued="my_queue{pool=a}", lora=""))
    vllm = ext.engines["vllm"]
    assert [str(s) for s in vllm.queued] == ["my_queue{pool=a}"] and vllm.lora is None
    assert [str(s) for s in vllm.running] == ["vllm:num_requests_running"]
    page = 'my_queue{pool="b"} 1\nmy_queue{pool="a"} 7\n'
    assert extract(ext, page).metrics.waiting_queue_size == 7
    assert ext.engines["sglang"] == BUILTIN_ENGINES["sglang"]


def test_unknown_default_engine_is_rejected():
    with pytest.raises(ValueError, match="defaultEngine 'nope'"):
        CoreMetricsExtractor(default_engine="nope")


def test_mapping_from_specs_and_names():
    m = EngineMapping.from_specs("x", queued="q{a=b}", kv_usage="kv", cache_block_size="bs")
    assert m.names == {"q", "kv", "bs"} and m.has_core
    assert not EngineMapping.from_specs("empty").has_core


# ---- plugin types ---------------------------------------------------------------------------------


def test_data_source_plugin_defaults_and_url():
    src = METRICS_DATA_SOURCE.build("src", None, SimpleHandle())
    assert (src.scheme, src.path, src.insecure_skip_verify) == ("http", "/metrics", True)
    ep = Endpoint(key="p-rank-0", ip="fd00::1", port=8000)
    assert src.url(ep) == "http://[fd00::1]:8000/metrics"
    assert src.url(ep, metrics_port=9100) == "http://[fd00::1]:9100/metrics"
    assert METRICS_DATA_SOURCE.kinds == {PluginKind.DATA_SOURCE}
    custom = METRICS_DATA_SOURCE.build(
        "s", {"scheme": "https", "path": "/m", "insecureSkipVerify": False}, None
    )
    assert custom.url(ep) == "https://[fd00::1]:8000/m" and custom.verify_tls
    assert src.typed_name.type == "metrics-data-source" and src.typed_name.name == "src"


@pytest.mark.parametrize(
    "params",
    [{"scheme": "ftp"}, {"path": ""}, {"insecureSkipVerify": "maybe"}, {"unknown": 1}],
)
def test_data_source_rejects_bad_params(params):
    with pytest.raises(ValidationError):
        METRICS_DATA_SOURCE.build("s", params, None)


def test_extractor_plugin_engine_configs_replace_builtins():
    params = {
        "engineLabelKey": "engine",
        "defaultEngine": "mine",
        "engineConfigs": [
            {"name": "mine", "queuedRequestsSpec": "q", "kvUsageSpec": "kv{x=y}"},
            {"name": "vllm", "queuedRequestsSpec": "vllm:num_requests_waiting"},
        ],
    }
    ext = CORE_METRICS_EXTRACTOR.build("ext", params, None)
    assert ext.default_engine == "mine" and ext.engine_label_key == "engine"
    vllm = ext.engines["vllm"]
    assert vllm.running == () and vllm.kv_usage == () and vllm.lora is None  # replaced, not merged
    assert ext.engines["sglang"] == BUILTIN_ENGINES["sglang"]
    assert extract(ext, 'q 3\nkv{x="y"} 0.5\n', {"engine": "other"}).metrics.waiting_queue_size == 3
    assert CORE_METRICS_EXTRACTOR.kinds == {PluginKind.METRICS_EXTRACTOR}


def test_extractor_plugin_label_names_and_value_specs():
    params = {
        "engineConfigs": [
            {
                "name": "custom",
                "queuedRequestsSpec": "q",
                "cacheInfoSpec": "info",
                "cacheBlockSizeLabelName": "bs",
                "cacheNumBlocksLabelName": "nb",
            },
            {
                "name": "valued",
                "queuedRequestsSpec": "q",
                "cacheBlockSizeSpec": "bs",
                "cacheNumBlocksSpec": "nb",
            },
        ]
    }
    ext = CORE_METRICS_EXTRACTOR.build("ext", params, None)
    m = extract(ext, 'q 1\ninfo{bs="48",nb="700"} 1\n', {ENGINE_LABEL_KEY: "custom"}).metrics
    assert (m.cache_block_size, m.cache_num_blocks) == (48, 700)
    m = extract(ext, "q 1\nbs 32\nnb 64\n", {ENGINE_LABEL_KEY: "valued"}).metrics
    assert (m.cache_block_size, m.cache_num_blocks) == (32, 64)


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"defaultEngine": "nope"}, "defaultEngine 'nope'"),
        ({"engineConfigs": [{"name": "a"}, {"name": "a"}]}, "repeated: a"),
        ({"engineConfigs": [{"name": "default"}]}, "reserved"),
        ({"engineConfigs": [{"name": "x", "kvUsageSpec": "bad{"}]}, "must end with"),
        ({"engineConfigs": [{"name": "x", "typo": "q"}]}, "Extra inputs are not permitted"),
        ({"engineConfigs": [{"queuedRequestsSpec": "q"}]}, "name"),
    ],
)
def test_extractor_plugin_rejects_bad_params(params, fragment):
    with pytest.raises(ValidationError, match=fragment):
        CoreMetricsExtractorParams.model_validate(params)


def test_params_schema_uses_upstream_names():
    schema = CoreMetricsExtractorParams.model_json_schema()
    assert {"engineLabelKey", "defaultEngine", "engineConfigs"} <= set(schema["properties"])
    engine = schema["$defs"]["EngineConfigParams"]["properties"]
    assert {
        "name",
        "queuedRequestsSpec",
        "runningRequestsSpec",
        "kvUsageSpec",
        "loraSpec",
        "cacheInfoSpec",
        "cacheBlockSizeLabelName",
        "cacheNumBlocksLabelName",
        "cacheBlockSizeSpec",
        "cacheNumBlocksSpec",
    } == set(engine)
