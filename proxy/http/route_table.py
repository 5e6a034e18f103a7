"""Compiled route tables: virtual host selection (Envoy's domain order) and route matching.

Built once per route configuration; the connection manager holds a reference that an RDS
update replaces atomically (:meth:`proxy.server.ListenerManager.replace_route_config`).
Everything is precomputed as bytes so matching a request does no decoding.
"""
from __future__ import annotations

import re
from typing import Callable

from proxy.config.route import (DirectResponse, HeaderEdits, HeaderMatch, HeaderOp, MirrorPolicy, RetryPolicy,
                                RouteAction, RouteConfigSpec, RouteSpec, StringMatch, VirtualHostSpec)

__all__ = ["RouteTable", "Route", "VirtualHost", "compile_string_match", "header_predicate", "Edits",
           "apply_ops"]


class Edits:
    """HeaderEdits as bytes, ready to apply."""

    __slots__ = ("req_add", "req_remove", "resp_add", "resp_remove")

    def __init__(self, e: HeaderEdits):
        def enc(ops: tuple[HeaderOp, ...]) -> tuple[tuple[bytes, bytes, str], ...]:
            return tuple((o.key.encode(), o.value.encode(), o.action) for o in ops)
        self.req_add = enc(e.request_add)
        self.req_remove = frozenset(h.encode() for h in e.request_remove)
        self.resp_add = enc(e.response_add)
        self.resp_remove = frozenset(h.encode() for h in e.response_remove)


def apply_ops(headers: list, adds: tuple, removes: frozenset) -> list:
    """Apply one level of header edits (removals first, then additions) to ``headers``."""
    if removes:
        headers = [(k, v) for k, v in headers if k not in removes]
    for key, value, action in adds:
        if action == "APPEND_IF_EXISTS_OR_ADD":
            headers.append((key, value))
            continue
        present = any(k == key for k, _ in headers)
        if action == "ADD_IF_ABSENT":
            if not present:
                headers.append((key, value))
        elif present or action == "OVERWRITE_IF_EXISTS_OR_ADD":
            headers = [(k, v) for k, v in headers if k != key]
            headers.append((key, value))
    return headers


def compile_string_match(m: StringMatch) -> Callable[[bytes | None], bool]:
    """A predicate over a header value (None = header absent)."""
    v = m.value.encode()
    if m.ignore_case:
        v = v.lower()
    kind = m.kind
    if kind == "present":
        return lambda x: x is not None
    if kind == "regex":
        rx = re.compile(v, re.IGNORECASE if m.ignore_case else 0)
        return lambda x: x is not None and rx.fullmatch(x) is not None
    low = m.ignore_case
    if kind == "exact":
        return lambda x: x is not None and (x.lower() if low else x) == v
    if kind == "prefix":
        return lambda x: x is not None and (x.lower() if low else x).startswith(v)
    if kind == "suffix":
        return lambda x: x is not None and (x.lower() if low else x).endswith(v)
    return lambda x: x is not None and v in (x.lower() if low else x)


def header_predicate(h: HeaderMatch) -> Callable[[list], bool]:
    """A predicate over a request's header list (Envoy's HeaderMatcher semantics)."""
    return _header_predicate(h)


def _header_predicate(h: HeaderMatch) -> Callable[[list], bool]:
    name = h.name.encode()
    test = compile_string_match(h.match)
    invert, missing_empty = h.invert, h.missing_as_empty

    def check(headers: list) -> bool:
        values = [v for k, v in headers if k == name]
        value = b",".join(values) if values else (b"" if missing_empty else None)
        return test(value) != invert
    return check


class VirtualHost:
    __slots__ = ("name", "routes", "edits", "retry_policy", "per_filter")

    def __init__(self, spec: VirtualHostSpec, table_edits: HeaderEdits):
        self.name = spec.name
        self.edits = spec.edits
        self.retry_policy = spec.retry_policy
        self.per_filter = spec.per_filter
        self.routes = [Route(r, self, table_edits) for r in spec.routes]


