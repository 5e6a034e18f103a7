"""Istio authorization semantics (`decide`) and mTLS mode precedence (`peer_mode`)."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from testbed.mesh.rules.policy import (ALLOW, DENY, AuthorizationPolicy, AuthzRequest, Condition,
                                   Operation, PeerAuthentication, Rule, Source, applicable, decide,
                                   peer_mode, wildcard_match)
from proxy.tls.identity import DISABLE, PERMISSIVE, STRICT, UNSET

PP = "cluster.local/ns/default/sa/productpage"
EVIL = "cluster.local/ns/test/sa/evil"


def req(principal=PP, method="GET", path="/reviews/1", headers=None, port=9080):
    return AuthzRequest(principal, method, path, headers or {}, port)


def pol(name, action=ALLOW, *rules, ns="default", selector=None):
    return AuthorizationPolicy(name, ns, selector, action, tuple(rules))


ALLOW_PP_GET = pol("allow-pp", ALLOW, Rule(
    (Source(principals=(PP,)),), (Operation(methods=("GET",), paths=("/reviews/*",)),)))
DENY_DELETE = pol("deny-delete", DENY, Rule(operations=(Operation(methods=("DELETE",)),)))
DENY_HDR = pol("deny-mallory", DENY, Rule(conditions=(Condition("x-user", ("mallory",)),)))


@pytest.mark.parametrize("pattern, value, ok", [
    ("*", "", True), ("*", "anything", True), ("/a", "/a", True), ("/a", "/a/", False),
    ("/api/*", "/api/v1", True), ("/api/*", "/api", False), ("*.json", "/x.json", True),
    ("*.json", "/x.jsonp", False), ("GET", "get", False)])
def test_wildcards(pattern, value, ok):
    assert wildcard_match(pattern, value) is ok


@pytest.mark.parametrize("policies, request_, expected", [
    ((), req(), (True, None)),  # no policy: allow
    ((ALLOW_PP_GET,), req(), (True, "allow-pp")),
    ((ALLOW_PP_GET,), req(principal=EVIL), (False, None)),  # disallowed principal
    ((ALLOW_PP_GET,), req(principal=None), (False, None)),  # plaintext has no principal
    ((ALLOW_PP_GET,), req(method="POST"), (False, None)),
    ((ALLOW_PP_GET,), req(path="/reviews/1?x=2"), (True, "allow-pp")),  # query ignored
    ((ALLOW_PP_GET,), req(path="/ratings"), (False, None)),
    ((ALLOW_PP_GET, DENY_DELETE), req(method="DELETE", path="/reviews/1"),
     (False, "deny-delete")),
    ((DENY_DELETE,), req(method="GET"), (True, None)),  # DENY only: others allowed
    ((DENY_DELETE,), req(method="DELETE"), (False, "deny-delete")),
    ((ALLOW_PP_GET, DENY_HDR), req(headers={"x-user": "mallory"}), (False, "deny-mallory")),
    ((ALLOW_PP_GET, DENY_HDR), req(headers={"x-user": "alice"}), (True, "allow-pp")),
    ((pol("allow-nothing"),), req(), (False, None)),  # ALLOW without rules: deny all
    ((pol("deny-nothing", DENY),), req(), (True, None)),  # DENY without rules: no effect
    ((pol("allow-all", ALLOW, Rule()),), req(principal=None), (True, "allow-all")),
    ((pol("deny-all", DENY, Rule()), ALLOW_PP_GET), req(), (False, "deny-all")),
])
def test_decision_table(policies, request_, expected):
    assert decide(policies, request_) == expected


def test_any_authenticated_and_not_principals():
    authn = pol("authn", ALLOW, Rule((Source(principals=("*",)),)))
    assert decide([authn], req(principal=EVIL)) == (True, "authn")
    assert decide([authn], req(principal=None)) == (False, None)
    no_plain = pol("no-plain", DENY, Rule((Source(not_principals=("*",)),)))
    assert decide([no_plain], req(principal=None)) == (False, "no-plain")
    assert decide([no_plain], req()) == (True, None)


def test_sources_or_fields_and():
    p = pol("p", ALLOW, Rule((Source(principals=("*/sa/productpage",)),
                              Source(namespaces=("test",), not_principals=(EVIL,)))))
    assert decide([p], req()) == (True, "p")
    assert decide([p], req(principal="cluster.local/ns/test/sa/ok")) == (True, "p")
    assert decide([p], req(principal=EVIL)) == (False, None)


def test_conditions_all_must_hold_and_missing_header():
    p = pol("p", ALLOW, Rule(conditions=(Condition("x-a", ("1",)),
                                         Condition("x-b", (), ("no",)))))
    assert decide([p], req(headers={"x-a": "1"})) == (True, "p")  # x-b absent: not "no"
    assert decide([p], req(headers={"x-a": "1", "x-b": "no"})) == (False, None)
    assert decide([p], req(headers={"x-b": "yes"})) == (False, None)  # x-a missing


def test_ports_and_not_methods():
    p = pol("p", ALLOW, Rule(operations=(Operation(not_methods=("DELETE",), ports=(9080,)),)))
    assert decide([p], req(port=9080)) == (True, "p")
    assert decide([p], req(port=8080)) == (False, None)
    assert decide([p], req(method="DELETE")) == (False, None)


def test_applicable_selects_by_namespace_labels_and_root():
    a = pol("sel", selector=(("app", "reviews"),))
    b = pol("ns-wide")
    c = pol("mesh", ns="istio-system")
    d = pol("other-ns", ns="shop")
    e = pol("other-app", selector=(("app", "ratings"),))
    got = applicable([a, b, c, d, e], "default", {"app": "reviews", "version": "v1"})
    assert [p.name for p in got] == ["sel", "ns-wide", "mesh"]


@given(st.lists(st.sampled_from([ALLOW_PP_GET, DENY_DELETE, DENY_HDR, pol("allow-nothing"),
                                 pol("allow-all", ALLOW, Rule())]), max_size=5),
       st.sampled_from([PP, EVIL, None]), st.sampled_from(["GET", "DELETE", "POST"]),
       st.sampled_from([{}, {"x-user": "mallory"}]))
def test_properties(policies, principal, method, headers):
    r = req(principal=principal, method=method, headers=headers)
    allowed, name = decide(policies, r)
    denies = [p for p in policies if p.action == DENY and not decide([p], r)[0]]
    if denies:  # a matching DENY always wins
        assert not allowed and name in {p.name for p in denies}
    elif not any(p.action == ALLOW for p in policies):
        assert allowed
    else:
        assert allowed == any(decide([p], r)[0] for p in policies if p.action == ALLOW)
    assert decide(list(reversed(policies)), r)[0] == allowed  # order never changes the verdict


def pa(name, mode=UNSET, ns="default", selector=None, ports=()):
    return PeerAuthentication(name, ns, selector, mode, ports)


@pytest.mark.parametrize("policies, labels, port, expected", [
    ((), {}, None, PERMISSIVE),  # Istio default
    ((pa("mesh", STRICT, "istio-system"),), {"app": "a"}, None, STRICT),
    ((pa("mesh", STRICT, "istio-system"), pa("ns", DISABLE)), {"app": "a"}, None, DISABLE),
    ((pa("mesh", STRICT, "istio-system"), pa("ns", PERMISSIVE),
      pa("w", STRICT, selector=(("app", "a"),))), {"app": "a"}, None, STRICT),
    ((pa("ns", STRICT), pa("w", UNSET, selector=(("app", "a"),))), {"app": "a"}, None, STRICT),
    ((pa("ns", STRICT), pa("w", DISABLE, selector=(("app", "b"),))), {"app": "a"}, None,
     STRICT),  # selector does not match
    ((pa("w", STRICT, selector=(("app", "a"),), ports=((9080, DISABLE),)),), {"app": "a"},
     9080, DISABLE),
    ((pa("w", STRICT, selector=(("app", "a"),), ports=((9080, DISABLE),)),), {"app": "a"},
     8080, STRICT),
    ((pa("w", UNSET, selector=(("app", "a"),), ports=((9080, STRICT),)),), {"app": "a"},
     8080, PERMISSIVE),
    ((pa("ns", STRICT, ns="shop"),), {"app": "a"}, None, PERMISSIVE),  # other namespace
])
def test_peer_mode(policies, labels, port, expected):
    assert peer_mode(policies, labels, "default", port) == expected
