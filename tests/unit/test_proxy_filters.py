"""The HTTP filter chain on a fake transport: decode in order, encode in reverse,
StopIteration/continue, local replies, the fault filter, direct responses, protocol errors."""
import asyncio

import pytest

from proxy.filters import factory as registry
from proxy.config.bootstrap import parse_bootstrap
from proxy.config.reader import Obj
from proxy.config.route import parse_route_config
from proxy.filters.base import CONTINUE, STOP_ITERATION, HttpFilter
from proxy.http.hcm import DownstreamConnection, HcmConfig
from proxy.server import ServerContext
from proxy.http.codec import ClientCodec, ResponseHead, Data

CALLS: list = []


class Recorder(HttpFilter):
    def __init__(self, tag, stop):
        self.tag, self.stop, self.timer = tag, stop, None

    def decode_headers(self, stream, end_stream):
        CALLS.append(("decode", self.tag))
        if self.stop:
            asyncio.get_event_loop().call_soon(stream.continue_decoding)
            return STOP_ITERATION
        return CONTINUE

    def encode_headers(self, stream, end_stream):
        CALLS.append(("encode", self.tag))
        stream.resp_headers.append((b"x-" + self.tag.encode(), b"1"))
        return CONTINUE


registry.register(registry.FilterInfo(("test.recorder",), (), lambda o: (o.take("tag", kind=str),
                                                                          o.take("stop", False, bool)),
                                      lambda cfg, ctx: (lambda: Recorder(*cfg))))


class FakeTransport:
    def __init__(self):
        self.out = bytearray()
        self.closed = False
        self.paused = False

    def write(self, data):
        self.out += data

    def close(self):
        self.closed = True

    def is_closing(self):
        return self.closed

    def set_write_buffer_limits(self, high=None, low=None):
        self.high = high

    def pause_reading(self):
        self.paused = True

    def resume_reading(self):
        self.paused = False

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 5555) if name == "peername" else default


class FakeServer:
    def __init__(self):
        self.connections = set()


def make_conn(http_filters, routes):
    cfg = {"static_resources": {"listeners": [{"address": {"socket_address": {"address": "127.0.0.1",
                                                                                "port_value": 0}},
        "filter_chains": [{"filters": [{"name": "envoy.http_connection_manager", "config": {
            "stat_prefix": "t", "http_filters": http_filters + [{"name": "envoy.router"}],
            "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": routes}]}}}]}]}]}}
    b = parse_bootstrap(cfg)
    ctx = ServerContext(b)
    hcm = HcmConfig(b.listeners[0].filter, ctx, "l")
    conn = DownstreamConnection(hcm, FakeServer(), ctx.stats.listener("l"), 1 << 20)
    t = FakeTransport()
    conn.connection_made(t)
    return conn, t, ctx


def responses(raw: bytes):
    c = ClientCodec()
    out, cur = [], None
    for ev in c.receive_data(bytes(raw)):
        if type(ev) is ResponseHead:
            cur = [ev, b""]
            out.append(cur)
        elif type(ev) is Data:
            cur[1] += ev.data
    return out


DIRECT = [{"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "hi"}},
           "response_headers_to_add": [{"header": {"key": "x-route", "value": "r"}}]}]


def test_decode_in_order_encode_in_reverse_with_stop_and_continue():
    async def run():
        CALLS.clear()
        conn, t, _ = make_conn([{"name": "test.recorder", "config": {"tag": "a"}},
                                {"name": "test.recorder", "config": {"tag": "b", "stop": True}},
                                {"name": "test.recorder", "config": {"tag": "c"}}], DIRECT)
        conn.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert CALLS == [("decode", "a"), ("decode", "b")]       # c waits for continue_decoding
        await asyncio.sleep(0.01)
        assert CALLS == [("decode", "a"), ("decode", "b"), ("decode", "c"),
                         ("encode", "c"), ("encode", "b"), ("encode", "a")]
        (head, body), = responses(t.out)
        assert head.status == 200 and body == b"hi"
        names = [k for k, _ in head.headers]
        assert names.index(b"x-c") < names.index(b"x-b") < names.index(b"x-a") and (b"x-route", b"r") in head.headers
    asyncio.run(run())


