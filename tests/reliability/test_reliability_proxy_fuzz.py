"""Proxy differential fuzz against real Envoy 1.40 (issue 14): hypothesis builds hostile
HTTP/1 requests (odd request targets, versions, separators and line ends, Host forms,
obs-fold, upgrades, transfer codings and lengths, chunk framing, random bytes); each goes
on a fresh connection to Envoy and to minimesh-proxy, both in front of their own echo
upstream with tests/configs/minimal.yaml. Each answer is reduced to a class (2xx, 4xx,
5xx, or none) plus the number of requests the upstream received (a smuggled request shows
as one more). Every difference must be a documented one (DOCUMENTED, and docs/proxy.md);
minimesh-proxy stays up, and its RSS stays bounded.

CI: 300 requests (seeded). MINIMESH_LONG_RELIABILITY=1: 10,000. No root needed.
"""
from __future__ import annotations

import socket
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from hypothesis import HealthCheck, given, seed, settings, strategies as st

from reliability_support import LONG, SEED, record
from testbed.apps.echo import Identity
from tests.support.configs import render
from tests.support.ports import free_ports
from tests.support.procs import start_proxy
from tests.support.upstream import Upstreams

pytestmark = pytest.mark.slow

REQUESTS = 10_000 if LONG else 300
RSS_GROWTH_MAX_KB = 30 * 1024       # after the fuzz, against after a warm-up of well-formed requests

# Differences kept on purpose (docs/proxy.md, "Lenient and malformed HTTP/1"): predicate on
# the raw request -> why.
DOCUMENTED = {
    "h2-preface": (lambda raw: raw.startswith(b"PRI * HTTP/2.0"),
                   "Envoy waits on the HTTP/2 preface on an HTTP/1 listener; minimesh answers 400"),
    "pipelined-after-expect": (
        lambda raw: b"expect: 100-continue" in raw.lower() and b"GET /second" in raw
        and b"content-length" not in raw.lower() and b"transfer-encoding" not in raw.lower(),
        "Envoy leaves a request pipelined behind a body-less `Expect: 100-continue` request unserved; "
        "minimesh serves it"),
}

# --- strategies --------------------------------------------------------------------------

_HOSTS = [b"t.example", b"t.example:8080", b"", b"a b", b"t.example:99999", b"[::1]:80", b"a\tb", b"x/y",
          b"t.example:", b"u@t.example"]
_TARGETS = st.one_of(
    st.sampled_from([b"/", b"/a?b=1", b"/a#frag", b"*", b"http://t.example/x", b"http://", b"http:///",
                     b"https://u@t.example/x", b"HTTP://T.EXAMPLE/", b"http://t.example?q", b"ftp://o.example/x",
                     b"file:///etc/passwd", b"abc", b"//x", b"/%2e%2e/b", b"/a/../b", b"/\xff", b"/a;b",
                     b"http://[::1]:80/", b"http://[::1/", b"t.example:443", b"/a\x7fb"]),
    st.builds(lambda p: b"http://t.example:%s/" % p,
              st.one_of(st.integers(-5, 70000).map(lambda i: str(i).encode()), st.sampled_from([b"", b"8x", b" 1"]))),
    st.binary(min_size=1, max_size=12).filter(lambda b: not any(c in b for c in b" \r\n")).map(lambda b: b"/" + b),
)
_VERSIONS = st.sampled_from([b"HTTP/1.1"] * 8 + [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/9.9", b"", b"http/1.1",
                                                    b"HTTP/1.1 ", b"HTTP/1.10"])
_METHODS = st.sampled_from([b"GET"] * 4 + [b"POST", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"CONNECT", b"get",
                                           b"FOO", b"G\x01T", b"TRACE"])
_SEP = st.sampled_from([b" "] * 6 + [b"\t", b"  "])
_EOL = st.sampled_from([b"\r\n"] * 6 + [b"\n"])
_EXTRA = st.sampled_from([b"X-A: a", b"X-A: a\r\n b", b"X-A: a\n\tb", b"X A: 1", b"X-A : 1", b"X-A: a\x00b",
                          b"Upgrade: websocket\r\nConnection: upgrade", b"Upgrade: h2c\r\nConnection: Upgrade",
                          b"Connection: close", b"Expect: 100-continue", b": empty-name", b"X-A:", b"X-\xff: 1",
                          b"Host: second.example", b"Te: trailers", b"Trailer: x"])
