"""Built-in data producers: they compute per-request data before scheduling and keep request-path state."""