def test_no_route_is_404_and_keepalive_pipelining():
    async def run():
        conn, t, ctx = make_conn([], [{"match": {"path": "/only"}, "direct_response": {"status": 204}}])
        conn.data_received(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\nGET /only HTTP/1.1\r\nHost: x\r\n\r\n")
        rs = responses(t.out)
        assert [r[0].status for r in rs] == [404, 204] and not t.closed
        assert ctx.stats.http["t"].no_route == 1 and ctx.stats.http["t"].downstream_rq_total == 2
    asyncio.run(run())


@pytest.mark.parametrize("raw,status", [(b"BAD\r\n\r\n", 400),
                                        (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                                         400),
                                        (b"GET / HTTP/1.1\r\nX: " + b"y" * 70000 + b"\r\n\r\n", 431)])
def test_malformed_request_gets_error_and_close(raw, status):
    async def run():
        conn, t, ctx = make_conn([], DIRECT)
        conn.data_received(raw)
        assert responses(t.out)[0][0].status == status and t.closed
        assert ctx.stats.http["t"].downstream_cx_protocol_error == 1
    asyncio.run(run())


def test_fault_filter_abort_and_header_controlled_delay():
    async def run():
        fault = {"name": "envoy.filters.http.fault", "typed_config": {
            "abort": {"http_status": 503, "percentage": {"numerator": 100}},
            "delay": {"header_delay": {}, "percentage": {"numerator": 100}}}}
        conn, t, ctx = make_conn([fault], DIRECT)
        loop = asyncio.get_event_loop()
        t0 = loop.time()
        conn.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nx-envoy-fault-delay-request: 100\r\n\r\n")
        assert t.out == b""
        for _ in range(100):
            if t.out:
                break
            await asyncio.sleep(0.01)
        assert loop.time() - t0 >= 0.09
        (head, body), = responses(t.out)
        assert head.status == 503 and body == b"fault filter abort"
    asyncio.run(run())


def test_expect_100_continue_answered_locally_and_head_has_no_body():
    async def run():
        conn, t, _ = make_conn([], DIRECT)
        conn.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
        # 100 first; the direct response does not wait for the body (then the connection closes)
        assert bytes(t.out).startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")
        assert bytes(t.out).endswith(b"\r\n\r\nhi") and t.closed
        conn, t, _ = make_conn([], DIRECT)
        conn.data_received(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert bytes(t.out).startswith(b"HTTP/1.1 200 OK\r\n") and bytes(t.out).endswith(b"\r\n\r\n")
        assert b"content-length: 2" in bytes(t.out)
    asyncio.run(run())


class Boom(HttpFilter):
    def decode_headers(self, stream, end_stream):
        if stream.path == b"/boom":
            raise RuntimeError("filter bug")
        return CONTINUE


registry.register(registry.FilterInfo(("test.boom",), (), lambda o: None, lambda cfg, ctx: Boom))


def test_filter_bug_costs_one_connection_with_500():
    async def run():
        conn, t, _ = make_conn([{"name": "test.boom"}], DIRECT)
        conn.data_received(b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n")
        assert responses(t.out)[0][0].status == 500 and t.closed
        conn, t, _ = make_conn([{"name": "test.boom"}], DIRECT)
        conn.data_received(b"GET /fine HTTP/1.1\r\nHost: x\r\n\r\n")
        assert responses(t.out)[0][0].status == 200 and not t.closed
    asyncio.run(run())


from hypothesis import given, settings, strategies as st  # noqa: E402  (for the property tests below)

_PIECES = st.sampled_from([b"GET / HTTP/1.1\r\n", b"POST /x HTTP/1.1\r\n", b"Host: a\r\n", b"\r\n",
                           b"Content-Length: 3\r\n", b"Transfer-Encoding: chunked\r\n", b"3\r\nabc\r\n",
                           b"0\r\n\r\n", b"Expect: 100-continue\r\n", b"Connection: close\r\n", b"abc", b"\x00",
                           b"HTTP/1.0\r\n", b"GET /" + b"a" * 300])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(_PIECES, st.binary(max_size=20)), max_size=30))
def test_fuzz_connection_manager_never_raises(pieces):
    """Arbitrary byte sequences: the connection answers or closes, never raises."""
    async def run():
        conn, t, ctx = make_conn([], DIRECT)
        for p in pieces:
            if t.closed:
                break
            conn.data_received(p)
        conn.connection_lost(None)
        assert ctx.stats.http["t"].downstream_rq_active == 0
        if t.out:
            assert bytes(t.out).startswith(b"HTTP/1.1 ")
    asyncio.run(run())


def test_absolute_form_target_takes_authority_from_url():
    async def run():
        routes = [{"match": {"path": "/p"}, "direct_response": {"status": 200, "body": {"inline_string": "yes"}}}]
        cfg_routes = [{"name": "v2", "domains": ["example.org"], "routes": routes}]
        conn, t, _ = make_conn([], DIRECT)
        conn.cfg.replace_route_config(parse_route_config(Obj({"virtual_hosts": cfg_routes}, "rc")))
        conn.data_received(b"GET http://example.org/p HTTP/1.1\r\nHost: other\r\n\r\n")
        (head, body), = responses(t.out)
        assert head.status == 200 and body == b"yes"
    asyncio.run(run())
