"""AuthorizationPolicy -> Envoy's RBAC HTTP filter (`envoy.filters.http.rbac`), as Istio does.

`rbac_filters(policies)` returns the HTTP filters Pilot puts in front of the router on an
inbound listener for a real-Envoy sidecar: one DENY filter (if any DENY rule exists), then
one ALLOW filter (only if some ALLOW policy applies: an empty ALLOW filter would deny all).
Each policy rule becomes one Envoy policy `ns[<ns>]-policy[<name>]-rule[<i>]`:
permissions = AND(any `to` operation, every `when` condition), principals = any `from`
source. The semantics equal `policy.decide` (a differential test checks it against real
Envoy). Principals match the peer's URI SAN, so `cluster.local/ns/x/sa/y` becomes
`spiffe://cluster.local/ns/x/sa/y`.
"""
from __future__ import annotations

import re
from typing import Any, Iterable

from testbed.mesh.rules.policy import ALLOW, DENY, AuthorizationPolicy, Condition, Operation, Source

RBAC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
ANY = {"any": True}


def _string(pattern: str, prefix: str = "") -> dict[str, Any]:
    if pattern == "*":
        return {"safe_regex": {"regex": ".+"}}
    if pattern.endswith("*"):
        return {"prefix": prefix + pattern[:-1]}
    if pattern.startswith("*"):
        return {"suffix": pattern[1:]}
    return {"exact": prefix + pattern}


def _regex(pattern: str) -> str:
    return ".*".join(re.escape(p) for p in pattern.split("*"))


def _or(kind: str, items: list[dict]) -> dict:
    return items[0] if len(items) == 1 else {f"or_{kind}": {kind: items}}


def _and(kind: str, items: list[dict]) -> dict:
    if not items:
        return ANY
    return items[0] if len(items) == 1 else {f"and_{kind}": {kind: items}}


def _not(kind: str, item: dict) -> dict:
    return {"not_rule" if kind == "rules" else "not_id": item}


def _field(kind: str, pos: tuple, neg: tuple, one) -> list[dict]:
    out = []
    if pos:
        out.append(_or(kind, [one(v) for v in pos]))
    if neg:
        out.append(_not(kind, _or(kind, [one(v) for v in neg])))
    return out


def _header(name: str):
    def one(v: str) -> dict:
        if v == "*":
            return {"header": {"name": name, "present_match": True}}
        return {"header": {"name": name, "string_match": _string(v)}}
    return one


def _operation(o: Operation) -> dict:
    return _and("rules", [
        *_field("rules", o.methods, o.not_methods, _header(":method")),
        *_field("rules", o.paths, o.not_paths,
                lambda p: ANY if p == "*" else {"url_path": {"path": _string(p)}}),
        *_field("rules", o.ports, o.not_ports, lambda p: {"destination_port": p})])


def _condition(c: Condition) -> dict:
    return _and("rules", _field("rules", c.values, c.not_values, _header(c.header)))


def _principal(p: str) -> dict:
    return {"authenticated": {"principal_name": _string(p, "spiffe://")}}


def _namespace(ns: str) -> dict:
    return {"authenticated": {"principal_name": {"safe_regex": {
        "regex": f"spiffe://[^/]+/ns/{_regex(ns)}/sa/[^/]+"}}}}


def _source(s: Source) -> dict:
    return _and("ids", [*_field("ids", s.principals, s.not_principals, _principal),
                        *_field("ids", s.namespaces, s.not_namespaces, _namespace)])


def _policies(policies: Iterable[AuthorizationPolicy], action: str) -> dict[str, dict]:
    out = {}
    for p in policies:
        if p.action != action:
            continue
        for i, rule in enumerate(p.rules):
            to = [_or("rules", [_operation(o) for o in rule.operations])] if rule.operations \
                else []
            perm = _and("rules", to + [_condition(c) for c in rule.conditions])
            ids = _or("ids", [_source(s) for s in rule.sources]) if rule.sources else ANY
            out[f"ns[{p.namespace}]-policy[{p.name}]-rule[{i}]"] = {
                "permissions": [perm], "principals": [ids]}
    return out


def rbac_filters(policies: Iterable[AuthorizationPolicy]) -> list[dict[str, Any]]:
    """Envoy HTTP filters for the policies that apply to one workload (DENY, then ALLOW)."""
    policies = list(policies)
    out = []
    deny = _policies(policies, DENY)
    if deny:
        out.append({"name": "envoy.filters.http.rbac", "typed_config": {
            "@type": RBAC_TYPE, "rules": {"action": "DENY", "policies": deny}}})
    if any(p.action == ALLOW for p in policies):
        out.append({"name": "envoy.filters.http.rbac", "typed_config": {
            "@type": RBAC_TYPE, "rules": {"action": "ALLOW",
                                          "policies": _policies(policies, ALLOW)}}})
    return out
