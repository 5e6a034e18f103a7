"""The router's retry and timeout logic (a mixin of :class:`proxy.filters.router.Router`).

Envoy's semantics, checked against real Envoy's /stats by the differential tests: a retry is
decided when an answer (or failure) matches ``retry_on``; past ``num_retries`` it counts
``upstream_rq_retry_limit_exceeded`` (flag URX); over ``max_retries`` it counts
``upstream_rq_retry_overflow``; a scheduled retry counts ``upstream_rq_retry`` when it is
made, after a fully jittered exponential back-off. ``upstream_rq_timeout`` counts the route
timeout once per request; per-try timeouts count ``upstream_rq_per_try_timeout`` only.
"""
from __future__ import annotations

import random

__all__ = ["RetryMixin", "retry_conditions"]

_GATEWAY = frozenset((502, 503, 504))


def retry_conditions(status: int, codes: frozenset) -> tuple:
    """The retry_on conditions an upstream status satisfies."""
    conds: tuple = ("retriable-status-codes",) if status in codes else ()
    if status >= 500:
        conds += ("5xx", "gateway-error") if status in _GATEWAY else ("5xx",)
    elif status == 409:
        conds += ("retriable-4xx",)
    return conds


class RetryMixin:
    """Needs the router's attributes (policy, retries_left, cluster, stream, conn, ...)."""

    __slots__ = ()

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
