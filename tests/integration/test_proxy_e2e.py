"""minimesh-proxy end to end on loopback: real sockets, small asyncio upstreams on free ports.
No root needed (loopback only)."""
import asyncio
import pathlib
import re
import socket
import subprocess
import sys
import time

import yaml

from proxy.config.bootstrap import parse_bootstrap
from proxy.server import Server
from tests.support.http_peers import HttpClient, Reply, Upstream, http_request
from tests.support.seed import seed_yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]


def seed_config(upstream_port: int) -> dict:
    cfg = yaml.safe_load(seed_yaml())
    cfg["static_resources"]["listeners"][0]["address"]["socket_address"].update(address="127.0.0.1", port_value=0)
    ep = cfg["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    ep["endpoint"]["address"]["socket_address"].update(address="localhost", port_value=upstream_port)
    cfg["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}
    return cfg


def cluster(name, ports, **extra):
    return dict({"name": name, "connect_timeout": "0.5s", "type": "STATIC", "load_assignment": {
        "cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}
            for p in ports]}]}}, **extra)


def config(routes, clusters, http_filters=(), access_log=None, **hcm):
    c = {"stat_prefix": "ingress", "route_config": {"name": "r", "virtual_hosts": [
        {"name": "v", "domains": ["*"], "routes": routes}]},
         "http_filters": list(http_filters) + [{"name": "envoy.filters.http.router"}], **hcm}
    if access_log:
        c["access_log"] = [{"name": "envoy.access_loggers.file", "typed_config": {"path": access_log}}]
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            "static_resources": {"listeners": [{"name": "main", "address": {"socket_address": {
                "address": "127.0.0.1", "port_value": 0}}, "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager", "typed_config": c}]}]}],
                "clusters": clusters}}


class Proxy:
    def __init__(self, cfg):
        self.server = Server(parse_bootstrap(cfg))

    async def __aenter__(self):
        await self.server.start()
        self.port = self.server.listener_manager.bound_port("main") if "main" in \
            self.server.listener_manager.listeners else self.server.listener_manager.bound_port("listener_0")
        self.admin = self.server.admin.port
        return self

    async def __aexit__(self, *exc):
        try:
            if exc[0] is None:
                await asyncio.sleep(0.05)
                for c in self.server.cluster_manager.clusters.values():     # nothing leaked
                    assert (c.rq_active, c.pending_count, c.retries_active) == (0, 0, 0), c.name
                    assert all(h.rq_active == 0 for h in c.hosts), c.name
        finally:
            await self.server.stop()

    def cstats(self, name):
        return self.server.stats.clusters[name]


def run(coro):
    asyncio.run(asyncio.wait_for(coro, 60))


def test_seed_front_proxy_forwards_with_host_rewrite():
    async def go():
        async with Upstream(lambda r: Reply(body=b"gwu page")) as up:
            async with Proxy(seed_config(up.port)) as p:
                r = await http_request(p.port, headers=[("Host", "google.com"), ("traceparent", "00-abc-def-01"),
                                                        ("x-b3-traceid", "123")])
                assert r.status == 200 and r.body == b"gwu page" and r.headers["server"] == "envoy"
                assert "x-envoy-upstream-service-time" in r.headers
                seen = up.requests[-1].headers
                assert seen["host"] == "gwadvnet20.github.io" and seen["x-envoy-original-host"] == "google.com"
                assert re.fullmatch(r"[0-9a-f-]{36}", seen["x-request-id"])
                assert seen["traceparent"] == "00-abc-def-01" and seen["x-b3-traceid"] == "123"
                r = await http_request(p.port, headers=[("x-request-id", "keep-me")])
                assert up.requests[-1].headers["x-request-id"] == "keep-me"
    run(go())


def test_keepalive_reuses_upstream_connection_and_chunked_both_ways():
    async def go():
        async with Upstream(lambda r: Reply(body=r.body[::-1] or b"x" * 200000, chunked=True, chunk_size=7000)) as up:
            async with Proxy(config([{"match": {"prefix": "/"}, "route": {"cluster": "c"}}],
                                    [cluster("c", [up.port])])) as p:
                c = await HttpClient("127.0.0.1", p.port).connect()
                for i in range(5):
                    r = await c.request("POST", "/echo", body=[b"abc", b"defg", b"%d" % i])
                    assert r.status == 200 and r.body == (b"abcdefg%d" % i)[::-1]
                    assert r.headers.get("transfer-encoding") == "chunked"
                    assert up.requests[-1].headers["transfer-encoding"] == "chunked"
                r = await c.request("GET", "/big")
                assert len(r.body) == 200000
                await c.close()
                assert up.connections == 1
    run(go())


