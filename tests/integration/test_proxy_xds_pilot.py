"""minimesh-proxy (REST xDS client) against Pilot on loopback, mirroring
test_pilot_envoy.py with our sidecar in Envoy's place: config delivery, routing per
VirtualService, push latency, endpoint removal, Pilot down and back, NACKs, and cluster
removal draining in-flight requests. No root needed: everything binds to 127.0.0.x, and
every process started here is stopped in a finally block."""
from __future__ import annotations

import asyncio
import collections
import json
import math
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from testbed.mesh import xds
from testbed.mesh.model import ServiceSpec, VersionSpec
from testbed.mesh.pilot import Pilot
from testbed.mesh.xds import NodeInfo, XdsSource, sidecar_bootstrap

pytestmark = pytest.mark.slow  # ~2 s per test: a Pilot and a proxy process each
REPO = Path(__file__).resolve().parents[2]
SOURCE = XdsSource(refresh_delay_ms=50, request_timeout_ms=10000)
UP_IPS = {"v1": "127.0.0.21", "v2": "127.0.0.22"}
RULES = """
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: echo}
spec:
  host: echo
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""
SPLIT_90_10 = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo}
spec:
  hosts: [echo]
  http:
  - route:
    - destination: {host: echo, subset: v1}
      weight: 90
    - destination: {host: echo, subset: v2}
      weight: 10
"""
BY_USER_AGENT = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo}
spec:
  hosts: [echo]
  http:
  - match:
    - headers: {user-agent: {regex: ".*Android.*"}}
    route:
    - destination: {host: echo, subset: v2}
  - match:
    - headers: {user-agent: {regex: ".*iPhone.*"}}
    route:
    - destination: {host: echo, subset: v1}
"""
ALL_TO_V2 = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo}
spec:
  hosts: [echo]
  http:
  - route:
    - destination: {host: echo, subset: v2}
"""


