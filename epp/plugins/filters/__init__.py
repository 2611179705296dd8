"""Built-in filters: each returns the subset of candidates it lets through (possibly empty)."""
