"""``envoy.filters.http.rbac``: Envoy's RBAC HTTP filter, as Istio's control plane (and
minimesh's Pilot) configures it for AuthorizationPolicy.

Config: ``{rules: {action: ALLOW|DENY, policies: {name: {permissions: [...], principals: [...]}}}}``.
A policy matches when any permission and any principal match. ALLOW: a request passes iff
some policy matches; DENY: it is refused iff some policy matches. Refusal: 403
``RBAC: access denied``, response flag ``RBAC`` (minimesh's access-log flag; Envoy itself
reports it in %RESPONSE_CODE_DETAILS% as ``rbac_access_denied_matched_policy[...]``), and the
counters ``http.<stat_prefix>.rbac.allowed`` / ``.denied``.

Matchers (sans-IO, :func:`compile_permission` / :func:`compile_principal` turn config into
predicates over :class:`Request`): ``any``, ``and_rules``/``or_rules``/``not_rule``,
``and_ids``/``or_ids``/``not_id``, ``header`` (``:method``, ``:path``, ``:authority`` and
request headers; ``string_match``, ``exact_match``, ``prefix_match``, ``suffix_match``,
``present_match``, ``invert_match``), ``url_path``, ``destination_port``, ``authenticated``
(``principal_name`` against the peer's SPIFFE URI SAN; never matches plaintext).
``shadow_rules`` are accepted and ignored.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import proxy.filters.factory as registry
from proxy.config.reader import ConfigError, Obj, typed
from proxy.filters.base import CONTINUE, STOP_ITERATION, HttpFilter

__all__ = ["Request", "RbacConfig", "compile_permission", "compile_principal", "compile_filter", "evaluate",
           "RBAC"]

RBAC = "envoy.filters.http.rbac"
TYPE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
TYPES = (TYPE, "type.googleapis.com/envoy.config.filter.http.rbac.v2.RBAC")
DENIED_BODY = b"RBAC: access denied"


@dataclass(frozen=True)
class Request:
    method: str
    path: str                          # with query string
    headers: tuple[tuple[str, str], ...]   # lower-case names
    principal_uri: str | None          # the peer's SPIFFE ID (URI SAN), None for plaintext
    port: int = 0

    def header(self, name: str) -> str | None:
        if name == ":method":
            return self.method
        if name == ":path":
            return self.path
        vals = [v for k, v in self.headers if k == name]
        if not vals and name == ":authority":
            vals = [v for k, v in self.headers if k == "host"]
        return ",".join(vals) if vals else None


Pred = Callable[[Request], bool]


def _string_matcher(o: Obj) -> Callable[[str], bool]:
    ic = o.take("ignore_case", False, bool)
    kind = o.one_of(("exact", "prefix", "suffix", "contains", "safe_regex"))
    if kind == "safe_regex":
        r = o.obj("safe_regex")
        assert r is not None
        r.ignore("google_re2")
        pattern = r.take("regex", kind=str)
        r.done()
        try:
            rx = re.compile(pattern, re.IGNORECASE if ic else 0)
        except re.error as e:
            raise ConfigError(o.sub("safe_regex.regex"), f"bad regex {pattern!r}: {e}") from None
        o.done()
        return lambda s: rx.fullmatch(s) is not None
    want = o.take(kind, kind=str)
    o.done()
    if ic:
        want = want.lower()
    ops: dict[str, Callable[[str, str], bool]] = {
        "exact": str.__eq__, "prefix": str.startswith, "suffix": str.endswith, "contains": lambda s, w: w in s}
    op = ops[kind]
    return (lambda s: op(s.lower(), want)) if ic else (lambda s: op(s, want))


def _header(o: Obj) -> Pred:
    name = o.take("name", kind=str).lower()
    invert = o.take("invert_match", False, bool)
    kind = o.one_of(("string_match", "exact_match", "prefix_match", "suffix_match", "present_match"))
    if kind == "string_match":
        m = _string_matcher(o.obj("string_match", required=True))
        test: Callable[[str | None], bool] = lambda v: v is not None and m(v)   # noqa: E731  (the compiled predicate)
    elif kind == "present_match":
        want = o.take("present_match", kind=bool)
        test = lambda v: (v is not None) == want   # noqa: E731  (the compiled predicate)
    else:
        val = o.take(kind, kind=str)
        ops: dict[str, Callable[[str, str], bool]] = {
            "exact_match": str.__eq__, "prefix_match": str.startswith, "suffix_match": str.endswith}
        op = ops[kind]
        test = lambda v: v is not None and op(v, val)   # noqa: E731  (the compiled predicate)
    o.done()
    return (lambda r: not test(r.header(name))) if invert else (lambda r: test(r.header(name)))


def _all(ps: list[Pred]) -> Pred:
    return lambda r: all(p(r) for p in ps)


def _any(ps: list[Pred]) -> Pred:
    return lambda r: any(p(r) for p in ps)


def _compile(o: Obj, kind: str) -> Pred:
    """One Permission (kind 'rules') or Principal (kind 'ids')."""
    many, neg = ("rules", "not_rule") if kind == "rules" else ("ids", "not_id")
    keys: tuple[str, ...] = ("any", f"and_{many}", f"or_{many}", neg, "header")
    keys += ("url_path", "destination_port") if kind == "rules" else ("authenticated",)
    which = o.one_of(keys)
    if which == "any":
        o.take("any", kind=bool, choices=(True,))
        p: Pred = lambda r: True   # noqa: E731  (the compiled predicate)
    elif which in (f"and_{many}", f"or_{many}"):
        s = o.obj(which, required=True)
        subs = [_compile(x, kind) for x in s.objs(many)]
        s.done()
        p = _all(subs) if which.startswith("and") else _any(subs)
    elif which == neg:
        inner = _compile(o.obj(neg, required=True), kind)
        p = lambda r: not inner(r)   # noqa: E731  (the compiled predicate)
    elif which == "header":
        p = _header(o.obj("header", required=True))
    elif which == "url_path":
        u = o.obj("url_path", required=True)
        m = _string_matcher(u.obj("path", required=True))
        u.done()
        p = lambda r: m(r.path.split("?", 1)[0])   # noqa: E731  (the compiled predicate)
    elif which == "destination_port":
        port = o.take("destination_port", kind=int)
        p = lambda r: r.port == port   # noqa: E731  (the compiled predicate)
    else:
        a = o.obj("authenticated", required=True)
        pn = a.obj("principal_name")
        m2 = _string_matcher(pn) if pn is not None else (lambda s: True)
        a.done()
        p = lambda r: r.principal_uri is not None and m2(r.principal_uri)   # noqa: E731  (the compiled predicate)
    o.done()
    return p


def compile_permission(raw: Any, path: str = "permission") -> Pred:
    return _compile(Obj(raw, path), "rules")


def compile_principal(raw: Any, path: str = "principal") -> Pred:
    return _compile(Obj(raw, path), "ids")


@dataclass(frozen=True)
class RbacConfig:
    action: str                                   # ALLOW | DENY
    policies: tuple[tuple[str, Pred, Pred], ...]  # (name, any-permission, any-principal)
    raw: Any = None


def evaluate(cfg: RbacConfig, req: Request) -> tuple[bool, str | None]:
    """(allowed, name of the matched policy or None)."""
    for name, perm, princ in cfg.policies:
        if perm(req) and princ(req):
            return cfg.action == "ALLOW", name
    return cfg.action != "ALLOW", None


def _parse(o: Obj) -> RbacConfig:
    o.ignore("shadow_rules", "shadow_rules_stat_prefix", "rules_stat_prefix", "track_per_rule_stats")
    rules = o.obj("rules")
    if rules is None:       # no rules: Envoy's filter is a no-op
        o.done()
        return RbacConfig("DENY", ())
    action = rules.take("action", "ALLOW", str, ("ALLOW", "DENY"))
    pols = rules.obj("policies")
    out = []
    if pols is not None:
        for name in sorted(pols.data):
            po = Obj(pols.take(name), pols.sub(name))
            perms = [_compile(x, "rules") for x in po.objs("permissions")]
            princs = [_compile(x, "ids") for x in po.objs("principals")]
            po.ignore("condition")
            if po.has("condition"):
                raise ConfigError(po.sub("condition"), "CEL conditions are not supported")
            po.done()
            out.append((name, _any(perms), _any(princs)))
        pols.done()
    rules.done()
    o.done()
    return RbacConfig(action, tuple(out), o.data)


def compile_filter(raw: dict, path: str = "http_filters[0]") -> RbacConfig:
    """A whole ``{name, typed_config}`` entry (as security_envoy.rbac_filters emits it)."""
    o = Obj(raw, path)
    name = o.take("name", kind=str)
    if name not in (RBAC, "envoy.rbac"):
        raise ConfigError(o.sub("name"), f"expected {RBAC}, got {name!r}")
    c = typed(o, (), TYPES)
    cfg = _parse(c)
    o.done()
    return cfg


class RbacFilter(HttpFilter):
    __slots__ = ("config", "sec")

    def __init__(self, config: RbacConfig, sec) -> None:
        self.config = config
        self.sec = sec

    def decode_headers(self, stream, end_stream: bool) -> int:
        conn = stream.conn
        peer = self.sec.peer_of(conn)
        sock = conn.transport.get_extra_info("sockname") if conn.transport is not None else None
        method, path = stream.method, stream.path
        req = Request(method.decode("latin-1") if isinstance(method, bytes) else method,
                      path.decode("latin-1") if isinstance(path, bytes) else path,
                      tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in stream.headers),
                      peer.spiffe_id if peer is not None and peer.tls else None,
                      sock[1] if sock else 0)
        allowed, _ = evaluate(self.config, req)
        c = self.sec.rbac.setdefault(stream.cfg.spec.stat_prefix, Counter())
        if allowed:
            c["allowed"] += 1
            return CONTINUE
        c["denied"] += 1
        stream.send_local_reply(403, DENIED_BODY, "RBAC")
        return STOP_ITERATION


def _factory(config: RbacConfig, ctx):
    # late: proxy.tls.sds loads cryptography, which a sidecar without an RBAC filter (this
    # module is imported with every built-in filter) need not load
    from proxy.tls.sds import security_of
    sec = security_of(ctx)
    if not config.policies and config.action == "DENY":
        return lambda: HttpFilter()
    return lambda: RbacFilter(config, sec)


registry.register(registry.FilterInfo(
    names=(RBAC, "envoy.rbac"), type_urls=TYPES,
    parse=_parse, factory=_factory))
