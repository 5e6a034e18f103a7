"""Bad input, differential: the same raw bytes on a fresh connection to
real Envoy and to minimesh-proxy (tests/configs/minimal.yaml, every path to an echo
upstream) give the same status line, the same decision to close the connection, and the
same thing reaching the upstream (nothing, or the same Host/path). Also a few well-formed
HTTP/1.1 edge cases: Connection: close, HEAD, two pipelined requests, Expect: 100-continue
(the body is never sent: the proxy should answer 100 Continue and wait)."""
from __future__ import annotations

import pytest

from testbed.apps.echo import Identity
from tests.support.configs import render
from tests.support.ports import free_ports
from tests.support.procs import start_proxy
from tests.support.rawhttp import probe
from tests.support.upstream import Upstreams

pytestmark = pytest.mark.slow  # quiet-time reads: ~100 s

H = b"Host: t.example\r\n"
CASES = {
    "bad_request_line": b"GARBAGE\r\n\r\n",
    "unknown_version": b"GET / HTTP/9.9\r\n" + H + b"\r\n",
    "http10": b"GET / HTTP/1.0\r\n\r\n",
    "content_length_and_chunked": b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n"
                                  b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "invalid_chunk_size": b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "two_content_lengths": b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "headers_over_60k": b"GET / HTTP/1.1\r\n" + H
                        + b"".join(b"x-h%d: %s\r\n" % (i, b"v" * 1000) for i in range(70)) + b"\r\n",
    "space_in_header_name": b"GET / HTTP/1.1\r\n" + H + b"Bad Header: 1\r\n\r\n",
    "http11_without_host": b"GET / HTTP/1.1\r\n\r\n",
    "absolute_form_uri": b"GET http://other.example/p?q=1 HTTP/1.1\r\n" + H + b"\r\n",
    "well_formed": b"GET /ok HTTP/1.1\r\n" + H + b"\r\n",
    "connection_close": b"GET /ok HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n",
    "head": b"HEAD /ok HTTP/1.1\r\n" + H + b"\r\n",
    "pipelined_two": b"GET /1 HTTP/1.1\r\n" + H + b"\r\nGET /2 HTTP/1.1\r\n" + H + b"\r\n",
    "expect_100_continue": b"POST /e HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    # issue 14, points 3, 4, 5, 9 (table in docs/proxy.md)
    "te_gzip_chunked": b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "te_chunked_twice": b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked"
                        b"\r\n\r\n0\r\n\r\n",
    "absolute_empty_host": b"GET http:// HTTP/1.1\r\n" + H + b"\r\n",
    "absolute_empty_host_slash": b"GET http:/// HTTP/1.1\r\n" + H + b"\r\n",
    "absolute_port_99999": b"GET http://t.example:99999/ HTTP/1.1\r\n" + H + b"\r\n",
    "absolute_port_negative": b"GET http://t.example:-1/ HTTP/1.1\r\n" + H + b"\r\n",
    "absolute_userinfo_port": b"GET http://u@t.example:8080/x HTTP/1.1\r\n" + H + b"\r\n",
    "fragment": b"GET /a#frag HTTP/1.1\r\n" + H + b"\r\n",
    "asterisk_get": b"GET * HTTP/1.1\r\n" + H + b"\r\n",
    "asterisk_options": b"OPTIONS * HTTP/1.1\r\n" + H + b"\r\n",
    "ftp_scheme": b"GET ftp://o.example/x HTTP/1.1\r\n" + H + b"\r\n",
    "file_scheme": b"GET file:///etc/passwd HTTP/1.1\r\n" + H + b"\r\n",
    "connect_origin_form": b"CONNECT / HTTP/1.1\r\n" + H + b"\r\n",
    "host_with_space": b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
    "websocket_upgrade": b"GET / HTTP/1.1\r\n" + H + b"Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    "http09": b"GET /\r\n",
    "bare_lf": b"GET / HTTP/1.1\nHost: x\n\n",
    "obs_fold": b"GET / HTTP/1.1\r\n" + H + b"X-A: a\r\n b\r\n\r\n",
    "tab_in_request_line": b"GET\t/ HTTP/1.1\r\n" + H + b"\r\n",
    "expect_twice": b"GET / HTTP/1.1\r\n" + H + b"Expect: 100-continue\r\nExpect: 100-continue\r\n\r\n",
    "connect_asterisk": b"CONNECT * HTTP/1.1\r\n" + H + b"\r\n",
    "absolute_port_0": b"GET http://t.example:0/ HTTP/1.1\r\n\r\n",
    "chunk_size_trailing_space": b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
                                 b"5 \r\nhello\r\n0\r\n\r\n",
}
BAD = [n for n in CASES if n not in ("well_formed", "absolute_form_uri", "connection_close", "head",
                                      "pipelined_two", "expect_100_continue", "absolute_userinfo_port",
                                      "asterisk_options", "bare_lf", "obs_fold", "tab_in_request_line",
                                      "chunk_size_trailing_space", "absolute_port_0")]
_RESULTS: dict[str, dict[str, tuple]] = {}


def _run(kind: str) -> dict[str, tuple]:
    if kind not in _RESULTS:
        out = {}
        with Upstreams({"a": Identity("a", "v1", "a-0")}) as ups:
            listen, admin = free_ports(2)
            text = render("minimal.yaml", {"LISTEN_PORT": listen, "ADMIN_PORT": admin,
                                           "UPSTREAM_A_PORT": ups.port("a")})
            with start_proxy(kind, text, admin):
                for name, data in CASES.items():
                    before = len(ups.records("a"))
                    ans = probe(listen, data)
                    seen = [(r["authority"], r["path"]) for r in ups.records("a")[before:]]
                    out[name] = (ans.statuses, ans.closed, tuple(seen))
        _RESULTS[kind] = out
    return _RESULTS[kind]


def test_envoy_rejects_malformed_requests(envoy_bin):
    got = _run("envoy")
    for name, (statuses, _closed, seen) in got.items():
        if name in BAD:
            code = statuses[0].split(" ")[1] if len(statuses) == 1 else ""
            assert (code[:1] == "4" or code == "501") and seen == (), (name, got[name])


@pytest.mark.parametrize("case", list(CASES))
def test_same_answer_as_envoy(case, envoy_bin, minimesh_proxy):
    expected, got = _run("envoy")[case], _run("minimesh")[case]
    assert got == expected, (f"{case}: envoy answered {expected[0]!r} closed={expected[1]} upstream saw "
                             f"{expected[2]}; minimesh answered {got[0]!r} closed={got[1]} upstream saw {got[2]}")