def free_port(ip: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


class Mesh:
    """Two echo upstreams (v1, v2; `/slow` answers after 1 s), Pilot, one minimesh-proxy."""

    def __init__(self, tmp: Path, pilot_late: bool = False) -> None:
        self.tmp, self.pilot_late = tmp, pilot_late
        self.events: list[dict] = []
        self.port, self.out_port, self.admin = free_port(), free_port(), free_port()
        self.svc = ServiceSpec("echo", self.port, (VersionSpec("v1"), VersionSpec("v2")))
        self.node = NodeInfo.make("127.0.0.30", "curl-0", "client", labels={"app": "curl"},
                                  outbound_address="127.0.0.1", outbound_port=self.out_port)
        self.eps = [dict(service="echo", version=v, instance=f"echo-{v}-0", host=f"h{v}", ip=ip,
                         port=self.port, labels={}) for v, ip in UP_IPS.items()]
        self.poison = False
        self.pilot: Pilot | None = None
        self.proxy: subprocess.Popen | None = None

    def builder(self, state, node, type_url, names, source):
        res = xds.build(state, node, type_url, names, source)
        if self.poison and type_url == xds.ROUTE:   # a field minimesh-proxy rejects
            res = json.loads(json.dumps(res).replace('"validate_clusters"', '"not_a_field"'))
        return res

    async def start_pilot(self, port: int = 0) -> None:
        self.pilot = Pilot([self.svc], self.eps, hold_s=2.0, on_event=self.events.append,
                           builder=self.builder,
                           source=SOURCE)
        self.pilot_port = await self.pilot.start("127.0.0.1", port)

    async def __aenter__(self) -> "Mesh":
        self.runners = []
        try:
            for version, ip in UP_IPS.items():
                async def answer(r: web.Request, version: str = version) -> web.Response:
                    if r.path == "/slow":
                        await asyncio.sleep(1.0)
                    return web.json_response({"service": "echo", "version": version})
                app = web.Application()
                app.router.add_get("/{tail:.*}", answer)
                runner = web.AppRunner(app, access_log=None)
                await runner.setup()
                await web.TCPSite(runner, ip, self.port).start()
                self.runners.append(runner)
            if self.pilot_late:        # the proxy starts first: Pilot is not there yet
                self.pilot_port = free_port()
            else:
                await self.start_pilot()
            cfg = sidecar_bootstrap(self.node, ("127.0.0.1", self.pilot_port), self.admin, source=SOURCE)
            for key in ("cds_config", "lds_config"):
                cfg["dynamic_resources"][key]["initial_fetch_timeout"] = "1s"
            boot = self.tmp / "bootstrap.json"
            boot.write_text(json.dumps(cfg))
            self.log = open(self.tmp / "proxy.log", "wb")
            self.proxy = subprocess.Popen([sys.executable, "-m", "proxy", "-c", str(boot), "-l", "info"],
                                          cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT)
            self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=20))
            if not self.pilot_late:
                await self.wait_for(lambda: self.acked("routes") and self.acked("endpoints"), 15)
            await self.wait_ready()
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        if hasattr(self, "http"):
            await self.http.close()
        if self.proxy is not None:
            self.proxy.terminate()
            try:
                self.proxy.wait(5)
            except subprocess.TimeoutExpired:
                self.proxy.kill()
                self.proxy.wait()
            self.log.close()
        if self.pilot is not None:
            await self.pilot.stop()
        for r in self.runners:
            await r.cleanup()

    async def wait_ready(self) -> None:
        for _ in range(500):
            try:
                async with self.http.get(f"http://127.0.0.1:{self.admin}/ready") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.02)
        raise AssertionError("proxy not ready: " + self.proxy_log())

    def proxy_log(self) -> str:
        return (self.tmp / "proxy.log").read_text()[-3000:]

    def acked(self, type_: str, version: str = "") -> bool:
        return any(e["event"] == "ack" and e["type"] == type_ and e["version"].startswith(version)
                   for e in self.events)

    async def wait_for(self, cond, timeout: float) -> float:
        t0 = time.monotonic()
        while not cond():
            assert time.monotonic() - t0 < timeout, "timed out; proxy log:\n" + self.proxy_log()
            await asyncio.sleep(0.002)
        return time.monotonic() - t0

    async def get(self, path: str = "/", **headers: str) -> tuple[int, str]:
        async with self.http.get(f"http://127.0.0.1:{self.out_port}{path}",
                                 headers={"Host": f"echo:{self.port}", **headers}) as r:
            body = await r.json() if r.status == 200 else {}
            return r.status, body.get("version", "")

    async def versions(self, n: int, **headers: str) -> collections.Counter:
        sem = asyncio.Semaphore(16)

        async def one() -> tuple[int, str]:
            async with sem:
                return await self.get(**headers)
        return collections.Counter(await asyncio.gather(*(one() for _ in range(n))))

    async def admin_text(self, path: str) -> str:
        async with self.http.get(f"http://127.0.0.1:{self.admin}{path}") as r:
            return await r.text()

    async def stat(self, name: str) -> float:
        text = await self.admin_text(f"/stats?filter=^{name.replace('|', '[|]')}$")
        return float(text.split(": ")[1])


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


def test_proxy_gets_all_four_resource_types(tmp_path):
    async def body():
        async with Mesh(tmp_path) as m:
            dump = json.loads(await m.admin_text("/config_dump"))
            kinds = {c["@type"].rsplit(".", 1)[-1]: c for c in dump["configs"]}
            assert [l["name"] for l in kinds["ListenersConfigDump"]["dynamic_listeners"]] == ["virtualOutbound"]
            assert {c["cluster"]["name"] for c in kinds["ClustersConfigDump"]["dynamic_active_clusters"]} == \
                {f"outbound|{m.port}||echo"}
            text = await m.admin_text("/clusters")
            for ip in UP_IPS.values():
                assert f"outbound|{m.port}||echo::{ip}:{m.port}::health_flags::healthy" in text
            got = await m.versions(100)        # no VirtualService: round robin over both
            assert got == {(200, "v1"): 50, (200, "v2"): 50}
            await asyncio.sleep(2.5)           # idle polls are held and answered 304
            stats = await m.admin_text("/stats?filter=rds.15001.update")
            assert "update_failure: 0" in stats and "update_rejected: 0" in stats
            assert await m.stat("control_plane.connected") == 1
            assert await m.stat(f"http.outbound_{m.out_port}.rds.15001.update_success") >= 2
            assert (await m.get())[0] == 200
            assert "xDS rds 15001: applied version" in m.proxy_log()
    run(body())


