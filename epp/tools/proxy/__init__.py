"""A real Envoy in front of the EPP: bootstrap rendering and process management (tests, demo, benchmarks)."""

from epp.tools.proxy.envoy_config import EnvoyConfig, render_bootstrap
from epp.tools.proxy.envoy_process import EnvoyProcess, find_envoy

__all__ = ["EnvoyConfig", "EnvoyProcess", "find_envoy", "render_bootstrap"]
