"""epp: a declarative, config-driven Endpoint Picker for LLM inference gateways."""

__version__ = "0.1.0"