class Route:
    """One compiled route. ``action`` is a RouteAction or a DirectResponse."""

    __slots__ = ("name", "prefix", "path", "regex", "lower", "headers", "action", "direct", "vhost",
                 "edit_levels", "retry_policy", "cluster", "weights", "total_weight", "timeout_s",
                 "host_rewrite", "prefix_rewrite", "prefix_len", "regex_rewrite", "per_filter", "mirrors")

    def __init__(self, spec: RouteSpec, vh: VirtualHost, table_edits: HeaderEdits):
        self.name = spec.name
        self.lower = not spec.case_sensitive
        enc = (lambda s: s.lower().encode()) if self.lower else (lambda s: s.encode())
        self.prefix = enc(spec.prefix) if spec.prefix is not None else None
        self.path = enc(spec.path) if spec.path is not None else None
        self.regex = re.compile(spec.regex.encode(), re.IGNORECASE if self.lower else 0) if spec.regex else None
        self.headers = [_header_predicate(h) for h in spec.headers]
        self.vhost = vh
        # typed_per_filter_config by canonical filter name; the route's entry wins over the
        # virtual host's; None when empty (filters test it on every request)
        self.per_filter = dict(vh.per_filter + spec.per_filter) or None
        self.mirrors: tuple[MirrorPolicy, ...] = ()
        a = spec.action
        self.action = a
        self.direct = a if isinstance(a, DirectResponse) else None
        # most specific first; later levels win on overwrite (Envoy's default order)
        self.edit_levels = tuple(Edits(e) for e in (spec.edits, vh.edits, table_edits) if e)
        self.cluster = None
        self.weights: list[tuple[int, str, Edits | None]] = []
        self.total_weight = 0
        self.retry_policy: RetryPolicy | None = None
        self.timeout_s = 0.0
        self.host_rewrite = None
        self.prefix_rewrite = None
        self.prefix_len = 0
        self.regex_rewrite = None
        if isinstance(a, RouteAction):
            self.cluster = a.cluster
            self.mirrors = a.mirrors
            acc = 0
            for w in a.weighted_clusters:
                acc += w.weight
                self.weights.append((acc, w.name, Edits(w.edits) if w.edits else None))
            self.total_weight = acc
            self.retry_policy = a.retry_policy or vh.retry_policy
            self.timeout_s = a.timeout_s
            self.host_rewrite = a.host_rewrite.encode() if a.host_rewrite else None
            if a.prefix_rewrite is not None:
                self.prefix_rewrite = a.prefix_rewrite.encode()
                self.prefix_len = len(self.prefix) if self.prefix is not None else 0
            if a.regex_rewrite:
                self.regex_rewrite = (re.compile(a.regex_rewrite[0].encode()), a.regex_rewrite[1].encode())

    def matches(self, path: bytes, headers: list) -> bool:
        if self.lower:
            path = path.lower()
        if self.prefix is not None:
            if not path.startswith(self.prefix):
                return False
        elif self.path is not None:
            if path != self.path:
                return False
        elif self.regex is not None and self.regex.fullmatch(path) is None:
            return False
        for h in self.headers:
            if not h(headers):
                return False
        return True

    def rewrite_path(self, target: bytes) -> bytes:
        if self.prefix_rewrite is not None:
            return self.prefix_rewrite + target[self.prefix_len:]
        if self.regex_rewrite is not None:
            q = target.find(b"?")
            path, query = (target, b"") if q < 0 else (target[:q], target[q:])
            rx, sub = self.regex_rewrite
            return rx.sub(sub, path) + query
        return target


class RouteTable:
    def __init__(self, spec: RouteConfigSpec):
        self.spec = spec
        self.name = spec.name
        self._exact: dict[bytes, VirtualHost] = {}
        self._suffix: list[tuple[bytes, VirtualHost]] = []
        self._prefix: list[tuple[bytes, VirtualHost]] = []
        self._default: VirtualHost | None = None
        self._cache: dict[bytes, VirtualHost | None] = {}
        for vs in spec.virtual_hosts:
            vh = VirtualHost(vs, spec.edits)
            for d in vs.domains:
                d = d.lower()
                if d == "*":
                    self._default = vh
                elif d.startswith("*"):
                    self._suffix.append((d[1:].encode(), vh))
                elif d.endswith("*"):
                    self._prefix.append((d[:-1].encode(), vh))
                else:
                    self._exact[d.encode()] = vh
        self._suffix.sort(key=lambda t: -len(t[0]))
        self._prefix.sort(key=lambda t: -len(t[0]))

    def virtual_host(self, host: bytes) -> VirtualHost | None:
        try:
            return self._cache[host]
        except KeyError:
            pass
        h = host.lower()
        vh = self._exact.get(h)
        if vh is None:
            for suffix, v in self._suffix:
                if h.endswith(suffix) and len(h) > len(suffix):
                    vh = v
                    break
        if vh is None:
            for prefix, v in self._prefix:
                if h.startswith(prefix) and len(h) > len(prefix):
                    vh = v
                    break
        if vh is None:
            vh = self._default
        if len(self._cache) < 4096:
            self._cache[host] = vh
        return vh

    def route(self, host: bytes, target: bytes, headers: list) -> Route | None:
        vh = self.virtual_host(host)
        if vh is None:
            return None
        q = target.find(b"?")
        path = target if q < 0 else target[:q]
        for r in vh.routes:
            if r.matches(path, headers):
                return r
        return None
