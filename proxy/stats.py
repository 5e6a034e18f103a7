"""Stats: plain int attributes bumped on the hot path, rendered with Envoy's names on scrape.

``/stats`` prints ``cluster.<name>.upstream_rq_total: N`` lines like Envoy; ``/stats/prometheus``
renders the same values with Envoy's tag extraction (``envoy_cluster_upstream_rq_total
{envoy_cluster_name="x"}``) plus Istio's ``istio_requests_total`` and
``istio_request_duration_milliseconds`` through prometheus-client (imported on first scrape).
"""
from __future__ import annotations

import bisect
from typing import Iterator

__all__ = ["ClusterStats", "HttpStats", "ListenerStats", "Stats", "ISTIO_BUCKETS_MS"]

ISTIO_BUCKETS_MS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
                    300000, 600000, 1800000, 3600000)


def _stat_class(name: str, counters: tuple[str, ...], gauges: tuple[str, ...]) -> type:
    slots = tuple(a.replace(".", "__") for a in counters + gauges) + ("codes",)

    def __init__(self) -> None:
        for s in slots[:-1]:
            setattr(self, s, 0)
        self.codes = {}

    cls = type(name, (), {"__slots__": slots, "__init__": __init__, "COUNTERS": counters, "GAUGES": gauges})
    return cls


ClusterStats = _stat_class("ClusterStats", (
    "upstream_rq_total", "upstream_rq_completed", "upstream_rq_retry", "upstream_rq_retry_success",
    "upstream_rq_retry_limit_exceeded",
    "upstream_rq_retry_overflow", "upstream_rq_pending_overflow", "upstream_rq_pending_total",
    "upstream_rq_timeout", "upstream_rq_per_try_timeout", "upstream_rq_rx_reset",
    "upstream_cx_total", "upstream_cx_connect_fail", "upstream_cx_connect_timeout",
    "upstream_cx_overflow", "upstream_cx_destroy", "upstream_cx_rx_bytes_total", "upstream_cx_tx_bytes_total",
    "upstream_rq_maintenance_mode", "membership_change", "update_attempt", "update_success", "update_failure",
    "health_check.attempt", "health_check.success", "health_check.failure",
    "outlier_detection.ejections_enforced_total", "outlier_detection.ejections_enforced_consecutive_5xx",
    "outlier_detection.ejections_enforced_consecutive_gateway_failure", "outlier_detection.ejections_overflow",
    "lb_healthy_panic", "upstream_cx_none_healthy",
), (
    "upstream_cx_active", "upstream_rq_active", "upstream_rq_pending_active", "membership_healthy",
    "membership_total", "outlier_detection.ejections_active", "health_check.healthy",
))

HttpStats = _stat_class("HttpStats", (
    "downstream_rq_total", "downstream_rq_completed", "downstream_rq_http1_total", "downstream_cx_total", "downstream_cx_http1_total",
    "downstream_cx_protocol_error", "downstream_rq_timeout", "downstream_rq_idle_timeout",
    "downstream_cx_idle_timeout", "downstream_rq_rx_reset", "downstream_rq_tx_reset",
    "downstream_cx_rx_bytes_total", "downstream_cx_tx_bytes_total", "no_route", "no_cluster", "rq_direct_response",
    "downstream_rq_too_large", "downstream_rq_header_timeout",
), ("downstream_cx_active", "downstream_rq_active"))

ListenerStats = _stat_class("ListenerStats", ("downstream_cx_total", "downstream_cx_destroy"),
                            ("downstream_cx_active",))


