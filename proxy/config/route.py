"""Route configuration specs (``envoy.config.route.v3``), parsed strictly into frozen data."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import proxy.filters.factory as registry
from proxy.config.reader import ConfigError, Obj, percent

__all__ = ["StringMatch", "HeaderMatch", "HeaderOp", "HeaderEdits", "RetryPolicy", "WeightedCluster",
           "RouteAction", "DirectResponse", "RouteSpec", "VirtualHostSpec", "RouteConfigSpec",
           "parse_route_config", "parse_retry_policy", "parse_string_match", "parse_header_match",
           "MirrorPolicy"]

RETRY_ON = ("5xx", "gateway-error", "connect-failure", "reset", "retriable-4xx",
            "retriable-status-codes", "refused-stream")
APPEND_ACTIONS = ("APPEND_IF_EXISTS_OR_ADD", "ADD_IF_ABSENT", "OVERWRITE_IF_EXISTS_OR_ADD",
                  "OVERWRITE_IF_EXISTS")


@dataclass(frozen=True)
class StringMatch:
    kind: str              # exact | prefix | suffix | contains | regex | present
    value: str = ""
    ignore_case: bool = False


@dataclass(frozen=True)
class HeaderMatch:
    name: str              # lower case
    match: StringMatch
    invert: bool = False
    missing_as_empty: bool = False


@dataclass(frozen=True)
class HeaderOp:
    key: str               # lower case
    value: str
    action: str            # one of APPEND_ACTIONS


@dataclass(frozen=True)
class HeaderEdits:
    request_add: tuple[HeaderOp, ...] = ()
    request_remove: tuple[str, ...] = ()
    response_add: tuple[HeaderOp, ...] = ()
    response_remove: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.request_add or self.request_remove or self.response_add or self.response_remove)


@dataclass(frozen=True)
class RetryPolicy:
    retry_on: frozenset[str]
    num_retries: int = 1
    per_try_timeout_s: float | None = None
    base_interval_s: float = 0.025
    max_interval_s: float = 0.25
    retriable_status_codes: frozenset[int] = frozenset()


@dataclass(frozen=True)
class MirrorPolicy:
    """request_mirror_policies[]: a fire-and-forget copy of the request to ``cluster``."""
    cluster: str
    percent: float = 100.0
    shadow_host_suffix: bool = True


@dataclass(frozen=True)
class WeightedCluster:
    name: str
    weight: int
    edits: HeaderEdits = HeaderEdits()


@dataclass(frozen=True)
class RouteAction:
    cluster: str | None = None
    weighted_clusters: tuple[WeightedCluster, ...] = ()
    host_rewrite: str | None = None
    auto_host_rewrite: bool = False
    prefix_rewrite: str | None = None
    regex_rewrite: tuple[str, str] | None = None
    timeout_s: float = 15.0            # 0 disables
    idle_timeout_s: float | None = None
    retry_policy: RetryPolicy | None = None
    hash_headers: tuple[str, ...] = ()
    hash_source_ip: bool = False
    mirrors: tuple[MirrorPolicy, ...] = ()


@dataclass(frozen=True)
class DirectResponse:
    status: int
    body: bytes = b""


@dataclass(frozen=True)
class RouteSpec:
    name: str
    prefix: str | None = None
    path: str | None = None
    regex: str | None = None
    case_sensitive: bool = True
    headers: tuple[HeaderMatch, ...] = ()
    action: RouteAction | DirectResponse | None = None
    edits: HeaderEdits = HeaderEdits()
    per_filter: tuple[tuple[str, Any], ...] = ()     # typed_per_filter_config, parsed


@dataclass(frozen=True)
class VirtualHostSpec:
    name: str
    domains: tuple[str, ...]
    routes: tuple[RouteSpec, ...]
    edits: HeaderEdits = HeaderEdits()
    retry_policy: RetryPolicy | None = None
    per_filter: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class RouteConfigSpec:
    name: str
    virtual_hosts: tuple[VirtualHostSpec, ...]
    edits: HeaderEdits = HeaderEdits()
    raw: dict = field(default_factory=dict, compare=False, repr=False)


def _regex(o: Obj, key: str) -> str:
    r = o.obj(key, required=True)
    assert r is not None
    pattern = r.take("regex", kind=str)
    r.ignore("google_re2")
    r.done()
    try:
        re.compile(pattern)
    except re.error as e:
        raise ConfigError(r.sub("regex"), f"invalid regex {pattern!r}: {e}") from None
    return pattern


def parse_string_match(o: Obj) -> StringMatch:
    kind = o.one_of(("exact", "prefix", "suffix", "contains", "safe_regex"))
    assert kind is not None
    ignore_case = o.take("ignore_case", False, bool)
    if kind == "safe_regex":
        m = StringMatch("regex", _regex(o, "safe_regex"), ignore_case)
    else:
        m = StringMatch(kind, o.take(kind, kind=str), ignore_case)
    o.done()
    return m


_LEGACY_HEADER = {"exact_match": "exact", "prefix_match": "prefix", "suffix_match": "suffix",
                  "contains_match": "contains"}


def parse_header_match(o: Obj) -> HeaderMatch:
    """One HeaderMatcher (route match ``headers``, the fault filter's ``headers``)."""
    return _header_match(o)


def _per_filter(o: Obj) -> tuple[tuple[str, Any], ...]:
    raw = o.take("typed_per_filter_config", {}, dict)
    return tuple(registry.per_route_config(name, cfg, f"{o.sub('typed_per_filter_config')}.{name}")
                 for name, cfg in raw.items())


def _mirrors(o: Obj) -> tuple[MirrorPolicy, ...]:
    out = []
    for m in o.objs("request_mirror_policies"):
        cluster = m.take("cluster", kind=str)
        pct = 100.0
        rf = m.obj("runtime_fraction")
        if rf is not None:
            if rf.has("default_value"):
                pct = percent(rf.take("default_value"), rf.sub("default_value"))
            rf.ignore("runtime_key")      # no runtime layer: the default value applies
            rf.done()
        suffix = not m.take("disable_shadow_host_suffix_append", False, bool)
        m.take("trace_sampled", True, bool, (True,))
        m.done()
        out.append(MirrorPolicy(cluster, pct, suffix))
    return tuple(out)


def _header_match(o: Obj) -> HeaderMatch:
    name = o.take("name", kind=str).lower()
    invert = o.take("invert_match", False, bool)
    missing = o.take("treat_missing_header_as_empty", False, bool)
    kind = o.one_of(("string_match", "present_match", "safe_regex_match", *_LEGACY_HEADER), required=False)
    if kind is None:
        m = StringMatch("present")
    elif kind == "string_match":
        sub = o.obj("string_match")
        assert sub is not None
        m = parse_string_match(sub)
    elif kind == "present_match":
        present = o.take("present_match", kind=bool)
        m, invert = StringMatch("present"), invert != (not present)
    elif kind == "safe_regex_match":
        m = StringMatch("regex", _regex(o, "safe_regex_match"))
    else:
        m = StringMatch(_LEGACY_HEADER[kind], o.take(kind, kind=str))
    o.done()
    return HeaderMatch(name, m, invert, missing)


def _header_ops(o: Obj, key: str) -> tuple[HeaderOp, ...]:
    ops = []
    for item in o.objs(key):
        h = item.obj("header", required=True)
        assert h is not None
        k = h.take("key", kind=str).lower()
        v = h.take("value", "", str)
        h.done()
        if "%" in v.replace("%%", ""):
            raise ConfigError(h.sub("value"), "header value formatters (%...%) are not supported")
        if item.has("append") and item.has("append_action"):
            raise ConfigError(item.path, "give append or append_action, not both")
        if item.has("append"):
            action = "APPEND_IF_EXISTS_OR_ADD" if item.take("append", kind=bool) else "OVERWRITE_IF_EXISTS_OR_ADD"
        else:
            action = item.take("append_action", "APPEND_IF_EXISTS_OR_ADD", str, APPEND_ACTIONS)
        item.ignore("keep_empty_value")
        item.done()
        ops.append(HeaderOp(k, v.replace("%%", "%"), action))
    return tuple(ops)


def parse_edits(o: Obj) -> HeaderEdits:
    return HeaderEdits(
        request_add=_header_ops(o, "request_headers_to_add"),
        request_remove=tuple(h.lower() for h in o.strings("request_headers_to_remove")),
        response_add=_header_ops(o, "response_headers_to_add"),
        response_remove=tuple(h.lower() for h in o.strings("response_headers_to_remove")))


def parse_retry_policy(o: Obj) -> RetryPolicy:
    conditions = frozenset(c.strip() for c in o.take("retry_on", "", str).split(",") if c.strip())
    for c in conditions:
        if c not in RETRY_ON:
            raise ConfigError(o.sub("retry_on"), f"unsupported retry condition {c!r}; allowed: {', '.join(RETRY_ON)}")
    num = o.take("num_retries", 1, int)
    per_try = o.duration("per_try_timeout", None)
    base, maxi = 0.025, None
    back = o.obj("retry_back_off")
    if back is not None:
        base = back.duration("base_interval")
        maxi = back.duration("max_interval", None)
        back.done()
        if base <= 0:
            raise ConfigError(back.sub("base_interval"), "must be greater than 0")
        if maxi is not None and maxi < base:
            raise ConfigError(back.sub("max_interval"), "must be at least base_interval")
    codes = frozenset(o.take("retriable_status_codes", [], list))
    o.done()
    return RetryPolicy(conditions, num, per_try, base, maxi if maxi is not None else 10 * base, codes)


def _route_action(o: Obj) -> RouteAction:
    which = o.one_of(("cluster", "weighted_clusters"))
    cluster, weighted = None, []
    if which == "cluster":
        cluster = o.take("cluster", kind=str)
    else:
        wc = o.obj("weighted_clusters")
        assert wc is not None
        for c in wc.objs("clusters"):
            weight = c.take("weight", 0, int)
            wcl = WeightedCluster(c.take("name", kind=str), weight, parse_edits(c))
            c.done()
            weighted.append(wcl)
        total = wc.take("total_weight", None, int)
        wc.ignore("runtime_key_prefix")
        wc.done()
        if not weighted:
            raise ConfigError(wc.sub("clusters"), "at least one cluster is required")
        s = sum(w.weight for w in weighted)
        if s <= 0 or (total is not None and total != s):
            raise ConfigError(wc.path, f"cluster weights sum to {s}, total_weight is {total}")
    host = o.take("host_rewrite_literal", None, str, aliases=("host_rewrite",))
    auto = o.take("auto_host_rewrite", False, bool)
    prefix_rw = o.take("prefix_rewrite", None, str)
    rx = None
    rr = o.obj("regex_rewrite")
    if rr is not None:
        rx = (_regex(rr, "pattern"), rr.take("substitution", kind=str))
        rr.done()
    if prefix_rw is not None and rx is not None:
        raise ConfigError(o.path, "only one of prefix_rewrite, regex_rewrite may be given")
    timeout = o.duration("timeout", 15.0)
    idle = None
    o.take("idle_timeout", "0s", str, ("0s",))     # per-route idle timeouts are not implemented
    rp = o.obj("retry_policy")
    hash_headers, source_ip = [], False
    for h in o.objs("hash_policy"):
        kind = h.one_of(("header", "connection_properties"))
        if kind == "header":
            hh = h.obj("header")
            assert hh is not None
            hash_headers.append(hh.take("header_name", kind=str).lower())
            hh.done()
        else:
            cp = h.obj("connection_properties")
            assert cp is not None
            source_ip = cp.take("source_ip", False, bool)
            cp.done()
        h.ignore("terminal")
        h.done()
    o.ignore("priority")
    o.take("cluster_not_found_response_code", "SERVICE_UNAVAILABLE", str, ("SERVICE_UNAVAILABLE",))
    action = RouteAction(cluster, tuple(weighted), host, auto, prefix_rw, rx, timeout, idle,
                         parse_retry_policy(rp) if rp else None, tuple(hash_headers), source_ip, _mirrors(o))
    o.done()
    return action


def _route(o: Obj, index: int) -> RouteSpec:
    name = o.take("name", f"route{index}", str)
    m = o.obj("match", required=True)
    assert m is not None
    kind = m.one_of(("prefix", "path", "safe_regex"))
    prefix = m.take("prefix", None, str)
    path = m.take("path", None, str)
    regex = _regex(m, "safe_regex") if kind == "safe_regex" else None
    cs = m.take("case_sensitive", True, bool)
    headers = tuple(_header_match(h) for h in m.objs("headers"))
    m.done()
    which = o.one_of(("route", "direct_response"))
    action: RouteAction | DirectResponse
    if which == "route":
        r = o.obj("route")
        assert r is not None
        action = _route_action(r)
    else:
        d = o.obj("direct_response")
        assert d is not None
        status = d.take("status", kind=int)
        if not 200 <= status <= 599:
            raise ConfigError(d.sub("status"), f"status must be 200..599, got {status}")
        body = b""
        b = d.obj("body")
        if b is not None:
            body = b.take("inline_string", kind=str).encode()
            b.done()
        d.done()
        action = DirectResponse(status, body)
    edits = parse_edits(o)
    per_filter = _per_filter(o)
    o.ignore("metadata", "decorator")
    o.done()
    return RouteSpec(name, prefix, path, regex, cs, headers, action, edits, per_filter)


def parse_route_config(o: Obj) -> RouteConfigSpec:
    raw = o.data
    name = o.take("name", "", str)
    vhosts: list[VirtualHostSpec] = []
    seen: dict[str, str] = {}           # domain -> the virtual host that has it
    for v in o.objs("virtual_hosts"):
        vname = v.take("name", kind=str)
        domains = v.strings("domains")
        if not domains:
            raise ConfigError(v.sub("domains"), "at least one domain is required")
        for d in domains:
            key = d.lower()
            if key in seen:
                raise ConfigError(v.sub("domains"), f"domain {d!r} is also in virtual host {seen[key]!r}; "
                                  "only unique values for domains are permitted")
            seen[key] = vname
        routes = tuple(_route(r, i) for i, r in enumerate(v.objs("routes")))
        vrp = v.obj("retry_policy")
        v.take("require_tls", "NONE", str, ("NONE",))
        edits = parse_edits(v)
        per_filter = _per_filter(v)
        v.ignore("metadata")
        v.done()
        vhosts.append(VirtualHostSpec(vname, domains, routes, edits, parse_retry_policy(vrp) if vrp else None,
                                      per_filter))
    edits = parse_edits(o)
    o.ignore("validate_clusters")
    o.done()
    return RouteConfigSpec(name, tuple(vhosts), edits, raw)