def test_retries_on_5xx_and_connect_failure():
    async def go():
        calls = []

        def flaky(req):
            calls.append(req)
            return Reply(503 if len(calls) % 3 != 0 else 200, b"try%d" % len(calls))
        dead = socket.socket()
        dead.bind(("127.0.0.1", 0))
        dead_port = dead.getsockname()[1]
        dead.close()
        async with Upstream(flaky) as up:
            retry = {"retry_on": "5xx,connect-failure", "num_retries": 2,
                     "retry_back_off": {"base_interval": "0.001s", "max_interval": "0.002s"}}
            async with Proxy(config([
                    {"match": {"prefix": "/dead"}, "route": {"cluster": "dead", "retry_policy": retry}},
                    {"match": {"prefix": "/"}, "route": {"cluster": "c", "retry_policy": retry}}],
                    [cluster("c", [up.port]), cluster("dead", [dead_port])])) as p:
                r = await http_request(p.port, target="/x")
                assert r.status == 200 and r.body == b"try3" and len(calls) == 3
                assert p.cstats("c").upstream_rq_retry == 2 and p.cstats("c").upstream_rq_retry_success == 1
                r = await http_request(p.port, target="/dead")
                assert r.status == 503 and r.body == (b"upstream connect error or disconnect/reset before headers. "
                                                     b"reset reason: remote connection failure")
                assert p.cstats("dead").upstream_cx_connect_fail == 3 and p.cstats("dead").upstream_rq_retry == 2
    run(go())


def test_timeouts_per_try_and_global():
    async def go():
        n = []

        def slow_first(req):
            n.append(1)
            return Reply(body=b"late" if len(n) == 1 else b"fast", delay_s=0.5 if len(n) == 1 else 0)
        async with Upstream(slow_first) as up:
            async with Proxy(config([
                    {"match": {"prefix": "/try"}, "route": {"cluster": "c", "timeout": "2s", "retry_policy": {
                        "retry_on": "5xx", "num_retries": 1, "per_try_timeout": "0.1s"}}},
                    {"match": {"prefix": "/"}, "route": {"cluster": "c", "timeout": "0.2s"}}],
                    [cluster("c", [up.port])])) as p:
                t0 = time.monotonic()
                r = await http_request(p.port, target="/try")
                # the first try (answered after 0.5 s) was abandoned at 0.1 s and the retry answered
                assert r.status == 200 and r.body == b"fast" and time.monotonic() - t0 < 0.5 + 0.4
                assert p.cstats("c").upstream_rq_per_try_timeout == 1
                n.clear()
                t0 = time.monotonic()
                r = await http_request(p.port, target="/global")
                assert r.status == 504 and r.body == b"upstream request timeout"
                assert 0.18 <= time.monotonic() - t0 < 1.0 and p.cstats("c").upstream_rq_timeout == 1
    run(go())


def test_weighted_clusters_split_within_tolerance():
    async def go():
        async with Upstream(lambda r: Reply(body=b"a")) as a, Upstream(lambda r: Reply(body=b"b")) as b:
            async with Proxy(config([{"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [
                    {"name": "a", "weight": 80}, {"name": "b", "weight": 20}]}}}],
                    [cluster("a", [a.port]), cluster("b", [b.port])])) as p:
                c = await HttpClient("127.0.0.1", p.port).connect()
                bodies = [(await c.request()).body for _ in range(400)]
                await c.close()
                share = bodies.count(b"a") / 400
                assert 0.72 <= share <= 0.88        # 80 % +- 4 sigma (sigma = 2 %)
    run(go())


def test_error_flags_no_route_no_healthy_host_and_access_log(tmp_path):
    log = tmp_path / "access.log"

    async def go():
        async with Proxy(config([{"match": {"prefix": "/eds"}, "route": {"cluster": "eds"}}],
                                [{"name": "eds", "type": "EDS", "eds_cluster_config": {"eds_config": {"ads": {}}}}],
                                access_log=str(log))) as p:
            r = await http_request(p.port, target="/nothing", headers=[("user-agent", "t/1")])
            assert r.status == 404
            r = await http_request(p.port, target="/eds")
            assert r.status == 503 and r.body == b"no healthy upstream"
            p.server.ctx.access_logs.close()
        lines = log.read_text().splitlines()
        assert re.match(r'\[\d{4}-\d\d-\d\dT[\d:.]+Z\] "GET /nothing HTTP/1.1" 404 NR 0 0 \d+ - "-" "t/1" '
                        r'"[0-9a-f-]{36}" "example.com" "-"', lines[0]), lines[0]
        assert '"GET /eds HTTP/1.1" 503 UH 0 19 ' in lines[1]
    run(go())


