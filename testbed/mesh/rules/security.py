"""Istio `security.istio.io/v1beta1` PeerAuthentication and AuthorizationPolicy from YAML.

`parse_security(text, file)` -> (resources, messages); `parse_security_resource(doc, file)`
has the same shape as `traffic.parse_rule`, which dispatches to it on `kind`. A resource with
any Error is left out, never half-kept. Schema errors (unknown field, wrong type) carry
Istio's IST0106 like the networking rules; the security-specific ones carry:

  MM0101  bad mtls mode (allowed: UNSET, STRICT, PERMISSIVE, DISABLE)           Error
  MM0102  unknown AuthorizationPolicy action (allowed: ALLOW, DENY)            Error
  MM0103  malformed principal (want <trust-domain>/ns/<ns>/sa/<name>, one `*`
          at the start or end, no spiffe:// scheme)                           Error
  MM0104  malformed method/path/namespace/header value (`*` only at the start
          or end; methods upper-case; paths start with / or *)               Error
  MM0105  unsupported or malformed `when` key (allowed: request.headers[<name>])  Error
  MM0106  `when` condition without values or notValues                        Error
  MM0107  portLevelMtls needs a selector (Istio ignores it otherwise)          Error
  MM0108  selector.matchLabels missing or empty                               Error
  MM0002  Istio feature minimesh does not support (CUSTOM/AUDIT, requestPrincipals...)
"""
from __future__ import annotations

import re
from typing import Union

from testbed.mesh.rules.yamldoc import Reader, Y, check_header, document_identity, read_documents
from testbed.mesh.model import ERROR, Message
from testbed.mesh.rules.policy import (ALLOW, DENY, AuthorizationPolicy, Condition, Operation,
                                      PeerAuthentication, Rule, Source)
from proxy.tls.identity import MTLS_MODES, UNSET

API = "security.istio.io/v1beta1"
API_GROUPS = (API, "security.istio.io/v1")
KINDS = ("PeerAuthentication", "AuthorizationPolicy")
SecurityResource = Union[PeerAuthentication, AuthorizationPolicy]

_SEG = r"[A-Za-z0-9._-]+"
_PRINCIPAL = re.compile(rf"^{_SEG}/ns/{_SEG}/sa/{_SEG}$")
_HEADER_KEY = re.compile(r"^request\.headers\[([A-Za-z0-9!#$%&'*+.^_`|~-]+)\]$")
_METHOD = re.compile(r"^[A-Z]+$")


class _SecReader(Reader):
    def code(self, code: str, y: Y, text: str) -> None:
        self.messages.append(Message(code, ERROR, text, self.file, y.line, self.resource))

    def strings(self, y: Y | None, path: str) -> list[tuple[str, Y]]:
        out = []
        for p, c in self.items(y, path):
            s = self.string(c, p)
            if s:
                out.append((s, c))
        return out


def _wildcard_ok(s: str) -> bool:
    return s == "*" or ("*" not in s[1:-1] and s.count("*") <= 1)


def _principals(r: _SecReader, y: Y | None, path: str) -> tuple[str, ...]:
    out = []
    for s, c in r.strings(y, path):
        core = s.strip("*")
        why = None
        if s.startswith("spiffe://"):
            why = "drop the spiffe:// scheme (Istio principals are <trust-domain>/ns/<ns>/sa/<name>)"
        elif not _wildcard_ok(s):
            why = "`*` is allowed only once, at the start or the end"
        elif s != core and s != "*":
            why = None if re.fullmatch(r"[A-Za-z0-9._/-]+", core) else "bad characters"
        elif s != "*" and not _PRINCIPAL.match(s):
            why = "expected <trust-domain>/ns/<namespace>/sa/<service>"
        if why:
            r.code("MM0103", c, f"{path}: malformed principal {s!r}: {why}")
        else:
            out.append(s)
    return tuple(out)


def _values(r: _SecReader, y: Y | None, path: str, what: str) -> tuple[str, ...]:
    out = []
    for s, c in r.strings(y, path):
        why = None
        if not _wildcard_ok(s):
            why = "`*` is allowed only once, at the start or the end"
        elif what == "method" and s != "*" and not _METHOD.match(s):
            why = "HTTP methods are upper-case letters, e.g. GET"
        elif what == "path" and not s.startswith(("/", "*")):
            why = "paths start with / (or * for a suffix match)"
        if why:
            r.code("MM0104", c, f"{path}: malformed {what} {s!r}: {why}")
        else:
            out.append(s)
    return tuple(out)


