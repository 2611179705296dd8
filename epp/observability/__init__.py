"""Prometheus metrics: what the daemon exposes, declared and recorded in one place."""