_FRAMING = st.sampled_from([
    ("none", None), ("cl", b"5"), ("cl", b"+5"), ("cl", b"-1"), ("cl", b"5, 5"), ("cl", b"abc"), ("cl2", b"5"),
    ("te", b"chunked"), ("te", b"Chunked"), ("te", b"gzip, chunked"), ("te", b"chunked, gzip"),
    ("te", b"identity"), ("te", b"gzip"), ("te2", b"chunked"), ("te+cl", b"chunked"),
])
_CHUNKS = st.sampled_from([b"5\r\nhello\r\n0\r\n\r\n", b"5 \r\nhello\r\n0\r\n\r\n",
                           b"5;a=b\r\nhello\r\n0\r\n\r\n", b"zz\r\nhello\r\n0\r\n\r\n", b"5\nhello\n0\n\n",
                           b"0\r\n\r\n",
                           b"5\r\nhello\r\n0\r\nX: t\r\n\r\n",
                           b"fffffffffffffffff\r\nx\r\n0\r\n\r\n", b"-5\r\nhello\r\n0\r\n\r\n"])


@st.composite
def http_requests(draw) -> bytes:
    if draw(st.integers(0, 19)) == 0:            # 5 %: random bytes with a blank line after them
        return draw(st.binary(min_size=1, max_size=120)) + b"\r\n\r\n"
    if draw(st.integers(0, 49)) == 0:
        return b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    sep, eol = draw(_SEP), draw(_EOL)
    version = draw(_VERSIONS)
    line = draw(_METHODS) + sep + draw(_TARGETS) + ((sep + version) if version else b"")
    headers = []
    if draw(st.integers(0, 9)):                  # 90 %: a Host header
        headers.append(b"Host: " + draw(st.sampled_from(_HOSTS[:1] * 6 + _HOSTS)))
    headers += draw(st.lists(_EXTRA, max_size=2))
    kind, value = draw(_FRAMING)
    body = b""
    if kind in ("cl", "cl2"):
        headers += [b"Content-Length: " + value] * (2 if kind == "cl2" else 1)
        body = b"hello"
    elif kind.startswith("te"):
        headers += [b"Transfer-Encoding: " + value] * (2 if kind == "te2" else 1)
        if kind == "te+cl":
            headers.append(b"Content-Length: 5")
        body = draw(_CHUNKS)
    if draw(st.integers(0, 9)) == 0:             # 10 %: a second, pipelined request
        body += b"GET /second HTTP/1.1\r\nHost: t.example\r\n\r\n"
    return eol.join([line, *headers]) + eol + eol + body


# --- probing -------------------------------------------------------------------------------

def _answer(port: int, data: bytes, quiet_s: float) -> str:
    """The class of the first response ('2xx', '4xx', ...), 'none' when nothing came back
    within ``quiet_s`` of silence, or 'closed' when the connection closed without one."""
    buf = b""
    with socket.create_connection(("127.0.0.1", port), 3) as s:
        s.settimeout(quiet_s)
        try:
            s.sendall(data)
        except OSError:
            return "closed"
        while b"\r\n" not in buf:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                return "none"
            except OSError:
                return "closed"
            if not chunk:
                return "closed" if not buf else "garbled"
            buf += chunk
    parts = buf.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        return "garbled"
    return f"{parts[1][:1].decode()}xx"


class _Pair:
    """Envoy and minimesh-proxy, each in front of its own echo upstream."""

    def __init__(self, envoy: Any, mm: Any, ups: dict[str, Any], ports: dict[str, int]):
        self.envoy, self.mm, self.ups, self.ports = envoy, mm, ups, ports
        self.pool = ThreadPoolExecutor(2)

    def probe(self, data: bytes, quiet_s: float) -> dict[str, tuple[str, int]]:
        before = {k: self.ups[k].total() for k in self.ports}
        futures = {k: self.pool.submit(_answer, self.ports[k], data, quiet_s) for k in self.ports}
        got = {k: f.result() for k, f in futures.items()}
        time.sleep(0.02)                         # an upstream record lands after its response
        return {k: (got[k], self.ups[k].total() - before[k]) for k in self.ports}


