"""The router: the terminal HTTP filter that forwards a stream to an upstream host.

Picks the cluster (weighted if configured) and a host, takes a pooled connection, streams
the request body up and the response down with flow control, and applies the route's
timeout, retry policy (with jittered exponential back-off) and header edits.  Local replies
carry Envoy's response flags (NR, UH, UF, UO, UT, URX, UC).

Retries and timeouts follow Envoy's semantics, checked against real Envoy's /stats by the
differential tests: a retry is decided when an answer (or failure) matches ``retry_on``; past
``num_retries`` it counts ``upstream_rq_retry_limit_exceeded`` (flag URX); over
``max_retries`` it counts ``upstream_rq_retry_overflow``; a scheduled retry counts
``upstream_rq_retry`` when it is made, after a fully jittered exponential back-off.
``upstream_rq_timeout`` counts the route timeout once per request; per-try timeouts count
``upstream_rq_per_try_timeout`` only.
"""
from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import proxy.filters.factory as registry
from proxy.http.codec import LAST_CHUNK, encode_chunk
from proxy.filters.base import STOP_ITERATION, HttpFilter
from proxy.filters.mirror import ShadowRequest, start_mirrors
from proxy.filters.request_head import build_request_head
from proxy.http.lazy_timer import LazyTimer
from proxy.http.route_table import apply_ops
from proxy.upstream.pool import OVERFLOW, UpstreamConnection

if TYPE_CHECKING:
    from proxy.upstream.cluster import Cluster, ClusterManager, Host

__all__ = ["RouterConfig", "Router", "retry_conditions"]

_CONNECT_FAIL = b"upstream connect error or disconnect/reset before headers. reset reason: "
_GATEWAY = frozenset((502, 503, 504))


def retry_conditions(status: int, codes: frozenset) -> tuple:
    """The retry_on conditions an upstream status satisfies."""
    conds: tuple = ("retriable-status-codes",) if status in codes else ()
    if status >= 500:
        conds += ("5xx", "gateway-error") if status in _GATEWAY else ("5xx",)
    elif status == 409:
        conds += ("retriable-4xx",)
    return conds


@dataclass(frozen=True)
class RouterConfig:
    suppress_envoy_headers: bool = False


def _parse(o) -> RouterConfig:
    cfg = RouterConfig(o.take("suppress_envoy_headers", False, bool))
    o.ignore("dynamic_stats", "start_child_span")
    return cfg


def _factory(config: RouterConfig, ctx):
    cm = ctx.cluster_manager
    loop = asyncio.get_event_loop()
    return lambda: Router(cm, config, loop)


