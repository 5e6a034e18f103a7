"""Envoy configuration, read strictly into frozen specs: the bootstrap, clusters, listeners,
routes (``reader`` holds ``Obj``, which rejects every field a parser leaves unread, and
``ConfigError``).

Parsing only, no sockets and no running state. Modules here import ``proxy.config.*`` and
the parsers that live with their feature: ``proxy.filters.factory`` (HTTP filter configs),
``proxy.tls.transport`` (TLS transport sockets) and ``proxy.access_log`` (``log_format``);
never the server, connection managers, upstreams or xDS.
"""
from proxy.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "proxy.config.reader": ("ConfigError", "Obj"),
    "proxy.config.bootstrap": ("Bootstrap", "NodeSpec", "AdminSpec", "load_bootstrap", "parse_bootstrap"),
    "proxy.config.cluster": ("ClusterSpec", "EndpointSpec", "parse_cluster"),
    "proxy.config.listener": ("ListenerSpec", "HcmSpec", "TcpProxySpec", "parse_listener"),
    "proxy.config.route": ("RouteConfigSpec", "RetryPolicy", "parse_route_config"),
})
