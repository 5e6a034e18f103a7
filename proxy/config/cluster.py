"""Cluster specs (``envoy.config.cluster.v3.Cluster``), parsed strictly into frozen data."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from proxy.config.reader import ConfigError, Obj, percent
from proxy.tls.transport import TlsContextSpec, parse_upstream

__all__ = ["EndpointSpec", "Thresholds", "OutlierSpec", "HealthCheckSpec", "ClusterSpec",
           "parse_cluster", "parse_socket_address", "parse_load_assignment"]

TYPES = ("STATIC", "STRICT_DNS", "LOGICAL_DNS", "EDS")
LB_POLICIES = ("ROUND_ROBIN", "LEAST_REQUEST", "RANDOM", "RING_HASH")
FAMILIES = ("AUTO", "V4_ONLY", "V6_ONLY", "V4_PREFERRED", "ALL")


@dataclass(frozen=True)
class EndpointSpec:
    address: str
    port: int
    weight: int = 1
    hostname: str = ""
    priority: int = 0
    health_check_port: int = 0
    healthy: bool = True           # EDS health_status (HEALTHY/UNKNOWN = True)


@dataclass(frozen=True)
class Thresholds:
    max_connections: int = 1024
    max_pending_requests: int = 1024
    max_requests: int = 1024
    max_retries: int = 3


@dataclass(frozen=True)
class OutlierSpec:
    consecutive_5xx: int = 5
    consecutive_gateway_failure: int = 5
    enforcing_consecutive_5xx: float = 100.0
    enforcing_consecutive_gateway_failure: float = 0.0
    interval_s: float = 10.0
    base_ejection_time_s: float = 30.0
    max_ejection_time_s: float = 300.0
    max_ejection_percent: float = 10.0


@dataclass(frozen=True)
class HealthCheckSpec:
    timeout_s: float
    interval_s: float
    unhealthy_threshold: int
    healthy_threshold: int
    path: str | None              # None = TCP connect check
    host: str = ""
    expected_statuses: tuple[tuple[int, int], ...] = ((200, 201),)
    interval_jitter_s: float = 0.0


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    type: str = "STATIC"
    connect_timeout_s: float = 5.0
    lb_policy: str = "ROUND_ROBIN"
    endpoints: tuple[EndpointSpec, ...] = ()
    dns_refresh_rate_s: float = 5.0
    dns_lookup_family: str = "AUTO"
    thresholds: Thresholds = Thresholds()
    outlier: OutlierSpec | None = None
    health_checks: tuple[HealthCheckSpec, ...] = ()
    eds_service_name: str = ""
    per_connection_buffer_limit_bytes: int = 1024 * 1024
    healthy_panic_threshold: float = 50.0
    ring_size: int = 1024
    choice_count: int = 2
    max_requests_per_connection: int = 0
    tls: TlsContextSpec | None = None      # the UpstreamTlsContext; None: plaintext


def _upper(value: str) -> str:
    return value.upper()


def parse_socket_address(o: Obj) -> tuple[str, int]:
    sa = o.obj("socket_address", required=True)
    assert sa is not None
    addr = sa.take("address", kind=str)
    port = sa.take("port_value", kind=int)
    sa.take("protocol", "TCP", str, ("TCP",))
    sa.ignore("ipv4_compat")
    sa.done()
    o.done()
    if not 0 <= port <= 65535:
        raise ConfigError(sa.sub("port_value"), f"port must be 0..65535, got {port}")
    return addr, port


def _endpoint(o: Obj, weight_default: int, priority: int) -> EndpointSpec:
    ep = o.obj("endpoint", required=True)
    assert ep is not None
    addr_obj = ep.obj("address", required=True)
    assert addr_obj is not None
    addr, port = parse_socket_address(addr_obj)
    hostname = ep.take("hostname", "", str)
    hc_port = 0
    hcc = ep.obj("health_check_config")
    if hcc is not None:
        hc_port = hcc.take("port_value", 0, int)
        hcc.done()
    ep.done()
    weight = o.take("load_balancing_weight", weight_default, int)
    if weight < 1:
        raise ConfigError(o.sub("load_balancing_weight"), "must be at least 1")
    status = o.take("health_status", "UNKNOWN", str, ("UNKNOWN", "HEALTHY", "UNHEALTHY", "DRAINING",
                                                        "TIMEOUT", "DEGRADED"))
    o.ignore("metadata")
    o.done()
    return EndpointSpec(addr, port, weight, hostname, priority, hc_port, status in ("UNKNOWN", "HEALTHY", "DEGRADED"))


def parse_load_assignment(o: Obj) -> tuple[EndpointSpec, ...]:
    """A ClusterLoadAssignment's endpoints, flattened (used by EDS too)."""
    eps = []
    o.ignore("cluster_name")
    for loc in o.objs("endpoints"):
        prio = loc.take("priority", 0, int)
        loc.ignore("locality", "load_balancing_weight")
        for lb in loc.objs("lb_endpoints"):
            eps.append(_endpoint(lb, 1, prio))
        loc.done()
    pol = o.obj("policy")
    if pol is not None:
        pol.ignore("overprovisioning_factor")
        pol.done()
    o.done()
    return tuple(eps)


