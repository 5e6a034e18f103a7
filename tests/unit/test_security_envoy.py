"""AuthorizationPolicy -> Envoy RBAC shapes (behaviour vs real Envoy: test_mtls_envoy.py)."""
from __future__ import annotations

from testbed.mesh.rules.policy import (ALLOW, DENY, AuthorizationPolicy, Condition, Operation, Rule,
                                   Source)
from testbed.mesh.pilot.rbac import rbac_filters


def actions(filters):
    return [(f["typed_config"]["rules"]["action"], sorted(f["typed_config"]["rules"]["policies"]))
            for f in filters]


def test_no_policies_no_filters_and_deny_only_has_no_allow_filter():
    assert rbac_filters([]) == []
    deny = AuthorizationPolicy("d", action=DENY, rules=(Rule(),))
    assert actions(rbac_filters([deny])) == [("DENY", ["ns[default]-policy[d]-rule[0]"])]


def test_allow_nothing_is_an_empty_allow_filter_and_deny_without_rules_vanishes():
    got = rbac_filters([AuthorizationPolicy("nothing"), AuthorizationPolicy("x", action=DENY)])
    assert actions(got) == [("ALLOW", [])]  # Envoy: ALLOW with no policy denies everything


def test_rule_shape():
    p = AuthorizationPolicy("p", "shop", None, ALLOW, (Rule(
        (Source(principals=("cluster.local/ns/a/sa/b", "*/sa/admin")),),
        (Operation(methods=("GET",), not_paths=("/admin*",)),),
        (Condition("x-user", ("*",)),)),))
    (f,) = rbac_filters([p])
    pol = f["typed_config"]["rules"]["policies"]["ns[shop]-policy[p]-rule[0]"]
    assert pol["principals"] == [{"or_ids": {"ids": [
        {"authenticated": {"principal_name": {"exact": "spiffe://cluster.local/ns/a/sa/b"}}},
        {"authenticated": {"principal_name": {"suffix": "/sa/admin"}}}]}}]
    assert pol["permissions"] == [{"and_rules": {"rules": [
        {"and_rules": {"rules": [
            {"header": {"name": ":method", "string_match": {"exact": "GET"}}},
            {"not_rule": {"url_path": {"path": {"prefix": "/admin"}}}}]}},
        {"header": {"name": "x-user", "present_match": True}}]}}]
