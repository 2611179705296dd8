"""Micro-benchmarks of the EPP's hot paths (`python -m epp.bench.<name>`)."""
