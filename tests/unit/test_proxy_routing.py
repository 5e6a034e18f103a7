"""Route tables: Envoy's virtual-host domain order, route matchers, rewrites, header edits;
and the HTTP filter chain on a fake transport (no sockets)."""


from proxy.config.reader import Obj
from proxy.config.route import parse_route_config
from proxy.http.route_table import RouteTable, apply_ops


def table(vhosts):
    return RouteTable(parse_route_config(Obj({"name": "r", "virtual_hosts": vhosts}, "rc")))


def vh(name, domains, routes=None):
    return {"name": name, "domains": domains,
            "routes": routes or [{"match": {"prefix": "/"}, "route": {"cluster": name}}]}


def test_domain_matching_order():
    t = table([vh("star", ["*"]), vh("exact", ["www.foo.com"]), vh("suffix", ["*.foo.com"]),
               vh("longsuffix", ["*-bar.foo.com"]), vh("prefix", ["foo.*"])])
    pick = lambda h: t.virtual_host(h).name  # noqa: E731  (a test shorthand)
    assert pick(b"www.foo.com") == "exact"
    assert pick(b"WWW.FOO.COM") == "exact"
    assert pick(b"baz-bar.foo.com") == "longsuffix"
    assert pick(b"a.foo.com") == "suffix"
    assert pick(b"foo.org") == "prefix"
    assert pick(b"google.com") == "star"
    assert table([vh("only", ["a.com"])]).virtual_host(b"b.com") is None


def test_route_matchers():
    t = table([vh("v", ["*"], [
        {"match": {"path": "/exact"}, "route": {"cluster": "path"}},
        {"match": {"safe_regex": {"regex": "/v[0-9]+/items"}}, "route": {"cluster": "regex"}},
        {"match": {"prefix": "/api", "headers": [{"name": "x-canary", "string_match": {"exact": "1"}}]},
         "route": {"cluster": "canary"}},
        {"match": {"prefix": "/api", "headers": [{"name": "user-agent", "string_match": {"safe_regex": {
            "regex": ".*iPhone.*"}}}]}, "route": {"cluster": "iphone"}},
        {"match": {"prefix": "/api", "headers": [{"name": "x-legacy", "exact_match": "yes"}]},
         "route": {"cluster": "legacy"}},
        {"match": {"prefix": "/api", "headers": [{"name": "x-debug", "present_match": True}]},
         "route": {"cluster": "present"}},
        {"match": {"prefix": "/API", "case_sensitive": False, "headers": [
            {"name": "x-env", "string_match": {"prefix": "prod"}, "invert_match": True}]},
         "route": {"cluster": "nonprod"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "default"}},
    ])])
    c = lambda path, headers=(): t.route(b"h", path, list(headers)).cluster  # noqa: E731  (a test shorthand)
    assert c(b"/exact") == "path" and c(b"/exact?x=1") == "path" and c(b"/exact/") == "default"
    assert c(b"/v12/items") == "regex" and c(b"/v12/items/x") == "default"
    assert c(b"/api/x", [(b"x-canary", b"1")]) == "canary"
    assert c(b"/api/x", [(b"user-agent", b"Mozilla iPhone OS")]) == "iphone"
    assert c(b"/api/x", [(b"x-legacy", b"yes")]) == "legacy"
    assert c(b"/api/x", [(b"x-debug", b"")]) == "present"
    assert c(b"/api/x", [(b"x-env", b"staging")]) == "nonprod"
    assert c(b"/api/x", [(b"x-env", b"production")]) == "default"


def test_rewrites_and_weights():
    t = table([vh("v", ["*"], [
        {"match": {"prefix": "/old/"}, "route": {"cluster": "a", "prefix_rewrite": "/new/",
                                                  "host_rewrite_literal": "svc.local"}},
        {"match": {"prefix": "/w"}, "route": {"weighted_clusters": {"clusters": [
            {"name": "a", "weight": 3}, {"name": "b", "weight": 1}]}, "regex_rewrite": {
                "pattern": {"regex": "^/w/([0-9]+)$"}, "substitution": "/item/\\1"}}},
    ])])
    r = t.route(b"h", b"/old/x?q=1", [])
    assert r.rewrite_path(b"/old/x?q=1") == b"/new/x?q=1" and r.host_rewrite == b"svc.local"
    w = t.route(b"h", b"/w/42", [])
    assert [(acc, n) for acc, n, _ in w.weights] == [(3, "a"), (4, "b")] and w.total_weight == 4
    assert w.rewrite_path(b"/w/42?z") == b"/item/42?z"


def test_header_ops():
    h = [(b"a", b"1"), (b"b", b"2")]
    out = apply_ops(list(h), ((b"a", b"9", "OVERWRITE_IF_EXISTS_OR_ADD"), (b"c", b"3", "ADD_IF_ABSENT"),
                              (b"b", b"x", "ADD_IF_ABSENT"), (b"b", b"4", "APPEND_IF_EXISTS_OR_ADD"),
                              (b"z", b"0", "OVERWRITE_IF_EXISTS")), frozenset({b"q"}))
    assert out == [(b"b", b"2"), (b"a", b"9"), (b"c", b"3"), (b"b", b"4")]
    assert apply_ops(list(h), (), frozenset({b"a"})) == [(b"b", b"2")]