def _thresholds(o: Obj) -> Thresholds:
    t = Thresholds()
    for th in o.objs("thresholds"):
        prio = th.take("priority", "DEFAULT", str, ("DEFAULT", "HIGH"))
        values = Thresholds(th.take("max_connections", 1024, int), th.take("max_pending_requests", 1024, int),
                            th.take("max_requests", 1024, int), th.take("max_retries", 3, int))
        th.ignore("track_remaining")
        th.done()
        if prio == "DEFAULT":
            t = values
    o.done()
    return t


def _outlier(o: Obj) -> OutlierSpec:
    d = OutlierSpec()
    spec = OutlierSpec(
        consecutive_5xx=o.take("consecutive_5xx", d.consecutive_5xx, int),
        consecutive_gateway_failure=o.take("consecutive_gateway_failure", d.consecutive_gateway_failure, int),
        enforcing_consecutive_5xx=float(o.take("enforcing_consecutive_5xx", 100, int)),
        enforcing_consecutive_gateway_failure=float(o.take("enforcing_consecutive_gateway_failure", 0, int)),
        interval_s=o.duration("interval", d.interval_s),
        base_ejection_time_s=o.duration("base_ejection_time", d.base_ejection_time_s),
        max_ejection_time_s=o.duration("max_ejection_time", d.max_ejection_time_s),
        max_ejection_percent=float(o.take("max_ejection_percent", 10, int)))
    # success-rate and failure-percentage detection are not implemented: accept them only disabled
    o.take("enforcing_success_rate", 0, int, (0,))
    o.take("enforcing_failure_percentage", 0, int, (0,))
    o.take("split_external_local_origin_errors", False, bool, (False,))
    if o.has("event_log_path"):      # not a Cluster field: Envoy rejects it as well
        raise ConfigError(o.sub("event_log_path"), "no such field in a cluster's outlier_detection; the outlier "
                          "event log is the bootstrap's cluster_manager.outlier_detection.event_log_path")
    o.done()
    return spec


def _health_check(o: Obj) -> HealthCheckSpec:
    timeout = o.duration("timeout")
    interval = o.duration("interval")
    unhealthy = o.take("unhealthy_threshold", kind=int)
    healthy = o.take("healthy_threshold", kind=int)
    jitter = o.duration("interval_jitter", 0.0)
    kind = o.one_of(("http_health_check", "tcp_health_check"))
    path, host = None, ""
    statuses: tuple[tuple[int, int], ...] = ((200, 201),)
    if kind == "http_health_check":
        h = o.obj("http_health_check")
        assert h is not None
        path = h.take("path", kind=str)
        host = h.take("host", "", str)
        ranges: list[tuple[int, int]] = []
        for r in h.objs("expected_statuses"):
            ranges.append((r.take("start", kind=int), r.take("end", kind=int)))
            r.done()
        statuses = tuple(ranges) or statuses
        h.take("codec_client_type", "HTTP1", str, ("HTTP1",))
        h.done()
    else:
        t = o.obj("tcp_health_check")
        assert t is not None
        t.done()
    if o.has("event_log_path"):
        # Envoy 1.40 accepts this (deprecated) field and writes HealthCheckEvent lines to it;
        # minimesh does not write health-check events, so say so instead of ignoring it
        raise ConfigError(o.sub("event_log_path"), "health-check event logging is not supported by "
                          "minimesh-proxy; remove the field (outlier events: bootstrap "
                          "cluster_manager.outlier_detection.event_log_path)")
    o.ignore("no_traffic_interval", "always_log_health_check_failures")   # the latter only acts on an event log
    o.done()
    return HealthCheckSpec(timeout, interval, unhealthy, healthy, path, host, statuses, jitter)


def _choice(o: Obj, key: str, default: str, allowed: tuple[str, ...], what: str) -> str:
    value = _upper(o.take(key, default, str))
    if value not in allowed:
        raise ConfigError(o.sub(key), f"unsupported {what} {value!r}; allowed: {', '.join(allowed)}")
    return value


