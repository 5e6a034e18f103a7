"""Outlier detection (consecutive 5xx / gateway failures) and active health checking."""
from __future__ import annotations

import asyncio
import random

from proxy.config.cluster import HealthCheckSpec, OutlierSpec
from proxy.http.codec import END, ClientCodec, ProtocolError, ResponseHead, encode_request_head

__all__ = ["OutlierDetector", "HealthChecker"]

GATEWAY_CODES = (502, 503, 504)


class OutlierDetector:
    """Ejects a host after N consecutive 5xx (or gateway failures); the interval timer
    brings it back after ``base_ejection_time * times ejected`` (capped at max_ejection_time).
    Local failures (connect failure, reset, timeout) count as 503/504, as in Envoy without
    split_external_local_origin_errors. As in Envoy, a detection resets the counter that
    fired (enforced or not), an unejection resets both, and with an ``event_log``
    (proxy.upstream.outlier_log.OutlierEventLog) every detection (EJECT, ``enforced`` true or false)
    and every return (UNEJECT) is logged."""

    def __init__(self, cluster, spec: OutlierSpec, event_log=None):
        self.cluster = cluster
        self.spec = spec
        self.event_log = event_log
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
        # Envoy's order: the gateway-failure counter first, then (host still in) the 5xx one
        if s.consecutive_gateway_failure and host.consecutive_gw >= s.consecutive_gateway_failure:
            host.consecutive_gw = 0
            self._detected(host, "CONSECUTIVE_GATEWAY_FAILURE", s.enforcing_consecutive_gateway_failure)
        if not host.ejected and s.consecutive_5xx and host.consecutive_5xx >= s.consecutive_5xx:
            host.consecutive_5xx = 0
            self._detected(host, "CONSECUTIVE_5XX", s.enforcing_consecutive_5xx)

    @staticmethod
    def _enforce(percent: float) -> bool:
        return percent >= 100 or random.random() * 100 < percent

    def _detected(self, host, type_: str, enforcing: float) -> None:
        c = self.cluster
        st = c.stats
        ejected = sum(1 for h in c.hosts if h.ejected)
        # Envoy 1.40: eject only while (ejected + 1) / hosts <= max_ejection_percent, the first
        # one included (always_eject_one_host, which lifts that for the first, is not supported)
        if (ejected + 1) * 100 > self.spec.max_ejection_percent * len(c.hosts):
            st.outlier_detection__ejections_overflow += 1
            return
        now = self.loop.time()
        since = None if host.last_unejected_at is None else now - host.last_unejected_at
        if not self._enforce(enforcing):
            if self.event_log is not None:
                self.event_log.log("EJECT", c.name, host.address, host.port, host.ejections, type_=type_,
                                   enforced=False, since_s=since)
            return
        host.ejections += 1
        host.ejected = True
        host.last_ejected_at = now
        duration = min(self.spec.base_ejection_time_s * host.ejections,
                       max(self.spec.base_ejection_time_s, self.spec.max_ejection_time_s))
        host.ejected_until = now + duration
        st.outlier_detection__ejections_active += 1
        st.outlier_detection__ejections_enforced_total += 1
        if type_ == "CONSECUTIVE_5XX":
            st.outlier_detection__ejections_enforced_consecutive_5xx += 1
        else:
            st.outlier_detection__ejections_enforced_consecutive_gateway_failure += 1
        c.refresh()
        if self.event_log is not None:
            self.event_log.log("EJECT", c.name, host.address, host.port, host.ejections, type_=type_,
                               enforced=True, since_s=since)

    def _tick(self) -> None:
        now = self.loop.time()
        back = []
        for h in self.cluster.hosts:
            if h.ejected and now >= h.ejected_until:
                h.ejected = False
                h.consecutive_5xx = h.consecutive_gw = 0
                self.cluster.stats.outlier_detection__ejections_active -= 1
                back.append((h, now - (h.last_ejected_at or now)))
                h.last_unejected_at = now
        if back:
            self.cluster.refresh()
            for h, since in back:
                if self.event_log is not None:
                    self.event_log.log("UNEJECT", self.cluster.name, h.address, h.port, h.ejections, since_s=since)
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
            for h, ok in zip(hosts, results, strict=True):       # one result per host
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
