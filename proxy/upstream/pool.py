"""Upstream HTTP/1.1 connections and per-host connection pools with circuit breakers.

A pool hands a connection to a *handler* (the router's upstream request) through
``handler.on_pool_ready(conn)`` or ``handler.on_pool_failure(reason)``; the connection then
calls ``on_upstream_headers(head)``, ``on_upstream_data(bytes)``, ``on_upstream_end()``,
``on_upstream_reset(reason)`` and the watermark callbacks ``on_upstream_pause()`` /
``on_upstream_resume()`` on the attached handler.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import socket
from typing import TYPE_CHECKING, Any, Protocol

from proxy.http.codec import END, ClientCodec, Data, ProtocolError, ResponseHead

__all__ = ["UpstreamConnection", "ConnPool", "PoolHandler", "OVERFLOW"]

OVERFLOW = "overflow"


class PoolHandler(Protocol):
    """The handler of one upstream request (see the module docstring): the router
    (:class:`proxy.filters.router.Router`) or a mirror's :class:`proxy.filters.mirror.ShadowRequest`."""

    stream: Any         # the downstream stream (its connection gets internal_error() on a bug)

    def on_pool_ready(self, conn: UpstreamConnection) -> None: ...

    def on_pool_failure(self, reason: str) -> None: ...

    def on_upstream_headers(self, head: ResponseHead) -> None: ...

    def on_upstream_data(self, data: bytes) -> None: ...

    def on_upstream_end(self) -> None: ...

    def on_upstream_reset(self, reason: str) -> None: ...

    def on_upstream_pause(self) -> None: ...

    def on_upstream_resume(self) -> None: ...

    def flush(self) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    __slots__ = ("pool", "codec", "handler", "transport", "keep_alive", "requests", "closed", "_resp_done",
                 "_req_done")

    def __init__(self, pool: "ConnPool"):
        self.pool = pool
        self.codec = ClientCodec(max_header_bytes=96 * 1024, max_headers=200)
        self.handler: PoolHandler | None = None
        self.transport: asyncio.Transport | None = None      # set by connection_made
        self.keep_alive = True
        self.requests = 0
        self.closed = False
        self._resp_done = False
        self._req_done = False

    # --- asyncio protocol --------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=self.pool.cluster.spec.per_connection_buffer_limit_bytes)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def data_received(self, data: bytes) -> None:
        try:
            self._received(data)
        except Exception:     # a bug must cost one stream, not the process
            logging.getLogger("proxy.upstream.pool").exception("internal error on an upstream connection")
            h, self.handler = self.handler, None
            self.close()
            if h is not None:
                h.stream.conn.internal_error()

    def _received(self, data: bytes) -> None:
        self.pool.stats.upstream_cx_rx_bytes_total += len(data)
        try:
            events = self.codec.receive_data(data)
        except ProtocolError:
            self._reset("protocol error")
            return
        for ev in events:
            h = self.handler
            if h is None:
                self.close()      # unsolicited bytes: the connection is unusable
                return
            if ev is END:
                self._resp_done = True
                self.handler = None if self._req_done else h
                h.on_upstream_end()
                if self._req_done:
                    self._finish()
            elif type(ev) is Data:
                h.on_upstream_data(ev.data)
            elif type(ev) is ResponseHead:
                if not ev.keep_alive:
                    self.keep_alive = False
                h.on_upstream_headers(ev)
        h = self.handler
        if h is not None:
            h.flush()

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.pool.on_closed(self)
        for ev in self.codec.feed_eof():
            if self.handler is not None and ev is END:
                h, self.handler = self.handler, None
                h.on_upstream_end()
        if self.handler is not None:
            h, self.handler = self.handler, None
            h.on_upstream_reset("connection termination")

    def pause_writing(self) -> None:
        if self.handler is not None:
            self.handler.on_upstream_pause()

    def resume_writing(self) -> None:
        if self.handler is not None:
            self.handler.on_upstream_resume()

    # --- used by the router -----------------------------------------------------------
    def attach(self, handler: PoolHandler, head_request: bool) -> None:
        self.handler = handler
        self.requests += 1
        self._resp_done = False
        self._req_done = False
        self.codec.expect_response(head_request)

    # write, pause_reading and resume_reading: only for a connection the pool handed out,
    # so connected (its connection_made ran)
    def write(self, data: bytes) -> None:
        self.pool.stats.upstream_cx_tx_bytes_total += len(data)
        if TYPE_CHECKING:
            assert self.transport is not None
        self.transport.write(data)

    def request_complete(self) -> None:
        """The whole request has been written; the connection may be reused after the response."""
        self._req_done = True
        if self._resp_done:
            self.handler = None
            self._finish()

    def _finish(self) -> None:
        limit = self.pool.cluster.spec.max_requests_per_connection
        if self.keep_alive and not self.closed and (not limit or self.requests < limit):
            self.pool.release(self)
        else:
            self.close()

    def pause_reading(self) -> None:
        if not self.closed:
            if TYPE_CHECKING:
                assert self.transport is not None
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if not self.closed:
            if TYPE_CHECKING:
                assert self.transport is not None
            self.transport.resume_reading()

    def detach_and_close(self) -> None:
        self.handler = None
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool.on_closed(self)
            if self.transport is not None:
                self.transport.close()

    def _reset(self, reason: str) -> None:
        h, self.handler = self.handler, None
        self.close()
        if h is not None:
            h.on_upstream_reset(reason)


