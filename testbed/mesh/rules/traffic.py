"""Istio networking rules from YAML, keeping file:line for every field.

`parse_rules(text, file)` turns a multi-document YAML text into frozen
`VirtualService` / `DestinationRule` values plus schema `Message`s (IST0106 and
MM0002). A resource with a schema error is reported and left out, never half-kept.
`parse_rule` hands the security.istio.io kinds (PeerAuthentication, AuthorizationPolicy)
to :mod:`testbed.mesh.rules.security`, so one rule file may hold both. Cross-resource
checks (unknown hosts, subsets, weights, unreachable matches) live in
:mod:`testbed.mesh.rules.galley`.
"""
from __future__ import annotations

import re
from typing import Any, Union

from testbed.mesh.model import (ERROR, Destination, DestinationRule, HTTPFault, HTTPMatch, HTTPRoute, Message,
                                OutlierDetection, Retries, RouteDestination, StringMatch, Subset,
                                TrafficPolicy, VirtualService)
from testbed.mesh.rules.security import SecurityResource, parse_security_resource
from testbed.mesh.rules.yamldoc import Reader, Y, check_header, document_identity, read_documents

API_GROUPS = ("networking.istio.io/v1", "networking.istio.io/v1beta1",
              "networking.istio.io/v1alpha3")
NOT_YET = {"RequestAuthentication"}
LB_SIMPLE = ("ROUND_ROBIN", "LEAST_REQUEST", "RANDOM")
TLS_MODES = ("ISTIO_MUTUAL", "DISABLE")
WHY_NOT = {      # the Istio kinds a minimesh testbed has no place for
    "Gateway": " (minimesh has no ingress/egress gateway: `clients:` hosts reach services through "
               "their own sidecar)",
    "ServiceEntry": " (a minimesh testbed has no outside network to reach)",
    "Sidecar": " (every minimesh sidecar sees every service)",
    "EnvoyFilter": " (Pilot builds the Envoy config itself)",
    "WorkloadEntry": " (workloads are the topology's mesh.services)"}


_RE2_ONLY = re.compile(r"\(\?(?:=|!|<=|<!|>|P=|\()|\\[1-9]")
__all__ = ["parse_rules", "parse_rule", "Rule"]

Rule = Union[VirtualService, DestinationRule, SecurityResource]     # what parse_rule returns


# ---------------------------------------------------------------- parsers
def _string_match(r: Reader, y: Y, path: str) -> StringMatch | None:
    f = r.fields(y, path, ("exact", "prefix", "regex"))
    if len(f) != 1:
        r.err(y, path, "give exactly one of exact, prefix, regex")
        return None
    (kind, val), = f.items()
    s = r.string(val, f"{path}.{kind}")
    if kind == "regex" and s:
        problem: re.Match[str] | re.error | None = _RE2_ONLY.search(s)
        try:
            re.compile(s)
        except re.error as e:
            problem = e
        if problem is not None:
            why = problem if isinstance(problem, re.error) else \
                f"{problem.group(0)!r} is not RE2 syntax (Envoy uses RE2: no lookaround, " \
                "backreferences or atomic groups)"
            r.messages.append(Message("IST0122", ERROR, f"Field {path}.regex regular expression "
                                      f"invalid: {s!r} ({why})", r.file, val.line, r.resource))
            return None
    return StringMatch(kind, s)


def _destination(r: Reader, y: Y, path: str) -> Destination:
    f = r.fields(y, path, ("host", "subset", "port"))
    port = None
    if "port" in f:
        pf = r.fields(f["port"], f"{path}.port", ("number",))
        port = r.integer(pf.get("number"), f"{path}.port.number", 1, 65535)
    if "host" not in f:
        r.err(y, f"{path}.host", "required field missing")
    return Destination(r.string(f.get("host"), f"{path}.host"),
                       r.string(f.get("subset"), f"{path}.subset"), port, y.line)


def _match(r: Reader, y: Y, path: str) -> HTTPMatch:
    f = r.fields(y, path, ("name", "uri", "headers", "sourceLabels", "method"),
                 ("authority", "queryParams", "ignoreUriCase", "port", "gateways",
                  "scheme", "withoutHeaders", "sourceNamespace", "statPrefix"))
    uri = _string_match(r, f["uri"], f"{path}.uri") if "uri" in f else None
    headers = []
    hy = f.get("headers")
    if hy is not None and not isinstance(hy.v, dict):
        r.err(hy, f"{path}.headers", "expected a mapping of header name -> match")
    elif hy is not None:
        for name, c in hy.v.items():
            m = _string_match(r, c, f"{path}.headers.{name}")
            if m:
                headers.append((name.lower(), m))
    if "method" in f:
        m = _string_match(r, f["method"], f"{path}.method")
        if m:
            headers.append((":method", m))
    return HTTPMatch(uri, tuple(headers), r.labels(f.get("sourceLabels"),
                                                   f"{path}.sourceLabels"), y.line)


