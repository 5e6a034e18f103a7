"""xDS resources in Envoy v3 JSON shape, built per sidecar from a MeshState (pure).

  LDS  outbound listener (HCM, RDS route "15001") + inbound listener of the node's service
  RDS  "15001": one virtual host per service, Istio domains, VirtualService routes
  CDS  outbound|<port>|<subset>|<svc> (EDS over REST to Pilot) + inbound|<port>||<svc> (STATIC)
  EDS  ClusterLoadAssignment per outbound cluster, endpoints filtered by subset labels

`build(state, node, type_url, names, source)` returns the resources for one
DiscoveryResponse; `sidecar_bootstrap(...)` the bootstrap both real Envoy and
minimesh-proxy start from.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping

from testbed.mesh.rules.galley import short_host
from testbed.mesh.pilot.security import secure_clusters, secure_listeners
from testbed.mesh.model import (Destination, DestinationRule, HTTPMatch, HTTPRoute, MeshState, Retries,
                    RouteDestination, ServiceSpec, StringMatch, TrafficPolicy, VirtualService,
                    service_vips)

T = "type.googleapis.com/"
LISTENER = T + "envoy.config.listener.v3.Listener"
ROUTE = T + "envoy.config.route.v3.RouteConfiguration"
CLUSTER = T + "envoy.config.cluster.v3.Cluster"
ENDPOINT = T + "envoy.config.endpoint.v3.ClusterLoadAssignment"
TYPE_BY_PATH = {"listeners": LISTENER, "routes": ROUTE, "clusters": CLUSTER,
                "endpoints": ENDPOINT}
HCM = T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
FAULT = T + "envoy.extensions.filters.http.fault.v3.HTTPFault"
ROUTER = T + "envoy.extensions.filters.http.router.v3.Router"
OUTBOUND_PORT = 15001
OUTBOUND_ROUTE = "15001"
MAX = 4294967295  # Istio's "no limit" circuit-breaker default
# Istio's default retryOn is "connect-failure,refused-stream,unavailable,cancelled,
# retriable-status-codes"; for HTTP services (no gRPC status, no retriable code list) only
# the first two act, so minimesh sends just those.
DEFAULT_RETRY_ON = "connect-failure,refused-stream"
DEFAULT_RETRIES = Retries(2, None, DEFAULT_RETRY_ON)


@dataclass(frozen=True)
class XdsSource:
    """Where a sidecar fetches xDS from: the bootstrap's static cluster, REST timings."""

    cluster: str = "xds_cluster"
    refresh_delay_ms: int = 50
    request_timeout_ms: int = 30000

    def config_source(self) -> dict:
        return {"api_config_source": {
            "api_type": "REST", "transport_api_version": "V3", "cluster_names": [self.cluster],
            "refresh_delay": _dur(self.refresh_delay_ms),
            "request_timeout": _dur(self.request_timeout_ms)},
            "resource_api_version": "V3"}