def _endpoints(o: Obj) -> tuple[EndpointSpec, ...]:
    """The static endpoints: ``load_assignment``, or the legacy ``hosts`` list."""
    which = o.one_of(("load_assignment", "hosts"), required=False)
    if which == "load_assignment":
        la = o.obj("load_assignment")
        assert la is not None
        return parse_load_assignment(la)
    if which == "hosts":
        return tuple(EndpointSpec(*parse_socket_address(h)) for h in o.objs("hosts"))
    return ()


def _eds_service_name(o: Obj) -> str:
    eds = o.obj("eds_cluster_config")
    if eds is None:
        return ""
    name = eds.take("service_name", "", str)
    eds.ignore("eds_config")     # the config source is the xDS client's business
    eds.done()
    return name


def _check_endpoints(o: Obj, ctype: str, eps: tuple[EndpointSpec, ...]) -> None:
    """What the cluster type demands of its static endpoints. (EDS with a load_assignment:
    those endpoints serve until the control plane sends its own.)"""
    if ctype == "STATIC":
        for e in eps:
            try:
                ipaddress.ip_address(e.address)
            except ValueError:
                raise ConfigError(o.sub("load_assignment"),
                                  f"malformed IP address: {e.address} (STATIC clusters need IP addresses; "
                                  "use type STRICT_DNS or LOGICAL_DNS for names)") from None
    if ctype == "LOGICAL_DNS" and len(eps) != 1:
        raise ConfigError(o.sub("load_assignment"), "LOGICAL_DNS clusters must have a single locality_lb_endpoint "
                          "and a single lb_endpoint")


def _dns(o: Obj) -> tuple[float, str]:
    """(dns_refresh_rate, dns_lookup_family)."""
    refresh = o.duration("dns_refresh_rate", 5.0)
    family = o.take("dns_lookup_family", "AUTO", str, FAMILIES)
    o.take("respect_dns_ttl", False, bool, (False,))
    return refresh, family


def _lb_configs(o: Obj) -> tuple[float, int, int]:
    """The load balancers' settings: (healthy panic threshold %, ring size, choice count)."""
    panic = 50.0
    clb = o.obj("common_lb_config")
    if clb is not None:
        hp = clb.take("healthy_panic_threshold", None)
        if hp is not None:
            panic = percent(hp, clb.sub("healthy_panic_threshold"))
        clb.done()
    ring = 1024
    rh = o.obj("ring_hash_lb_config")
    if rh is not None:
        ring = rh.take("minimum_ring_size", 1024, int)
        rh.ignore("maximum_ring_size")
        rh.take("hash_function", "XX_HASH", str, ("XX_HASH", "MURMUR_HASH_2"))
        rh.done()
    choice = 2
    lr = o.obj("least_request_lb_config")
    if lr is not None:
        choice = lr.take("choice_count", 2, int)
        lr.done()
    return panic, ring, choice


def _max_requests_per_connection(o: Obj) -> int:
    """The cluster's field, overridden by ``common_http_protocol_options``'."""
    mrpc = o.take("max_requests_per_connection", 0, int)
    hpo = o.obj("common_http_protocol_options")
    if hpo is not None:
        mrpc = hpo.take("max_requests_per_connection", mrpc, int)
        hpo.done()
    return mrpc


def parse_cluster(o: Obj) -> ClusterSpec:
    name = o.take("name", kind=str)
    ctype = _choice(o, "type", "STATIC", TYPES, "cluster type")
    lb = _choice(o, "lb_policy", "ROUND_ROBIN", LB_POLICIES, "lb_policy")
    connect_timeout = o.duration("connect_timeout", 5.0)
    eps = _endpoints(o)
    eds_name = _eds_service_name(o)
    _check_endpoints(o, ctype, eps)
    refresh, family = _dns(o)
    cb = o.obj("circuit_breakers")
    thresholds = _thresholds(cb) if cb is not None else Thresholds()
    od = o.obj("outlier_detection")
    outlier = _outlier(od) if od is not None else None
    hcs = tuple(_health_check(h) for h in o.objs("health_checks"))
    buf = o.take("per_connection_buffer_limit_bytes", 1024 * 1024, int)
    panic, ring, choice = _lb_configs(o)
    mrpc = _max_requests_per_connection(o)
    tls = parse_upstream(o)
    o.ignore("alt_stat_name", "metadata")
    o.done()
    return ClusterSpec(name, ctype, connect_timeout, lb, eps, refresh, family, thresholds, outlier, hcs,
                       eds_name, buf, panic, ring, choice, mrpc, tls)