class ConnPool:
    """HTTP/1.1 pool for one host: one request per connection at a time."""

    __slots__ = ("cluster", "host", "stats", "idle", "pending", "connecting", "conns", "loop")

    def __init__(self, cluster, host) -> None:
        self.cluster = cluster
        self.host = host
        self.stats = cluster.stats
        self.idle: list[UpstreamConnection] = []
        self.pending: collections.deque[PoolHandler] = collections.deque()      # waiting for a connection
        self.connecting = 0
        self.conns: set[UpstreamConnection] = set()
        self.loop = asyncio.get_event_loop()

    def request(self, handler: PoolHandler) -> str | None:
        """Attach ``handler`` to a connection now or later; OVERFLOW if a breaker trips."""
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                handler.on_pool_ready(conn)
                return None
        c = self.cluster
        th = c.spec.thresholds
        if c.cx_count >= th.max_connections:
            self.stats.upstream_cx_overflow += 1
            if c.pending_count >= th.max_pending_requests:
                self.stats.upstream_rq_pending_overflow += 1
                return OVERFLOW
        elif c.pending_count >= th.max_pending_requests:
            self.stats.upstream_rq_pending_overflow += 1
            return OVERFLOW
        else:
            self._connect()
        self.pending.append(handler)
        c.pending_count += 1
        self.stats.upstream_rq_pending_total += 1
        self.stats.upstream_rq_pending_active += 1
        return None

    def cancel(self, handler: PoolHandler) -> None:
        try:
            self.pending.remove(handler)
        except ValueError:
            return
        self._pending_gone()

    def _pending_gone(self) -> None:
        self.cluster.pending_count -= 1
        self.stats.upstream_rq_pending_active -= 1

    def _connect(self) -> None:
        c = self.cluster
        c.cx_count += 1
        self.connecting += 1
        self.stats.upstream_cx_total += 1
        self.loop.create_task(self._connect_task())

    async def _connect_task(self) -> None:
        c = self.cluster
        conn = UpstreamConnection(self)
        host = self.host
        try:
            if c.spec.tls is None:
                await asyncio.wait_for(self.loop.create_connection(lambda: conn, host.address, host.port),
                                       c.spec.connect_timeout_s)
            else:        # UpstreamTlsContext: mTLS + SPIFFE check (proxy/tls/sds.py)
                if c.security is None:
                    raise OSError("cluster needs TLS but this sidecar has no certificates "
                                  "(node.metadata.CITADEL not set)")
                await asyncio.wait_for(c.security.connect(c, conn, host.address, host.port),
                                       c.spec.connect_timeout_s)
        except (OSError, asyncio.TimeoutError) as e:
            self.connecting -= 1
            c.cx_count -= 1
            self.stats.upstream_cx_connect_fail += 1
            if isinstance(e, asyncio.TimeoutError):
                self.stats.upstream_cx_connect_timeout += 1
            host.cx_connect_fail += 1
            reason = "timeout" if isinstance(e, asyncio.TimeoutError) else (e.strerror or str(e))
            if self.pending:
                h = self.pending.popleft()
                self._pending_gone()
                h.on_pool_failure(reason)
            return
        self.connecting -= 1
        self.conns.add(conn)
        host.cx_active += 1
        self.stats.upstream_cx_active += 1
        self.release(conn)

    def release(self, conn: UpstreamConnection) -> None:
        if self.pending:
            h = self.pending.popleft()
            self._pending_gone()
            h.on_pool_ready(conn)
        else:
            self.idle.append(conn)

    def on_closed(self, conn: UpstreamConnection) -> None:
        if conn in self.conns:
            self.conns.discard(conn)
            self.cluster.cx_count -= 1
            self.host.cx_active -= 1
            self.stats.upstream_cx_active -= 1
            self.stats.upstream_cx_destroy += 1
            # a waiting request may now open its own connection
            if self.pending and self.cluster.cx_count < self.cluster.spec.thresholds.max_connections \
                    and self.connecting < len(self.pending):
                self._connect()

    def drain(self) -> None:
        """Close idle connections (host removed or cluster replaced)."""
        for conn in self.idle:
            conn.close()
        self.idle.clear()