def _ports(r: _SecReader, y: Y | None, path: str) -> tuple[int, ...]:
    out = []
    for p, c in r.items(y, path):  # Istio writes ports as strings
        v = c.v
        if isinstance(v, str) and v.isdigit():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 65535:
            r.err(c, p, f"expected a port number in 1..65535, got {c.v!r}")
        else:
            out.append(v)
    return tuple(out)


def _selector(r: _SecReader, y: Y | None, path: str) -> tuple[tuple[str, str], ...] | None:
    if y is None:
        return None
    f = r.fields(y, path, ("matchLabels",))
    ml = f.get("matchLabels")
    if ml is None or not isinstance(ml.v, dict) or not ml.v:
        r.code("MM0108", ml or y, f"{path}.matchLabels: give at least one label "
               "(omit the selector to apply namespace-wide)")
        return None
    return r.labels(ml, f"{path}.matchLabels")


def _mode(r: _SecReader, y: Y | None, path: str) -> str:
    if y is None:
        return UNSET
    f = r.fields(y, path, ("mode",))
    m = f.get("mode")
    if m is None:
        return UNSET
    if m.v not in MTLS_MODES:
        hint = " (YAML reads unquoted on/off/yes/no as booleans)" if isinstance(m.v, bool) else ""
        r.code("MM0101", m, f"{path}.mode: {m.v!r} is not one of {', '.join(MTLS_MODES)}{hint}")
        return UNSET
    return m.v


def _peer_authentication(r: _SecReader, spec: Y, name: str, ns: str, file: str,
                         line: int) -> PeerAuthentication:
    f = r.fields(spec, "spec", ("selector", "mtls", "portLevelMtls"))
    selector = _selector(r, f.get("selector"), "spec.selector")
    ports = []
    plm = f.get("portLevelMtls")
    if plm is not None:
        if "selector" not in f:
            r.code("MM0107", plm, "spec.portLevelMtls: needs spec.selector (Istio applies "
                   "port-level mTLS only to selected workloads)")
        if not isinstance(plm.v, dict):
            r.err(plm, "spec.portLevelMtls", "expected a mapping of port -> {mode}")
        else:
            for port, c in plm.v.items():
                if not port.isdigit() or not 1 <= int(port) <= 65535:
                    r.err(c, f"spec.portLevelMtls.{port}", "port must be a number in 1..65535")
                    continue
                ports.append((int(port), _mode(r, c, f"spec.portLevelMtls.{port}")))
    return PeerAuthentication(name, ns, selector, _mode(r, f.get("mtls"), "spec.mtls"),
                              tuple(ports), file, line)


def _source(r: _SecReader, y: Y, path: str) -> Source:
    f = r.fields(y, path, ("source",))
    if "source" not in f:
        r.err(y, f"{path}.source", "required field missing")
        return Source()
    p = f"{path}.source"
    s = r.fields(f["source"], p, ("principals", "notPrincipals", "namespaces", "notNamespaces"),
                 ("requestPrincipals", "notRequestPrincipals", "ipBlocks", "notIpBlocks",
                  "remoteIpBlocks", "notRemoteIpBlocks"))
    return Source(_principals(r, s.get("principals"), f"{p}.principals"),
                  _principals(r, s.get("notPrincipals"), f"{p}.notPrincipals"),
                  _values(r, s.get("namespaces"), f"{p}.namespaces", "namespace"),
                  _values(r, s.get("notNamespaces"), f"{p}.notNamespaces", "namespace"))


def _operation(r: _SecReader, y: Y, path: str) -> Operation:
    f = r.fields(y, path, ("operation",))
    if "operation" not in f:
        r.err(y, f"{path}.operation", "required field missing")
        return Operation()
    p = f"{path}.operation"
    o = r.fields(f["operation"], p, ("methods", "notMethods", "paths", "notPaths", "ports",
                                     "notPorts"), ("hosts", "notHosts"))
    return Operation(_values(r, o.get("methods"), f"{p}.methods", "method"),
                     _values(r, o.get("notMethods"), f"{p}.notMethods", "method"),
                     _values(r, o.get("paths"), f"{p}.paths", "path"),
                     _values(r, o.get("notPaths"), f"{p}.notPaths", "path"),
                     _ports(r, o.get("ports"), f"{p}.ports"),
                     _ports(r, o.get("notPorts"), f"{p}.notPorts"))


