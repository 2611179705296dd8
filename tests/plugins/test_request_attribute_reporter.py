"""`request-attribute-reporter`: upstream's config loads, the CEL subset evaluates as CEL does, the value
lands in the response's dynamic metadata, and a bad expression is a load error at its line."""

from __future__ import annotations

import pytest

from epp.builtins import default_registry
from epp.config import build_pipeline, load_config
from epp.errors import ConfigError
from epp.framework.cycle import CycleState
from epp.framework.types import InferenceRequest, ResponseInfo, SchedulingResult
from epp.plugins.reporters.attribute_reporter import RequestAttributeReporter
from epp.plugins.reporters.cel import CelError, compile_cel

# upstream's test/integration/epp/testdata/request-attribute-reporter-config.yaml, without its
# enableLegacyMetrics gate and with the parser out of the profile (it does nothing there)
CONFIG = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
  - type: openai-parser
  - name: total-tokens-cost-reporter
    type: request-attribute-reporter
    parameters:
      attributes:
        - key:
            namespace: envoy.lb
            name: x-gateway-inference-request-cost
          expression: |
            usage.completion_tokens
          condition: "has(usage.completion_tokens)"
  - type: queue-scorer
parser:
  pluginRef: openai-parser
"""


def _reporter(text: str = CONFIG) -> RequestAttributeReporter:
    registry = default_registry()
    pipeline = build_pipeline(load_config(text, registry=registry, environ={}), registry)
    plugin = pipeline.plugins["total-tokens-cost-reporter"]
    assert isinstance(plugin, RequestAttributeReporter)
    return plugin


def _complete(plugin: RequestAttributeReporter, response: ResponseInfo) -> ResponseInfo:
    request = InferenceRequest(request_id="r", model="m", target_model="m")
    plugin.response_complete(CycleState(), request, response, SchedulingResult("default", {}))
    return response


def test_upstream_config_reports_completion_tokens_in_dynamic_metadata() -> None:
    plugin = _reporter()
    done = _complete(plugin, ResponseInfo(prompt_tokens=12, completion_tokens=5, complete=True))
    assert done.dynamic_metadata == {"envoy.lb": {"x-gateway-inference-request-cost": 5.0}}
    no_usage = _complete(plugin, ResponseInfo(complete=True))  # condition false: nothing written
    assert no_usage.dynamic_metadata == {}
    gone = _complete(plugin, ResponseInfo(prompt_tokens=1, completion_tokens=2, complete=False))
    assert gone.dynamic_metadata == {}


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("usage.prompt_tokens + usage.completion_tokens", 17),
        ("(has(usage.prompt_tokens) ? usage.prompt_tokens : 0.0) * 2.0", 24),
        ("int(usage.total_tokens) / 2", 8),
        ("usage.prompt_tokens + 1", None),  # double + int: no such overload, as in CEL
        ("usage.nope", None),  # a missing field is an evaluation error
        ("usage.completion_tokens - usage.completion_tokens", None),  # zero is not reported
    ],
)
def test_expression_values(expression: str, expected: int | None) -> None:
    text = CONFIG.replace("usage.completion_tokens\n", f"{expression}\n").replace(
        'condition: "has(usage.completion_tokens)"', 'condition: ""'
    )
    plugin = _reporter(text)
    assert (
        plugin.value_for({"prompt_tokens": 12.0, "completion_tokens": 5.0, "total_tokens": 17.0}) == expected
    )


def test_cel_logic_absorbs_errors_like_cel() -> None:
    env = {"usage": {"a": 1.0}}
    assert compile_cel("usage.b > 1.0 || usage.a == 1.0", frozenset({"usage"})).evaluate(env) is True
    assert compile_cel("usage.b > 1.0 && usage.a == 2.0", frozenset({"usage"})).evaluate(env) is False
    with pytest.raises(CelError, match="no such key"):
        compile_cel("usage.b > 1.0 && usage.a == 1.0", frozenset({"usage"})).evaluate(env)
    assert compile_cel("-7 / 2 == -3 && 7 % 3 == 1", frozenset()).evaluate({}) is True


def test_bad_expression_is_a_load_error_at_its_line() -> None:
    text = CONFIG.replace('condition: "has(usage.completion_tokens)"', 'condition: "usage.x.size()"')
    with pytest.raises(ConfigError) as info:
        load_config(text, registry=default_registry(), environ={})
    (problem,) = info.value.problems
    assert problem.path == "plugins[1].parameters.attributes[0].condition"
    assert "method calls (.size()) are not supported" in problem.message
    assert problem.line == 15


def test_exactly_one_attribute() -> None:
    text = CONFIG.replace("      attributes:\n", "      attributes: []\n      x:\n")
    with pytest.raises(ConfigError):
        load_config(text, registry=default_registry(), environ={})