def test_circuit_breaker_overflow_and_outlier_ejection():
    async def go():
        async with Upstream(lambda r: Reply(body=b"slow", delay_s=0.3)) as slow, \
                Upstream(lambda r: Reply(500, b"bad")) as bad, Upstream(lambda r: Reply(body=b"good")) as good, \
                Upstream(lambda r: Reply(body=b"good2")) as good2:
            async with Proxy(config([
                    {"match": {"prefix": "/slow"}, "route": {"cluster": "slow"}},
                    {"match": {"prefix": "/"}, "route": {"cluster": "mixed"}}],
                    [cluster("slow", [slow.port], circuit_breakers={"thresholds": [
                        {"max_connections": 1, "max_pending_requests": 1}]}),
                     cluster("mixed", [bad.port, good.port, good2.port], outlier_detection={
                         "consecutive_5xx": 2, "interval": "10s", "base_ejection_time": "30s",
                         "max_ejection_percent": 50})])) as p:
                first = asyncio.ensure_future(http_request(p.port, target="/slow"))
                await asyncio.sleep(0.1)       # connected and busy: the next one waits, two overflow
                rest = await asyncio.gather(*(http_request(p.port, target="/slow") for _ in range(3)))
                rs = [await first] + list(rest)
                codes = sorted(r.status for r in rs)
                assert codes.count(200) == 2 and codes.count(503) == 2
                assert p.cstats("slow").upstream_rq_pending_overflow == 2
                assert all(r.headers.get("content-length") for r in rs)
                statuses = [(await http_request(p.port)).status for _ in range(30)]
                assert statuses.count(500) == 2          # ejected after two consecutive 5xx
                assert p.cstats("mixed").outlier_detection__ejections_active == 1
                r = await http_request(p.admin, target="/clusters")
                assert f"mixed::127.0.0.1:{bad.port}::health_flags::/failed_outlier_check" in r.body.decode()
                r = await http_request(p.admin, target="/stats")
                assert "cluster.mixed.outlier_detection.ejections_active: 1" in r.body.decode()
                assert "cluster.slow.upstream_rq_pending_overflow: 2" in r.body.decode()
                # the one pooled connection sits at max_connections: 1, so the breaker is open
                assert "cluster.slow.circuit_breakers.default.cx_open: 1" in r.body.decode()
                assert "cluster.slow.circuit_breakers.default.remaining_cx: 0" in r.body.decode()
                assert "cluster.slow.circuit_breakers.default.remaining_rq: 1024" in r.body.decode()
                prom = (await http_request(p.admin, target="/stats/prometheus")).body.decode()
                assert 'envoy_cluster_circuit_breakers_default_cx_open{envoy_cluster_name="slow"} 1.0' in prom
                assert 'envoy_cluster_upstream_rq_pending_overflow_total{envoy_cluster_name="slow"} 2.0' in prom
    run(go())


def test_active_health_check_marks_hosts():
    async def go():
        async with Upstream(lambda r: Reply(200 if r.target != "/healthz" else 503)) as sick, \
                Upstream(lambda r: Reply(body=b"fine")) as fine:
            async with Proxy(config([{"match": {"prefix": "/"}, "route": {"cluster": "c"}}],
                                    [cluster("c", [sick.port, fine.port], health_checks=[{
                                        "timeout": "0.5s", "interval": "0.2s", "unhealthy_threshold": 1,
                                        "healthy_threshold": 1, "http_health_check": {"path": "/healthz"}}])])) as p:
                bodies = {(await http_request(p.port)).body for _ in range(10)}
                assert bodies == {b"fine"}
                assert any(r.target == "/healthz" and r.headers["user-agent"] == "Envoy/HC" for r in sick.requests)
                r = await http_request(p.admin, target="/clusters")
                assert f"c::127.0.0.1:{sick.port}::health_flags::/failed_active_hc" in r.body.decode()
    run(go())


