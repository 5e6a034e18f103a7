"""Request mirroring (a route's ``request_mirror_policies``): fire-and-forget shadow requests.

Like Envoy, the router sends a copy of the request (head and body, as they stream) to a host
of the mirror cluster with the Host header suffixed ``-shadow`` (``a.example:8080`` ->
``a.example-shadow:8080``; ``disable_shadow_host_suffix_append`` keeps it).  The shadow's
response is read and dropped; its failure never affects the main request.  The mirror
cluster's stats count the shadow like any request (``upstream_rq_total``,
``upstream_rq_completed``, ``upstream_rq_<code>``).  A shadow whose request was not fully
sent when the main stream ends is abandoned; one that was keeps running until its response
ends or the route timeout passes.
"""
from __future__ import annotations

import random

from proxy.upstream.pool import OVERFLOW

__all__ = ["ShadowRequest", "start_mirrors", "shadow_host"]


def shadow_host(host: bytes) -> bytes:
    """Envoy's shadow authority: ``-shadow`` before the port (IPv6 literals: at the end)."""
    parts = host.split(b":")
    if len(parts) == 2:
        return parts[0] + b"-shadow:" + parts[1]
    return host + b"-shadow"


def start_mirrors(router, stream, route, head_for) -> list[ShadowRequest]:
    """Start one shadow per mirror policy whose percentage rolls; returns the live shadows.
    ``head_for(suffix)`` builds the request head with the Host suffixed (or not)."""
    shadows = []
    for policy in route.mirrors:
        if policy.percent < 100.0 and random.random() * 100.0 >= policy.percent:
            continue
        cluster = router.cm.get(policy.cluster)
        if cluster is None:
            continue                      # Envoy skips a mirror whose cluster is unknown
        host = cluster.choose(None)
        if host is None:
            cluster.stats.upstream_cx_none_healthy += 1
            continue
        sh = ShadowRequest(cluster, host, stream, head_for(policy.shadow_host_suffix), route.timeout_s,
                           router.loop, stream.conn.buffer_limit)
        if sh.start():
            shadows.append(sh)
    return shadows


class ShadowRequest:
    """The pool handler of one shadow request (see :mod:`proxy.upstream.pool`)."""

    __slots__ = ("cluster", "host", "stream", "conn", "pending", "pending_bytes", "req_end", "done",
                 "active", "timer", "limit")

    def __init__(self, cluster, host, stream, head: bytes, timeout_s: float, loop, limit: int):
        self.cluster = cluster
        self.host = host
        self.stream = stream
        self.conn = None
        self.pending = [head]
        self.pending_bytes = len(head)
        self.req_end = False
        self.done = False
        self.active = False
        self.limit = limit
        self.timer = loop.call_later(timeout_s, self.abort) if timeout_s else None

    def start(self) -> bool:
        c = self.cluster
        if c.rq_active >= c.spec.thresholds.max_requests:
            c.stats.upstream_rq_pending_overflow += 1
            self._end()
            return False
        self.active = True
        c.rq_active += 1
        c.stats.upstream_rq_active += 1
        if self.host.pool.request(self) is OVERFLOW:
            self._end()
            return False
        return True

    # --- fed by the router ----------------------------------------------------------------
    def send(self, framed: bytes, end: bool) -> None:
        if self.done:
            return
        conn = self.conn
        if conn is not None:
            if framed:
                conn.write(framed)
        else:
            self.pending.append(framed)
            self.pending_bytes += len(framed)
            if self.pending_bytes > self.limit:
                self.abort()              # never buffer more than the connection limit
                return
        if end:
            self.req_end = True
            if conn is not None:
                conn.request_complete()

    def main_stream_ended(self) -> None:
        if not self.req_end:
            self.abort()

    # --- pool callbacks -------------------------------------------------------------------
    def on_pool_ready(self, conn) -> None:
        if self.done:
            conn.pool.release(conn)
            return
        self.conn = conn
        self.cluster.stats.upstream_rq_total += 1
        conn.attach(self, self.stream.head_only)
        conn.write(b"".join(self.pending))
        self.pending = []
        if self.req_end:
            conn.request_complete()

    def on_pool_failure(self, reason: str) -> None:
        self.conn = None
        self._end()

    # --- upstream callbacks ---------------------------------------------------------------
    def on_upstream_headers(self, head) -> None:
        st = self.cluster.stats
        st.upstream_rq_completed += 1
        codes = st.codes
        codes[head.status] = codes.get(head.status, 0) + 1

    def on_upstream_data(self, data: bytes) -> None:
        pass

    def on_upstream_end(self) -> None:
        if not self.req_end and self.conn is not None:
            self.conn.detach_and_close()
        self.conn = None                  # the connection returns itself to the pool
        self._end()

    def on_upstream_reset(self, reason: str) -> None:
        self.conn = None
        self.cluster.stats.upstream_rq_rx_reset += 1
        self._end()

    def flush(self) -> None:
        pass

    def on_upstream_pause(self) -> None:
        pass

    def on_upstream_resume(self) -> None:
        pass

    # --- ending -----------------------------------------------------------------------------
    def abort(self) -> None:
        if self.done:
            return
        if self.conn is not None:
            self.conn.detach_and_close()
            self.conn = None
        elif self.active:
            self.host.pool.cancel(self)
        self._end()

    def _end(self) -> None:
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.active:
            self.active = False
            self.cluster.rq_active -= 1
            self.cluster.stats.upstream_rq_active -= 1
