"""minimesh-proxy (REST xDS client) against Pilot on loopback, mirroring
test_pilot_envoy.py with our sidecar in Envoy's place: config delivery, routing per
VirtualService, push latency, endpoint removal, Pilot down and back, NACKs, and cluster
removal draining in-flight requests. No root needed: everything binds to 127.0.0.x, and
every process started here is stopped on every exit path (tests.support.pilot)."""
from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from testbed.mesh.pilot.resources import XdsSource
from tests.support.pilot import (ALL_TO_V1, ALL_TO_V2, BY_USER_AGENT, SPLIT_90_10, SUBSETS as RULES, UP_IPS,
                                 PilotMesh, stop_process, subsets)

pytestmark = pytest.mark.slow  # ~2 s per test: a Pilot and a proxy process each
REPO = Path(__file__).resolve().parents[2]
SOURCE = XdsSource(refresh_delay_ms=50, request_timeout_ms=10000)


class Mesh(PilotMesh):
    """Two echo upstreams (v1, v2; `/slow` answers after 1 s), Pilot, one minimesh-proxy."""
    POISON = ('"validate_clusters"', '"not_a_field"')   # a field minimesh-proxy rejects
    LOG = "proxy.log"
    POLL_S = 0.002

    def __init__(self, tmp: Path, pilot_late: bool = False) -> None:
        super().__init__(tmp, SOURCE, pilot_late=pilot_late)
        self.proxy: subprocess.Popen | None = None

    async def start_sidecar(self, bootstrap: dict) -> None:
        for key in ("cds_config", "lds_config"):
            bootstrap["dynamic_resources"][key]["initial_fetch_timeout"] = "1s"
        boot = self.tmp / "bootstrap.json"
        boot.write_text(json.dumps(bootstrap))
        self.log = open(self.tmp / self.LOG, "wb")
        self.proxy = subprocess.Popen([sys.executable, "-m", "proxy", "-c", str(boot), "-l", "info"],
                                      cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT)

    def stop_sidecar(self) -> None:
        if self.proxy is not None:
            stop_process(self.proxy)
            self.log.close()

    async def ready(self) -> None:
        if not self.pilot_late:
            await self.wait_for(lambda: self.acked("routes") and self.acked("endpoints"), 15)
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
        return self.log_tail()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


def test_proxy_gets_all_four_resource_types(tmp_path):
    async def body():
        async with Mesh(tmp_path) as m:
            dump = json.loads(await m.admin_text("/config_dump"))
            kinds = {c["@type"].rsplit(".", 1)[-1]: c for c in dump["configs"]}
            assert [lst["name"] for lst in kinds["ListenersConfigDump"]["dynamic_listeners"]] == ["virtualOutbound"]
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
            await m.apply(RULES + "---\n" + SPLIT_90_10)
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
            await m.apply(RULES + "---\n" + SPLIT_90_10)
            took = []
            for i in range(11):
                text = BY_USER_AGENT if i % 2 == 0 else SPLIT_90_10  # alternate, end on UA
                took.append(await m.apply(text, "ua.yaml"))
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
            await m.apply(RULES + "---\n" + BY_USER_AGENT, "ua.yaml")
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
            await m.apply(RULES + "---\n" + ALL_TO_V2, "v2.yaml", timeout=5)
            took = time.monotonic() - t0
            assert await m.versions(50, **{"User-Agent": "iPhone"}) == {(200, "v2"): 50}
            assert await m.stat("control_plane.connected") == 1
            assert await m.stat("control_plane.seconds_since_last_update") < 2.5
            print(f"staleness {stale1:.2f} -> {stale2:.2f} s; resync after restart {took * 1e3:.0f} ms")
    run(body())


def test_nack_keeps_last_good_config(tmp_path):
    async def body():
        async with Mesh(tmp_path) as m:
            await m.apply(RULES + "---\n" + SPLIT_90_10)
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
            await m.apply(BY_USER_AGENT.replace("iPhone", "iPad"), "ua.yaml")
            assert await m.versions(50, **{"User-Agent": "Android"}) == {(200, "v2"): 50}
            assert "rejected update" in m.proxy_log()
    run(body())


def test_removed_cluster_drains_in_flight_requests(tmp_path):
    async def body():
        async with Mesh(tmp_path) as m:
            await m.apply(RULES + "---\n" + ALL_TO_V2, "v2.yaml")
            v2 = f"outbound|{m.port}|v2|echo"
            assert v2 in await m.admin_text("/clusters")
            slow = asyncio.ensure_future(m.get("/slow"))
            await asyncio.sleep(0.2)
            m.pilot.apply_texts([(subsets("v1"), "dr.yaml"), (ALL_TO_V1, "vs.yaml")])
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
