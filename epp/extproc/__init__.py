"""The Envoy ext_proc server (the Endpoint Picker Protocol) and the gRPC health server."""
