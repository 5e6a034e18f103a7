"""Istio security policies: the model and its evaluation.

Workload identities (`SpiffeId`) and the mTLS mode names (STRICT, PERMISSIVE, DISABLE,
UNSET) live with the sidecar, in proxy/tls/identity.py. Pure data and pure functions, no I/O:

* `PeerAuthentication` / `AuthorizationPolicy` -- `security.istio.io/v1beta1` resources as
  frozen values (rules/security.py parses them from YAML with file:line).
* `peer_mode(policies, labels, namespace, port)` -- STRICT | PERMISSIVE | DISABLE for one
  workload port, with Istio's precedence (workload > namespace > mesh-wide > PERMISSIVE).
* `applicable(policies, namespace, labels)` and `decide(policies, request)` -- Istio's
  authorization: DENY policies first, then, if any ALLOW policy applies, the request must
  match one of its rules; no policy -> allow.
* `to_json(resource)` / `from_json(obj)` -- plain JSON for shipping validated resources
  to sidecars (e.g. inside an xDS filter config); a lossless round trip.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping

from proxy.tls.identity import PERMISSIVE, UNSET

ALLOW, DENY = "ALLOW", "DENY"
ROOT_NAMESPACE = "istio-system"  # Istio's default mesh config root namespace


# ---------------------------------------------------------------- resources
Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class PeerAuthentication:
    name: str
    namespace: str = "default"
    selector: Labels | None = None  # None: namespace-wide (mesh-wide in ROOT_NAMESPACE)
    mode: str = UNSET
    port_modes: tuple[tuple[int, str], ...] = ()  # portLevelMtls
    file: str = ""
    line: int = 0

    @property
    def kind(self) -> str:
        return "PeerAuthentication"


@dataclass(frozen=True)
class Source:
    principals: tuple[str, ...] = ()
    not_principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    not_namespaces: tuple[str, ...] = ()


@dataclass(frozen=True)
class Operation:
    methods: tuple[str, ...] = ()
    not_methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    not_paths: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()
    not_ports: tuple[int, ...] = ()


@dataclass(frozen=True)
class Condition:
    """`when: - key: request.headers[<header>]` (header is lower-cased)."""

    header: str
    values: tuple[str, ...] = ()
    not_values: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rule:
    sources: tuple[Source, ...] = ()  # from: any of them (empty: any source)
    operations: tuple[Operation, ...] = ()  # to: any of them (empty: any operation)
    conditions: tuple[Condition, ...] = ()  # when: all of them


@dataclass(frozen=True)
class AuthorizationPolicy:
    name: str
    namespace: str = "default"
    selector: Labels | None = None
    action: str = ALLOW
    rules: tuple[Rule, ...] = ()  # ALLOW without rules allows nothing (Istio "allow-nothing")
    file: str = ""
    line: int = 0

    @property
    def kind(self) -> str:
        return "AuthorizationPolicy"


@dataclass(frozen=True)
class AuthzRequest:
    """What the server-side sidecar knows about one request."""

    principal: str | None  # peer's principal (mTLS), None for plaintext
    method: str
    path: str
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    port: int | None = None


# ---------------------------------------------------------------- matching
def wildcard_match(pattern: str, value: str) -> bool:
    """Istio string match: exact, `*` (anything), `prefix*` or `*suffix`."""
    if pattern == "*":
        return True
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    return value == pattern


def _any(patterns: Iterable[str], value: str | None) -> bool:
    return value is not None and any(wildcard_match(p, value) for p in patterns)


def _field(pos: tuple, neg: tuple, value, match=_any) -> bool:
    """Istio's rule: values must match one of `pos` (if given) and none of `neg`."""
    if pos and not match(pos, value):
        return False
    return not (neg and match(neg, value))


def _principal_namespace(principal: str | None) -> str | None:
    if principal is None:
        return None
    parts = principal.split("/")
    return parts[2] if len(parts) == 5 and parts[1] == "ns" else None


def _ports(ports: tuple[int, ...], port: int | None) -> bool:
    return port is not None and port in ports


def _source_matches(s: Source, r: AuthzRequest) -> bool:
    return (_field(s.principals, s.not_principals, r.principal)
            and _field(s.namespaces, s.not_namespaces, _principal_namespace(r.principal)))


def _operation_matches(o: Operation, r: AuthzRequest) -> bool:
    path = r.path.split("?", 1)[0]
    return (_field(o.methods, o.not_methods, r.method.upper())
            and _field(o.paths, o.not_paths, path)
            and _field(o.ports, o.not_ports, r.port, _ports))


