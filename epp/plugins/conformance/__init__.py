"""Plugins used by the Gateway API Inference Extension conformance suite."""