def test_admin_endpoints():
    async def go():
        async with Upstream() as up:
            cfg = config([{"match": {"prefix": "/"}, "route": {"cluster": "outbound|80|v2|reviews"}}],
                         [cluster("outbound|80|v2|reviews", [up.port])])
            cfg["node"] = {"id": "n", "cluster": "productpage", "metadata": {"WORKLOAD_NAME": "productpage-v1"}}
            async with Proxy(cfg) as p:
                for _ in range(3):
                    assert (await http_request(p.port)).status == 200
                ready = await http_request(p.admin, target="/ready")
                assert ready.status == 200 and ready.body == b"LIVE\n"
                prom = (await http_request(p.admin, target="/stats/prometheus")).body.decode()
                assert ('istio_requests_total{destination_service="reviews",destination_version="v2",'
                        'response_code="200",response_flags="-",source_workload="productpage-v1"} 3.0') in prom
                assert "istio_request_duration_milliseconds_bucket{" in prom
                assert 'envoy_cluster_upstream_rq_total{envoy_cluster_name="outbound|80|v2|reviews"} 3.0' in prom
                info = (await http_request(p.admin, target="/server_info")).body.decode()
                assert '"state": "LIVE"' in info
                dump = (await http_request(p.admin, target="/config_dump")).body.decode()
                assert "BootstrapConfigDump" in dump
                assert (await http_request(p.admin, target="/quitquitquit")).status == 405
                assert (await http_request(p.admin, "POST", "/quitquitquit")).status == 200
                await asyncio.wait_for(p.server.wait_stopped(), 2)
    run(go())


def test_tcp_proxy():
    async def go():
        async def echo(reader, writer):
            writer.write(b"echo:" + await reader.read(100))
            await writer.drain()
            writer.close()
        srv = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        cfg = {"static_resources": {"listeners": [{"name": "main", "address": {"socket_address": {
            "address": "127.0.0.1", "port_value": 0}}, "filter_chains": [{"filters": [{
                "name": "envoy.tcp_proxy", "config": {"stat_prefix": "tcp", "cluster": "c"}}]}]}],
            "clusters": [cluster("c", [port])]}}
        s = Server(parse_bootstrap(cfg))
        await s.start()
        r, w = await asyncio.open_connection("127.0.0.1", s.listener_manager.bound_port("main"))
        w.write(b"ping")
        assert await asyncio.wait_for(r.read(100), 5) == b"echo:ping"
        w.close()
        await s.stop()
        srv.close()
    run(go())


def _rss_kb(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_cli_streams_large_body_with_bounded_memory_and_survives_garbage(tmp_path):
    """200 MB up through the real `python -m proxy` process; its RSS must stay bounded."""
    async def go():
        async with Upstream(count_only=True) as up:
            cfg = config([{"match": {"prefix": "/"}, "route": {"cluster": "c", "timeout": "60s"}}],
                         [cluster("c", [up.port])])
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            sock.close()
            cfg["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = port
            del cfg["admin"]
            path = tmp_path / "p.yaml"
            path.write_text(yaml.safe_dump(cfg))
            proc = subprocess.Popen([sys.executable, "-m", "proxy", "-c", str(path), "--concurrency", "2"], cwd=ROOT)
            try:
                for _ in range(100):
                    try:
                        socket.create_connection(("127.0.0.1", port), 0.1).close()
                        break
                    except OSError:
                        await asyncio.sleep(0.05)
                rss0 = _rss_kb(proc.pid)
                r, w = await asyncio.open_connection("127.0.0.1", port)
                total = 200 * 1024 * 1024
                w.write(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % total)
                chunk = b"z" * (1 << 20)
                peak = 0
                for i in range(200):
                    w.write(chunk)
                    await w.drain()
                    if i % 20 == 0:
                        peak = max(peak, _rss_kb(proc.pid))
                resp = await asyncio.wait_for(r.read(4096), 30)
                assert resp.startswith(b"HTTP/1.1 200") and up.body_bytes == total
                assert peak - rss0 < 30 * 1024, (rss0, peak)       # bounded: < 30 MB growth for 200 MB
                w.close()
                # garbage and a slow partial request must not take the process down
                for junk in (b"\x00\xff garbage\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n"):
                    r2, w2 = await asyncio.open_connection("127.0.0.1", port)
                    w2.write(junk)
                    assert (await asyncio.wait_for(r2.read(4096), 5)).startswith(b"HTTP/1.1 400")
                    w2.close()
                assert (await http_request(port)).status == 200 and proc.poll() is None
            finally:
                proc.terminate()
                proc.wait(10)
    run(go())
