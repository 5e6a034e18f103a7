"""HTTP/1.1: the sans-IO codec, shared header sets, the downstream connection manager and its
streams, compiled route tables, and a small client (the xDS client's transport).

``codec`` and ``headers`` are leaves (no ``proxy`` imports); ``client`` builds on the codec
only. The connection manager (``hcm``, ``stream``, ``route_table``) may import
``proxy.config`` (specs) and ``proxy.filters`` (the filter chain it runs); never the
server, upstreams, TLS or xDS.
"""
from proxy.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "proxy.http.codec": ("RequestHead", "ResponseHead", "Data", "END", "ProtocolError", "ServerCodec",
                         "ClientCodec"),
    "proxy.http.headers": ("HOP_BY_HOP", "REQUEST_HOP_BY_HOP", "ABSOLUTE_FORM"),
    "proxy.http.client": ("HttpClient", "Response", "http_request"),
    "proxy.http.hcm": ("HcmConfig", "DownstreamConnection"),
    "proxy.http.stream": ("Stream",),
    "proxy.http.route_table": ("RouteTable",),
    "proxy.http.lazy_timer": ("LazyTimer",),
})