def test_weighted_90_10_within_3_sigma(tmp_path):
    async def body():
        async with Mesh(tmp_path) as m:
            m.pilot.apply_text(RULES + "---" + SPLIT_90_10, "rules.yaml")
            gen = m.pilot.generation
            await m.wait_for(lambda: m.acked("routes", f"{gen}-"), 2)
            n = 2000
            got = await m.versions(n)
            assert got[(200, "v1")] + got[(200, "v2")] == n, got
            sigma = math.sqrt(n * 0.1 * 0.9)
            assert abs(got[(200, "v2")] - 0.1 * n) <= 3 * sigma, got
            print(f"90/10: v2 got {got[(200, 'v2')]} of {n} (expected 200 +- {3 * sigma:.0f})")
    run(body())


def test_header_routing_is_exact_and_apply_reaches_proxy_fast(tmp_path):
    async def body():
        async with Mesh(tmp_path) as m:
            m.pilot.apply_text(RULES + "---" + SPLIT_90_10, "rules.yaml")
            await m.wait_for(lambda: m.acked("routes", f"{m.pilot.generation}-"), 2)
            took = []
            for i in range(11):
                text = BY_USER_AGENT if i % 2 == 0 else SPLIT_90_10  # alternate, end on UA
                m.pilot.apply_text(text, "ua.yaml")
                gen = m.pilot.generation
                took.append(await m.wait_for(lambda: m.acked("routes", f"{gen}-"), 2))
            assert max(took) < 0.5, took
            android = await m.versions(200, **{"User-Agent": "Mozilla/5.0 (Linux; Android 14)"})
            iphone = await m.versions(200, **{"User-Agent": "Mozilla/5.0 (iPhone; iOS 17)"})
            other = await m.versions(20, **{"User-Agent": "curl/8"})
            assert android == {(200, "v2"): 200}
            assert iphone == {(200, "v1"): 200}
            assert other == {(404, ""): 20}
            took.sort()
            print(f"apply->ACK ms min/p50/max: {took[0] * 1e3:.0f}/{took[5] * 1e3:.0f}/{took[-1] * 1e3:.0f}")
    run(body())


def test_endpoint_removal_reaches_proxy_within_500ms(tmp_path):
    async def body():
        async with Mesh(tmp_path) as m:
            cluster = f"outbound|{m.port}||echo"
            m.pilot.update_endpoints([e for e in m.eps if e["version"] == "v1"])
            gen = m.pilot.generation
            t0 = time.monotonic()
            took = await m.wait_for(lambda: m.acked("endpoints", f"{gen}-"), 2)
            assert took < 0.5, took
            assert UP_IPS["v2"] not in await m.admin_text("/clusters")
            seen = time.monotonic() - t0
            assert await m.versions(50) == {(200, "v1"): 50}
            assert await m.stat(f"cluster.{cluster}.update_success") >= 2
            print(f"endpoint removal -> proxy ACK {took * 1e3:.0f} ms (seen in /clusters {seen * 1e3:.0f} ms)")
    run(body())


def test_pilot_stopped_traffic_continues_then_restarted_proxy_resyncs(tmp_path):
    async def body():
        async with Mesh(tmp_path) as m:
            m.pilot.apply_text(RULES + "---" + BY_USER_AGENT, "ua.yaml")
            await m.wait_for(lambda: m.acked("routes", f"{m.pilot.generation}-"), 2)
            await m.pilot.stop()
            await asyncio.sleep(1.0)
            assert await m.stat("control_plane.connected") == 0
            stale1 = await m.stat("control_plane.seconds_since_last_update")
            assert await m.versions(100, **{"User-Agent": "Android"}) == {(200, "v2"): 100}
            assert await m.versions(100, **{"User-Agent": "iPhone"}) == {(200, "v1"): 100}
            await asyncio.sleep(1.0)
            stale2 = await m.stat("control_plane.seconds_since_last_update")
            assert 0.5 <= stale1 < stale2 and stale2 - stale1 >= 0.9, (stale1, stale2)
            assert await m.stat("cluster_manager.cds.update_failure") >= 1
            # a fresh Pilot on the same port, with other rules: the proxy resyncs
            m.events.clear()
            t0 = time.monotonic()
            await m.start_pilot(m.pilot_port)
            m.pilot.apply_text(RULES + "---" + ALL_TO_V2, "v2.yaml")
            gen = m.pilot.generation
            await m.wait_for(lambda: m.acked("routes", f"{gen}-"), 5)
            took = time.monotonic() - t0
            assert await m.versions(50, **{"User-Agent": "iPhone"}) == {(200, "v2"): 50}
            assert await m.stat("control_plane.connected") == 1
            assert await m.stat("control_plane.seconds_since_last_update") < 2.5
            print(f"staleness {stale1:.2f} -> {stale2:.2f} s; resync after restart {took * 1e3:.0f} ms")
    run(body())


