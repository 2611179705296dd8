"""Every EndpointPickerConfig the chart renders loads and builds in this EPP (the real loader and registry).

The chart writes config text the daemon reads at startup; a file it cannot load would crash-loop the pod.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from epp.builtins import builtin_registry
from epp.config import build_pipeline, load_config, load_default_config

from .conftest import VALUES, Helm

GOOD_VALUES = sorted(p.name for p in VALUES.glob("*.yaml"))
SERVER_TYPES = ["vllm", "sglang", "triton-tensorrt-llm", "trtllm-serve"]


def config_files(objs: list[dict[str, Any]]) -> dict[str, str]:
    (cm,) = [o for o in objs if o["kind"] == "ConfigMap"]
    return cm["data"]


def load_and_build(name: str, text: str) -> Any:
    registry = builtin_registry()
    config = load_config(text, registry=registry, source=name)
    assert not config.warnings, f"{name}: {config.warnings}"
    build_pipeline(config, registry, source=name)
    return config


@pytest.mark.parametrize("values", GOOD_VALUES)
def test_every_rendered_config_loads(helm: Helm, values: str) -> None:
    for name, text in config_files(helm.template(VALUES / values)).items():
        load_and_build(name, text)


@pytest.mark.parametrize("server_type", SERVER_TYPES)
def test_default_config_reads_the_model_server_type(helm: Helm, server_type: str) -> None:
    objs = helm.template(VALUES / "single.yaml", sets=(f"inferencePool.modelServerType={server_type}",))
    registry = builtin_registry()
    config = load_config(config_files(objs)["default-plugins.yaml"], registry=registry, source="default")
    pipeline = build_pipeline(config, registry, source="default")
    assert pipeline.plugins["core-metrics-extractor"].default_engine == server_type


def test_chart_default_is_the_epp_builtin_default(helm: Helm) -> None:
    """With vLLM the chart's default-plugins.yaml means exactly what the EPP runs with no config at all;
    it only spells out metrics-data-source's default parameters."""
    text = config_files(helm.template(VALUES / "single.yaml"))["default-plugins.yaml"]
    registry = builtin_registry()
    chart = load_config(text, registry=registry, source="chart").to_document()
    builtin = load_default_config(registry).to_document()
    source = next(p for p in chart["plugins"] if p["type"] == "metrics-data-source")
    assert source.pop("parameters") == {"scheme": "http", "path": "/metrics", "insecureSkipVerify": True}
    assert chart == builtin


def test_parser_value_lands_in_the_config(helm: Helm) -> None:
    objs = helm.template(VALUES / "single.yaml", sets=("inferencePool.parser=passthrough-parser",))
    text = config_files(objs)["default-plugins.yaml"]
    assert yaml.safe_load(text)["parser"] == {"pluginRef": "passthrough-parser"}
    assert load_and_build("default", text).parser == "passthrough-parser"