def _percent(r: Reader, f: dict[str, Y], path: str) -> float:
    """``percentage: {value}``, or Istio's deprecated integer ``percent`` (same meaning,
    with a warning; ``percentage`` wins when both are given, as in Pilot)."""
    if "percent" in f:
        r.deprecated(f["percent"], f"{path}.percent", f"{path}.percentage.value")
        old = r.integer(f["percent"], f"{path}.percent", 0, 100)
        if "percentage" not in f and old is not None:
            return float(old)
    return r.percentage(f.get("percentage"), f"{path}.percentage")


def _fault(r: Reader, y: Y, path: str) -> HTTPFault:
    f = r.fields(y, path, ("delay", "abort"))
    out = HTTPFault()
    if "delay" in f:
        d = r.fields(f["delay"], f"{path}.delay", ("fixedDelay", "percentage", "percent"),
                     ("exponentialDelay",))
        if "fixedDelay" not in d:
            r.err(f["delay"], f"{path}.delay.fixedDelay", "required field missing")
        out = HTTPFault(r.duration(d.get("fixedDelay"), f"{path}.delay.fixedDelay"),
                        _percent(r, d, f"{path}.delay"))
    if "abort" in f:
        a = r.fields(f["abort"], f"{path}.abort", ("httpStatus", "percentage", "percent"),
                     ("grpcStatus", "http2Error"))
        if "httpStatus" not in a:
            r.err(f["abort"], f"{path}.abort.httpStatus", "required field missing")
        out = HTTPFault(out.delay_ms, out.delay_percent,
                        r.integer(a.get("httpStatus"), f"{path}.abort.httpStatus", 200, 599),
                        _percent(r, a, f"{path}.abort"))
    return out


def _http_route(r: Reader, y: Y, path: str) -> HTTPRoute:
    f = r.fields(y, path, ("name", "match", "route", "timeout", "retries", "fault", "mirror",
                           "mirrorPercentage", "mirror_percent", "mirrorPercent"),
                 ("redirect", "rewrite", "headers", "corsPolicy", "mirrors", "delegate",
                  "directResponse"))
    routes = []
    for p, c in r.items(f.get("route"), f"{path}.route"):
        rf = r.fields(c, p, ("destination", "weight"), ("headers",))
        if "destination" not in rf:
            r.err(c, f"{p}.destination", "required field missing")
            continue
        routes.append(RouteDestination(_destination(r, rf["destination"], f"{p}.destination"),
                                       r.integer(rf.get("weight"), f"{p}.weight", 0, 100),
                                       c.line))
    if not routes:
        r.err(y, f"{path}.route", "at least one route destination is required")
    retries = None
    if "retries" in f:
        rf = r.fields(f["retries"], f"{path}.retries", ("attempts", "perTryTimeout", "retryOn"),
                      ("retryRemoteLocalities",))
        retries = Retries(r.integer(rf.get("attempts"), f"{path}.retries.attempts", 0, 1000) or 0,
                          r.duration(rf.get("perTryTimeout"), f"{path}.retries.perTryTimeout"),
                          r.string(rf.get("retryOn"), f"{path}.retries.retryOn"))
    return HTTPRoute(
        name=r.string(f.get("name"), f"{path}.name"),
        match=tuple(_match(r, c, p) for p, c in r.items(f.get("match"), f"{path}.match")),
        route=tuple(routes), timeout_ms=r.duration(f.get("timeout"), f"{path}.timeout"),
        retries=retries, fault=_fault(r, f["fault"], f"{path}.fault") if "fault" in f else None,
        mirror=_destination(r, f["mirror"], f"{path}.mirror") if "mirror" in f else None,
        mirror_percent=_mirror_percent(r, f, path), line=y.line)


def _mirror_percent(r: Reader, f: dict[str, Y], path: str) -> float:
    """``mirrorPercentage``, or the deprecated integer ``mirrorPercent``/``mirror_percent``."""
    for key in ("mirrorPercent", "mirror_percent"):
        if key in f:
            r.deprecated(f[key], f"{path}.{key}", f"{path}.mirrorPercentage.value")
            old = r.integer(f[key], f"{path}.{key}", 0, 100)
            if "mirrorPercentage" not in f and old is not None:
                return float(old)
    return r.percentage(f.get("mirrorPercentage"), f"{path}.mirrorPercentage")


