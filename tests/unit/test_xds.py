"""xDS resource shapes (Envoy v3 JSON) built from services, endpoints and rules."""
import pytest

from testbed.mesh.rules.traffic import parse_rules
from testbed.mesh.model import Endpoint, MeshState, ServiceSpec, VersionSpec, service_vips
from testbed.mesh.pilot import resources as xds
from testbed.mesh.pilot.resources import NodeInfo, XdsSource, build, sidecar_bootstrap

SRC = XdsSource(cluster="pilot", refresh_delay_ms=50, request_timeout_ms=20000)
SVCS = (ServiceSpec("svcb", 8080, (VersionSpec("v1"), VersionSpec("v2"))),
        ServiceSpec("svca", 9000, (VersionSpec("v1"),)))
EPS = tuple(Endpoint("svcb", v, f"svcb-{v}-{i}", f"h{i}", f"10.0.0.{i}", 8080, {})
            for i, v in enumerate(["v1", "v1", "v2"], start=1)) + \
    (Endpoint("svca", "v1", "svca-v1-0", "h9", "10.0.0.9", 9000, {"zone": "a"}),)
CLIENT = NodeInfo.make("10.0.0.50", "curl", "client", labels={"app": "curl"})
SVCA = NodeInfo.make("10.0.0.9", "svca-v1-0", "svca", labels={"app": "svca", "version": "v1"},
                     app_port=19000)
RULES = """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: svcb}
spec:
  host: svcb
  trafficPolicy:
    loadBalancer: {simple: LEAST_REQUEST}
    connectionPool: {tcp: {maxConnections: 5}, http: {http1MaxPendingRequests: 2}}
    outlierDetection: {consecutive5xxErrors: 3, interval: 2s, baseEjectionTime: 30s}
  subsets:
  - {name: stable, labels: {version: v1}}
  - name: canary
    labels: {version: v2}
    trafficPolicy: {connectionPool: {tcp: {maxConnections: 1}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: svcb}
spec:
  hosts: [svcb]
  http:
  - match:
    - headers: {user-agent: {regex: ".*Android.*"}}
      sourceLabels: {app: svca}
    - uri: {exact: /canary}
    route: [{destination: {host: svcb, subset: canary}}]
    fault: {delay: {fixedDelay: 5s, percentage: {value: 10}}, abort: {httpStatus: 503}}
  - match: [{uri: {prefix: /api}}, {uri: {regex: "/v[0-9]+"}}]
    retries: {attempts: 0}
    route: [{destination: {host: svcb, subset: stable}}]
  - route:
    - destination: {host: svcb, subset: stable}
      weight: 95
    - destination: {host: svcb, subset: canary}
      weight: 5
    retries: {attempts: 4, perTryTimeout: 250ms}
    timeout: 3s
    mirror: {host: svca}
    mirrorPercentage: {value: 12.5}
"""


def state(rules_text=RULES) -> MeshState:
    rules, msgs = parse_rules(rules_text, "r.yaml")
    assert msgs == []
    return MeshState(SVCS, EPS, tuple(rules))


def vhost(node, st=None):
    [rc] = build(st or state(), node, xds.ROUTE, ["15001"], SRC)
    assert rc["@type"] == xds.ROUTE and rc["name"] == "15001"
    return {v["name"]: v for v in rc["virtual_hosts"]}


def test_vips_are_deterministic_by_sorted_name():
    assert service_vips(["svcb", "svca"]) == {"svca": "10.96.0.1", "svcb": "10.96.0.2"}
    with pytest.raises(ValueError, match="do not fit"):
        service_vips(["a", "b", "c"], "10.96.0.0/31")


def test_virtual_hosts_have_istio_domains_and_default_route():
    vh = vhost(CLIENT)
    assert set(vh) == {"svca:9000", "svcb:8080"}
    assert vh["svca:9000"]["domains"] == [
        "svca", "svca:9000", "svca.default.svc.cluster.local",
        "svca.default.svc.cluster.local:9000", "10.96.0.1", "10.96.0.1:9000"]
    [r] = vh["svca:9000"]["routes"]  # no VirtualService: everything to all versions
    assert r["match"] == {"prefix": "/"} and r["route"]["cluster"] == "outbound|9000||svca"
    assert r["route"]["retry_policy"] == {"retry_on": "connect-failure,refused-stream",
                                          "num_retries": 2}  # Istio's default, HTTP part


