"""Upstreams: the cluster manager, clusters and hosts (``cluster``), connection pools with
circuit breakers (``pool``), load balancers (``lb``), outlier detection and active health
checks (``health``) and the outlier event log (``outlier_log``).

Modules here may import ``proxy.config`` (cluster specs), ``proxy.http.codec`` and
``proxy.stats``; never the server, the connection manager, filters or xDS.
"""
from proxy.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "proxy.upstream.cluster": ("ClusterManager", "Cluster", "Host"),
    "proxy.upstream.pool": ("ConnPool", "UpstreamConnection"),
    "proxy.upstream.lb": ("make_lb",),
    "proxy.upstream.health": ("OutlierDetector", "HealthChecker"),
    "proxy.upstream.outlier_log": ("OutlierEventLog",),
})