def _traffic_policy(r: Reader, y: Y | None, path: str) -> TrafficPolicy | None:
    if y is None:
        return None
    f = r.fields(y, path, ("loadBalancer", "connectionPool", "outlierDetection", "tls"),
                 ("portLevelSettings", "tunnel", "proxyProtocol"))
    kw: dict[str, Any] = {}
    if "tls" in f:
        kw["tls_mode"] = _tls_mode(r, f["tls"], f"{path}.tls")
    if "loadBalancer" in f:
        lb = r.fields(f["loadBalancer"], f"{path}.loadBalancer", ("simple", "consistentHash"),
                      ("localityLbSetting", "warmupDurationSecs"))
        if "simple" in lb:
            if lb["simple"].v not in LB_SIMPLE:
                r.err(lb["simple"], f"{path}.loadBalancer.simple",
                      f"{lb['simple'].v!r} is not one of {', '.join(LB_SIMPLE)}")
            else:
                kw["lb_simple"] = lb["simple"].v
        if "consistentHash" in lb:
            ch = r.fields(lb["consistentHash"], f"{path}.loadBalancer.consistentHash",
                          ("httpHeaderName",), ("httpCookie", "useSourceIp",
                                                "httpQueryParameterName", "ringHash", "maglev",
                                                "minimumRingSize"))
            kw["hash_header"] = r.string(ch.get("httpHeaderName"),
                                         f"{path}.loadBalancer.consistentHash.httpHeaderName")
    if "connectionPool" in f:
        p = f"{path}.connectionPool"
        cp = r.fields(f["connectionPool"], p, ("tcp", "http"))
        tcp = r.fields(cp["tcp"], f"{p}.tcp", ("maxConnections", "connectTimeout"),
                       ("tcpKeepalive", "maxConnectionDuration", "idleTimeout")) \
            if "tcp" in cp else {}
        http = r.fields(cp["http"], f"{p}.http", ("http1MaxPendingRequests", "http2MaxRequests",
                                                  "maxRetries"),
                        ("maxRequestsPerConnection", "idleTimeout", "h2UpgradePolicy",
                         "useClientProtocol", "maxConcurrentStreams")) if "http" in cp else {}
        kw.update(max_connections=r.integer(tcp.get("maxConnections"), f"{p}.tcp.maxConnections"),
                  connect_timeout_ms=r.duration(tcp.get("connectTimeout"),
                                                f"{p}.tcp.connectTimeout"),
                  http1_max_pending=r.integer(http.get("http1MaxPendingRequests"),
                                              f"{p}.http.http1MaxPendingRequests"),
                  http2_max_requests=r.integer(http.get("http2MaxRequests"),
                                               f"{p}.http.http2MaxRequests"),
                  max_retries=r.integer(http.get("maxRetries"), f"{p}.http.maxRetries"))
    if "outlierDetection" in f:
        kw["outlier"] = _outlier(r, f["outlierDetection"], f"{path}.outlierDetection")
    return TrafficPolicy(**kw)


def _outlier(r: Reader, y: Y, p: str) -> OutlierDetection:
    od = r.fields(y, p, (
        "consecutive5xxErrors", "consecutiveGatewayErrors", "interval", "baseEjectionTime",
        "maxEjectionPercent", "consecutiveErrors"), ("minHealthPercent",
                                                     "splitExternalLocalOriginErrors",
                                                     "consecutiveLocalOriginFailures"))
    gateway = r.integer(od.get("consecutiveGatewayErrors"), f"{p}.consecutiveGatewayErrors")
    if "consecutiveErrors" in od:   # Pilot: counts gateway errors (502/503/504) only
        r.deprecated(od["consecutiveErrors"], f"{p}.consecutiveErrors",
                     f"{p}.consecutiveGatewayErrors or consecutive5xxErrors")
        old = r.integer(od["consecutiveErrors"], f"{p}.consecutiveErrors")
        if gateway is None and "consecutive5xxErrors" not in od:
            gateway = old
    return OutlierDetection(
        r.integer(od.get("consecutive5xxErrors"), f"{p}.consecutive5xxErrors"),
        gateway,
        r.duration(od.get("interval"), f"{p}.interval"),
        r.duration(od.get("baseEjectionTime"), f"{p}.baseEjectionTime"),
        r.integer(od.get("maxEjectionPercent"), f"{p}.maxEjectionPercent", 0, 100))