def _condition_matches(c: Condition, r: AuthzRequest) -> bool:
    return _field(c.values, c.not_values, r.headers.get(c.header))


def rule_matches(rule: Rule, r: AuthzRequest) -> bool:
    return ((not rule.sources or any(_source_matches(s, r) for s in rule.sources))
            and (not rule.operations or any(_operation_matches(o, r) for o in rule.operations))
            and all(_condition_matches(c, r) for c in rule.conditions))


def policy_matches(p: AuthorizationPolicy, r: AuthzRequest) -> bool:
    return any(rule_matches(rule, r) for rule in p.rules)


# ---------------------------------------------------------------- selection
def _selects(selector: Labels | None, labels: Mapping[str, str]) -> bool:
    return selector is None or all(labels.get(k) == v for k, v in selector)


def applicable(policies: Iterable[AuthorizationPolicy], namespace: str,
               labels: Mapping[str, str],
               root_namespace: str = ROOT_NAMESPACE) -> list[AuthorizationPolicy]:
    """The policies that apply to a workload: its namespace's (selector matching or
    namespace-wide) and the root namespace's (mesh-wide)."""
    return [p for p in policies if p.namespace in (namespace, root_namespace)
            and _selects(p.selector, labels)]


def decide(policies: Iterable[AuthorizationPolicy],
           request: AuthzRequest) -> tuple[bool, str | None]:
    """(allowed, deciding policy's name) for policies that apply to the workload.

    A matching DENY policy denies; else if any ALLOW policy applies, the request is
    allowed only when one matches (its name is returned; a denial names no single
    policy and returns None); with no ALLOW policy the request is allowed.
    """
    policies = list(policies)
    for p in policies:
        if p.action == DENY and policy_matches(p, request):
            return False, p.name
    allows = [p for p in policies if p.action == ALLOW]
    if not allows:
        return True, None
    for p in allows:
        if policy_matches(p, request):
            return True, p.name
    return False, None


def peer_mode(policies: Iterable[PeerAuthentication], workload_labels: Mapping[str, str],
              namespace: str = "default", port: int | None = None,
              root_namespace: str = ROOT_NAMESPACE) -> str:
    """Effective mTLS mode of one workload (port): STRICT, PERMISSIVE or DISABLE.

    Precedence as in Istio: a workload policy (selector matches; the first one in
    input order wins when several do) and its portLevelMtls, then the namespace-wide
    policy, then the mesh-wide one (root namespace, no selector); UNSET inherits from
    the next level; the default is PERMISSIVE.
    """
    policies = list(policies)
    chain = [next((p for p in policies if p.namespace == namespace and p.selector is not None
                   and _selects(p.selector, workload_labels)), None),
             next((p for p in policies if p.namespace == namespace and p.selector is None),
                  None),
             next((p for p in policies if p.namespace == root_namespace
                   and p.selector is None), None)]
    for p in chain:
        if p is None:
            continue
        if port is not None:
            for pm_port, mode in p.port_modes:
                if pm_port == port and mode != UNSET:
                    return mode
        if p.mode != UNSET:
            return p.mode
    return PERMISSIVE


# ---------------------------------------------------------------- JSON transport
def to_json(res: PeerAuthentication | AuthorizationPolicy) -> dict[str, Any]:
    """Plain JSON (lists, dicts) with a `kind`; `from_json` restores the exact value."""
    return {"kind": type(res).__name__, **asdict(res)}


def _tuples(v: Any) -> Any:
    return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


def from_json(obj: Mapping[str, Any]) -> PeerAuthentication | AuthorizationPolicy:
    d = {k: v for k, v in obj.items() if k != "kind"}
    if d.get("selector") is not None:
        d["selector"] = _tuples(d["selector"])
    if obj.get("kind") == "PeerAuthentication":
        return PeerAuthentication(**{**d, "port_modes": _tuples(d.get("port_modes", []))})
    if obj.get("kind") != "AuthorizationPolicy":
        raise ValueError(f"kind {obj.get('kind')!r}: expected PeerAuthentication or "
                         "AuthorizationPolicy")
    rules = tuple(Rule(tuple(Source(**{k: _tuples(v) for k, v in s.items()})
                             for s in r["sources"]),
                       tuple(Operation(**{k: _tuples(v) for k, v in o.items()})
                             for o in r["operations"]),
                       tuple(Condition(c["header"], _tuples(c["values"]),
                                       _tuples(c["not_values"])) for c in r["conditions"]))
                  for r in d.pop("rules", []))
    return AuthorizationPolicy(**d, rules=rules)