def test_virtual_service_routes_in_order_with_envoy_matches():
    a = vhost(SVCA)["svcb:8080"]["routes"]
    c = vhost(CLIENT)["svcb:8080"]["routes"]
    # the sourceLabels match only exists in svca's sidecar
    assert [r["match"] for r in a[:2]] == [
        {"prefix": "/", "headers": [{"name": "user-agent",
                                     "string_match": {"safe_regex": {"regex": ".*Android.*"}}}]},
        {"path": "/canary"}]
    assert [r["match"] for r in c] == [{"path": "/canary"}, {"prefix": "/api"},
                                       {"safe_regex": {"regex": "/v[0-9]+"}}, {"prefix": "/"}]
    canary, api, _, split = c
    assert canary["route"]["cluster"] == "outbound|8080|canary|svcb"
    fault = canary["typed_per_filter_config"]["envoy.filters.http.fault"]
    assert fault == {"@type": xds.FAULT,
                     "delay": {"fixed_delay": "5.000s",
                               "percentage": {"numerator": 100000, "denominator": "MILLION"}},
                     "abort": {"http_status": 503,
                               "percentage": {"numerator": 1000000, "denominator": "MILLION"}}}
    assert "retry_policy" not in api["route"]  # attempts: 0 disables retries
    act = split["route"]
    assert act["weighted_clusters"] == {"clusters": [
        {"name": "outbound|8080|stable|svcb", "weight": 95},
        {"name": "outbound|8080|canary|svcb", "weight": 5}]}
    assert act["timeout"] == "3.000s"
    assert (act["retry_policy"]["num_retries"], act["retry_policy"]["per_try_timeout"]) == \
        (4, "0.250s")
    assert act["request_mirror_policies"] == [{
        "cluster": "outbound|9000||svca",
        "runtime_fraction": {"default_value": {"numerator": 125000, "denominator": "MILLION"}}}]


