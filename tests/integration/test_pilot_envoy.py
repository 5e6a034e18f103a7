"""Real Envoy (REST xDS) against Pilot on loopback: config delivery, routing per
VirtualService, push latency, rejected applies and NACKs. No root needed: everything
binds to 127.0.0.x. Every process started here is stopped on every exit path (tests.support.pilot)."""
from __future__ import annotations

import asyncio
import json
import math
import subprocess
import time
from pathlib import Path

import pytest

from testbed.mesh.pilot.server import ApplyRejected
from testbed.mesh.pilot.resources import NodeInfo, XdsSource
from tests.support.pilot import BY_USER_AGENT, SPLIT_90_10, SUBSETS as RULES, UP_IPS, PilotMesh, stop_process
from tests.support.ports import free_port

pytestmark = pytest.mark.slow  # real Envoy: the `envoy_bin` fixture skips without it


class Mesh(PilotMesh):
    """Two echo upstreams (v1, v2), Pilot, and one real Envoy as a client sidecar (or, with
    ``as_service``, as echo-v3-0's sidecar: inbound 127.0.0.30:port -> app 127.0.0.1:app_port)."""
    POISON = (".*Android.*", "(?=.*Android).*")      # RE2 has no lookahead: Envoy NACKs
    LOG = "envoy.log"

    def __init__(self, tmp: Path, envoy: str, as_service: bool = False) -> None:
        super().__init__(tmp, XdsSource(refresh_delay_ms=50, request_timeout_ms=10000), events_file=True)
        self.envoy_bin = envoy
        self.app_port = free_port()
        self.envoy: subprocess.Popen | None = None
        if as_service:
            self.node = NodeInfo.make("127.0.0.30", "echo-v3-0", "echo",
                                      labels={"app": "echo", "version": "v3"},
                                      app_port=self.app_port, outbound_address="127.0.0.1",
                                      outbound_port=self.out_port,
                                      access_log=str(self.tmp / "access.jsonl"))

    def upstream_sites(self) -> list[tuple[str, str, int]]:
        return super().upstream_sites() + [("local", "127.0.0.1", self.app_port)]

    async def start_sidecar(self, bootstrap: dict) -> None:
        boot = self.tmp / "bootstrap.json"
        boot.write_text(json.dumps(bootstrap))
        self.envoy = subprocess.Popen(
            [self.envoy_bin, "-c", str(boot), "--concurrency", "1", "--disable-hot-restart",
             "-l", "warning",
             "--file-flush-interval-msec", "50",
             "--log-path", str(self.tmp / self.LOG)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop_sidecar(self) -> None:
        if self.envoy is not None:
            stop_process(self.envoy)

    async def ready(self) -> None:
        await self.wait_for(lambda: self.acked("routes") and self.acked("clusters"), 10)


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def tmp(tmp_path: Path, envoy_bin: str) -> tuple[Path, str]:
    return tmp_path, envoy_bin


def test_envoy_gets_all_four_resource_types(tmp):
    async def body():
        async with Mesh(*tmp) as m:
            dump = await m.admin_json("/config_dump")
            kinds = {c["@type"].rsplit(".", 1)[-1]: c for c in dump["configs"]}
            listeners = [lst["active_state"]["listener"]["name"]
                         for lst in kinds["ListenersConfigDump"]["dynamic_listeners"]]
            assert listeners == ["virtualOutbound"]
            routes = [r["route_config"]["name"]
                      for r in kinds["RoutesConfigDump"]["dynamic_route_configs"]]
            assert routes == ["15001"]
            clusters = {c["cluster"]["name"]
                        for c in kinds["ClustersConfigDump"]["dynamic_active_clusters"]}
            assert clusters == {f"outbound|{m.port}||echo"}
            text = await m.admin_text("/clusters")
            for ip in UP_IPS.values():
                assert f"outbound|{m.port}||echo::{ip}:{m.port}::health_flags::healthy" in text
            # no VirtualService yet: round robin over both versions
            got = await m.versions(100)
            assert got[(200, "v1")] + got[(200, "v2")] == 100 and min(got.values()) >= 40
            # an idle subscription is held and answered 304: Envoy must stay happy
            await asyncio.sleep(2.5)
            stats = await m.admin_text("/stats?filter=rds.15001.update")
            assert "update_failure: 0" in stats and "update_rejected: 0" in stats
            assert (await m.get())[0] == 200
    run(body())


def test_weighted_90_10_within_3_sigma(tmp):
    async def body():
        async with Mesh(*tmp) as m:
            await m.apply(RULES + "---\n" + SPLIT_90_10)
            gen = m.pilot.generation
            await m.wait_for(lambda: m.acked("endpoints", f"{gen}-"), 2)
            n = 2000
            got = await m.versions(n)
            assert got[(200, "v1")] + got[(200, "v2")] == n, got
            sigma = math.sqrt(n * 0.1 * 0.9)
            assert abs(got[(200, "v2")] - 0.1 * n) <= 3 * sigma, got
    run(body())


def test_header_routing_is_exact_and_apply_reaches_envoy_fast(tmp):
    async def body():
        async with Mesh(*tmp) as m:
            await m.apply(RULES + "---\n" + SPLIT_90_10)
            t0 = time.monotonic()
            took = await m.apply(BY_USER_AGENT, "ua.yaml")
            assert took < 0.5, f"apply -> Envoy ACK took {took * 1000:.0f} ms"
            android = await m.versions(200, **{"User-Agent": "Mozilla/5.0 (Linux; Android 14)"})
            iphone = await m.versions(200, **{"User-Agent": "Mozilla/5.0 (iPhone; iOS 17)"})
            other = await m.versions(20, **{"User-Agent": "curl/8"})
            assert android == {(200, "v2"): 200}
            assert iphone == {(200, "v1"): 200}
            assert other == {(404, ""): 20}  # Istio semantics: no catch-all, no route
            print(f"apply->ACK {took * 1000:.1f} ms (since apply call "
                  f"{(time.monotonic() - t0) * 1000:.0f} ms incl. traffic)")
    run(body())


def test_pilot_stopped_envoy_keeps_routing_on_last_config(tmp):
    async def body():
        async with Mesh(*tmp) as m:
            await m.apply(RULES + "---\n" + BY_USER_AGENT, "ua.yaml")
            await m.pilot.stop()
            await asyncio.sleep(1.0)  # several failed polls (refresh 50 ms)
            stats = await m.admin_text("/stats?filter=rds.15001.update_failure")
            assert int(stats.split("update_failure: ")[1].split()[0]) >= 1
            assert await m.versions(100, **{"User-Agent": "Android"}) == {(200, "v2"): 100}
            assert await m.versions(100, **{"User-Agent": "iPhone"}) == {(200, "v1"): 100}
    run(body())


def test_invalid_rule_rejected_and_nack_keeps_last_good_config(tmp):
    async def body():
        async with Mesh(*tmp) as m:
            await m.apply(RULES + "---\n" + SPLIT_90_10)
            gen, rules = m.pilot.generation, m.pilot.state.rules
            pushes = sum(e["event"] == "push" for e in m.events)
            bad = SPLIT_90_10.replace("subset: v2", "subset: v9")
            with pytest.raises(ApplyRejected) as err:
                m.pilot.apply_text(bad, "bad.yaml")
            assert [x.code for x in err.value.messages] == ["IST0101"]
            assert "bad.yaml:11" in err.value.messages[0].format()
            await asyncio.sleep(0.3)
            assert (m.pilot.generation, m.pilot.state.rules) == (gen, rules)
            assert sum(e["event"] == "push" for e in m.events) == pushes
            # Galley rejects non-RE2 regexes too ...
            with pytest.raises(ApplyRejected) as err:
                m.pilot.apply_text(BY_USER_AGENT.replace(".*Android.*", "(?=.*Android).*"))
            assert [x.code for x in err.value.messages] == ["IST0122"]
            # ... so a builder bug stands in for "config Envoy rejects": the NACK is seen,
            # the node stays on its old routes and the bad content is not pushed again.
            m.poison = True
            m.pilot.apply_text(BY_USER_AGENT, "ua.yaml")
            await m.wait_for(lambda: any(e["event"] == "nack" and e["type"] == "routes"
                                         for e in m.events), 2)
            stats = await m.admin_text("/stats?filter=rds.15001.update_rejected")
            assert "update_rejected: 1" in stats
            got = await m.versions(200, **{"User-Agent": "Android"})
            assert got[(200, "v1")] + got[(200, "v2")] == 200 and got[(200, "v2")] < 60
            await asyncio.sleep(0.5)  # the NACKed content is not pushed again
            assert sum(e["event"] == "nack" for e in m.events) == 1
            # a good config afterwards is accepted
            m.poison = False
            await m.apply(BY_USER_AGENT.replace("iPhone", "iPad"), "ua.yaml")
            assert await m.versions(50, **{"User-Agent": "Android"}) == {(200, "v2"): 50}
    run(body())


RICH = """
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: echo}
spec:
  host: echo.default.svc.cluster.local
  trafficPolicy:
    loadBalancer: {simple: LEAST_REQUEST}
    connectionPool:
      tcp: {maxConnections: 100, connectTimeout: 250ms}
      http: {http1MaxPendingRequests: 10, http2MaxRequests: 100, maxRetries: 3}
    outlierDetection: {consecutive5xxErrors: 5, consecutiveGatewayErrors: 3, interval: 1s,
                       baseEjectionTime: 30s, maxEjectionPercent: 50}
  subsets:
  - {name: v1, labels: {version: v1}}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      loadBalancer: {consistentHash: {httpHeaderName: x-user}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo}
spec:
  hosts: [echo]
  http:
  - name: abort
    match: [{uri: {exact: /abort}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: echo, subset: v1}}]
  - name: delay
    match: [{uri: {prefix: /slow}, method: {exact: GET}}]
    fault: {delay: {fixedDelay: 300ms, percentage: {value: 100}}}
    timeout: 2s
    route: [{destination: {host: echo, subset: v2}}]
  - name: rest
    match: [{uri: {regex: "/r/[0-9]+"}}, {headers: {x-canary: {prefix: "yes"}}}]
    retries: {attempts: 3, perTryTimeout: 500ms, retryOn: "5xx,connect-failure"}
    mirror: {host: echo, subset: v1}
    mirrorPercentage: {value: 50}
    route: [{destination: {host: echo, subset: v2}}]
  - route: [{destination: {host: echo, subset: v1, port: {number: PORT}}}]
"""


def test_every_rule_feature_is_accepted_by_envoy_and_inbound_works(tmp):
    async def body():
        async with Mesh(*tmp, as_service=True) as m:
            m.pilot.apply_text(RICH.replace("PORT", str(m.port)), "rich.yaml")
            gen = m.pilot.generation
            await m.wait_for(lambda: all(m.acked(t, f"{gen}-")
                                         for t in ("routes", "clusters", "endpoints")), 3)
            assert not [e for e in m.events if e["event"] == "nack"]
            assert await m.get("/abort") == (418, "")
            t0 = time.monotonic()
            assert await m.get("/slow/x") == (200, "v2")
            assert 0.28 <= time.monotonic() - t0 < 1.5
            # sequential: 16 parallel requests would overflow http1MaxPendingRequests: 10
            assert {await m.get(**{"x-canary": "yes-please"}) for _ in range(10)} == {(200, "v2")}
            assert (await m.get("/r/42"))[1] == "v2" and (await m.get("/r/x"))[1] == "v1"
            dump = json.dumps(await m.admin_json("/config_dump"))
            for needle in ('"lb_policy": "LEAST_REQUEST"', '"lb_policy": "RING_HASH"',
                           '"consecutive_gateway_failure": 3', '"max_pending_requests": 10',
                           '"num_retries": 3', '"request_mirror_policies"',
                           '"header_name": "x-user"', "inbound|%d||echo" % m.port):
                assert needle in dump, needle
            # inbound listener on the node's own address forwards to the local app
            async with m.http.get(f"http://127.0.0.30:{m.port}/") as r:
                assert (r.status, (await r.json())["version"]) == (200, "local")
            # the JSON access log has one line per request, outbound and inbound
            logged = []
            for _ in range(100):
                path = m.tmp / "access.jsonl"
                logged = [json.loads(x) for x in path.read_text().splitlines()] \
                    if path.exists() else []
                if any(x["listener"] == f"inbound_{m.port}" for x in logged):
                    break
                await asyncio.sleep(0.05)
            abort = [x for x in logged if x["path"] == "/abort"]
            assert abort and abort[0]["code"] == 418 and abort[0]["flags"] == "FI"
            assert [x["upstream_cluster"] for x in logged if x["listener"].startswith("inbound")] \
                == [f"inbound|{m.port}||echo"]
    run(body())
