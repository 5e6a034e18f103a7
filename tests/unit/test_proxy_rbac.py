"""proxy/filters/rbac.py: Envoy's RBAC filter in minimesh-proxy.

A differential property: for Istio policies translated by security_envoy.rbac_filters, the
proxy's RBAC chain (DENY filter, then ALLOW filter) gives the same verdict as
security.decide for every generated request. Then the filter in a running Server: 403
``RBAC: access denied``, flag RBAC in the access log, ``http.<prefix>.rbac.*`` counters.
"""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config.bootstrap import parse_bootstrap
from proxy.config.reader import ConfigError, Obj
from proxy.filters.rbac import Request, _parse, compile_filter, evaluate
from proxy.server import Server
from tests.support.http_peers import Upstream, http_request
from testbed.mesh.rules.policy import AuthzRequest, decide
from proxy.tls.identity import SpiffeId
from testbed.mesh.pilot.rbac import rbac_filters
from testbed.mesh.rules.security import parse_security

POLICIES = """
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: reviews-readers}
spec:
  action: ALLOW
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/default/sa/productpage"]}
    - source: {namespaces: ["test"]}
    to:
    - operation: {methods: ["GET", "HEAD"], paths: ["/reviews/*"]}
  - to: [{operation: {notMethods: ["DELETE", "PUT"], paths: ["*/health", "/exact"]}}]
    when: [{key: "request.headers[x-env]", values: ["*"]}]
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: admins}
spec:
  action: ALLOW
  rules: [{from: [{source: {principals: ["*/sa/admin"]}}]}]
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: no-mallory}
spec:
  action: DENY
  rules:
  - when: [{key: "request.headers[x-user]", values: ["mallory", "eve*"]}]
  - from: [{source: {notNamespaces: ["default", "test"]}}]
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: no-delete-outside-reviews}
spec:
  action: DENY
  rules:
  - from: [{source: {notPrincipals: ["cluster.local/ns/default/sa/admin"]}}]
    to: [{operation: {methods: ["DELETE"], notPaths: ["/reviews/*"]}}]
"""
POLICY_SET, MSGS = parse_security(POLICIES, "policies.yaml")
CHAIN = [compile_filter(f) for f in rbac_filters(POLICY_SET)]
PRINCIPALS = [None] + [SpiffeId.make(s, ns).uri for s, ns in (
    ("productpage", "default"), ("admin", "default"), ("ratings", "default"), ("spy", "test"),
    ("admin", "prod"), ("x", "other"))]


def chain_allows(req: Request) -> bool:
    return all(evaluate(cfg, req)[0] for cfg in CHAIN)


@settings(max_examples=400, deadline=None)
@given(principal=st.sampled_from(PRINCIPALS),
       method=st.sampled_from(["GET", "HEAD", "DELETE", "PUT", "POST"]),
       path=st.sampled_from(["/reviews/1", "/reviews/", "/reviewsX", "/admin?x=1", "/a/health",
                             "/exact", "/exact?q", "/"]),
       user=st.sampled_from([None, "alice", "mallory", "eve2", "Eve"]),
       env=st.sampled_from([None, "", "prod"]))
def test_rbac_chain_agrees_with_decide(principal, method, path, user, env) -> None:
    assert MSGS == [] and len(CHAIN) == 2
    headers = {k: v for k, v in (("x-user", user), ("x-env", env)) if v is not None}
    want, _ = decide(POLICY_SET, AuthzRequest(SpiffeId.parse(principal).principal if principal else None,
                                              method, path, headers))
    got = chain_allows(Request(method, path, tuple(headers.items()), principal))
    assert got == want


def test_envoy_semantics_of_empty_and_missing_rules() -> None:
    req = Request("GET", "/", (), None)
    assert evaluate(_parse(Obj({"rules": {"action": "ALLOW"}}, "r")), req) == (False, None)
    assert evaluate(_parse(Obj({"rules": {"action": "DENY"}}, "r")), req) == (True, None)
    assert evaluate(_parse(Obj({}, "r")), req)[0] is True


@pytest.mark.parametrize("raw,needle", [
    ({"rules": {"action": "LOG"}}, "allowed: ALLOW, DENY"),
    ({"rules": {"policies": {"p": {"permissions": [{"bogus": True}], "principals": [{"any": True}]}}}},
     "one of any"),
    ({"rules": {"policies": {"p": {"permissions": [{"url_path": {"path": {"safe_regex": {"regex": "("}}}}],
                                   "principals": [{"any": True}]}}}}, "bad regex"),
])
def test_bad_rbac_config_names_the_field(raw, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        _parse(Obj(raw, "http_filters[0].typed_config"))


async def _filter_in_server(tmp: Path):
    allow_mtls_only = rbac_filters(parse_security("""
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: mtls-only}
spec: {action: ALLOW, rules: [{from: [{source: {principals: ["*"]}}]}, {to: [{operation: {paths: ["/public"]}}]}]}
""", "p.yaml")[0])
    log = tmp / "access.log"
    async with Upstream() as up:
        b = parse_bootstrap({"static_resources": {"listeners": [{
            "name": "in", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                         "HttpConnectionManager",
                "stat_prefix": "inbound_9080",
                "access_log": [{"name": "envoy.access_loggers.file", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                    "path": str(log), "log_format": {"json_format": {"code": "%RESPONSE_CODE%",
                                                                     "flags": "%RESPONSE_FLAGS%"}}}}],
                "route_config": {"virtual_hosts": [{"name": "a", "domains": ["*"], "routes": [
                    {"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}]},
                "http_filters": allow_mtls_only + [{"name": "envoy.filters.http.router"}]}}]}]}],
            "clusters": [{"name": "app", "connect_timeout": "1s", "load_assignment": {
                "cluster_name": "app", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                    "socket_address": {"address": "127.0.0.1", "port_value": up.port}}}}]}]}}]}})
        s = Server(b)
        await s.start()
        port = s.listener_manager.bound_port("in")
        try:
            denied = [await http_request(port, target="/private") for _ in range(10)]
            allowed = [await http_request(port, target="/public") for _ in range(5)]
            stats = s.stats.render_text()
        finally:
            await s.stop()
    return denied, allowed, stats, log


def test_rbac_filter_answers_403_with_flag_and_counters(tmp_path: Path) -> None:
    denied, allowed, stats, log = asyncio.run(_filter_in_server(tmp_path))
    assert [(r.status, r.body) for r in denied] == [(403, b"RBAC: access denied")] * 10
    assert [r.status for r in allowed] == [200] * 5
    assert "http.inbound_9080.rbac.denied: 10" in stats
    assert "http.inbound_9080.rbac.allowed: 5" in stats
    entries = [json.loads(x) for x in log.read_text().splitlines()]
    assert sorted((e["code"], e["flags"]) for e in entries) == \
        sorted([(200, "-")] * 5 + [(403, "RBAC")] * 10)