def test_listeners_outbound_rds_and_inbound_for_service_nodes():
    [out] = build(state(), CLIENT, xds.LISTENER, [], SRC)
    assert out["address"] == {"socket_address": {"address": "0.0.0.0", "port_value": 15001}}
    hcm = out["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["@type"] == xds.HCM and hcm["rds"]["route_config_name"] == "15001"
    assert hcm["rds"]["config_source"]["api_config_source"] == {
        "api_type": "REST", "transport_api_version": "V3", "cluster_names": ["pilot"],
        "refresh_delay": "0.050s", "request_timeout": "20.000s"}
    assert [f["name"] for f in hcm["http_filters"]] == ["envoy.filters.http.fault",
                                                        "envoy.filters.http.router"]
    out, inbound = build(state(), SVCA, xds.LISTENER, [], SRC)
    assert inbound["address"]["socket_address"] == {"address": "10.0.0.9", "port_value": 9000}
    rc = inbound["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
    assert rc["virtual_hosts"][0]["routes"][0]["route"]["cluster"] == "inbound|9000||svca"


def test_clusters_from_destination_rule():
    cl = {c["name"]: c for c in build(state(), SVCA, xds.CLUSTER, [], SRC)}
    assert set(cl) == {"outbound|9000||svca", "outbound|8080||svcb", "outbound|8080|stable|svcb",
                       "outbound|8080|canary|svcb", "inbound|9000||svca"}
    stable = cl["outbound|8080|stable|svcb"]
    assert stable["type"] == "EDS" and stable["lb_policy"] == "LEAST_REQUEST"
    assert stable["eds_cluster_config"]["service_name"] == "outbound|8080|stable|svcb"
    th = stable["circuit_breakers"]["thresholds"][0]
    assert (th["max_connections"], th["max_pending_requests"], th["max_requests"]) == \
        (5, 2, xds.MAX)
    assert stable["outlier_detection"] == {"consecutive_5xx": 3, "enforcing_consecutive_5xx": 100,
                                           "interval": "2.000s", "base_ejection_time": "30.000s"}
    canary = cl["outbound|8080|canary|svcb"]  # subset policy overrides, rest inherited
    assert canary["circuit_breakers"]["thresholds"][0]["max_connections"] == 1
    assert canary["lb_policy"] == "LEAST_REQUEST"
    assert cl["outbound|9000||svca"]["lb_policy"] == "ROUND_ROBIN"
    assert "outlier_detection" not in cl["outbound|9000||svca"]
    inbound = cl["inbound|9000||svca"]
    assert inbound["type"] == "STATIC" and inbound["load_assignment"]["endpoints"][0][
        "lb_endpoints"][0]["endpoint"]["address"]["socket_address"] == \
        {"address": "127.0.0.1", "port_value": 19000}
    assert "inbound|9000||svca" not in {c["name"] for c in build(state(), CLIENT, xds.CLUSTER,
                                                                 [], SRC)}


def addrs(cla):
    return [e["endpoint"]["address"]["socket_address"]["address"]
            for g in cla["endpoints"] for e in g["lb_endpoints"]]


def test_endpoints_filtered_by_subset_labels():
    names = ["outbound|8080|stable|svcb", "outbound|8080|canary|svcb", "outbound|8080||svcb",
             "outbound|1|nope|nope"]
    got = {c["cluster_name"]: addrs(c) for c in build(state(), CLIENT, xds.ENDPOINT, names, SRC)}
    assert got == {"outbound|8080|stable|svcb": ["10.0.0.1", "10.0.0.2"],
                   "outbound|8080|canary|svcb": ["10.0.0.3"],
                   "outbound|8080||svcb": ["10.0.0.1", "10.0.0.2", "10.0.0.3"],
                   "outbound|1|nope|nope": []}


def test_node_identity_round_trip_and_errors():
    node = NodeInfo.make("10.0.0.9", "svca-v1-0", "svca", labels={"version": "v1"}, app_port=1)
    assert node.id == "sidecar~10.0.0.9~svca-v1-0~svca"
    assert NodeInfo.from_node({"id": node.id, "metadata": node.metadata()}) == node
    with pytest.raises(ValueError, match="sidecar~<ip>~<instance>~<service>"):
        NodeInfo.from_node({"id": "router~x"})


def test_bootstrap_points_lds_and_cds_at_pilot():
    b = sidecar_bootstrap(SVCA, ("10.0.0.254", 15010), 15000, source=SRC)
    assert b["node"]["id"] == SVCA.id and b["node"]["metadata"]["labels"]["app"] == "svca"
    assert b["dynamic_resources"]["lds_config"] == b["dynamic_resources"]["cds_config"] == \
        SRC.config_source()
    [c] = b["static_resources"]["clusters"]
    assert c["name"] == "pilot" and c["load_assignment"]["endpoints"][0]["lb_endpoints"][0][
        "endpoint"]["address"]["socket_address"] == {"address": "10.0.0.254", "port_value": 15010}
    assert b["admin"]["address"]["socket_address"]["port_value"] == 15000


def test_unknown_type_is_an_error_in_plain_words():
    with pytest.raises(ValueError, match="unknown type_url"):
        build(state(), CLIENT, "type.googleapis.com/x", [], SRC)


def test_access_log_is_opt_in_per_node():
    [plain] = build(state(), CLIENT, xds.LISTENER, [], SRC)
    assert "access_log" not in plain["filter_chains"][0]["filters"][0]["typed_config"]
    node = NodeInfo.make("10.0.0.9", "svca-v1-0", "svca", app_port=1, access_log="/tmp/a.log")
    for lst in build(state(), node, xds.LISTENER, [], SRC):
        [log] = lst["filter_chains"][0]["filters"][0]["typed_config"]["access_log"]
        assert log["typed_config"]["path"] == "/tmp/a.log"
        fmt = log["typed_config"]["log_format"]["json_format"]
        assert fmt["code"] == "%RESPONSE_CODE%" and fmt["listener"] in ("outbound_15001",
                                                                        "inbound_9000")


def test_nodes_share_cached_resources_only_when_inputs_match():
    a1 = NodeInfo.make("10.0.0.1", "a-1", "svca", labels={"app": "svca"}, app_port=1)
    a2 = NodeInfo.make("10.0.0.2", "a-2", "svca", labels={"app": "svca"}, app_port=1)
    b = NodeInfo.make("10.0.0.3", "b-1", "svcb", labels={"app": "svcb"}, app_port=1)
    assert a1.cache_key(xds.ROUTE) == a2.cache_key(xds.ROUTE) != b.cache_key(xds.ROUTE)
    assert a1.cache_key(xds.CLUSTER) == a2.cache_key(xds.CLUSTER) != b.cache_key(xds.CLUSTER)
    assert a1.cache_key(xds.LISTENER) != a2.cache_key(xds.LISTENER)  # own inbound address
    assert a1.cache_key(xds.ENDPOINT) == b.cache_key(xds.ENDPOINT)
    # the sharing is sound: equal keys give equal resources
    st = state()
    assert build(st, a1, xds.ROUTE, [], SRC) == build(st, a2, xds.ROUTE, [], SRC)
    assert build(st, a1, xds.CLUSTER, [], SRC) == build(st, a2, xds.CLUSTER, [], SRC)


def test_default_mesh_config_is_accepted_by_minimesh_proxy_config_reader():
    """Without fault/mirror/access-log features, every resource Pilot sends parses with
    minimesh-proxy's strict config reader (the sidecar must not NACK a plain mesh)."""
    reader = pytest.importorskip("proxy.config.reader")
    cfg_route = pytest.importorskip("proxy.config.route")
    cfg_cluster = pytest.importorskip("proxy.config.cluster")
    cfg_listener = pytest.importorskip("proxy.config.listener")
    plain = state(RULES.replace("    fault: {delay: {fixedDelay: 5s, percentage: {value: 10}}, "
                                "abort: {httpStatus: 503}}\n", "")
                  .replace("    mirror: {host: svca}\n    mirrorPercentage: {value: 12.5}\n", ""))
    parse = {xds.ROUTE: cfg_route.parse_route_config, xds.CLUSTER: cfg_cluster.parse_cluster,
             xds.LISTENER: lambda o: cfg_listener.parse_listener(o, 0),
             xds.ENDPOINT: cfg_cluster.parse_load_assignment}
    for type_url, fn in parse.items():
        for res in build(plain, SVCA, type_url, [], SRC):
            body = {k: v for k, v in res.items() if k != "@type"}
            fn(reader.Obj(body, type_url.rsplit(".", 1)[-1]))
