"""Clusters, hosts and the cluster manager (with atomic updates for an xDS client).

STATIC and EDS clusters take endpoints from their spec (EDS later from
:meth:`ClusterManager.update_endpoints`); STRICT_DNS resolves every endpoint name and
uses all addresses; LOGICAL_DNS keeps one host whose address follows the first DNS answer.
Names are resolved with the system resolver (``loop.getaddrinfo``: /etc/hosts, then
/etc/resolv.conf), every ``dns_refresh_rate``.
"""
from __future__ import annotations

import asyncio
import logging
import socket
from typing import Iterable, Protocol

from proxy.config.cluster import ClusterSpec, EndpointSpec
from proxy.upstream.lb import make_lb
from proxy.upstream.health import HealthChecker, OutlierDetector
from proxy.upstream.outlier_log import OutlierEventLog
from proxy.stats import Stats
from proxy.upstream.pool import ConnPool, UpstreamConnection

__all__ = ["Host", "Cluster", "ClusterManager", "UpstreamSecurity"]
log = logging.getLogger("proxy.upstream.cluster")


class Host:
    __slots__ = ("address", "port", "hostname", "weight", "priority", "rq_active", "cx_active", "pool",
                 "hc_failed", "ejected", "eds_healthy", "consecutive_5xx", "consecutive_gw", "ejections",
                 "ejected_until", "rq_total", "rq_error", "rq_success", "cx_connect_fail", "hc_port",
                 "hc_successes", "hc_failures", "hc_initial", "last_ejected_at", "last_unejected_at")

    def __init__(self, address: str, port: int, hostname: str = "", weight: int = 1, priority: int = 0,
                 hc_port: int = 0, eds_healthy: bool = True):
        self.address, self.port, self.hostname = address, port, hostname
        self.weight, self.priority, self.hc_port = weight, priority, hc_port
        self.rq_active = self.cx_active = 0
        self.pool: ConnPool | None = None
        self.hc_failed = False
        self.ejected = False
        self.eds_healthy = eds_healthy
        self.consecutive_5xx = self.consecutive_gw = self.ejections = 0
        self.ejected_until = 0.0
        self.last_ejected_at: float | None = None      # loop time of the last ejection / unejection
        self.last_unejected_at: float | None = None
        self.rq_total = self.rq_error = self.rq_success = self.cx_connect_fail = 0
        self.hc_successes = self.hc_failures = 0
        self.hc_initial = True

    @property
    def healthy(self) -> bool:
        return not (self.hc_failed or self.ejected) and self.eds_healthy

    @property
    def key(self) -> tuple[str, int]:
        return (self.address, self.port)

    def __repr__(self) -> str:
        return f"Host({self.address}:{self.port})"


class UpstreamSecurity(Protocol):
    """mTLS for the clusters with a transport_socket (:class:`proxy.tls.sds.SidecarSecurity`)."""

    async def connect(self, cluster: Cluster, conn: UpstreamConnection, address: str, port: int) -> None: ...


