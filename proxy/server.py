"""The server: cluster manager, listener manager, admin, access logs, timers, lifecycle.

``Server(bootstrap)`` then ``await server.start()`` (clusters warm first, like Envoy's init
manager, then listeners open) and ``await server.wait_stopped()``.  The xDS client drives
``server.cluster_manager`` and ``server.listener_manager`` through their update methods.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import TYPE_CHECKING, Iterator, Protocol, Sequence

from proxy.access_log import AccessLogs, write_entries
from proxy.admin import AdminServer
from proxy.config.bootstrap import Bootstrap
from proxy.config.listener import HcmSpec, ListenerSpec
from proxy.config.route import RouteConfigSpec
from proxy.errors import StartupError
from proxy.http.hcm import DownstreamConnection, HcmConfig
from proxy.http.stream import Stream
from proxy.stats import GaugeItem, Stats
from proxy.tcp_proxy import TcpDownstream, TcpProxyConfig
from proxy.upstream.cluster import ClusterManager
from proxy.upstream.outlier_log import OutlierEventLog
from proxy.xds.client import XdsClient

if TYPE_CHECKING:
    from proxy.tls.sds import SidecarSecurity

__all__ = ["Server", "ServerContext", "ListenerManager"]
log = logging.getLogger("proxy")


def _source_workload(bootstrap: Bootstrap) -> str:
    md = bootstrap.node.metadata or {}
    labels = md.get("LABELS") or md.get("labels") or {}
    return str(md.get("WORKLOAD_NAME") or labels.get("app") or bootstrap.node.cluster or "unknown")


class ServerContext:
    """What filters and connection managers share: cluster manager, stats, access logs."""

    def __init__(self, bootstrap: Bootstrap):
        self.bootstrap = bootstrap
        self.stats = Stats(_source_workload(bootstrap))
        self.cluster_manager = ClusterManager(self.stats)
        self.access_logs = AccessLogs()
        self.security: SidecarSecurity | None = None      # mTLS and RBAC state, made on first use (proxy/tls/sds.py)
        self._dest: dict[str, tuple[str, str]] = {}
        self.stats.gauge_sources.append(self._breaker_gauges)
        md = bootstrap.node.metadata or {}
        self.default_version = str((md.get("LABELS") or {}).get("version", "unknown")) if isinstance(
            md.get("LABELS"), dict) else "unknown"

    def _breaker_gauges(self) -> Iterator[GaugeItem]:
        """cluster.<name>.circuit_breakers.default.{cx,rq_pending,rq,rq_retry}_open (0/1) and remaining_*."""
        for name, c in self.cluster_manager.clusters.items():
            th = c.spec.thresholds
            base = f"cluster.{name}.circuit_breakers.default."
            for stat, used, limit in (("cx", c.cx_count, th.max_connections),
                                      ("rq_pending", c.pending_count, th.max_pending_requests),
                                      ("rq", c.rq_active, th.max_requests),
                                      ("rq_retry", c.retries_active, th.max_retries)):
                yield base + stat + "_open", int(used >= limit), {"envoy_cluster_name": name}
                yield base + "remaining_" + stat, max(0, limit - used), {"envoy_cluster_name": name}

    def destination(self, cluster_name: str) -> tuple[str, str]:
        """(destination_service, destination_version); Istio cluster names carry both
        (``outbound|80|v1|reviews.default.svc.cluster.local``)."""
        d = self._dest.get(cluster_name)
        if d is None:
            parts = cluster_name.split("|")
            if len(parts) == 4:
                d = (parts[3], parts[2] or "unknown")
            else:
                d = (cluster_name or "unknown", "unknown")
            self._dest[cluster_name] = d
        return d

    def record(self, stream: Stream) -> None:
        """A stream ended: Istio metrics and access logs."""
        now = time.monotonic()
        dur_ms = (now - stream.t0) * 1000.0
        service, version = self.destination(stream.cluster_name)
        flags = stream.flag_string()
        self.stats.istio.record(service, version, stream.status, flags, dur_ms)
        loggers = stream.cfg.loggers
        if loggers:
            write_entries(loggers, stream, time.time() - (now - stream.t0), int(dur_ms))


class BoundServer(Protocol):
    """A listening socket's server: an ``asyncio.Server`` or, for a TLS listener, a
    :class:`proxy.tls.sockets.InboundServer`."""

    @property
    def sockets(self) -> Sequence[socket.socket]: ...

    def close(self) -> None: ...


class _Listener:
    def __init__(self, spec: ListenerSpec, config: HcmConfig | TcpProxyConfig, server: BoundServer):
        self.spec = spec
        self.config = config
        self.server = server


class ListenerManager:
    def __init__(self, owner: Server):
        self.owner = owner
        self.listeners: dict[str, _Listener] = {}

    async def add_or_update_listener(self, spec: ListenerSpec) -> None:
        old = self.listeners.get(spec.name)
        if old is not None:
            if old.spec == spec:
                return
            await self.remove_listener(spec.name)
        ctx = self.owner.ctx
        lname = f"{spec.address}_{spec.port}"
        lstats = ctx.stats.listener(lname)
        owner = self.owner
        limit = spec.per_connection_buffer_limit_bytes
        config: HcmConfig | TcpProxyConfig
        if isinstance(spec.filter, HcmSpec):
            hcm = config = HcmConfig(spec.filter, ctx, spec.name)

            def factory() -> asyncio.Protocol:
                return DownstreamConnection(hcm, owner, lstats, limit)
        else:
            tcp = config = TcpProxyConfig(spec.filter, ctx, spec.name)

            def factory() -> asyncio.Protocol:
                return TcpDownstream(tcp, owner, lstats, limit)
        loop = asyncio.get_event_loop()
        srv: BoundServer
        try:
            if spec.tls is not None:     # transport_socket tls: STRICT/PERMISSIVE (proxy/tls/sds.py)
                # late: proxy.tls.sds loads cryptography, which a plaintext sidecar does not need
                from proxy.tls.sds import security_of
                srv = await security_of(ctx).start_listener(spec, lname, factory)
            else:
                srv = await loop.create_server(factory, spec.address, spec.port, reuse_address=True,
                                               backlog=1024)
        except OSError as e:
            raise StartupError(f"listener {spec.name!r}: cannot bind '{spec.address}:{spec.port}': "
                               f"{e.strerror or e}") from None
        self.listeners[spec.name] = _Listener(spec, config, srv)

    async def remove_listener(self, name: str) -> bool:
        lst = self.listeners.pop(name, None)
        if lst is None:
            return False
        lst.server.close()
        # drain the old listener's connections (Envoy's listener drain): idle ones close now,
        # busy ones after their response (Connection: close), so new config/policy applies
        for conn in list(self.owner.connections):
            if isinstance(conn, DownstreamConnection) and conn.cfg is lst.config:
                if conn.stream is None:
                    conn.close()
                else:
                    conn.closing = True
        return True

    def replace_route_config(self, route_config_spec: RouteConfigSpec, listener_name: str | None = None) -> int:
        """Install a route configuration on every HCM whose RDS name matches (or on
        ``listener_name``); returns how many connection managers took it."""
        n = 0
        for lst in self.listeners.values():
            cfg = lst.config
            if not isinstance(cfg, HcmConfig):
                continue
            if (listener_name is not None and lst.spec.name == listener_name) or (
                    listener_name is None and cfg.spec.rds_route_config_name == route_config_spec.name):
                cfg.replace_route_config(route_config_spec)
                n += 1
        return n

    def bound_port(self, name: str) -> int:
        return self.listeners[name].server.sockets[0].getsockname()[1]


class Server:
    def __init__(self, bootstrap: Bootstrap):
        self.bootstrap = bootstrap
        self.ctx = ServerContext(bootstrap)
        self.stats = self.ctx.stats
        self.cluster_manager = self.ctx.cluster_manager
        self.listener_manager = ListenerManager(self)
        self.connections: set[DownstreamConnection | TcpDownstream] = set()
        self.admin: AdminServer | None = None
        self.xds: XdsClient | None = None
        self.config_path = ""              # the bootstrap's file (admin /server_info), if any
        self.start_time = time.time()
        self.ready = False
        self._stopped = asyncio.Event()
        self._sweeper: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        path = self.bootstrap.outlier_event_log_path
        if path:                         # before any cluster: every detector gets the log
            try:
                self.cluster_manager.outlier_log = OutlierEventLog(path)
            except OSError as e:
                raise StartupError(f"cluster_manager.outlier_detection.event_log_path: cannot open {path!r}: "
                                   f"{e.strerror or e}") from None
        md = self.bootstrap.node.metadata or {}
        if md.get("CITADEL") or md.get("KEYLOG") or any(
                c.tls is not None for c in self.bootstrap.clusters) or any(
                lst.tls is not None for lst in self.bootstrap.listeners):
            # Citadel certificates before sockets; late: imported only when used (cryptography
            # costs ~18 MB of RSS that a plaintext sidecar does not need)
            from proxy.tls.sds import attach_security
            await attach_security(self)
        for c in self.bootstrap.clusters:
            self.cluster_manager.add_or_update_cluster(c)
        if self.bootstrap.admin is not None:
            self.admin = AdminServer(self)
            await self.admin.start()
        await self.cluster_manager.initialize()
        for spec in self.bootstrap.listeners:
            await self.listener_manager.add_or_update_listener(spec)
        self.ctx.access_logs.start()
        self._sweeper = asyncio.get_event_loop().call_later(1.0, self._sweep)
        if self.bootstrap.dynamic_resources:        # xDS: CDS, EDS, LDS, RDS before ready
            self.xds = XdsClient(self)
            await self.xds.start()
        self.ready = True

    def _sweep(self) -> None:
        now = time.monotonic()
        for conn in list(self.connections):
            d = conn.deadline
            if d and now > d:
                conn.deadline = 0.0
                try:
                    conn.timed_out()
                except Exception:    # a broken connection must not stop the sweeper
                    log.exception("timeout handling failed")
        self._sweeper = asyncio.get_event_loop().call_later(1.0, self._sweep)

    def request_stop(self) -> None:
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def stop(self) -> None:
        self.ready = False
        if self.xds is not None:
            await self.xds.stop()      # no further config while the listeners close
        if self._sweeper is not None:
            self._sweeper.cancel()
        for name in list(self.listener_manager.listeners):
            await self.listener_manager.remove_listener(name)
        for conn in list(self.connections):
            conn.close()
        if self.admin is not None:
            self.admin.close()
        self.cluster_manager.stop()
        self.ctx.access_logs.close()
        if self.cluster_manager.outlier_log is not None:
            self.cluster_manager.outlier_log.close()
        if self.ctx.security is not None:
            await self.ctx.security.stop()
