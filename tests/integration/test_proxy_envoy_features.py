"""minimesh-proxy features Pilot relies on and Envoy behaviours found by the differential
tests, end to end on loopback (no root): per-route fault config, the fault filter's header
matchers, request mirroring, JSON access logs, absolute-form request targets, HTTP/1.0 and
Host-less requests, and Envoy's counting of retries and local replies in /stats."""
import asyncio
import json
import socket

from tests.support.http_peers import Reply, Upstream, http_request
from tests.integration.test_proxy_e2e import Proxy, cluster, config, run

FAULT = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"


def _fault(**cfg):
    return {"name": "envoy.filters.http.fault", "typed_config": {"@type": FAULT, **cfg}}


async def _raw(port: int, data: bytes, quiet_s: float = 0.5) -> tuple[bytes, bool]:
    """Send bytes on a fresh connection; (everything received, whether the proxy closed)."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(data)
    buf, closed = b"", False
    try:
        while True:
            chunk = await asyncio.wait_for(r.read(65536), quiet_s)
            if not chunk:
                closed = True
                break
            buf += chunk
    except asyncio.TimeoutError:
        pass
    w.close()
    return buf, closed


def test_per_route_fault_config_replaces_the_filters_config():
    async def go():
        async with Upstream() as up:
            routes = [{"match": {"prefix": "/abort"}, "route": {"cluster": "c"},
                       "typed_per_filter_config": {"envoy.filters.http.fault": {"@type": FAULT, "abort": {
                           "http_status": 418, "percentage": {"numerator": 100}}}}},
                      {"match": {"prefix": "/"}, "route": {"cluster": "c"}}]
            async with Proxy(config(routes, [cluster("c", [up.port])], [_fault()])) as p:
                r = await http_request(p.port, target="/abort/x")
                assert r.status == 418 and r.body == b"fault filter abort" and not up.requests
                r = await http_request(p.port, target="/other")
                assert r.status == 200 and len(up.requests) == 1
    run(go())


def test_fault_filter_headers_restrict_the_fault():
    async def go():
        async with Upstream() as up:
            f = _fault(headers=[{"name": "x-mm-fault", "string_match": {"exact": "abort"}}],
                       abort={"http_status": 503, "percentage": {"numerator": 100}})
            async with Proxy(config([{"match": {"prefix": "/"}, "route": {"cluster": "c"}}],
                                    [cluster("c", [up.port])], [f])) as p:
                assert (await http_request(p.port, headers=[("x-mm-fault", "abort")])).status == 503
                assert (await http_request(p.port, headers=[("x-mm-fault", "no")])).status == 200
                assert (await http_request(p.port)).status == 200
                assert len(up.requests) == 2
    run(go())


def test_request_mirror_sends_a_shadow_copy_and_ignores_its_answer():
    async def go():
        async with Upstream(lambda r: Reply(body=b"main")) as main, \
                Upstream(lambda r: Reply(500, b"shadow", delay_s=0.05)) as shadow:
            dead = socket.socket()
            dead.bind(("127.0.0.1", 0))
            dead_port = dead.getsockname()[1]
            dead.close()
            route = {"cluster": "main", "request_mirror_policies": [
                {"cluster": "shadow"}, {"cluster": "dead"},
                {"cluster": "shadow", "runtime_fraction": {"default_value": {"numerator": 0}}}]}
            async with Proxy(config([{"match": {"prefix": "/"}, "route": route}],
                                    [cluster("main", [main.port]), cluster("shadow", [shadow.port]),
                                     cluster("dead", [dead_port])])) as p:
                r = await http_request(p.port, "POST", "/m", headers=[("Host", "svc.example:8080")], body=b"payload")
                assert r.status == 200 and r.body == b"main"
                for _ in range(50):
                    if p.cstats("shadow").upstream_rq_completed:
                        break
                    await asyncio.sleep(0.02)
                [s] = shadow.requests            # the 0 % policy sent nothing
                assert s.headers["host"] == "svc.example-shadow:8080" and s.target == "/m" and s.body == b"payload"
                assert main.requests[0].headers["host"] == "svc.example:8080"
                st = p.cstats("shadow")
                assert (st.upstream_rq_total, st.upstream_rq_completed, st.codes) == (1, 1, {500: 1})
                assert p.cstats("dead").upstream_cx_connect_fail == 1
    run(go())


def test_json_access_log_format(tmp_path):
    path = tmp_path / "access.log"

    async def go():
        async with Upstream() as up:
            cfg = config([{"name": "all", "match": {"prefix": "/"}, "route": {"cluster": "c"}}],
                         [cluster("c", [up.port])])
            hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
            hcm["access_log"] = [{"name": "envoy.access_loggers.file", "typed_config": {
                "path": str(path), "log_format": {"json_format": {
                    "code": "%RESPONSE_CODE%", "method": "%REQ(:METHOD)%", "path": "%REQ(:PATH)%",
                    "cluster": "%UPSTREAM_CLUSTER%", "route": "%ROUTE_NAME%", "flags": "%RESPONSE_FLAGS%",
                    "ua": "%REQ(USER-AGENT)%", "listener": "ingress"}}}}]
            async with Proxy(cfg) as p:
                await http_request(p.port, target="/logged?x=1")
            assert p
    run(go())
    [line] = path.read_text().splitlines()
    assert json.loads(line) == {"code": 200, "method": "GET", "path": "/logged?x=1", "cluster": "c",
                                "route": "all", "flags": "-", "ua": None, "listener": "ingress"}


def test_absolute_form_target_forwards_path_with_the_urls_host():
    async def go():
        async with Upstream() as up:
            async with Proxy(config([{"match": {"prefix": "/"}, "route": {"cluster": "c"}}],
                                    [cluster("c", [up.port])])) as p:
                for target, host_hdr, want_host, want_path in [
                        (b"http://other.example/p?q=1", b"Host: t.example\r\n", "other.example", "/p?q=1"),
                        (b"http://other.example:8080/p", b"", "other.example:8080", "/p"),
                        (b"https://u:pw@other.example/s", b"", "other.example", "/s"),
                        (b"HTTP://Other.example", b"", "Other.example", "/")]:
                    buf, closed = await _raw(p.port, b"GET " + target + b" HTTP/1.1\r\n" + host_hdr + b"\r\n")
                    assert buf.startswith(b"HTTP/1.1 200 ") and not closed, (target, buf[:80])
                    seen = up.requests[-1]
                    assert (seen.headers["host"], seen.target) == (want_host, want_path), target
                    assert [k for k, _ in seen.raw_headers].count(b"host") == 1
    run(go())


def test_http10_gets_426_and_hostless_http11_gets_400_with_close():
    async def go():
        async with Upstream() as up:
            async with Proxy(config([{"match": {"prefix": "/"}, "route": {"cluster": "c"}}],
                                    [cluster("c", [up.port])])) as p:
                buf, closed = await _raw(p.port, b"GET / HTTP/1.0\r\nHost: a\r\n\r\n")
                assert buf.startswith(b"HTTP/1.1 426 Upgrade Required\r\n") and closed
                buf, closed = await _raw(p.port, b"GET / HTTP/9.9\r\nHost: a\r\n\r\n")
                assert buf.startswith(b"HTTP/1.1 426 ") and closed
                buf, closed = await _raw(p.port, b"GET / HTTP/1.1\r\n\r\n")
                assert buf.startswith(b"HTTP/1.1 400 Bad Request\r\n") and closed
                # a bad pipelined request is answered after the good one before it
                buf, closed = await _raw(p.port, b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\n\r\n")
                assert buf.startswith(b"HTTP/1.1 200 ") and b"HTTP/1.1 400 Bad Request" in buf and closed
                assert [r.target for r in up.requests] == ["/1"]
    run(go())


def test_stats_count_like_envoy_for_exhausted_retries_and_local_replies():
    async def go():
        dead = socket.socket()
        dead.bind(("127.0.0.1", 0))
        dead_port = dead.getsockname()[1]
        dead.close()
        async with Upstream(lambda r: Reply(503)) as up:
            retry = {"retry_on": "5xx", "num_retries": 2,
                     "retry_back_off": {"base_interval": "0.001s", "max_interval": "0.002s"}}
            async with Proxy(config([{"match": {"prefix": "/dead"}, "route": {"cluster": "dead"}},
                                     {"match": {"prefix": "/"}, "route": {"cluster": "c", "retry_policy": retry}}],
                                    [cluster("c", [up.port]), cluster("dead", [dead_port])])) as p:
                assert (await http_request(p.port, target="/x")).status == 503
                c = p.cstats("c")
                assert (c.upstream_rq_total, c.upstream_rq_retry, c.upstream_rq_retry_success,
                        c.upstream_rq_retry_limit_exceeded, c.upstream_rq_completed, c.codes) == \
                    (3, 2, 0, 1, 1, {503: 1})
                assert (await http_request(p.port, target="/dead")).status == 503
                d = p.cstats("dead")
                assert (d.upstream_rq_total, d.upstream_rq_completed, d.codes, d.upstream_cx_connect_fail) == \
                    (0, 1, {503: 1}, 1)
                assert p.server.stats.http["ingress"].downstream_rq_completed == 2
    run(go())


def test_route_timeout_during_retry_backoff_counts_neither_retry_nor_code():
    """Measured with real Envoy 1.40: a retry counts in upstream_rq_retry when it is made, and a
    route timeout firing while no upstream request is under way (back-off) charges no
    upstream_rq_<code>. The back-off here is uniform in [0, 300 s): P(retry before 0.3 s) = 0.1 %."""
    async def go():
        async with Upstream(lambda r: Reply(503)) as up:
            route = {"cluster": "c", "timeout": "0.3s", "retry_policy": {
                "retry_on": "5xx", "num_retries": 3, "retry_back_off": {"base_interval": "300s"}}}
            async with Proxy(config([{"match": {"prefix": "/"}, "route": route}], [cluster("c", [up.port])])) as p:
                r = await http_request(p.port)
                assert r.status == 504 and len(up.requests) == 1
                c = p.cstats("c")
                assert (c.upstream_rq_total, c.upstream_rq_retry, c.upstream_rq_timeout, c.upstream_rq_completed,
                        c.codes) == (1, 0, 1, 0, {})
    run(go())