def _tls_mode(r: Reader, y: Y, path: str) -> str | None:
    """``tls.mode``: ISTIO_MUTUAL (Citadel's certificates) or DISABLE; SIMPLE and MUTUAL
    (the application's own certificates, for egress) are not supported."""
    t = r.fields(y, path, ("mode",), ("clientCertificate", "privateKey", "caCertificates",
                                      "credentialName", "subjectAltNames", "sni",
                                      "insecureSkipVerify", "caCrl"))
    m = t.get("mode")
    if m is None:
        return None
    if m.v in ("SIMPLE", "MUTUAL"):
        r.messages.append(Message("MM0002", ERROR, f"{path}.mode: {m.v} (TLS with the application's "
                                  "own certificates) is not supported by minimesh; use ISTIO_MUTUAL or "
                                  "DISABLE", r.file, m.line, r.resource))
        return None
    if m.v not in TLS_MODES:
        r.err(m, f"{path}.mode", f"{m.v!r} is not one of {', '.join(TLS_MODES)}, SIMPLE, MUTUAL")
        return None
    return str(m.v)


def _virtual_service(r: Reader, spec: Y, name: str, ns: str, file: str,
                     line: int) -> VirtualService:
    f = r.fields(spec, "spec", ("hosts", "http", "gateways", "exportTo"), ("tcp", "tls"))
    for p, g in r.items(f.get("gateways"), "spec.gateways"):
        if g.v != "mesh":
            r.messages.append(Message("MM0002", ERROR, f"{p}: gateway {g.v!r} not supported by "
                                      "minimesh yet (only 'mesh')", file, g.line, r.resource))
    hosts = tuple(r.string(c, p) for p, c in r.items(f.get("hosts"), "spec.hosts"))
    if not hosts:
        r.err(spec, "spec.hosts", "at least one host is required")
    http = tuple(_http_route(r, c, p) for p, c in r.items(f.get("http"), "spec.http"))
    return VirtualService(name, ns, hosts, http, file, line,
                          hosts_line=f["hosts"].line if "hosts" in f else line)


def _destination_rule(r: Reader, spec: Y, name: str, ns: str, file: str,
                      line: int) -> DestinationRule:
    f = r.fields(spec, "spec", ("host", "subsets", "trafficPolicy", "exportTo"),
                 ("workloadSelector",))
    if "host" not in f:
        r.err(spec, "spec.host", "required field missing")
    subsets = []
    for p, c in r.items(f.get("subsets"), "spec.subsets"):
        sf = r.fields(c, p, ("name", "labels", "trafficPolicy"))
        if "name" not in sf:
            r.err(c, f"{p}.name", "required field missing")
        subsets.append(Subset(r.string(sf.get("name"), f"{p}.name"),
                              r.labels(sf.get("labels"), f"{p}.labels"),
                              _traffic_policy(r, sf.get("trafficPolicy"), f"{p}.trafficPolicy"),
                              c.line))
    return DestinationRule(name, ns, r.string(f.get("host"), "spec.host"), tuple(subsets),
                           _traffic_policy(r, f.get("trafficPolicy"), "spec.trafficPolicy"),
                           file, line)


def parse_rule(doc: Y, file: str) -> tuple[Rule | None, list[Message]]:
    """One YAML document -> (rule or None, messages). None whenever any Error was found."""
    kind, name = document_identity(doc)
    r = Reader(file, f"{kind} {name}")
    f = r.fields(doc, "<document>", ("apiVersion", "kind", "metadata", "spec"))
    api = f["apiVersion"].v if "apiVersion" in f else None
    if kind in ("PeerAuthentication", "AuthorizationPolicy"):    # security.istio.io (Citadel)
        return parse_security_resource(doc, file)
    if kind in NOT_YET:
        return None, [Message("MM0002", ERROR, f"{api}/{kind} is not supported by minimesh (no "
                              "JWT end-user authentication; PeerAuthentication and "
                              "AuthorizationPolicy are); nothing applied", file, doc.line,
                              r.resource)]
    if kind not in ("VirtualService", "DestinationRule"):
        why = WHY_NOT.get(kind, "")
        return None, [Message("MM0002", ERROR, f"unsupported kind {kind!r}{why}; minimesh understands "
                              "VirtualService, DestinationRule, PeerAuthentication and "
                              "AuthorizationPolicy", file, doc.line, r.resource)]
    ns = check_header(r, doc, f, api, API_GROUPS)
    if "spec" not in f:
        r.err(doc, "spec", "required field missing")
        return None, r.messages
    build = _virtual_service if kind == "VirtualService" else _destination_rule
    rule = build(r, f["spec"], name, ns, file, doc.line)
    return (None if any(m.level == ERROR for m in r.messages) else rule), r.messages


def parse_rules(text: str, file: str = "<string>") -> tuple[list, list[Message]]:
    """All rules of a multi-document YAML text, plus schema messages."""
    rules: list = []
    docs, messages = read_documents(text, file)
    if messages:
        return [], messages
    for d in docs:
        rule, msgs = parse_rule(d, file)
        messages += msgs
        if rule is not None:
            rules.append(rule)
    return rules, messages