def _code_stats(codes: dict) -> Iterator[tuple[str, int]]:
    classes: dict[int, int] = {}
    for code, n in codes.items():
        classes[code // 100] = classes.get(code // 100, 0) + n
    for c in range(1, 6):
        yield f"{c}xx", classes.get(c, 0)
    for code in sorted(codes):
        yield str(code), codes[code]


class IstioStats:
    """``istio_requests_total`` and the duration histogram, keyed by the label tuple."""

    LABELS = ("source_workload", "destination_service", "destination_version", "response_code", "response_flags")
    __slots__ = ("requests", "durations", "source_workload")

    def __init__(self, source_workload: str):
        self.source_workload = source_workload
        self.requests: dict[tuple, int] = {}
        self.durations: dict[tuple, list] = {}   # key -> [bucket counts..., sum_ms]

    def record(self, service: str, version: str, code: int, flags: str, duration_ms: float) -> None:
        key = (self.source_workload, service, version, str(code), flags or "-")
        r = self.requests
        r[key] = r.get(key, 0) + 1
        d = self.durations.get(key)
        if d is None:
            d = self.durations[key] = [0] * (len(ISTIO_BUCKETS_MS) + 2)
        d[bisect.bisect_left(ISTIO_BUCKETS_MS, duration_ms)] += 1
        d[-1] += duration_ms


class Stats:
    def __init__(self, source_workload: str = "unknown"):
        self.clusters: dict[str, ClusterStats] = {}
        self.http: dict[str, HttpStats] = {}
        self.listeners: dict[str, ListenerStats] = {}
        self.istio = IstioStats(source_workload)
        self.gauge_sources: list = []       # callables yielding (name, value) for live gauges

    def cluster(self, name: str) -> ClusterStats:
        s = self.clusters.get(name)
        if s is None:
            s = self.clusters[name] = ClusterStats()
        return s

    def http_prefix(self, prefix: str) -> HttpStats:
        s = self.http.get(prefix)
        if s is None:
            s = self.http[prefix] = HttpStats()
        return s

    def listener(self, name: str) -> ListenerStats:
        s = self.listeners.get(name)
        if s is None:
            s = self.listeners[name] = ListenerStats()
        return s

    # --- rendering -------------------------------------------------------------------------
    def items(self) -> Iterator[tuple[str, str, int, dict]]:
        """(envoy_name, prometheus_name, value, tags) for every stat; kind in prometheus name."""
        for name, s in self.clusters.items():
            tags = {"envoy_cluster_name": name}
            for stat in s.COUNTERS + s.GAUGES:
                yield (f"cluster.{name}.{stat}", "envoy_cluster_" + stat.replace(".", "_"),
                       getattr(s, stat.replace(".", "__")), tags)
            for suffix, n in _code_stats(s.codes):
                prom = "envoy_cluster_upstream_rq_xx" if suffix.endswith("xx") else "envoy_cluster_upstream_rq"
                code_tag = {"envoy_response_code_class": suffix[0]} if suffix.endswith("xx") else \
                    {"envoy_response_code": suffix}
                yield f"cluster.{name}.upstream_rq_{suffix}", prom, n, {**tags, **code_tag}
        for prefix, s in self.http.items():
            tags = {"envoy_http_conn_manager_prefix": prefix}
            for stat in s.COUNTERS + s.GAUGES:
                yield f"http.{prefix}.{stat}", "envoy_http_" + stat, getattr(s, stat), tags
            for suffix, n in _code_stats(s.codes):
                if suffix.endswith("xx"):
                    yield (f"http.{prefix}.downstream_rq_{suffix}", "envoy_http_downstream_rq_xx", n,
                           {**tags, "envoy_response_code_class": suffix[0]})
        for lname, s in self.listeners.items():
            tags = {"envoy_listener_address": lname}
            for stat in s.COUNTERS + s.GAUGES:
                yield f"listener.{lname}.{stat}", "envoy_listener_" + stat, getattr(s, stat), tags
        for source in self.gauge_sources:
            for name, value, tags in source():
                if "envoy_cluster_name" in tags:     # cluster.<name>.x.y -> envoy_cluster_x_y{name}
                    short = name[len("cluster.") + len(tags["envoy_cluster_name"]) + 1:]
                    yield name, "envoy_cluster_" + short.replace(".", "_"), value, tags
                else:
                    yield name, "envoy_" + name.replace(".", "_"), value, tags

    def render_text(self, filter_substring: str = "") -> str:
        lines = [f"{n}: {v}" for n, _, v, _ in self.items() if filter_substring in n]
        lines.sort()
        return "\n".join(lines) + "\n"

    def render_prometheus(self) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        stats = self

        class _Collector:
            def collect(self):  # noqa: D401 - prometheus-client protocol
                families: dict[str, object] = {}
                gauge_names = set()
                for s in list(stats.clusters.values())[:1] + list(stats.http.values())[:1]:
                    gauge_names.update(g.replace(".", "_") for g in s.GAUGES)
                for _, prom, value, tags in stats.items():
                    short = prom.split("_", 2)[-1]
                    is_gauge = any(prom.endswith(g) for g in gauge_names) or "circuit_breakers" in prom
                    fam = families.get(prom)
                    if fam is None:
                        cls = GaugeMetricFamily if is_gauge or short.endswith("_active") else CounterMetricFamily
                        fam = families[prom] = cls(prom, "", labels=sorted(tags))
                    fam.add_metric([tags[k] for k in sorted(tags)], value)
                yield from families.values()
                ist = stats.istio
                req = CounterMetricFamily("istio_requests", "Istio standard request count",
                                          labels=IstioStats.LABELS)
                for key, n in ist.requests.items():
                    req.add_metric(list(key), n)
                yield req
                hist = HistogramMetricFamily("istio_request_duration_milliseconds", "Istio request duration",
                                             labels=IstioStats.LABELS)
                for key, d in ist.durations.items():
                    acc, buckets = 0, []
                    for bound, n in zip(ISTIO_BUCKETS_MS, d):
                        acc += n
                        buckets.append((str(bound), acc))
                    acc += d[len(ISTIO_BUCKETS_MS)]
                    buckets.append(("+Inf", acc))
                    hist.add_metric(list(key), buckets, d[-1])
                yield hist

        reg = CollectorRegistry(auto_describe=False)
        reg.register(_Collector())
        return generate_latest(reg)
