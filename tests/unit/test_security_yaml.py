"""PeerAuthentication / AuthorizationPolicy parsing: values, and errors with file:line + code."""
from __future__ import annotations

import textwrap

import pytest

from testbed.mesh.rules.policy import (ALLOW, DENY, AuthorizationPolicy, Condition, Operation,
                                   PeerAuthentication, Source)
from proxy.tls.identity import STRICT, UNSET
from testbed.mesh.rules.security import parse_security


def parse(text: str):
    return parse_security(textwrap.dedent(text).lstrip("\n"), "sec.yaml")


def errors(text: str) -> list[tuple[str, int, str]]:
    res, msgs = parse(text)
    assert res == [], "a resource with errors must be left out"
    return [(m.code, m.line, m.text) for m in msgs]


GOOD = """
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: reviews-ports}
spec:
  selector: {matchLabels: {app: reviews}}
  mtls: {mode: UNSET}
  portLevelMtls:
    "9080": {mode: DISABLE}
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: reviews-viewer, namespace: default}
spec:
  selector: {matchLabels: {app: reviews, version: v2}}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/productpage", "*/sa/admin"]
        notNamespaces: ["test"]
    to:
    - operation: {methods: ["GET", "HEAD"], paths: ["/reviews/*", "*.json"], ports: ["9080"]}
    when:
    - key: request.headers[X-User]
      notValues: ["mallory"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all-nothing}
spec: {}
"""


def test_good_resources_parse_to_values():
    res, msgs = parse(GOOD)
    assert msgs == []
    mesh, ports, allow, nothing = res
    assert mesh == PeerAuthentication("default", "istio-system", None, STRICT, (), "sec.yaml", 1)
    assert ports.selector == (("app", "reviews"),) and ports.mode == UNSET
    assert ports.port_modes == ((9080, "DISABLE"),) and ports.namespace == "default"
    assert allow.action == ALLOW and allow.selector == (("app", "reviews"), ("version", "v2"))
    assert [r.line for r in res] == [1, 7, 16, 33]
    (rule,) = allow.rules
    assert rule.sources == (Source(("cluster.local/ns/default/sa/productpage", "*/sa/admin"),
                                   (), (), ("test",)),)
    assert rule.operations == (Operation(("GET", "HEAD"), (), ("/reviews/*", "*.json"), (),
                                         (9080,), ()),)
    assert rule.conditions == (Condition("x-user", (), ("mallory",)),)
    assert nothing == AuthorizationPolicy("deny-all-nothing", "default", None, ALLOW, (),
                                          "sec.yaml", 33)


def test_unknown_action_mm0102_with_line():
    assert errors("""
        apiVersion: security.istio.io/v1beta1
        kind: AuthorizationPolicy
        metadata: {name: p}
        spec:
          action: BLOCK
        """) == [("MM0102", 5, "spec.action: unknown action 'BLOCK'; allowed: ALLOW, DENY")]


def test_custom_action_not_supported():
    msgs = errors("""
        apiVersion: security.istio.io/v1beta1
        kind: AuthorizationPolicy
        metadata: {name: p}
        spec: {action: CUSTOM, provider: {name: x}}
        """)
    assert {(c, ln) for c, ln, _ in msgs} == {("MM0002", 4)}
    assert any("CUSTOM is not supported by minimesh (only ALLOW and DENY)" in t
               for _, _, t in msgs)


@pytest.mark.parametrize("principal, why", [
    ("spiffe://cluster.local/ns/default/sa/a", "drop the spiffe:// scheme"),
    ("cluster.local/ns/*/sa/a", "`*` is allowed only once, at the start or the end"),
    ("*cluster*", "`*` is allowed only once"),
    ("cluster.local/default/a", "expected <trust-domain>/ns/<namespace>/sa/<service>"),
    ("cluster local/ns/a/sa/b", "expected <trust-domain>"),
])
def test_malformed_principal_mm0103(principal, why):
    (code, line, text), = errors(f"""
        apiVersion: security.istio.io/v1beta1
        kind: AuthorizationPolicy
        metadata: {{name: p}}
        spec:
          rules:
          - from:
            - source:
                notPrincipals:
                - ok.local/ns/a/sa/b
                - "{principal}"
        """)
    assert (code, line) == ("MM0103", 10)
    assert text.startswith(f"spec.rules[0].from[0].source.notPrincipals: malformed principal "
                           f"'{principal}': ") and why in text