class Router(HttpFilter):
    __slots__ = ("cm", "config", "loop", "stream", "cluster", "host", "conn", "policy", "retries_left",
                 "attempts", "body", "body_bytes", "pending", "req_end", "head_bytes", "chunked",
                 "global_timer", "try_timer", "t_sent", "active", "done", "headers_sent", "edit_levels",
                 "hash_key", "retrying", "wc_edits", "retry_timer", "paused", "retry_outstanding", "retry_declined",
                 "mirrors")

    # Set by decode_headers once the route names a known cluster (host: by each attempt),
    # like stream, policy and head_bytes: the methods that read them run only after that.
    cluster: Cluster
    host: Host
    conn: UpstreamConnection | None          # the pooled connection of the current attempt
    global_timer: LazyTimer | None
    try_timer: asyncio.TimerHandle | None
    retry_timer: asyncio.TimerHandle | None
    mirrors: list[ShadowRequest] | None

    def __init__(self, cm: ClusterManager, config: RouterConfig, loop: asyncio.AbstractEventLoop):
        self.cm = cm
        self.config = config
        self.loop = loop
        self.conn = None
        self.active = False
        self.done = False
        self.headers_sent = False
        self.global_timer = self.try_timer = self.retry_timer = None
        self.pending: list = []
        self.body: list | None = []
        self.body_bytes = 0
        self.req_end = False
        self.attempts = 0
        self.retrying = False
        self.paused = False
        self.retry_outstanding = False
        self.retry_declined = False
        self.mirrors = None

    # --- decode -------------------------------------------------------------------------------
    def decode_headers(self, stream, end_stream: bool) -> int:
        self.stream = stream
        route = stream.route
        if route is None:
            stream.cfg.stats.no_route += 1
            stream.send_local_reply(404, b"", "NR")
            return STOP_ITERATION
        if route.direct is not None:
            stream.cfg.stats.rq_direct_response += 1
            headers: list = []
            for lvl in route.edit_levels:
                headers = apply_ops(headers, lvl.resp_add, lvl.resp_remove)
            stream.send_local_reply(route.direct.status, route.direct.body, None, headers)
            return STOP_ITERATION
        name = route.cluster
        wc_edits = None
        if name is None:
            pick = random.randrange(route.total_weight)
            for acc, wname, edits in route.weights:
                if pick < acc:
                    name, wc_edits = wname, edits
                    break
        stream.cluster_name = name
        cluster = self.cm.get(name)
        if cluster is None:
            stream.cfg.stats.no_cluster += 1
            stream.send_local_reply(503, b"", "NC")
            return STOP_ITERATION
        self.cluster = cluster
        self.policy = route.retry_policy
        self.retries_left = self.policy.num_retries if self.policy else 0
        self.edit_levels = ((wc_edits,) if wc_edits else ()) + route.edit_levels
        self.head_bytes, self.chunked = build_request_head(stream, route, self.edit_levels,
                                                           self.config.suppress_envoy_headers)
        a = route.action
        self.hash_key = None
        if a.hash_headers:
            for k, v in stream.headers:
                if k == a.hash_headers[0].encode():
                    self.hash_key = v
                    break
        elif a.hash_source_ip:
            self.hash_key = str(stream.conn.peer[0]).encode()
        self.req_end = end_stream
        if route.mirrors:
            self._mirror(stream, route, end_stream)
        if end_stream:
            self._start_global_timer()
        self._attempt()
        return STOP_ITERATION

    def _mirror(self, stream, route, end_stream: bool) -> None:
        sup = self.config.suppress_envoy_headers
        self.mirrors = start_mirrors(self, stream, route, lambda suffix: build_request_head(
            stream, route, self.edit_levels, sup, None, suffix)[0]) or None
        if self.mirrors and end_stream:
            for sh in self.mirrors:
                sh.send(b"", True)

    def decode_data(self, stream, data: bytes, end_stream: bool) -> int:
        if self.done:
            return STOP_ITERATION
        if self.chunked:
            framed = (encode_chunk(data) if data else b"") + (LAST_CHUNK if end_stream else b"")
        else:
            framed = data
        body = self.body
        if body is not None and self.retries_left:
            body.append(framed)
            self.body_bytes += len(framed)
            if self.body_bytes > stream.conn.buffer_limit:
                self.body = None          # too large to replay: no more retries
        if self.mirrors is not None:
            for sh in self.mirrors:
                sh.send(framed, end_stream)
        conn = self.conn
        if conn is not None and not self.retrying:
            if framed:
                conn.write(framed)
        else:
            self.pending.append(framed)
            if sum(len(p) for p in self.pending) > stream.conn.buffer_limit:
                stream.pause_downstream()
                self.paused = True
        if end_stream:
            self.req_end = True
            self._start_global_timer()
            if conn is not None and not self.retrying:
                self._request_sent()
        return STOP_ITERATION

    def _start_global_timer(self) -> None:
        t = self.stream.route.timeout_s
        if t and self.global_timer is None:
            self.global_timer = self.stream.conn.route_timer()
            self.global_timer.arm(t, self._on_global_timeout)

    # --- attempts -----------------------------------------------------------------------------
    def _attempt(self) -> None:
        self.retrying = False
        self.retry_timer = None
        stream = self.stream
        cluster = self.cluster
        cst = cluster.stats
        if cluster.rq_active >= cluster.spec.thresholds.max_requests:
            cst.upstream_rq_pending_overflow += 1
            return self._fail(503, _CONNECT_FAIL + b"overflow", "UO")
        host = cluster.choose(self.hash_key)
        if host is None:
            cst.upstream_cx_none_healthy += 1
            return self._fail(503, b"no healthy upstream", "UH")
        self.host = host
        stream.upstream_host = host
        if host.hostname and stream.route.action.auto_host_rewrite:
            self.head_bytes, _ = build_request_head(stream, stream.route, self.edit_levels,
                                                    self.config.suppress_envoy_headers, host.hostname.encode())
        self.attempts += 1
        self.active = True
        cluster.rq_active += 1
        host.rq_active += 1
        host.rq_total += 1
        cst.upstream_rq_active += 1
        if host.pool.request(self) is OVERFLOW:
            self._release()
            return self._fail(503, _CONNECT_FAIL + b"overflow", "UO")

    def _release(self) -> None:
        if self.active:
            self.active = False
            self.cluster.rq_active -= 1
            self.host.rq_active -= 1
            self.cluster.stats.upstream_rq_active -= 1

    def _end_retry(self) -> None:
        """A retry counts against max_retries from when it is scheduled until it ends."""
        if self.retry_outstanding:
            self.retry_outstanding = False
            self.cluster.retries_active -= 1

    def on_pool_ready(self, conn) -> None:
        if self.done:
            conn.pool.release(conn)
            return
        self.conn = conn
        self.cluster.stats.upstream_rq_total += 1
        conn.attach(self, self.stream.head_only)
        self.t_sent = time.monotonic()
        if self.body and self.attempts > 1:
            data = self.head_bytes + b"".join(self.body)
        else:
            data = self.head_bytes + b"".join(self.pending) if self.pending else self.head_bytes
        self.pending = []
        if self.paused:
            self.paused = False
            self.stream.resume_downstream()
        conn.write(data)
        if self.req_end:
            self._request_sent()

    def _request_sent(self) -> None:
        if TYPE_CHECKING:
            assert self.conn is not None      # both callers have a connection
        self.conn.request_complete()
        per_try = self.policy.per_try_timeout_s if self.policy else None
        if per_try:
            self.try_timer = self.loop.call_later(per_try, self._on_try_timeout)

    def on_pool_failure(self, reason: str) -> None:
        self._release()
        if self.done:
            return
        self.stream.flags.append("UF")
        if self.cluster.outlier is not None:
            self.cluster.outlier.report(self.host, 503)
        if self._maybe_retry(("connect-failure", "5xx", "gateway-error", "reset"), "UF"):
            return
        why = b"connection timeout" if reason == "timeout" else b"remote connection failure"
        self._fail(503, _CONNECT_FAIL + why, "UF")

    # --- retries and timeouts -----------------------------------------------------------------
    def _maybe_retry(self, conditions: tuple, flag: str | None, status: int = 0) -> bool:
        p = self.policy
        if p is None or not any(c in p.retry_on for c in conditions):
            return False
        self.retry_declined = True
        cluster = self.cluster
        if self.retries_left <= 0:
            cluster.stats.upstream_rq_retry_limit_exceeded += 1
            self.stream.flags.append("URX")
            return False
        if self.body is None:
            return False          # the body was too large to buffer for a replay
        self.retries_left -= 1
        if cluster.retries_active >= cluster.spec.thresholds.max_retries:
            cluster.stats.upstream_rq_retry_overflow += 1
            return False
        self.retry_declined = False
        if self.conn is not None:
            self.conn.detach_and_close()
            self.conn = None
        self._release()
        if self.try_timer is not None:
            self.try_timer.cancel()
            self.try_timer = None
        self.retrying = True
        self._end_retry()
        cluster.retries_active += 1
        self.retry_outstanding = True
        n = self.attempts
        delay = random.random() * min(p.base_interval_s * (2 ** n - 1), p.max_interval_s)
        self.retry_timer = self.loop.call_later(delay, self._retry_now)
        return True

    def _retry_now(self) -> None:
        self.retry_timer = None
        if not self.done:
            # like Envoy, a retry counts when it is made, not when its back-off starts: a
            # route timeout during the back-off leaves upstream_rq_retry (and the codes) alone
            self.cluster.stats.upstream_rq_retry += 1
            self._attempt()

    def _on_try_timeout(self) -> None:
        self.try_timer = None
        if self.done or self.headers_sent:
            return
        self.cluster.stats.upstream_rq_per_try_timeout += 1
        if self.cluster.outlier is not None:
            self.cluster.outlier.report(self.host, 504)
        if self._maybe_retry(("5xx", "gateway-error", "reset"), None):
            return
        self._timeout_reply()

    def _on_global_timeout(self) -> None:
        self.global_timer = None
        if self.done:
            return
        self.cluster.stats.upstream_rq_timeout += 1      # per request, not per try (Envoy)
        self._timeout_reply()

    def _timeout_reply(self) -> None:
        if self.headers_sent:
            self.done = True
            self._teardown()
            self.stream.flags.append("UT")
            self.stream.send_local_reply(504, b"", None)
            return
        self._fail(504, b"upstream request timeout", "UT")

    # --- upstream callbacks ---------------------------------------------------------------------
    def on_upstream_headers(self, head) -> None:
        status = head.status
        cluster = self.cluster
        if cluster.outlier is not None:
            cluster.outlier.report(self.host, status)
        p = self.policy
        if p is not None and status >= 409 and not self.headers_sent:
            conds = retry_conditions(status, p.retriable_status_codes)
            if conds and self._maybe_retry(conds, None, status):
                return
        cst = cluster.stats           # _charge(), inlined on the hot path
        cst.upstream_rq_completed += 1
        codes = cst.codes
        codes[status] = codes.get(status, 0) + 1
        self.host.rq_error += status >= 500
        headers = head.headers
        for lvl in self.edit_levels:
            if lvl.resp_add or lvl.resp_remove:
                headers = apply_ops(headers, lvl.resp_add, lvl.resp_remove)
        ms = int((time.monotonic() - self.t_sent) * 1000)
        self.stream.upstream_ms = ms
        if not self.config.suppress_envoy_headers:
            headers.append((b"x-envoy-upstream-service-time", b"%d" % ms))
        self.headers_sent = True
        no_body = status == 204 or status == 304
        if no_body:
            self._complete()
        self.stream.encode_headers(status, headers, no_body)

    def on_upstream_data(self, data: bytes) -> None:
        if not self.done:
            self.stream.encode_data(data, False)

    def on_upstream_end(self) -> None:
        if self.done:
            return
        self._complete()
        self.stream.encode_data(b"", True)

    def _complete(self) -> None:
        self.done = True
        self._cancel_timers()
        self._release()
        self._end_retry()
        if not self.req_end and self.conn is not None:
            self.conn.detach_and_close()      # answered before the request body was sent
            self.conn = None
        self.host.rq_success += 1
        if self.attempts > 1 and not self.retry_declined:
            # Envoy: a retried request whose final answer is not retriable
            self.cluster.stats.upstream_rq_retry_success += 1

    def on_upstream_reset(self, reason: str) -> None:
        self.conn = None
        self._release()
        if self.done:
            return
        st = self.cluster.stats
        st.upstream_rq_rx_reset += 1
        if self.headers_sent:
            self.done = True
            self._cancel_timers()
            self._end_retry()
            self.stream.flags.append("UR")
            self.stream.send_local_reply(503, b"", None)      # closes the downstream connection
            return
        if self.cluster.outlier is not None:
            self.cluster.outlier.report(self.host, 503)
        if self._maybe_retry(("reset", "5xx", "gateway-error"), None):
            return
        self._fail(503, _CONNECT_FAIL + reason.encode(), "UC")

    def flush(self) -> None:
        self.stream.flush()

    def on_upstream_pause(self) -> None:
        self.stream.pause_downstream()

    def on_upstream_resume(self) -> None:
        self.stream.resume_downstream()

    def on_downstream_pause(self) -> None:
        if self.conn is not None:
            self.conn.pause_reading()

    def on_downstream_resume(self) -> None:
        if self.conn is not None:
            self.conn.resume_reading()

    def _fail(self, status: int, body: bytes, flag: str) -> None:
        self.done = True
        backoff = self.retrying and not self.active
        self._teardown()
        if not backoff:           # Envoy charges the cluster for a local reply, unless no
            self._charge(status)  # upstream request was under way (timeout during a back-off)
        self.stream.send_local_reply(status, body, flag)

    def _charge(self, status: int) -> None:
        """The cluster's response-code stats: once per request, for the final answer."""
        st = self.cluster.stats
        st.upstream_rq_completed += 1
        codes = st.codes
        codes[status] = codes.get(status, 0) + 1

    def _cancel_timers(self) -> None:
        for t in (self.global_timer, self.try_timer):
            if t is not None:
                t.cancel()
        self.global_timer = self.try_timer = None
        if self.retry_timer is not None:
            self.retry_timer.cancel()
            self.retry_timer = None

    def _teardown(self) -> None:
        self._cancel_timers()
        if self.conn is not None:
            self.conn.detach_and_close()
            self.conn = None
        elif self.active:                    # an attempt waits in its host's pool
            if TYPE_CHECKING:
                assert self.host.pool is not None     # Cluster.set_hosts gives every host a pool
            self.host.pool.cancel(self)
        self._release()
        self._end_retry()
        if self.paused:
            self.paused = False
            self.stream.resume_downstream()

    def on_destroy(self) -> None:
        if self.mirrors is not None:
            for sh in self.mirrors:
                sh.main_stream_ended()
            self.mirrors = None
        if not self.done:
            self.done = True
            self._teardown()


registry.register(registry.FilterInfo(
    names=("envoy.filters.http.router", "envoy.router"),
    type_urls=("type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
               "type.googleapis.com/envoy.config.filter.http.router.v2.Router"),
    parse=_parse, factory=_factory))
