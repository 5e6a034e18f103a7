"""Stats: plain int attributes bumped on the hot path, rendered with Envoy's names on scrape.

``/stats`` prints ``cluster.<name>.upstream_rq_total: N`` lines like Envoy; ``/stats/prometheus``
renders the same values with Envoy's tag extraction (``envoy_cluster_upstream_rq_total
{envoy_cluster_name="x"}``) plus Istio's ``istio_requests_total`` and
``istio_request_duration_milliseconds`` through prometheus-client (imported on first scrape).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Iterable, Iterator

__all__ = ["ClusterStats", "HttpStats", "ListenerStats", "Stats", "ISTIO_BUCKETS_MS"]

ISTIO_BUCKETS_MS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
                    300000, 600000, 1800000, 3600000)


class _StatBlock:
    """Base of the stat blocks below: one ``int`` field per stat, bumped in place on the hot
    path (``__`` in a field's name is ``.`` in Envoy's), and ``codes`` (status -> count).
    ``COUNTERS`` and ``GAUGES`` list the stats by Envoy's names, in field order (see
    :func:`_envoy_names`)."""

    __slots__ = ()
    COUNTERS: ClassVar[tuple[str, ...]] = ()
    GAUGES: ClassVar[tuple[str, ...]] = ()
    codes: dict[int, int]


def _envoy_names(cls: type[_StatBlock], first_gauge: str) -> None:
    """Set ``cls.COUNTERS`` / ``cls.GAUGES``: the int fields before ``first_gauge`` are
    counters, the others gauges."""
    names = [a.replace("__", ".") for a in cls.__annotations__ if a != "codes"]
    i = names.index(first_gauge)
    cls.COUNTERS, cls.GAUGES = tuple(names[:i]), tuple(names[i:])


@dataclass(slots=True, eq=False, repr=False)
class ClusterStats(_StatBlock):
    upstream_rq_total: int = 0
    upstream_rq_completed: int = 0
    upstream_rq_retry: int = 0
    upstream_rq_retry_success: int = 0
    upstream_rq_retry_limit_exceeded: int = 0
    upstream_rq_retry_overflow: int = 0
    upstream_rq_pending_overflow: int = 0
    upstream_rq_pending_total: int = 0
    upstream_rq_timeout: int = 0
    upstream_rq_per_try_timeout: int = 0
    upstream_rq_rx_reset: int = 0
    upstream_cx_total: int = 0
    upstream_cx_connect_fail: int = 0
    upstream_cx_connect_timeout: int = 0
    upstream_cx_overflow: int = 0
    upstream_cx_destroy: int = 0
    upstream_cx_rx_bytes_total: int = 0
    upstream_cx_tx_bytes_total: int = 0
    upstream_rq_maintenance_mode: int = 0
    membership_change: int = 0
    update_attempt: int = 0
    update_success: int = 0
    update_failure: int = 0
    health_check__attempt: int = 0
    health_check__success: int = 0
    health_check__failure: int = 0
    outlier_detection__ejections_enforced_total: int = 0
    outlier_detection__ejections_enforced_consecutive_5xx: int = 0
    outlier_detection__ejections_enforced_consecutive_gateway_failure: int = 0
    outlier_detection__ejections_overflow: int = 0
    lb_healthy_panic: int = 0
    upstream_cx_none_healthy: int = 0
    # gauges
    upstream_cx_active: int = 0
    upstream_rq_active: int = 0
    upstream_rq_pending_active: int = 0
    membership_healthy: int = 0
    membership_total: int = 0
    outlier_detection__ejections_active: int = 0
    health_check__healthy: int = 0
    codes: dict[int, int] = field(default_factory=dict)


@dataclass(slots=True, eq=False, repr=False)
class HttpStats(_StatBlock):
    downstream_rq_total: int = 0
    downstream_rq_completed: int = 0
    downstream_rq_http1_total: int = 0
    downstream_cx_total: int = 0
    downstream_cx_http1_total: int = 0
    downstream_cx_protocol_error: int = 0
    downstream_rq_timeout: int = 0
    downstream_rq_idle_timeout: int = 0
    downstream_cx_idle_timeout: int = 0
    downstream_rq_rx_reset: int = 0
    downstream_rq_tx_reset: int = 0
    downstream_cx_rx_bytes_total: int = 0
    downstream_cx_tx_bytes_total: int = 0
    no_route: int = 0
    no_cluster: int = 0
    rq_direct_response: int = 0
    downstream_rq_too_large: int = 0
    downstream_rq_header_timeout: int = 0
    # gauges
    downstream_cx_active: int = 0
    downstream_rq_active: int = 0
    codes: dict[int, int] = field(default_factory=dict)


@dataclass(slots=True, eq=False, repr=False)
class ListenerStats(_StatBlock):
    downstream_cx_total: int = 0
    downstream_cx_destroy: int = 0
    # gauges
    downstream_cx_active: int = 0
    codes: dict[int, int] = field(default_factory=dict)


_envoy_names(ClusterStats, "upstream_cx_active")
_envoy_names(HttpStats, "downstream_cx_active")
_envoy_names(ListenerStats, "downstream_cx_active")

# (name, value, tags) of a live gauge; Stats.gauge_sources yield them
GaugeItem = tuple[str, float, dict[str, str]]


def _code_stats(codes: dict[int, int]) -> Iterator[tuple[str, int]]:
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
        self.requests: dict[tuple[str, ...], int] = {}
        self.durations: dict[tuple[str, ...], list[float]] = {}   # key -> [bucket counts..., sum_ms]

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
    def __init__(self, source_workload: str = "unknown") -> None:
        self.clusters: dict[str, ClusterStats] = {}
        self.http: dict[str, HttpStats] = {}
        self.listeners: dict[str, ListenerStats] = {}
        self.istio = IstioStats(source_workload)
        self.gauge_sources: list[Callable[[], Iterable[GaugeItem]]] = []     # live gauges

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
    def items(self) -> Iterator[tuple[str, str, float, dict[str, str]]]:
        """(envoy_name, prometheus_name, value, tags) for every stat; kind in prometheus name."""
        for name, cs in self.clusters.items():
            tags = {"envoy_cluster_name": name}
            for stat in cs.COUNTERS + cs.GAUGES:
                yield (f"cluster.{name}.{stat}", "envoy_cluster_" + stat.replace(".", "_"),
                       getattr(cs, stat.replace(".", "__")), tags)
            for suffix, n in _code_stats(cs.codes):
                prom = "envoy_cluster_upstream_rq_xx" if suffix.endswith("xx") else "envoy_cluster_upstream_rq"
                code_tag = {"envoy_response_code_class": suffix[0]} if suffix.endswith("xx") else \
                    {"envoy_response_code": suffix}
                yield f"cluster.{name}.upstream_rq_{suffix}", prom, n, {**tags, **code_tag}
        for prefix, hs in self.http.items():
            tags = {"envoy_http_conn_manager_prefix": prefix}
            for stat in hs.COUNTERS + hs.GAUGES:
                yield f"http.{prefix}.{stat}", "envoy_http_" + stat, getattr(hs, stat), tags
            for suffix, n in _code_stats(hs.codes):
                if suffix.endswith("xx"):
                    yield (f"http.{prefix}.downstream_rq_{suffix}", "envoy_http_downstream_rq_xx", n,
                           {**tags, "envoy_response_code_class": suffix[0]})
        for lname, ls in self.listeners.items():
            tags = {"envoy_listener_address": lname}
            for stat in ls.COUNTERS + ls.GAUGES:
                yield f"listener.{lname}.{stat}", "envoy_listener_" + stat, getattr(ls, stat), tags
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
        # late: prometheus-client (~30 ms, ~2.5 MB) is loaded on the first scrape only
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

        stats = self

        class _Collector:
            def collect(self) -> Iterator[Metric]:
                families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
                gauge_names: set[str] = set()
                for s in list(stats.clusters.values())[:1] + list(stats.http.values())[:1]:
                    gauge_names.update(g.replace(".", "_") for g in s.GAUGES)
                for _, prom, value, tags in stats.items():
                    short = prom.split("_", 2)[-1]
                    is_gauge = any(prom.endswith(g) for g in gauge_names) or "circuit_breakers" in prom
                    fam = families.get(prom)
                    if fam is None:
                        if is_gauge or short.endswith("_active"):
                            fam = families[prom] = GaugeMetricFamily(prom, "", labels=sorted(tags))
                        else:
                            fam = families[prom] = CounterMetricFamily(prom, "", labels=sorted(tags))
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
                    acc: float = 0
                    buckets: list[tuple[str, float]] = []
                    for bound, count in zip(ISTIO_BUCKETS_MS, d, strict=False):     # d has 2 more items
                        acc += count
                        buckets.append((str(bound), acc))
                    acc += d[len(ISTIO_BUCKETS_MS)]
                    buckets.append(("+Inf", acc))
                    hist.add_metric(list(key), buckets, d[-1])
                yield hist

        reg = CollectorRegistry(auto_describe=False)
        reg.register(_Collector())
        return generate_latest(reg)