def test_nack_keeps_last_good_config(tmp_path):
    async def body():
        async with Mesh(tmp_path) as m:
            m.pilot.apply_text(RULES + "---" + SPLIT_90_10, "rules.yaml")
            await m.wait_for(lambda: m.acked("routes", f"{m.pilot.generation}-"), 2)
            m.poison = True
            m.pilot.apply_text(BY_USER_AGENT, "ua.yaml")
            await m.wait_for(lambda: any(e["event"] == "nack" and e["type"] == "routes" for e in m.events), 2)
            nack = [e for e in m.events if e["event"] == "nack"][0]
            assert "unsupported field 'not_a_field'" in nack["error"], nack
            prefix = f"http.outbound_{m.out_port}.rds.15001"
            assert await m.stat(f"{prefix}.update_rejected") == 1
            got = await m.versions(200, **{"User-Agent": "Android"})     # still the 90/10 split
            assert got[(200, "v1")] + got[(200, "v2")] == 200 and got[(200, "v2")] < 60
            await asyncio.sleep(0.5)
            assert sum(e["event"] == "nack" for e in m.events) == 1     # not pushed again
            m.poison = False
            m.pilot.apply_text(BY_USER_AGENT.replace("iPhone", "iPad"), "ua.yaml")
            gen = m.pilot.generation
            await m.wait_for(lambda: m.acked("routes", f"{gen}-"), 2)
            assert await m.versions(50, **{"User-Agent": "Android"}) == {(200, "v2"): 50}
            assert "rejected update" in m.proxy_log()
    run(body())


def test_removed_cluster_drains_in_flight_requests(tmp_path):
    async def body():
        async with Mesh(tmp_path) as m:
            m.pilot.apply_text(RULES + "---" + ALL_TO_V2, "v2.yaml")
            await m.wait_for(lambda: m.acked("routes", f"{m.pilot.generation}-"), 2)
            v2 = f"outbound|{m.port}|v2|echo"
            assert v2 in await m.admin_text("/clusters")
            slow = asyncio.ensure_future(m.get("/slow"))
            await asyncio.sleep(0.2)
            m.pilot.apply_texts([(RULES.replace("  - {name: v2, labels: {version: v2}}\n", ""), "dr.yaml"),
                                 (ALL_TO_V2.replace("subset: v2", "subset: v1"), "vs.yaml")])
            gen = m.pilot.generation
            await m.wait_for(lambda: m.acked("clusters", f"{gen}-"), 2)
            assert v2 not in await m.admin_text("/clusters")
            assert not slow.done()
            assert await slow == (200, "v2")        # the in-flight request finished on v2
            await m.wait_for(lambda: m.acked("routes", f"{gen}-"), 2)
            assert await m.versions(20) == {(200, "v1"): 20}
    run(body())


def test_proxy_started_before_pilot_serves_after_initial_fetch_timeout_then_syncs(tmp_path):
    async def body():
        t0 = time.monotonic()
        async with Mesh(tmp_path, pilot_late=True) as m:
            ready = time.monotonic() - t0       # CDS then LDS initial_fetch_timeout (1 s each)
            assert await m.stat("control_plane.connected") == 0
            assert await m.stat("cluster_manager.cds.update_failure") >= 1
            assert "virtualOutbound" not in await m.admin_text("/listeners")
            await m.start_pilot(m.pilot_port)
            took = await m.wait_for(lambda: m.acked("routes") and m.acked("endpoints"), 5)
            assert await m.versions(20) == {(200, "v1"): 10, (200, "v2"): 10}
            assert await m.stat("control_plane.connected") == 1
            print(f"ready without Pilot after {ready:.1f} s; synced {took * 1e3:.0f} ms after Pilot started")
    run(body())
