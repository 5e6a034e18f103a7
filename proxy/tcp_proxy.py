"""``envoy.tcp_proxy``: pipe a downstream TCP connection to a host of one cluster,
with flow control both ways and an idle timeout."""
from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from proxy.config.listener import TcpProxySpec

if TYPE_CHECKING:
    from proxy.upstream.cluster import Cluster, Host

__all__ = ["TcpProxyConfig", "TcpDownstream"]


class TcpProxyConfig:
    def __init__(self, spec: TcpProxySpec, ctx, listener_name: str):
        self.spec = spec
        self.ctx = ctx
        self.listener_name = listener_name


class _Upstream(asyncio.Protocol):
    # Set by connection_made, which runs before the connect returns: TcpDownstream reads it
    # only once the connect succeeded (self.up is set then), so it is never None when read.
    transport: asyncio.Transport

    def __init__(self, down: TcpDownstream, down_transport: asyncio.Transport):
        self.down = down
        self.down_transport = down_transport

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.down.touch()
        self.down_transport.write(data)

    def eof_received(self) -> bool:
        if self.down_transport.can_write_eof():
            self.down_transport.write_eof()
            return True
        return False

    def connection_lost(self, exc) -> None:
        self.down.upstream_gone()

    def pause_writing(self) -> None:
        self.down_transport.pause_reading()

    def resume_writing(self) -> None:
        self.down_transport.resume_reading()


class TcpDownstream(asyncio.Protocol):
    def __init__(self, cfg: TcpProxyConfig, server, lstats, buffer_limit: int):
        self.cfg = cfg
        self.server = server
        self.lstats = lstats
        self.buffer_limit = buffer_limit
        self.transport: asyncio.Transport | None = None      # set by connection_made
        self.up: _Upstream | None = None     # once connected upstream
        self.pending: list[bytes] = []
        self.closing = False
        self.deadline = 0.0
        self.host: Host | None = None
        self.cluster: Cluster | None = None

    def touch(self) -> None:
        t = self.cfg.spec.idle_timeout_s
        self.deadline = time.monotonic() + t if t else 0.0

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.lstats.downstream_cx_total += 1
        self.lstats.downstream_cx_active += 1
        self.server.connections.add(self)
        self.touch()
        cluster = self.cfg.ctx.cluster_manager.get(self.cfg.spec.cluster)
        host = cluster.choose(None) if cluster is not None else None
        if host is None:
            if cluster is not None:
                cluster.stats.upstream_cx_none_healthy += 1
            transport.close()
            return
        th = cluster.spec.thresholds
        if cluster.cx_count >= th.max_connections:
            cluster.stats.upstream_cx_overflow += 1
            transport.close()
            return
        self.cluster, self.host = cluster, host
        cluster.cx_count += 1
        cluster.stats.upstream_cx_total += 1
        asyncio.get_event_loop().create_task(self._connect(cluster, host))

    async def _connect(self, cluster: Cluster, host: Host) -> None:
        loop = asyncio.get_event_loop()
        down = self.transport
        if TYPE_CHECKING:
            assert down is not None         # connection_made scheduled this
        up = _Upstream(self, down)
        try:
            await asyncio.wait_for(loop.create_connection(lambda: up, host.address, host.port),
                                   cluster.spec.connect_timeout_s)
        except (OSError, asyncio.TimeoutError):
            cluster.stats.upstream_cx_connect_fail += 1
            cluster.cx_count -= 1
            self.cluster = None
            if cluster.outlier is not None:
                cluster.outlier.report(host, 503)
            self.close()
            return
        cluster.stats.upstream_cx_active += 1
        host.cx_active += 1
        if self.closing:
            up.transport.close()
            return
        self.up = up
        if self.pending:
            up.transport.write(b"".join(self.pending))
            self.pending = []
            down.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.touch()
        if self.up is not None:
            self.up.transport.write(data)
        else:
            self.pending.append(data)
            if sum(map(len, self.pending)) > self.buffer_limit:
                if TYPE_CHECKING:
                    assert self.transport is not None     # data arrives after connection_made
                self.transport.pause_reading()

    def eof_received(self) -> bool:
        if self.up is not None and self.up.transport.can_write_eof():
            self.up.transport.write_eof()
            return True
        return False

    def pause_writing(self) -> None:
        if self.up is not None:
            self.up.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.up is not None:
            self.up.transport.resume_reading()

    def upstream_gone(self) -> None:
        c, h = self.cluster, self.host
        if c is not None:
            if TYPE_CHECKING:
                assert h is not None        # set together with the cluster
            c.cx_count -= 1
            c.stats.upstream_cx_active -= 1
            c.stats.upstream_cx_destroy += 1
            h.cx_active -= 1
            self.cluster = None
        self.close()

    def connection_lost(self, exc) -> None:
        self.lstats.downstream_cx_active -= 1
        self.lstats.downstream_cx_destroy += 1
        self.server.connections.discard(self)
        self.closing = True
        if self.up is not None:
            self.up.transport.close()

    def timed_out(self) -> None:
        self.close()

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()
