"""Loopback tests: fault filter flags, slowloris timeout, response back-pressure, retry on
reset, STRICT_DNS, and the update API the xDS client will drive."""
import asyncio
import time

from proxy.config.cluster import EndpointSpec, parse_cluster
from proxy.config.reader import Obj
from proxy.config.route import parse_route_config
from tests.support.http_peers import HttpClient, Reply, Upstream, http_request

from test_proxy_e2e import Proxy, cluster, config, run


def test_fault_filter_percentages_and_flags(tmp_path):
    log = tmp_path / "a.log"

    async def go():
        async with Upstream() as up:
            fault = {"name": "envoy.filters.http.fault", "typed_config": {
                "abort": {"http_status": 418, "percentage": {"numerator": 30}},
                "delay": {"fixed_delay": "0.001s", "percentage": {"numerator": 100}}}}
            async with Proxy(config([{"match": {"prefix": "/"}, "route": {"cluster": "c"}}], [cluster("c", [up.port])],
                                    http_filters=[fault], access_log=str(log))) as p:
                c = await HttpClient("127.0.0.1", p.port).connect()
                codes = [(await c.request()).status for _ in range(300)]
                await c.close()
                share = codes.count(418) / 300
                assert 0.20 <= share <= 0.40 and set(codes) == {200, 418}     # 30 % +- ~4 sigma
                assert len(up.requests) == codes.count(200)
                p.server.ctx.access_logs.close()
        flags = [line.split('"')[2].split()[1] for line in log.read_text().splitlines()]
        assert set(flags) == {"DI", "DI,FI"}
    run(go())


def test_request_headers_timeout_closes_slowloris():
    async def go():
        async with Upstream() as up:
            async with Proxy(config([{"match": {"prefix": "/"}, "route": {"cluster": "c"}}], [cluster("c", [up.port])],
                                    request_headers_timeout="1s")) as p:
                r, w = await asyncio.open_connection("127.0.0.1", p.port)
                w.write(b"GET / HTTP/1.1\r\nHost: x\r\n")       # never finishes its headers
                t0 = time.monotonic()
                assert await asyncio.wait_for(r.read(), 5) == b""
                assert 0.9 <= time.monotonic() - t0 <= 2.6      # 1 s, swept once per second
                assert p.server.stats.http["ingress"].downstream_rq_header_timeout == 1
    run(go())


def test_request_headers_timeout_closes_a_buffered_lenient_head():
    """A bare-LF head is buffered whole before it is normalised (issue 14, point 5/9):
    the headers timeout still closes a connection that never completes it, and a bare
    HTTP/0.9 line is answered 426 at once."""
    async def go():
        async with Upstream() as up:
            async with Proxy(config([{"match": {"prefix": "/"}, "route": {"cluster": "c"}}], [cluster("c", [up.port])],
                                    request_headers_timeout="1s")) as p:
                r, w = await asyncio.open_connection("127.0.0.1", p.port)
                w.write(b"GET / HTTP/1.1\nHost: x\n")
                assert await asyncio.wait_for(r.read(), 5) == b""
                assert p.server.stats.http["ingress"].downstream_rq_header_timeout == 1
                r, w = await asyncio.open_connection("127.0.0.1", p.port)
                w.write(b"GET /\r\n")
                answer = await asyncio.wait_for(r.read(), 2)
                assert answer.startswith(b"HTTP/1.1 426 ")
    run(go())


def test_large_response_to_slow_reader_is_back_pressured():
    async def go():
        body = b"y" * (64 << 20)
        async with Upstream(lambda r: Reply(body=body, chunked=True, chunk_size=1 << 20)) as up:
            async with Proxy(config([{"match": {"prefix": "/"}, "route": {"cluster": "c", "timeout": "60s"}}],
                                    [cluster("c", [up.port])])) as p:
                r, w = await asyncio.open_connection("127.0.0.1", p.port, limit=1 << 16)
                w.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                await asyncio.sleep(0.5)            # don't read: the proxy must stop reading upstream
                conns = [c for c in p.server.connections]
                buffered = sum(c.transport.get_write_buffer_size() for c in conns)
                assert buffered < 8 << 20, buffered   # far less than the 64 MB body
                got = 0
                while True:
                    chunk = await r.read(1 << 20)
                    if not chunk:
                        break
                    got += len(chunk)
                    if b"0\r\n\r\n" in chunk[-10:]:
                        break
                assert got > len(body)
                w.close()
    run(go())