@dataclass(frozen=True)
class NodeInfo:
    """A sidecar's identity: node.id `sidecar~<ip>~<instance>~<service>` plus metadata."""

    id: str
    ip: str
    instance: str
    service: str  # "client" for client-only nodes
    labels: Mapping[str, str] = field(default_factory=dict)
    app_port: int | None = None  # the app's 127.0.0.1 port (inbound cluster)
    outbound_address: str = "0.0.0.0"
    outbound_port: int = OUTBOUND_PORT
    inbound_address: str = ""  # default: ip
    access_log: str = ""  # file for a JSON access log of every HCM ("" = none)

    @classmethod
    def make(cls, ip: str, instance: str, service: str, **kw: Any) -> "NodeInfo":
        return cls(f"sidecar~{ip}~{instance}~{service}", ip, instance, service, **kw)

    @classmethod
    def from_node(cls, node: Mapping[str, Any]) -> "NodeInfo":
        """Parse a DiscoveryRequest's `node`; ValueError in the user's words."""
        nid = str(node.get("id", ""))
        parts = nid.split("~")
        if len(parts) != 4 or parts[0] != "sidecar":
            raise ValueError(f"node.id {nid!r} is not sidecar~<ip>~<instance>~<service>")
        md = node.get("metadata") or {}
        app = md.get("app_port")
        return cls(nid, parts[1], parts[2], parts[3], dict(md.get("labels") or {}),
                   int(app) if app not in (None, "") else None,
                   str(md.get("outbound_address", "0.0.0.0")),
                   int(md.get("outbound_port", OUTBOUND_PORT)),
                   str(md.get("inbound_address", "")), str(md.get("access_log", "")))

    def metadata(self) -> dict:
        md: dict[str, Any] = {"labels": dict(self.labels), "outbound_address":
                              self.outbound_address, "outbound_port": self.outbound_port}
        if self.app_port is not None:
            md["app_port"] = self.app_port
        if self.inbound_address:
            md["inbound_address"] = self.inbound_address
        if self.access_log:
            md["access_log"] = self.access_log
        return md

    def cache_key(self, type_url: str) -> tuple:
        """What the resources of `type_url` depend on: nodes with equal keys share them."""
        if type_url == ENDPOINT:
            return ()
        if type_url == ROUTE:
            return tuple(sorted(self.labels.items()))
        if type_url == CLUSTER:
            return (self.service, self.app_port)
        return (self.service, self.app_port, self.ip, self.outbound_address, self.outbound_port,
                self.inbound_address, self.access_log, tuple(sorted(self.labels.items())))


def _dur(ms: int | float) -> str:
    return f"{ms / 1000:.3f}s"


def _fraction(percent: float) -> dict:
    return {"numerator": round(percent * 10000), "denominator": "MILLION"}


def cluster_name(direction: str, port: int, subset: str, service: str) -> str:
    return f"{direction}|{port}|{subset}|{service}"


# ---------------------------------------------------------------- rule lookup
def _first(rules, kind, host: str):
    for r in rules:
        if isinstance(r, kind) and (short_host(r.host) == host if kind is DestinationRule
                                    else host in {short_host(h) for h in r.hosts}):
            return r
    return None


def _merged_policy(dr: DestinationRule | None, subset: str) -> TrafficPolicy | None:
    if dr is None:
        return None
    top = dr.traffic_policy
    sub = next((s.traffic_policy for s in dr.subsets if s.name == subset), None)
    if sub is None or top is None:
        return sub or top
    return replace(top, **{f.name: getattr(sub, f.name) for f in fields(sub)
                           if getattr(sub, f.name) is not None})


# ---------------------------------------------------------------- RDS
def _string_match(m: StringMatch) -> dict:
    return {"safe_regex": {"regex": m.value}} if m.kind == "regex" else {m.kind: m.value}


def _route_match(m: HTTPMatch | None) -> dict:
    out: dict[str, Any] = {"prefix": "/"}
    if m and m.uri:
        out = {"path": m.uri.value} if m.uri.kind == "exact" else _string_match(m.uri)
    if m and m.headers:
        out["headers"] = [{"name": n, "string_match": _string_match(sm)} for n, sm in m.headers]
    return out


def _dest_cluster(d: Destination, state: MeshState) -> str:
    host = short_host(d.host)
    svc = state.service(host)
    return cluster_name("outbound", d.port or (svc.port if svc else 0), d.subset, host)


