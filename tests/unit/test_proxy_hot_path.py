"""proxy.http.lazy_timer.LazyTimer (the route timeout's re-armable timer) on asyncio's and
uvloop's loops, and the hot path's memory shape: a finished stream is freed by reference
counting alone (no Stream <-> filter cycle left for the cyclic garbage collector)."""
import asyncio
import gc
import time

import pytest

from proxy.http.lazy_timer import LazyTimer
from proxy.http.stream import Stream

LOOPS = ["asyncio"]
try:
    import uvloop
    LOOPS.append("uvloop")
except ImportError:       # pragma: no cover - uvloop is in the dev venv
    uvloop = None


def run(loop_kind: str, coro):
    if loop_kind == "uvloop":
        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_fires_once_at_the_deadline(loop_kind):
    async def body():
        loop = asyncio.get_running_loop()
        fired = []
        timer = LazyTimer(loop)
        t0 = time.monotonic()
        timer.arm(0.05, lambda: fired.append(time.monotonic() - t0))
        await asyncio.sleep(0.15)
        return fired
    fired = run(loop_kind, body())
    assert len(fired) == 1 and 0.045 <= fired[0] < 0.14      # on time, within a busy machine's slack


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_cancelled_never_fires_and_rearming_later_keeps_one_loop_timer(loop_kind):
    async def body():
        loop = asyncio.get_running_loop()
        fired = []
        timer = LazyTimer(loop)
        timer.arm(0.05, lambda: fired.append("first"))
        first_handle = timer.handle
        await asyncio.sleep(0.03)
        timer.cancel()
        t1 = time.monotonic()
        timer.arm(0.05, lambda: fired.append(("second", time.monotonic() - t1)))
        same_handle = timer.handle is first_handle       # later deadline: the old loop timer is reused
        await asyncio.sleep(0.03)
        early = list(fired)                               # the old timer fired here and re-scheduled
        await asyncio.sleep(0.1)
        return same_handle, early, fired
    same_handle, early, fired = run(loop_kind, body())
    assert same_handle and early == []
    assert len(fired) == 1 and fired[0][0] == "second" and 0.045 <= fired[0][1] < 0.12


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_rearming_earlier_replaces_the_loop_timer(loop_kind):
    async def body():
        loop = asyncio.get_running_loop()
        fired = []
        timer = LazyTimer(loop)
        timer.arm(5.0, lambda: fired.append("long"))
        timer.cancel()
        t0 = time.monotonic()
        timer.arm(0.02, lambda: fired.append(time.monotonic() - t0))
        await asyncio.sleep(0.1)
        timer.close()
        return fired, timer.handle
    fired, handle = run(loop_kind, body())
    assert len(fired) == 1 and 0.015 <= fired[0] < 0.09 and handle is None


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_close_drops_the_pending_loop_timer(loop_kind):
    async def body():
        loop = asyncio.get_running_loop()
        fired = []
        timer = LazyTimer(loop)
        timer.arm(0.02, lambda: fired.append(1))
        timer.close()
        await asyncio.sleep(0.06)
        return fired, timer.handle
    assert run(loop_kind, body()) == ([], None)


class _Transport:
    def __init__(self):
        self.out = bytearray()

    def write(self, data):
        self.out += data

    def is_closing(self):
        return False

    def close(self):
        pass

    def set_write_buffer_limits(self, high=None, low=None):
        pass

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 5555) if name == "peername" else default


def _direct_response_conn():
    """A downstream connection on a fake transport; its one route answers 200 "hi" itself
    (through the router, so each stream has a Router filter pointing back at it)."""
    from types import SimpleNamespace

    from proxy.config.bootstrap import parse_bootstrap
    from proxy.http.hcm import DownstreamConnection, HcmConfig
    from proxy.server import ServerContext
    hcm_cfg = {"stat_prefix": "t", "http_filters": [{"name": "envoy.filters.http.router"}],
               "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
                   {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "hi"}}}]}]}}
    b = parse_bootstrap({"static_resources": {"listeners": [{"address": {"socket_address": {
        "address": "127.0.0.1", "port_value": 0}}, "filter_chains": [{"filters": [{
            "name": "envoy.http_connection_manager", "config": hcm_cfg}]}]}]}})
    ctx = ServerContext(b)
    conn = DownstreamConnection(HcmConfig(b.listeners[0].filter, ctx, "l"),
                                SimpleNamespace(connections=set()), ctx.stats.listener("l"), 1 << 20)
    t = _Transport()
    conn.connection_made(t)
    return conn, t


def _responses(raw: bytes) -> list:
    from proxy.http.codec import ClientCodec, Data, ResponseHead
    out = []
    for ev in ClientCodec().receive_data(bytes(raw)):
        if type(ev) is ResponseHead:
            out.append([ev, b""])
        elif type(ev) is Data:
            out[-1][1] += ev.data
    return out


def test_finished_streams_are_freed_without_the_cycle_collector():
    async def body():
        conn, t = _direct_response_conn()
        gc.collect()
        gc.disable()
        try:
            before = sum(type(o) is Stream for o in gc.get_objects())
            for _ in range(50):
                conn.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            after = sum(type(o) is Stream for o in gc.get_objects())
        finally:
            gc.enable()
        return before, after, _responses(t.out)
    before, after, answered = asyncio.run(body())
    assert len(answered) == 50 and all(h.status == 200 and b == b"hi" for h, b in answered)
    assert after == before


def test_route_timeout_on_a_keep_alive_connection_rearms_exactly():
    """One downstream connection, one lazy route timer: a later deadline is honoured (no
    early 504 from the previous request's loop timer), and a shorter one fires on time."""
    from tests.support.http_peers import HttpClient, Reply, Upstream
    from tests.integration.test_proxy_e2e import Proxy, cluster, config

    def behaviour(req):
        return Reply(body=req.target.encode(), delay_s=float(req.headers.get("x-delay", "0")))

    async def go():
        async with Upstream(behaviour) as up:
            async with Proxy(config([
                    {"match": {"prefix": "/long"}, "route": {"cluster": "c", "timeout": "3s"}},
                    {"match": {"prefix": "/"}, "route": {"cluster": "c", "timeout": "0.5s"}}],
                    [cluster("c", [up.port])])) as p:
                c = await HttpClient("127.0.0.1", p.port).connect()
                out = [(await c.request(target="/a")).status]
                await asyncio.sleep(0.35)         # the first request's loop timer is due at ~0.5 s
                t0 = time.monotonic()
                r = await c.request(target="/b", headers=[("x-delay", "0.3")])
                out.append((r.status, r.body, time.monotonic() - t0))
                await c.request(target="/long")    # deadline 3 s: the loop timer stays far out
                t0 = time.monotonic()
                r = await c.request(target="/c", headers=[("x-delay", "1.5")])
                out.append((r.status, r.body, time.monotonic() - t0, p.cstats("c").upstream_rq_timeout))
                c.writer.close()
                return out
    first, second, third = asyncio.run(asyncio.wait_for(go(), 30))
    assert first == 200
    assert second[:2] == (200, b"/b") and second[2] >= 0.28      # not cut at the old deadline
    assert third[0] == 504 and third[1] == b"upstream request timeout" and 0.48 <= third[2] < 1.3
    assert third[3] == 1
