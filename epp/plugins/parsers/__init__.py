"""Built-in request parsers: request body bytes to an `InferenceRequest` (or a 400 RequestError)."""