def _route_action(http: HTTPRoute, state: MeshState) -> dict:
    dests = [(rd, rd.weight if rd.weight is not None else 100) for rd in http.route]
    dests = [(rd, w) for rd, w in dests if w > 0] or dests[:1]
    first = dests[0][0].destination
    policy = _merged_policy(_first(state.rules, DestinationRule, short_host(first.host)),
                            first.subset)
    hash_header = policy.hash_header if policy else None
    act: dict[str, Any] = {"timeout": _dur(http.timeout_ms or 0)}
    if len(dests) == 1:
        act["cluster"] = _dest_cluster(dests[0][0].destination, state)
    else:
        act["weighted_clusters"] = {"clusters": [
            {"name": _dest_cluster(rd.destination, state), "weight": w} for rd, w in dests]}
    retries = http.retries or DEFAULT_RETRIES
    if retries.attempts > 0:
        # (Istio also adds the previous_hosts retry predicate; minimesh leaves it out:
        # round robin picks another host anyway and minimesh-proxy does not parse it)
        rp: dict[str, Any] = {"retry_on": retries.retry_on or DEFAULT_RETRY_ON,
                              "num_retries": retries.attempts}
        if retries.per_try_timeout_ms:
            rp["per_try_timeout"] = _dur(retries.per_try_timeout_ms)
        act["retry_policy"] = rp
    if http.mirror:
        act["request_mirror_policies"] = [{
            "cluster": _dest_cluster(http.mirror, state),
            "runtime_fraction": {"default_value": _fraction(http.mirror_percent)}}]
    if hash_header:
        act["hash_policy"] = [{"header": {"header_name": hash_header}}]
    return act


def _fault_config(http: HTTPRoute) -> dict | None:
    f = http.fault
    if f is None:
        return None
    cfg: dict[str, Any] = {"@type": FAULT}
    if f.delay_ms is not None:
        cfg["delay"] = {"fixed_delay": _dur(f.delay_ms), "percentage": _fraction(f.delay_percent)}
    if f.abort_status is not None:
        cfg["abort"] = {"http_status": f.abort_status, "percentage": _fraction(f.abort_percent)}
    return cfg


def _routes_for(svc: ServiceSpec, state: MeshState, node: NodeInfo) -> list[dict]:
    vs = _first(state.rules, VirtualService, svc.name)
    everything = HTTPRoute("default", (), (RouteDestination(Destination(svc.name, "", None, 0),
                                                              None, 0),),
                           None, None, None, None, 100.0, 0)
    default = [{"name": "default", "match": {"prefix": "/"},
                "route": _route_action(everything, state)}]
    if vs is None:
        return default
    routes = []
    for i, http in enumerate(vs.http):
        matches: list[HTTPMatch | None] = [
            m for m in http.match if all(node.labels.get(k) == v for k, v in m.source_labels)]
        if http.match and not matches:
            continue  # every match is for other source workloads
        action = _route_action(http, state)
        fault = _fault_config(http)
        for m in matches or [None]:
            r: dict[str, Any] = {"name": http.name or f"{vs.name}.{i}", "match": _route_match(m),
                                 "route": action}
            if fault:
                r["typed_per_filter_config"] = {"envoy.filters.http.fault": fault}
            routes.append(r)
    return routes


def build_routes(state: MeshState, node: NodeInfo) -> list[dict]:
    vips = service_vips([s.name for s in state.services])
    vhosts = []
    for svc in sorted(state.services, key=lambda s: s.name):
        names = [svc.name, f"{svc.name}.default.svc.cluster.local", vips[svc.name]]
        vhosts.append({"name": f"{svc.name}:{svc.port}",
                       "domains": [d for n in names for d in (n, f"{n}:{svc.port}")],
                       "routes": _routes_for(svc, state, node)})
    return [{"@type": ROUTE, "name": OUTBOUND_ROUTE, "virtual_hosts": vhosts,
             "validate_clusters": False}]


# ---------------------------------------------------------------- LDS
ACCESS_LOG_FORMAT = {
    "start_time": "%START_TIME%", "method": "%REQ(:METHOD)%", "path": "%REQ(:PATH)%",
    "authority": "%REQ(:AUTHORITY)%", "code": "%RESPONSE_CODE%", "flags": "%RESPONSE_FLAGS%",
    "duration_ms": "%DURATION%", "upstream_cluster": "%UPSTREAM_CLUSTER%",
    "upstream_host": "%UPSTREAM_HOST%", "request_id": "%REQ(X-REQUEST-ID)%",
    "user_agent": "%REQ(USER-AGENT)%", "route": "%ROUTE_NAME%"}


