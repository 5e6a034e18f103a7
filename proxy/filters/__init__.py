"""HTTP filters: the interface (``base``), the registry by Envoy extension name
(``factory``), and the built-in filters: ``router`` (with retries and timeouts; helpers in
``request_head`` and ``mirror``), ``fault`` and ``rbac``.

Filters may import ``proxy.config`` (their config parsers), ``proxy.http`` (codec, header
sets, route tables), ``proxy.upstream`` (connection pools) and, for RBAC, ``proxy.tls.sds``
(the peer's identity, imported when an RBAC filter is built); never the server or xDS.
"""
from proxy.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "proxy.filters.base": ("HttpFilter", "CONTINUE", "STOP_ITERATION"),
    "proxy.filters.factory": ("FilterInfo", "register", "http_filter"),
    "proxy.filters.router": ("Router", "RouterConfig"),
    "proxy.filters.fault": ("FaultFilter", "FaultConfig"),
    "proxy.filters.rbac": ("RbacConfig",),
})