def test_bad_fields_are_ist0106_with_lines():
    msgs = errors("""
        apiVersion: security.istio.io/v1beta1
        kind: AuthorizationPolicy
        metadata: {name: p}
        spec:
          rules:
          - from:
            - source: {principal: ["a/ns/b/sa/c"]}
            to:
            - operation: {methods: [get], paths: ["reviews"], ports: [70000]}
            when:
            - key: source.ip
              values: ["10.0.0.1"]
            - key: request.headers[x-a]
        """)
    assert [(c, ln) for c, ln, _ in msgs] == [
        ("IST0106", 7), ("MM0104", 9), ("MM0104", 9), ("IST0106", 9), ("MM0105", 11),
        ("MM0106", 13)]
    texts = "\n".join(t for _, _, t in msgs)
    assert "spec.rules[0].from[0].source.principal: unknown field; allowed: principals" in texts
    assert "malformed method 'get': HTTP methods are upper-case letters" in texts
    assert "malformed path 'reviews': paths start with /" in texts
    assert "'source.ip' is not supported; minimesh understands request.headers[<name>]" in texts
    assert "spec.rules[0].when[1]: give values or notValues" in texts
    assert "expected a port number in 1..65535, got 70000" in texts


def test_peer_authentication_errors():
    msgs = errors("""
        apiVersion: security.istio.io/v1beta1
        kind: PeerAuthentication
        metadata: {name: p}
        spec:
          mtls: {mode: ON}
          portLevelMtls:
            "80": {mode: STRICT}
        """)
    assert [(c, ln) for c, ln, _ in msgs] == [("MM0101", 5), ("MM0107", 7)]
    assert msgs[0][2] == ("spec.mtls.mode: True is not one of UNSET, STRICT, PERMISSIVE, "
                          "DISABLE (YAML reads unquoted on/off/yes/no as booleans)")


def test_selector_needs_labels_and_api_version_checked():
    msgs = errors("""
        apiVersion: networking.istio.io/v1beta1
        kind: PeerAuthentication
        metadata: {name: p}
        spec:
          selector: {matchLabels: {}}
        """)
    assert [(c, ln) for c, ln, _ in msgs] == [("IST0106", 1), ("MM0108", 5)]


def test_only_bad_document_is_dropped():
    res, msgs = parse(GOOD + """
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: broken}
spec: {action: deny}
""")
    assert len(res) == 4 and [m.code for m in msgs] == ["MM0102"]
    assert msgs[0].format().startswith("Error [MM0102] (AuthorizationPolicy broken) sec.yaml:")


def test_invalid_yaml():
    res, msgs = parse("a: [b\n")
    assert res == [] and msgs[0].code == "IST0106" and "not valid YAML" in msgs[0].text


def test_deny_policy_value():
    res, msgs = parse("""
        apiVersion: security.istio.io/v1beta1
        kind: AuthorizationPolicy
        metadata: {name: no-delete, namespace: shop}
        spec:
          action: DENY
          rules: [{to: [{operation: {methods: [DELETE]}}]}]
        """)
    assert msgs == [] and res[0].action == DENY and res[0].namespace == "shop"


def test_json_round_trip_is_lossless():
    import json

    from testbed.mesh.rules.policy import from_json, to_json
    res, _ = parse(GOOD)
    for r in res:
        wire = json.loads(json.dumps(to_json(r)))
        assert from_json(wire) == r
    with pytest.raises(ValueError, match="expected PeerAuthentication or AuthorizationPolicy"):
        from_json({"kind": "VirtualService"})
