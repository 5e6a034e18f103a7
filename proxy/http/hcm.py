"""The HTTP connection manager: downstream HTTP/1.1 connections and their streams.

:class:`DownstreamConnection` is an ``asyncio.Protocol`` feeding bytes to the sans-IO
:class:`proxy.http.codec.ServerCodec`; each request becomes a :class:`Stream` that owns one
instance of every configured HTTP filter, runs decode callbacks in order and encode
callbacks in reverse, and writes the response (see :mod:`proxy.http.stream`).
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import proxy.filters.factory as registry
from proxy.config.listener import HcmSpec
from proxy.http.codec import REASONS, Data, ProtocolError, RequestHead, ServerCodec, encode_response_head
from proxy.http.lazy_timer import LazyTimer
from proxy.http.route_table import RouteTable
from proxy.http.stream import Stream, http_date

__all__ = ["HcmConfig", "DownstreamConnection"]

log = logging.getLogger("proxy.http.hcm")


class HcmConfig:
    """One listener's HTTP connection manager: spec compiled once, shared by connections."""

    def __init__(self, spec: HcmSpec, ctx, listener_name: str):
        self.spec = spec
        self.ctx = ctx
        self.listener_name = listener_name
        self.stats = ctx.stats.http_prefix(spec.stat_prefix)
        self.route_table: RouteTable | None = RouteTable(spec.route_config) if spec.route_config else None
        self.factories = [registry.http_filter(f.name).factory(f.config, ctx) for f in spec.http_filters]
        self.loggers = [ctx.access_logs.get_formatted(a) for a in spec.access_log]
        self.server_header = spec.server_name.encode()
        self.server_mode = spec.server_header_transformation
        self.max_header_bytes = spec.max_request_headers_kb * 1024
        self.max_headers = spec.max_headers_count

    def replace_route_config(self, route_config_spec) -> None:
        """Atomically swap the route table (RDS)."""
        self.route_table = RouteTable(route_config_spec)