def test_retry_on_reset_then_urx_when_exhausted(tmp_path):
    log = tmp_path / "a.log"

    async def go():
        async with Upstream(lambda r: Reply(reset=True)) as up:
            async with Proxy(config([{"match": {"prefix": "/"}, "route": {"cluster": "c", "retry_policy": {
                    "retry_on": "reset", "num_retries": 2, "retry_back_off": {"base_interval": "0.001s"}}}}],
                    [cluster("c", [up.port])], access_log=str(log))) as p:
                r = await http_request(p.port)
                assert r.status == 503 and b"reset reason: connection termination" in r.body
                assert len(up.requests) == 3 and p.cstats("c").upstream_rq_retry == 2
                p.server.ctx.access_logs.close()
        assert " 503 URX,UC " in log.read_text()
    run(go())


def test_strict_dns_resolves_localhost():
    async def go():
        async with Upstream(lambda r: Reply(body=b"dns")) as up:
            c = cluster("c", [up.port], type="STRICT_DNS", dns_lookup_family="V4_ONLY", dns_refresh_rate="1s")
            c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"][
                "address"] = "localhost"
            async with Proxy(config([{"match": {"prefix": "/"}, "route": {"cluster": "c", "auto_host_rewrite": True}}],
                                    [c])) as p:
                assert (await http_request(p.port)).body == b"dns"
                assert [h.address for h in p.server.cluster_manager.get("c").hosts] == ["127.0.0.1"]
                assert up.requests[-1].headers["host"] == "localhost"       # auto_host_rewrite: the DNS name
    run(go())


def test_update_api_for_xds():
    async def go():
        async with Upstream(lambda r: Reply(body=b"one")) as one, Upstream(lambda r: Reply(body=b"two")) as two:
            async with Proxy(config([{"match": {"prefix": "/"}, "route": {"cluster": "c"}}],
                                    [cluster("c", [one.port])])) as p:
                cm, lm = p.server.cluster_manager, p.server.listener_manager
                assert (await http_request(p.port)).body == b"one"
                # CDS: add an EDS cluster, EDS: give it endpoints, RDS: route to it
                cm.add_or_update_cluster(parse_cluster(Obj({"name": "e", "type": "EDS", "eds_cluster_config": {
                    "eds_config": {"ads": {}}}}, "cds")))
                cm.update_endpoints("e", [EndpointSpec("127.0.0.1", two.port)])
                rc = parse_route_config(Obj({"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
                    {"match": {"prefix": "/"}, "route": {"cluster": "e"}}]}]}, "rds"))
                assert lm.replace_route_config(rc, listener_name="main") == 1
                assert (await http_request(p.port)).body == b"two"
                assert cm.remove_cluster("e")
                assert (await http_request(p.port)).status == 503     # NC: cluster gone
    run(go())


def test_ring_hash_sticky_by_header_and_eds_static_endpoints_and_legacy_hosts():
    async def go():
        ups = [Upstream(lambda r, i=i: Reply(body=b"%d" % i)) for i in range(3)]
        for u in ups:
            await u.start()
        try:
            eds = {"name": "e", "type": "EDS", "lb_policy": "RING_HASH",
                   "eds_cluster_config": {"eds_config": {"ads": {}}},
                   "load_assignment": cluster("e", [u.port for u in ups])["load_assignment"]}
            legacy = {"name": "l", "type": "static", "connect_timeout": "1s",
                      "hosts": [{"socket_address": {"address": "127.0.0.1", "port_value": ups[0].port}}]}
            async with Proxy(config([
                    {"match": {"prefix": "/legacy"}, "route": {"cluster": "l"}},
                    {"match": {"prefix": "/"}, "route": {"cluster": "e", "hash_policy": [
                        {"header": {"header_name": "x-user"}}]}}], [eds, legacy])) as p:
                c = await HttpClient("127.0.0.1", p.port).connect()
                seen = {}
                for user in range(30):
                    answers = {(await c.request(headers=[("x-user", f"u{user}")])).body for _ in range(3)}
                    assert len(answers) == 1                        # sticky per key
                    seen[user] = answers.pop()
                assert len(set(seen.values())) == 3                 # 30 keys spread over all 3 hosts
                assert (await c.request(target="/legacy")).body == b"0"
                await c.close()
        finally:
            for u in ups:
                await u.stop()
    run(go())


def test_retry_circuit_breaker_overflow():
    async def go():
        async with Upstream(lambda r: Reply(503, b"no", delay_s=0.05)) as up:
            async with Proxy(config([{"match": {"prefix": "/"}, "route": {"cluster": "c", "retry_policy": {
                    "retry_on": "5xx", "num_retries": 3, "retry_back_off": {"base_interval": "0.2s"}}}}],
                    [cluster("c", [up.port], circuit_breakers={"thresholds": [{"max_retries": 1}]})])) as p:
                rs = await asyncio.gather(*(http_request(p.port) for _ in range(4)))
                assert all(r.status == 503 for r in rs)
                st = p.cstats("c")
                # one retry may be outstanding at a time; the other streams' retries overflow
                assert st.upstream_rq_retry_overflow >= 3 and st.upstream_rq_retry >= 1
                assert p.server.cluster_manager.get("c").retries_active == 0
    run(go())
