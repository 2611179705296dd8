"""Built-in profile handlers: which profiles run for a request, and which result is primary."""
