"""testbed/mesh/pilot/security.py: what Pilot adds per node for Citadel, and that
minimesh-proxy's config parsers take it (the same resources feed real Envoy).

* no security resource: listeners and clusters exactly as before;
* PeerAuthentication STRICT / PERMISSIVE / DISABLE (mesh, namespace, workload selector,
  portLevelMtls) -> inbound listener chains, outbound UpstreamTlsContext with the
  destination's SPIFFE ID (DISABLE destinations stay plaintext);
* AuthorizationPolicy -> RBAC filters first on the inbound HCM only;
* malformed security YAML is rejected by Pilot's apply with Galley's codes.
"""
from __future__ import annotations

import pytest

from proxy.config.cluster import parse_cluster
from proxy.config.listener import parse_listener
from proxy.config.reader import Obj
from testbed.mesh.pilot import resources as xds
from testbed.mesh.rules.traffic import parse_rules
from testbed.mesh.model import MeshState, ServiceSpec, VersionSpec
from testbed.mesh.pilot.server import ApplyRejected, Pilot
from testbed.mesh.pilot.resources import NodeInfo, XdsSource

SRC = XdsSource()
SVCS = (ServiceSpec("reviews", 9080, (VersionSpec("v1"), VersionSpec("v2"))), ServiceSpec("ratings", 9081))
NODE = NodeInfo.make("10.0.0.2", "reviews-v1-0", "reviews", labels={"app": "reviews", "version": "v1"},
                     app_port=18080)


DR = """apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
"""


def state(yaml_text: str = "") -> MeshState:
    rules, msgs = parse_rules(DR + ("---\n" + yaml_text if yaml_text else ""), "sec.yaml")
    assert [m for m in msgs if m.level == "Error"] == []
    return MeshState(SVCS, (), tuple(rules))


def pa(mode: str, ns: str = "default", selector: str = "", extra: str = "") -> str:
    sel = f"  selector: {{matchLabels: {selector}}}\n" if selector else ""
    return (f"apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\n"
            f"metadata: {{name: pa-{mode.lower()}-{len(selector)}, namespace: {ns}}}\nspec:\n{sel}"
            f"  mtls: {{mode: {mode}}}\n{extra}")


def inbound(st: MeshState, node: NodeInfo = NODE):
    ls = xds.build_listeners(st, node, SRC)
    [raw] = [x for x in ls if x["traffic_direction"] == "INBOUND"]
    return raw, parse_listener(Obj(_untyped(raw), "inbound"), 0)


def clusters(st: MeshState) -> dict:
    return {c["name"]: parse_cluster(Obj(_untyped(c), c["name"])) for c in xds.build_clusters(st, NODE, SRC)}


def _untyped(resource: dict) -> dict:
    """The xDS client strips a resource's @type before parsing; so do we."""
    return {k: v for k, v in resource.items() if k != "@type"}


def test_no_security_resources_change_nothing() -> None:
    raw, spec = inbound(state())
    assert spec.tls is None and "transport_socket" not in str(raw)
    assert all(c.tls is None for c in clusters(state()).values())


@pytest.mark.parametrize("mode", ["STRICT", "PERMISSIVE", "DISABLE"])
def test_mesh_wide_mode_shapes_inbound_and_outbound(mode: str) -> None:
    st = state(pa(mode, ns="istio-system"))
    _, spec = inbound(st)
    assert (spec.tls.mode if spec.tls else "DISABLE") == mode
    cs = clusters(st)
    out = cs["outbound|9081||ratings"]
    if mode == "DISABLE":
        assert out.tls is None
    else:
        assert out.tls.sans == ("spiffe://cluster.local/ns/default/sa/ratings",)
        assert cs["outbound|9080|v2|reviews"].tls.sans == ("spiffe://cluster.local/ns/default/sa/reviews",)
    assert cs["inbound|9080||reviews"].tls is None          # sidecar -> local app stays plaintext


def test_workload_selector_and_port_level_override() -> None:
    st = state(pa("STRICT") + "---\n" + pa("DISABLE", selector="{version: v1}"))
    assert inbound(st)[1].tls is None                          # v1 workload: DISABLE wins
    v2 = NodeInfo.make("10.0.0.3", "reviews-v2-0", "reviews", labels={"app": "reviews", "version": "v2"},
                       app_port=18080)
    assert inbound(st, v2)[1].tls.mode == "STRICT"
    cs = clusters(st)
    assert cs["outbound|9080|v1|reviews"].tls is None and cs["outbound|9080|v2|reviews"].tls is not None
    st2 = state(pa("STRICT", selector="{app: reviews}", extra="  portLevelMtls: {9080: {mode: PERMISSIVE}}\n"))
    assert inbound(st2)[1].tls.mode == "PERMISSIVE"


def test_authorization_policy_becomes_rbac_on_inbound_only() -> None:
    ap = """apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: reviews-viewer}
spec:
  selector: {matchLabels: {app: reviews}}
  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/productpage]}}]}]
"""
    st = state(ap)
    raw, spec = inbound(st)
    assert [f.name for f in spec.filter.http_filters] == [
        "envoy.filters.http.rbac", "envoy.filters.http.fault", "envoy.filters.http.router"]
    assert spec.tls.mode == "PERMISSIVE"                       # Istio's default with security on
    outbound = [x for x in xds.build_listeners(st, NODE, SRC) if x["traffic_direction"] == "OUTBOUND"]
    assert "rbac" not in str(outbound)
    other = NodeInfo.make("10.0.0.4", "ratings-0", "ratings", labels={"app": "ratings"}, app_port=1)
    raw2, spec2 = inbound(st, other)
    assert "envoy.filters.http.rbac" not in [f.name for f in spec2.filter.http_filters]


def test_listener_cache_key_depends_on_labels() -> None:
    v2 = NodeInfo.make("10.0.0.2", "reviews-v1-0", "reviews", labels={"app": "reviews", "version": "v2"},
                       app_port=18080)
    assert NODE.cache_key(xds.LISTENER) != v2.cache_key(xds.LISTENER)


@pytest.mark.parametrize("bad,code", [
    ("kind: PeerAuthentication\nmetadata: {name: x}\nspec: {mtls: {mode: STRICTER}}\n", "MM0101"),
    ("kind: AuthorizationPolicy\nmetadata: {name: x}\nspec: {action: BLOCK}\n", "MM0102"),
    ("kind: AuthorizationPolicy\nmetadata: {name: x}\nspec:\n  rules: [{from: [{source: "
     "{principals: [spiffe://cluster.local/ns/a/sa/b]}}]}]\n", "MM0103"),
])
def test_malformed_security_yaml_is_rejected_by_apply(bad: str, code: str) -> None:
    p = Pilot(SVCS)
    with pytest.raises(ApplyRejected) as e:
        p.apply_text("apiVersion: security.istio.io/v1beta1\n" + bad, "sec.yaml")
    assert any(m.code == code and m.file == "sec.yaml" for m in e.value.messages), e.value
    assert p.state.rules == ()


def test_apply_replaces_by_kind_and_name() -> None:
    p = Pilot(SVCS)
    p.apply_text(pa("STRICT"), "a.yaml")
    p.apply_text(pa("STRICT").replace("STRICT}", "DISABLE}"), "b.yaml")
    assert [(r.kind, r.mode) for r in p.state.rules] == [("PeerAuthentication", "DISABLE")]