def _hcm(stat_prefix: str, routing: dict, access_log: str = "") -> dict:
    logs = {"access_log": [{"name": "envoy.access_loggers.file", "typed_config": {
        "@type": T + "envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "path": access_log, "log_format": {"json_format": ACCESS_LOG_FORMAT | {
            "listener": stat_prefix}}}}]} if access_log else {}
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": HCM, "stat_prefix": stat_prefix, **routing, **logs,
        "http_filters": [{"name": "envoy.filters.http.fault", "typed_config": {"@type": FAULT}},
                         {"name": "envoy.filters.http.router",
                          "typed_config": {"@type": ROUTER}}]}}


def _listener(name: str, addr: str, port: int, direction: str, hcm: dict) -> dict:
    return {"@type": LISTENER, "name": name, "traffic_direction": direction,
            "address": {"socket_address": {"address": addr, "port_value": port}},
            "filter_chains": [{"filters": [hcm]}]}


def build_listeners(state: MeshState, node: NodeInfo, source: XdsSource) -> list[dict]:
    out = [_listener("virtualOutbound", node.outbound_address, node.outbound_port, "OUTBOUND",
                     _hcm(f"outbound_{node.outbound_port}", {"rds": {
                         "route_config_name": OUTBOUND_ROUTE,
                         "config_source": source.config_source()}}, node.access_log))]
    svc = state.service(node.service)
    if svc is not None and node.app_port is not None:
        inbound = cluster_name("inbound", svc.port, "", svc.name)
        out.append(_listener(f"inbound_{svc.port}", node.inbound_address or node.ip, svc.port,
                             "INBOUND", _hcm(f"inbound_{svc.port}", {"route_config": {
                                 "name": inbound, "virtual_hosts": [{
                                     "name": inbound, "domains": ["*"], "routes": [{
                                         "match": {"prefix": "/"},
                                         "route": {"cluster": inbound, "timeout": "0s"}}]}]}},
                                 node.access_log)))
    return secure_listeners(state, node, out)     # mTLS chains + RBAC (pilot/security.py)


# ---------------------------------------------------------------- CDS / EDS
def _socket(ip: str, port: int) -> dict:
    return {"address": {"socket_address": {"address": ip, "port_value": port}}}


def _cluster(name: str, policy: TrafficPolicy | None, source: XdsSource) -> dict:
    p = policy or TrafficPolicy()
    lb = "RING_HASH" if p.hash_header else (p.lb_simple or "ROUND_ROBIN")
    c: dict[str, Any] = {
        "@type": CLUSTER, "name": name, "type": "EDS", "lb_policy": lb,
        "connect_timeout": _dur(p.connect_timeout_ms or 10000),
        "eds_cluster_config": {"eds_config": source.config_source(), "service_name": name},
        "circuit_breakers": {"thresholds": [{
            "max_connections": p.max_connections or MAX,
            "max_pending_requests": p.http1_max_pending or MAX,
            "max_requests": p.http2_max_requests or MAX,
            "max_retries": p.max_retries or MAX}]}}
    od = p.outlier
    if od is not None:
        o: dict[str, Any] = {}
        if od.consecutive_5xx is not None:
            o |= {"consecutive_5xx": od.consecutive_5xx, "enforcing_consecutive_5xx": 100}
        if od.consecutive_gateway is not None:
            o |= {"consecutive_gateway_failure": od.consecutive_gateway,
                  "enforcing_consecutive_gateway_failure": 100}
        if od.interval_ms is not None:
            o["interval"] = _dur(od.interval_ms)
        if od.base_ejection_ms is not None:
            o["base_ejection_time"] = _dur(od.base_ejection_ms)
        if od.max_ejection_percent is not None:
            o["max_ejection_percent"] = od.max_ejection_percent
        c["outlier_detection"] = o
    return c