class DownstreamConnection(asyncio.Protocol):
    """asyncio protocol for one downstream connection."""

    __slots__ = ("cfg", "codec", "transport", "stream", "queue", "closing", "buffer_limit", "paused_by",
                 "deadline", "lstats", "server", "peer", "write_paused", "_route_timer", "__weakref__")

    def __init__(self, cfg: HcmConfig, server, lstats, buffer_limit: int):
        self.cfg = cfg
        self.server = server
        self.lstats = lstats
        self.codec = ServerCodec(cfg.max_header_bytes, cfg.max_headers)
        self.transport: asyncio.Transport | None = None     # set by connection_made
        self.stream: Stream | None = None
        self.queue: list = []
        self.closing = False
        self.buffer_limit = buffer_limit
        self.paused_by = 0          # bit 1: upstream backpressure, bit 2: pipelining queue
        self.write_paused = False
        self.deadline = 0.0
        self.peer = ("", 0)
        self._route_timer: LazyTimer | None = None

    # --- asyncio protocol --------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        st = self.cfg.stats
        st.downstream_cx_total += 1
        st.downstream_cx_http1_total += 1
        st.downstream_cx_active += 1
        self.lstats.downstream_cx_total += 1
        self.lstats.downstream_cx_active += 1
        self.peer = transport.get_extra_info("peername") or ("", 0)
        # Envoy's per_connection_buffer_limit_bytes is a watermark: above it, stop reading upstream
        transport.set_write_buffer_limits(high=self.buffer_limit)
        self.server.connections.add(self)
        self._arm_idle()

    def _arm_idle(self) -> None:
        spec = self.cfg.spec
        t = spec.request_headers_timeout_s or spec.idle_timeout_s
        self.deadline = time.monotonic() + t if t else 0.0

    def data_received(self, data: bytes) -> None:
        self.cfg.stats.downstream_cx_rx_bytes_total += len(data)
        if self.closing:
            return
        try:
            events = self.codec.receive_data(data)
        except ProtocolError as e:
            # answered in order: after the requests parsed before it (see _feed)
            events = e.events + [e]
        if self.queue:
            self.queue.extend(events)
            return
        try:
            self._feed(events)
        except Exception:     # a bug must cost one connection, not the process
            log.exception("internal error while handling a request; closing the connection")
            self.internal_error()

    def internal_error(self) -> None:
        s = self.stream
        if s is not None and not s.resp_started and not s.reset:
            s.flags.append("DPE")
            try:
                s.send_local_reply(500, b"internal error")
            except Exception:  # the connection closes below in any case
                pass
        self.close()

    def _feed(self, events: list) -> None:
        for i, ev in enumerate(events):
            s = self.stream
            t = type(ev)
            if t is RequestHead:
                if s is not None:
                    self.queue = events[i:]
                    self._pause(2)
                    return
                s = self.stream = Stream(self, ev)
                s.start()
            elif s is None:
                if t is ProtocolError:
                    self.protocol_error(ev.status, ev.body, ev.interim)
                    return
                continue          # tail of a request whose stream was closed early
            elif t is Data:
                s.on_downstream_data(ev.data)
            elif t is ProtocolError:
                if s.req_done and not self.closing:     # a pipelined request is bad: answer the
                    self.queue = events[i:]             # one in flight first (as Envoy does)
                    self._pause(2)
                    return
                self.protocol_error(ev.status, ev.body, ev.interim)
                return
            else:
                s.on_downstream_end()

    def eof_received(self) -> bool:
        # half-close: let an in-flight response finish, then close
        if self.stream is None:
            self.close()
        else:
            self.closing = True
        return True

    def connection_lost(self, exc) -> None:
        st = self.cfg.stats
        st.downstream_cx_active -= 1
        self.lstats.downstream_cx_active -= 1
        self.lstats.downstream_cx_destroy += 1
        self.server.connections.discard(self)
        self.closing = True
        s = self.stream
        if s is not None:
            self.stream = None
            s.downstream_reset()
        if self._route_timer is not None:
            self._route_timer.close()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.stream is not None:
            self.stream.on_downstream_pause()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.stream is not None:
            self.stream.on_downstream_resume()

    # --- helpers ----------------------------------------------------------------------------
    def route_timer(self) -> LazyTimer:
        """The re-armable timer for the route timeout of this connection's stream (one stream
        at a time): cheaper than a loop timer handle per request."""
        if self._route_timer is None:
            self._route_timer = LazyTimer(asyncio.get_event_loop())
        return self._route_timer

    def _pause(self, bit: int) -> None:
        if not self.paused_by and self.transport is not None:
            self.transport.pause_reading()
        self.paused_by |= bit

    def _resume(self, bit: int) -> None:
        if self.paused_by & bit:
            self.paused_by &= ~bit
            if not self.paused_by and not self.closing:
                if TYPE_CHECKING:
                    assert self.transport is not None    # data and write callbacks: connected
                self.transport.resume_reading()

    def protocol_error(self, status: int, body: bytes | None = None, interim: bool = False) -> None:
        st = self.cfg.stats
        st.downstream_cx_protocol_error += 1
        if status == 431:
            st.downstream_rq_too_large += 1
        if self.stream is None or not self.stream.resp_started:
            if body is None:
                body = REASONS.get(status, b"Bad Request")
            head = [(b"content-length", b"%d" % len(body))]
            if body:
                head.append((b"content-type", b"text/plain"))
            head += ((b"date", http_date()), (b"server", self.cfg.server_header), (b"connection", b"close"))
            if TYPE_CHECKING:
                assert self.transport is not None        # called while handling received data
            self.transport.write((b"HTTP/1.1 100 Continue\r\n\r\n" if interim else b"")
                                 + encode_response_head(status, head) + body)
        self.close()

    def stream_finished(self, stream: "Stream", keep_alive: bool) -> None:
        self.stream = None
        if not keep_alive or self.closing:
            self.close()
            return
        self._arm_idle()
        if self.queue:
            q, self.queue = self.queue, []
            self._resume(2)
            self._feed(q)

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def timed_out(self) -> None:
        """Called by the server's sweeper when ``deadline`` passed."""
        st = self.cfg.stats
        s = self.stream
        if s is None:
            if self.cfg.spec.request_headers_timeout_s:
                st.downstream_rq_header_timeout += 1
            else:
                st.downstream_cx_idle_timeout += 1
            self.close()
        elif not s.resp_started:
            st.downstream_rq_idle_timeout += 1
            s.send_local_reply(408 if not s.req_done else 504, b"stream timeout", "SI")
            self.close()
        else:
            st.downstream_rq_idle_timeout += 1
            self.close()