def _rss_kb(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@pytest.fixture(scope="module")
def pair(envoy_bin, minimesh_proxy):
    with Upstreams({"a": Identity("a", "v1", "envoy")}) as up_e, Upstreams({"a": Identity("a", "v1", "mm")}) as up_m:
        lports, aports = free_ports(2), free_ports(2)
        procs = {}
        with start_proxy("envoy", render("minimal.yaml", {"LISTEN_PORT": lports[0], "ADMIN_PORT": aports[0],
                                                          "UPSTREAM_A_PORT": up_e.port("a")}), aports[0]) as e, \
             start_proxy("minimesh", render("minimal.yaml", {"LISTEN_PORT": lports[1], "ADMIN_PORT": aports[1],
                                                             "UPSTREAM_A_PORT": up_m.port("a")}), aports[1]) as m:
            procs = {"envoy": e, "minimesh": m}
            yield _Pair(procs["envoy"], procs["minimesh"], {"envoy": up_e, "minimesh": up_m},
                        {"envoy": lports[0], "minimesh": lports[1]})


RESULTS: dict[str, Any] = {"sent": 0, "classes": Counter(), "mismatches": Counter(), "documented": Counter(),
                           "examples": []}
WELL_FORMED = b"GET /ok HTTP/1.1\r\nHost: t.example\r\n\r\n"


def test_warm_up_and_rss_baseline(pair):
    for _ in range(200):
        got = pair.probe(WELL_FORMED, 2.0)
        assert got["envoy"][0] == got["minimesh"][0] == "2xx", got
    RESULTS["rss_before_kb"] = _rss_kb(pair.mm.popen.pid)


@seed(SEED)
@settings(max_examples=REQUESTS, deadline=None, database=None, derandomize=False,
          suppress_health_check=list(HealthCheck))
@given(raw=http_requests())
def test_same_class_as_envoy(pair, raw):
    got = pair.probe(raw, 0.4)
    if got["envoy"] != got["minimesh"]:          # a loaded machine may be slow: look again, longer
        got = pair.probe(raw, 3.0)
    RESULTS["sent"] += 1
    RESULTS["classes"][got["minimesh"][0]] += 1
    if got["envoy"] == got["minimesh"]:
        return
    why = next((n for n, (pred, _) in DOCUMENTED.items() if pred(raw)), None)
    key = f"envoy={got['envoy'][0]}/up{got['envoy'][1]} minimesh={got['minimesh'][0]}/up{got['minimesh'][1]}"
    if why:
        RESULTS["documented"][f"{why}: {key}"] += 1
    else:
        RESULTS["mismatches"][key] += 1
        if RESULTS["mismatches"][key] <= 3:             # a few of each class, for the report
            RESULTS["examples"].append((key, raw))


def test_no_undocumented_difference_and_proxy_healthy(pair):
    assert pair.mm.popen.poll() is None, "minimesh-proxy died"
    got = pair.probe(WELL_FORMED, 2.0)
    assert got["minimesh"] == ("2xx", 1), got
    rss_after = _rss_kb(pair.mm.popen.pid)
    before = RESULTS.get("rss_before_kb", 0)
    record("proxy_fuzz", requests=RESULTS["sent"], classes=dict(RESULTS["classes"]),
           mismatches=dict(RESULTS["mismatches"]), documented=dict(RESULTS["documented"]),
           rss_before_kb=before, rss_after_kb=rss_after,
           examples=[(k, r.decode("latin-1")) for k, r in RESULTS["examples"]])
    assert RESULTS["sent"] >= REQUESTS * 0.9, RESULTS["sent"]
    assert not RESULTS["mismatches"], "\n".join(f"{k}: {r!r}" for k, r in RESULTS["examples"])
    assert rss_after - before <= RSS_GROWTH_MAX_KB, (before, rss_after)
