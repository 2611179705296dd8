"""Micro-benchmarks of the EPP's hot paths (`python -m epp.tools.bench.<name>`)."""
