"""Test harness helpers: free ports, managed envoy / minimesh-proxy processes, in-process
echo upstreams, config templates (tests/configs) and the differential runner."""