def _condition(r: _SecReader, y: Y, path: str) -> Condition | None:
    f = r.fields(y, path, ("key", "values", "notValues"))
    key = r.string(f.get("key"), f"{path}.key")
    if "key" not in f:
        r.err(y, f"{path}.key", "required field missing")
    m = _HEADER_KEY.match(key)
    if key and not m:
        r.code("MM0105", f["key"], f"{path}.key: {key!r} is not supported; minimesh "
               "understands request.headers[<name>]")
    values = _values(r, f.get("values"), f"{path}.values", "header value")
    not_values = _values(r, f.get("notValues"), f"{path}.notValues", "header value")
    given = [c for k in ("values", "notValues") if k in f and isinstance(f[k].v, list)
             for c in f[k].v]
    if not given:
        r.code("MM0106", y, f"{path}: give values or notValues")
    return Condition(m.group(1).lower(), values, not_values) if m else None


def _rule(r: _SecReader, y: Y, path: str) -> Rule:
    f = r.fields(y, path, ("from", "to", "when"))
    conds = [_condition(r, c, p) for p, c in r.items(f.get("when"), f"{path}.when")]
    return Rule(tuple(_source(r, c, p) for p, c in r.items(f.get("from"), f"{path}.from")),
                tuple(_operation(r, c, p) for p, c in r.items(f.get("to"), f"{path}.to")),
                tuple(c for c in conds if c is not None))


def _authorization_policy(r: _SecReader, spec: Y, name: str, ns: str, file: str,
                          line: int) -> AuthorizationPolicy:
    f = r.fields(spec, "spec", ("selector", "action", "rules"),
                 ("provider", "targetRef", "targetRefs"))
    action = ALLOW
    if "action" in f:
        a = f["action"]
        if a.v in ("CUSTOM", "AUDIT"):
            r.code("MM0002", a, f"spec.action: {a.v} is not supported by minimesh "
                   "(only ALLOW and DENY)")
        elif a.v not in (ALLOW, DENY):
            r.code("MM0102", a, f"spec.action: unknown action {a.v!r}; allowed: ALLOW, DENY")
        else:
            action = a.v
    rules = tuple(_rule(r, c, p) for p, c in r.items(f.get("rules"), "spec.rules"))
    return AuthorizationPolicy(name, ns, _selector(r, f.get("selector"), "spec.selector"),
                               action, rules, file, line)


def parse_security_resource(doc: Y, file: str) -> tuple[SecurityResource | None,
                                                        list[Message]]:
    """One YAML document -> (resource or None, messages). None whenever any Error was found."""
    kind, name = document_identity(doc)
    r = _SecReader(file, f"{kind} {name}")
    if kind not in KINDS:
        return None, [Message("MM0002", ERROR, f"unsupported kind {kind!r}; expected one of "
                              f"{', '.join(KINDS)}", file, doc.line, r.resource)]
    f = r.fields(doc, "<document>", ("apiVersion", "kind", "metadata", "spec"))
    api = f["apiVersion"].v if "apiVersion" in f else None
    ns = check_header(r, doc, f, api, API_GROUPS)
    spec = f.get("spec", Y({}, doc.line))  # Istio: `spec: {}` is allowed (allow-nothing)
    if spec.v is None:
        spec = Y({}, spec.line)
    build = _peer_authentication if kind == "PeerAuthentication" else _authorization_policy
    res = build(r, spec, name, ns, file, doc.line)
    msgs = sorted(r.messages, key=lambda m: m.line)
    return (None if any(m.level == ERROR for m in msgs) else res), msgs


def parse_security(text: str, file: str = "<string>") -> tuple[list[SecurityResource],
                                                               list[Message]]:
    """All security resources of a multi-document YAML text, plus messages."""
    docs, bad = read_documents(text, file)
    if bad:
        return [], bad
    out: list[SecurityResource] = []
    messages: list[Message] = []
    for d in docs:
        res, msgs = parse_security_resource(d, file)
        messages += msgs
        if res is not None:
            out.append(res)
    return out, messages
