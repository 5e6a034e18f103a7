"""Building the upstream request head: hop-by-hop removal, host/path rewrites, Envoy's
x-forwarded-* / x-envoy-* headers and the route's header edits."""
from __future__ import annotations

from proxy.filters.mirror import shadow_host
from proxy.http.codec import encode_request_head
from proxy.http.headers import REQUEST_HOP_BY_HOP
from proxy.http.route_table import apply_ops

__all__ = ["build_request_head"]


def build_request_head(stream, route, edit_levels: tuple, suppress_envoy_headers: bool,
                       host_rw: bytes | None = None, shadow: bool = False) -> tuple[bytes, bool]:
    """The upstream request head (bytes) and whether the body is sent chunked.
    ``host_rw`` (auto_host_rewrite: the chosen host's name) overrides the route's literal;
    ``shadow`` (a mirrored copy) suffixes the final Host with ``-shadow``."""
    out = []
    host_rw = host_rw or route.host_rewrite
    has_xfp = False
    original_hosts = []
    for k, v in stream.headers:
        if k in REQUEST_HOP_BY_HOP:
            if k == b"te" and v.strip().lower() == b"trailers":
                out.append((k, v))           # Envoy forwards only "te: trailers"
            continue
        if k == b"host":
            if host_rw is not None:
                original_hosts.append(v)
                if len(original_hosts) > 1:
                    continue
                v = host_rw
            if shadow:
                v = shadow_host(v)
        elif k == b"x-forwarded-proto":
            has_xfp = True
        out.append((k, v))
    if original_hosts and not suppress_envoy_headers:
        out.append((b"x-envoy-original-host", b",".join(original_hosts)))
    if not has_xfp:
        out.append((b"x-forwarded-proto", b"http"))
    if stream.cfg.spec.use_remote_address:
        peer = str(stream.conn.peer[0]).encode()
        xff = [v for k, v in out if k == b"x-forwarded-for"]
        out = [(k, v) for k, v in out if k != b"x-forwarded-for"]
        out.append((b"x-forwarded-for", b", ".join(xff + [peer])))
        out.append((b"x-envoy-external-address", peer))
    target = stream.path
    if route.prefix_rewrite is not None or route.regex_rewrite is not None:
        new = route.rewrite_path(target)
        if new != target and not suppress_envoy_headers:
            out.append((b"x-envoy-original-path", target))
        target = new
    if not suppress_envoy_headers and route.timeout_s:
        out.append((b"x-envoy-expected-rq-timeout-ms", b"%d" % int(route.timeout_s * 1000)))
    for lvl in edit_levels:
        out = apply_ops(out, lvl.req_add, lvl.req_remove)
    head = stream.head
    if head.chunked:
        out.append((b"transfer-encoding", b"chunked"))
    elif head.content_length is not None:
        out.append((b"content-length", b"%d" % head.content_length))
    return encode_request_head(stream.method, target, out), head.chunked