class Cluster:
    def __init__(self, spec: ClusterSpec, stats: Stats, outlier_log: OutlierEventLog | None = None):
        self.spec = spec
        self.name = spec.name
        self.stats = stats.cluster(spec.name)
        self.hosts: list[Host] = []
        self.lb = make_lb(spec.lb_policy, [], spec)
        self.rq_active = 0          # for max_requests
        self.pending_count = 0      # for max_pending_requests
        self.cx_count = 0           # for max_connections
        self.retries_active = 0     # for max_retries
        self.outlier = OutlierDetector(self, spec.outlier, outlier_log) if spec.outlier else None
        self.health = HealthChecker(self, spec.health_checks[0]) if spec.health_checks else None
        self._dns_task: asyncio.Task | None = None
        self.initialized = asyncio.Event()
        self.dns_hostname = ""
        self.security: UpstreamSecurity | None = None    # the manager's, for a cluster with TLS

    # --- membership ------------------------------------------------------------------------
    def set_hosts(self, endpoints: Iterable[tuple[str, int, EndpointSpec]]) -> None:
        """Replace the host set, keeping state (pools, health) of hosts that stay."""
        old = {h.key: h for h in self.hosts}
        new: list[Host] = []
        for address, port, ep in endpoints:
            h = old.pop((address, port), None)
            if h is None:
                h = Host(address, port, ep.hostname or (ep.address if ep.address != address else ""), ep.weight,
                         ep.priority, ep.health_check_port, ep.healthy)
                h.pool = ConnPool(self, h)
                if self.health is not None:
                    h.hc_failed = True        # until the first check passes, like Envoy
            else:
                h.weight, h.eds_healthy = ep.weight, ep.healthy
            new.append(h)
        for gone in old.values():
            if gone.pool is not None:
                gone.pool.drain()
        if [h.key for h in new] != [h.key for h in self.hosts]:
            self.stats.membership_change += 1
        self.hosts = new
        self.refresh()

    def refresh(self) -> None:
        """Rebuild the balancer after a membership or health change."""
        hosts = self.hosts
        # lowest priority level with hosts wins (priority failover is not modelled further)
        if hosts:
            p = min(h.priority for h in hosts)
            hosts = [h for h in hosts if h.priority == p] if p or any(h.priority for h in hosts) else hosts
        healthy = [h for h in hosts if h.healthy]
        self.stats.membership_total = len(self.hosts)
        self.stats.membership_healthy = sum(1 for h in self.hosts if h.healthy)
        if hosts and len(healthy) * 100 < self.spec.healthy_panic_threshold * len(hosts):
            self.lb = make_lb(self.spec.lb_policy, hosts, self.spec)      # panic: use every host
            self.panic = True
        else:
            self.lb = make_lb(self.spec.lb_policy, healthy, self.spec)
            self.panic = False

    panic = False

    def choose(self, hash_key: bytes | None):
        if self.panic:
            self.stats.lb_healthy_panic += 1
        return self.lb.choose(hash_key)

    # --- DNS -------------------------------------------------------------------------------
    def start(self) -> None:
        t = self.spec.type
        if t in ("STATIC", "EDS"):
            if t == "STATIC" or (self.spec.endpoints and not self.hosts):
                self.set_hosts((e.address, e.port, e) for e in self.spec.endpoints)
            if t == "STATIC" or self.hosts:
                self.initialized.set()
        else:
            self._dns_task = asyncio.get_event_loop().create_task(self._dns_loop())
        if self.outlier is not None:
            self.outlier.start()
        if self.health is not None:
            self.health.start()

    async def _resolve(self, ep: EndpointSpec) -> list[str]:
        family = {"V4_ONLY": socket.AF_INET, "V6_ONLY": socket.AF_INET6}.get(self.spec.dns_lookup_family,
                                                                             socket.AF_UNSPEC)
        infos = await asyncio.get_event_loop().getaddrinfo(ep.address, ep.port, family=family,
                                                            type=socket.SOCK_STREAM)
        addrs: list[str] = []
        for _, _, _, _, sa in infos:
            addr = str(sa[0])       # AF_INET / AF_INET6: already a str
            if addr not in addrs:
                addrs.append(addr)
        if self.spec.dns_lookup_family == "V4_PREFERRED":
            addrs.sort(key=lambda a: ":" in a)
        return addrs

    async def _dns_loop(self) -> None:
        while True:
            self.stats.update_attempt += 1
            try:
                resolved: list[tuple[str, int, EndpointSpec]] = []
                for ep in self.spec.endpoints:
                    addrs = await self._resolve(ep)
                    if self.spec.type == "LOGICAL_DNS":
                        addrs = addrs[:1]
                    resolved += [(a, ep.port, ep) for a in addrs]
                self._apply_dns(resolved)
                self.stats.update_success += 1
            except (OSError, UnicodeError) as e:
                self.stats.update_failure += 1
                log.warning("cluster %s: DNS resolution failed: %s", self.name, e)
            self.initialized.set()
            await asyncio.sleep(self.spec.dns_refresh_rate_s)

    def _apply_dns(self, resolved: list[tuple[str, int, EndpointSpec]]) -> None:
        if self.spec.type == "LOGICAL_DNS" and self.hosts and resolved:
            # one logical host; new connections use the latest address, pooled ones stay
            h = self.hosts[0]
            address = resolved[0][0]
            if h.address != address:
                h.address = address
                if h.pool is not None:
                    h.pool.drain()
            return
        self.set_hosts(resolved)

    def stop(self) -> None:
        if self._dns_task is not None:
            self._dns_task.cancel()
        if self.outlier is not None:
            self.outlier.stop()
        if self.health is not None:
            self.health.stop()
        for h in self.hosts:
            if h.pool is not None:
                h.pool.drain()


class ClusterManager:
    """All clusters by name. Every update method is atomic with respect to request handling
    (single-threaded event loop: a route resolves its cluster by name per request)."""

    def __init__(self, stats: Stats):
        self.stats = stats
        self.clusters: dict[str, Cluster] = {}
        self.security: UpstreamSecurity | None = None     # mTLS for clusters with a transport_socket
        # bootstrap cluster_manager.outlier_detection.event_log_path
        self.outlier_log: OutlierEventLog | None = None
        self.version_info = "static"

    def get(self, name: str) -> Cluster | None:
        return self.clusters.get(name)

    def add_or_update_cluster(self, spec: ClusterSpec) -> Cluster:
        old = self.clusters.get(spec.name)
        if old is not None and old.spec == spec:
            return old
        c = Cluster(spec, self.stats, self.outlier_log)
        c.security = self.security
        if old is not None and spec.type == "EDS" and old.spec.type == "EDS":
            c.set_hosts((h.address, h.port, EndpointSpec(h.address, h.port, h.weight, h.hostname, h.priority,
                                                         h.hc_port, h.eds_healthy)) for h in old.hosts)
        self.clusters[spec.name] = c
        if old is not None:
            old.stop()
        c.start()
        return c

    def remove_cluster(self, name: str) -> bool:
        c = self.clusters.pop(name, None)
        if c is None:
            return False
        c.stop()
        return True

    def update_endpoints(self, name: str, endpoints: Iterable[EndpointSpec]) -> None:
        """EDS: replace a cluster's endpoints (addresses must be IPs)."""
        c = self.clusters[name]
        c.set_hosts((e.address, e.port, e) for e in endpoints)
        c.initialized.set()

    async def initialize(self, timeout_s: float = 30.0) -> None:
        """Wait until every non-EDS cluster resolved once (Envoy's cluster warming)."""
        waits = [c.initialized.wait() for c in self.clusters.values() if c.spec.type != "EDS"]
        waits += [c.health.first_round.wait() for c in self.clusters.values() if c.health is not None]
        if waits:
            try:
                await asyncio.wait_for(asyncio.gather(*waits), timeout_s)
            except asyncio.TimeoutError:
                log.warning("clusters not initialized after %.0fs; starting anyway", timeout_s)

    def stop(self) -> None:
        for c in self.clusters.values():
            c.stop()
