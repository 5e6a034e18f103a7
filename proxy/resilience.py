"""Outlier detection (consecutive 5xx / gateway failures) and active health checking."""
from __future__ import annotations

import asyncio
import random

from proxy.cfg_cluster import HealthCheckSpec, OutlierSpec
from proxy.codec import END, ClientCodec, ProtocolError, ResponseHead, encode_request_head

__all__ = ["OutlierDetector", "HealthChecker"]

GATEWAY_CODES = (502, 503, 504)


class OutlierDetector:
    """Ejects a host after N consecutive 5xx (or gateway failures); the interval timer
    brings it back after ``base_ejection_time * times ejected`` (capped at max_ejection_time).
    Local failures (connect failure, reset, timeout) count as 503/504, as in Envoy without
    split_external_local_origin_errors."""

    def __init__(self, cluster, spec: OutlierSpec):
        self.cluster = cluster
        self.spec = spec
        self._timer: asyncio.TimerHandle | None = None
        self.loop = asyncio.get_event_loop()

    def start(self) -> None:
        self._timer = self.loop.call_later(self.spec.interval_s, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def report(self, host, code: int) -> None:
        """Called by the router with the upstream status (or 503/504 for local failures)."""
        if code < 500:
            host.consecutive_5xx = host.consecutive_gw = 0
            return
        s = self.spec
        host.consecutive_5xx += 1
        if code in GATEWAY_CODES:
            host.consecutive_gw += 1
        else:
            host.consecutive_gw = 0
        if host.ejected:
            return
        if s.consecutive_5xx and host.consecutive_5xx >= s.consecutive_5xx:
            if self._enforce(s.enforcing_consecutive_5xx):
                self._eject(host, "consecutive_5xx")
        elif s.consecutive_gateway_failure and host.consecutive_gw >= s.consecutive_gateway_failure:
            if self._enforce(s.enforcing_consecutive_gateway_failure):
                self._eject(host, "consecutive_gateway_failure")

    @staticmethod
    def _enforce(percent: float) -> bool:
        return percent >= 100 or random.random() * 100 < percent

    def _eject(self, host, reason: str) -> None:
        c = self.cluster
        st = c.stats
        ejected = sum(1 for h in c.hosts if h.ejected)
        # Envoy ejects at least one host whatever max_ejection_percent says
        if ejected and (ejected + 1) * 100 > self.spec.max_ejection_percent * len(c.hosts):
            st.outlier_detection__ejections_overflow += 1
            return
        host.ejections += 1
        host.ejected = True
        host.consecutive_5xx = host.consecutive_gw = 0
        duration = min(self.spec.base_ejection_time_s * host.ejections,
                       max(self.spec.base_ejection_time_s, self.spec.max_ejection_time_s))
        host.ejected_until = self.loop.time() + duration
        st.outlier_detection__ejections_active += 1
        st.outlier_detection__ejections_enforced_total += 1
        if reason == "consecutive_5xx":
            st.outlier_detection__ejections_enforced_consecutive_5xx += 1
        else:
            st.outlier_detection__ejections_enforced_consecutive_gateway_failure += 1
        c.refresh()

    def _tick(self) -> None:
        now = self.loop.time()
        changed = False
        for h in self.cluster.hosts:
            if h.ejected and now >= h.ejected_until:
                h.ejected = False
                self.cluster.stats.outlier_detection__ejections_active -= 1
                changed = True
        if changed:
            self.cluster.refresh()
        self._timer = self.loop.call_later(self.spec.interval_s, self._tick)


class _Probe(asyncio.Protocol):
    def __init__(self, done: asyncio.Future):
        self.codec = ClientCodec()
        self.done = done
        self.status = 0

    def data_received(self, data: bytes) -> None:
        try:
            for ev in self.codec.receive_data(data):
                if type(ev) is ResponseHead:
                    self.status = ev.status
                elif ev is END and not self.done.done():
                    self.done.set_result(self.status)
        except ProtocolError:
            if not self.done.done():
                self.done.set_result(0)

    def connection_lost(self, exc) -> None:
        if not self.done.done():
            self.done.set_result(self.status if self.status else 0)


class HealthChecker:
    """Active HTTP (or TCP connect) checks of every host of one cluster."""

    def __init__(self, cluster, spec: HealthCheckSpec):
        self.cluster = cluster
        self.spec = spec
        self.loop = asyncio.get_event_loop()
        self._task: asyncio.Task | None = None
        self.first_round = asyncio.Event()

    def start(self) -> None:
        self._task = self.loop.create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        await self.cluster.initialized.wait()
        while True:
            hosts = list(self.cluster.hosts)
            results = await asyncio.gather(*(self.check(h) for h in hosts))
            changed = False
            for h, ok in zip(hosts, results):
                changed |= self._record(h, ok)
            if changed:
                self.cluster.refresh()
            self.first_round.set()
            jitter = random.random() * self.spec.interval_jitter_s if self.spec.interval_jitter_s else 0.0
            await asyncio.sleep(self.spec.interval_s + jitter)

    def _record(self, h, ok: bool) -> bool:
        st = self.cluster.stats
        st.health_check__attempt += 1
        if ok:
            st.health_check__success += 1
            h.hc_failures = 0
            h.hc_successes += 1
            # the first success after start marks a host healthy at once (Envoy does the same)
            initial, h.hc_initial = h.hc_initial, False
            if h.hc_failed and (initial or h.hc_successes >= self.spec.healthy_threshold):
                h.hc_failed = False
                return True
        else:
            h.hc_initial = False
            st.health_check__failure += 1
            h.hc_successes = 0
            h.hc_failures += 1
            if not h.hc_failed and h.hc_failures >= self.spec.unhealthy_threshold:
                h.hc_failed = True
                return True
        return False

    async def check(self, host) -> bool:
        port = host.hc_port or host.port
        done: asyncio.Future = self.loop.create_future()
        transport = None
        try:
            async with asyncio.timeout(self.spec.timeout_s):
                transport, proto = await self.loop.create_connection(lambda: _Probe(done), host.address, port)
                if self.spec.path is None:
                    return True
                hostname = (self.spec.host or self.cluster.name).encode()
                transport.write(encode_request_head(b"GET", self.spec.path.encode(), [
                    (b"host", hostname), (b"user-agent", b"Envoy/HC"), (b"connection", b"close")]))
                status = await done
        except (OSError, asyncio.TimeoutError):
            return False
        finally:
            if transport is not None:
                transport.close()
        return any(lo <= status < hi for lo, hi in self.spec.expected_statuses)
