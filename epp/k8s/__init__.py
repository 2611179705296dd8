"""Kubernetes endpoint sources (InferencePool, standalone selector) and leader election."""
