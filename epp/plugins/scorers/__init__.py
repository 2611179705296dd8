"""Built-in scorers: each maps the surviving endpoints to a score in [0, 1]."""