def outbound_clusters(state: MeshState) -> dict[str, tuple[ServiceSpec, dict[str, str]]]:
    """cluster name -> (service, subset labels) for every outbound cluster."""
    out: dict[str, tuple[ServiceSpec, dict[str, str]]] = {}
    for svc in sorted(state.services, key=lambda s: s.name):
        out[cluster_name("outbound", svc.port, "", svc.name)] = (svc, {})
        dr = _first(state.rules, DestinationRule, svc.name)
        for s in dr.subsets if dr else ():
            out[cluster_name("outbound", svc.port, s.name, svc.name)] = (svc, dict(s.labels))
    return out


def build_clusters(state: MeshState, node: NodeInfo, source: XdsSource) -> list[dict]:
    out = []
    outbound = outbound_clusters(state)
    tls_modes: dict[str, str | None] = {}
    for name in outbound:
        subset, host = name.split("|")[2:]
        policy = _merged_policy(_first(state.rules, DestinationRule, host), subset)
        tls_modes[name] = policy.tls_mode if policy is not None else None
        out.append(_cluster(name, policy, source))
    svc = state.service(node.service)
    if svc is not None and node.app_port is not None:
        name = cluster_name("inbound", svc.port, "", svc.name)
        out.append({"@type": CLUSTER, "name": name, "type": "STATIC", "connect_timeout": "10s",
                    "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                        {"endpoint": _socket("127.0.0.1", node.app_port)}]}]}})
    # UpstreamTlsContext for mTLS destinations (DestinationRule tls.mode, else auto mTLS)
    return secure_clusters(state, node, out, outbound, tls_modes)


def build_endpoints(state: MeshState, names: list[str]) -> list[dict]:
    known = outbound_clusters(state)
    out = []
    for name in names or list(known):
        svc, labels = known.get(name, (None, {}))
        eps = sorted((e for e in state.endpoints if svc is not None and e.service == svc.name
                      and all(e.all_labels.get(k) == v for k, v in labels.items())),
                     key=lambda e: (e.ip, e.port, e.instance))
        out.append({"@type": ENDPOINT, "cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": _socket(e.ip, e.port), "metadata": {"filter_metadata": {"istio": {
                "instance": e.instance, "version": e.version, "host": e.host}}}}
            for e in eps]}] if eps else []})
    return out


def build(state: MeshState, node: NodeInfo, type_url: str, names: list[str],
          source: XdsSource) -> list[dict]:
    """Resources of one type for one node (RDS/EDS filtered by requested names)."""
    if type_url == LISTENER:
        return build_listeners(state, node, source)
    if type_url == CLUSTER:
        return build_clusters(state, node, source)
    if type_url == ROUTE:
        return [r for r in build_routes(state, node) if not names or r["name"] in names]
    if type_url == ENDPOINT:
        return build_endpoints(state, names)
    raise ValueError(f"unknown type_url {type_url!r}; known: {', '.join(TYPE_BY_PATH.values())}")


def sidecar_bootstrap(node: NodeInfo, pilot_addr: tuple[str, int], admin_port: int, admin_address: str = "127.0.0.1",
                      source: XdsSource = XdsSource(), outlier_log: str = "") -> dict:
    """Bootstrap for real Envoy and minimesh-proxy: LDS+CDS over REST from Pilot; with
    ``outlier_log``, the outlier event log (cluster_manager.outlier_detection.event_log_path)."""
    host, port = pilot_addr
    return {
        "node": {"id": node.id, "cluster": node.service, "metadata": node.metadata()},
        "dynamic_resources": {"lds_config": source.config_source(),
                              "cds_config": source.config_source()},
        "static_resources": {"clusters": [{
            "name": source.cluster, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": source.cluster, "endpoints": [{"lb_endpoints": [
                {"endpoint": _socket(host, port)}]}]}}]},
        "admin": {"address": {"socket_address": {"address": admin_address, "port_value": admin_port}}},
        **({"cluster_manager": {"outlier_detection": {"event_log_path": outlier_log}}} if outlier_log else {}),
    }
