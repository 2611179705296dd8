"""Plugins that report what the response path learned back to the proxy (dynamic metadata)."""
