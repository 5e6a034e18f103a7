"""minimesh-proxy: an Envoy-compatible HTTP/1.1 sidecar in Python (see docs/proxy.md)."""
__version__ = "0.1.0"
