"""The mesh's traffic capture with real Envoy, in a network namespace of its own:
iptables nat OUTPUT redirects TCP for the VIP range to the sidecar's outbound listener
(0.0.0.0:15001), which routes by Host (service name or VIP) per Pilot's config.

Everything (two echo upstreams, Pilot, Envoy, the client) runs inside namespace
`mmcp-cap-<pid>`; the namespace, its iptables rule and every process are removed on
every exit path."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testbed.mesh.model import service_vips
from testbed.mesh.pilot.resources import NodeInfo, XdsSource, sidecar_bootstrap

pytestmark = [pytest.mark.root, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
PORT, PILOT, ADMIN = 8080, 15010, 15000

MESH_SIDE = r"""
import asyncio, json, signal, sys
from aiohttp import web
from testbed.mesh.pilot.server import Pilot
from testbed.mesh.model import ServiceSpec, VersionSpec
from testbed.mesh.pilot.resources import XdsSource
port, pilot_port, events, rules = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]

async def main():
    runners = []
    for version, ip in (("v1", "127.0.0.21"), ("v2", "127.0.0.22")):
        async def answer(r, version=version):
            return web.json_response({"version": version, "host": r.headers.get("Host")})
        app = web.Application(); app.router.add_get("/{t:.*}", answer)
        run = web.AppRunner(app, access_log=None); await run.setup()
        await web.TCPSite(run, ip, port).start(); runners.append(run)
    eps = [dict(service="echo", version=v, instance=f"echo-{v}", host="h", ip=ip, port=port)
           for v, ip in (("v1", "127.0.0.21"), ("v2", "127.0.0.22"))]
    pilot = Pilot([ServiceSpec("echo", port, (VersionSpec("v1"), VersionSpec("v2")))], eps,
                  events_path=events, hold_s=5, source=XdsSource(request_timeout_ms=10000))
    pilot.apply_text(open(rules).read(), rules)
    await pilot.start("127.0.0.1", pilot_port)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await pilot.stop()
    for r in runners: await r.cleanup()
asyncio.run(main())
"""

CLIENT = r"""
import collections, http.client, json, sys
vip, port, n, host, agent = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:6]
got = collections.Counter()
for _ in range(n):
    c = http.client.HTTPConnection(vip, port, timeout=5)
    c.request("GET", "/", headers={"Host": host, "User-Agent": agent})
    r = c.getresponse(); body = r.read(); c.close()
    got[f"{r.status} {json.loads(body)['version'] if r.status == 200 else ''}"] += 1
print(json.dumps(got))
"""

RULES = """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo}
spec:
  host: echo
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo}
spec:
  hosts: [echo]
  http:
  - match: [{headers: {user-agent: {regex: ".*Android.*"}}}]
    route: [{destination: {host: echo, subset: v2}}]
  - route: [{destination: {host: echo, subset: v1}}]
"""


@pytest.fixture
def netns():
    from pyroute2 import NetNS, netns as nsmod
    name = f"mmcp-cap-{os.getpid()}"
    nsmod.create(name)
    try:
        with NetNS(name) as ns:
            lo = ns.link_lookup(ifname="lo")[0]
            ns.link("set", index=lo, state="up")
            # VIPs must be routable (then iptables captures them) with a usable source
            # address: a route via lo without prefsrc picks 0.0.0.0 and replies get lost
            ns.route("add", dst="10.96.0.0/16", oif=lo, prefsrc="127.0.0.1")
        yield name
    finally:
        nsmod.remove(name)
        assert name not in nsmod.listnetns()


def test_vip_traffic_is_captured_by_the_sidecar_and_routed(netns, envoy_bin, tmp_path):
    def inns(*argv: str) -> list[str]:
        return ["ip", "netns", "exec", netns, *argv]

    subprocess.run(inns("iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d",
                        "10.96.0.0/16", "-j", "REDIRECT", "--to-ports", "15001"), check=True)
    rules, events = tmp_path / "rules.yaml", tmp_path / "events.jsonl"
    rules.write_text(RULES)
    node = NodeInfo.make("127.0.0.30", "client-0", "client", labels={"app": "client"})
    boot = tmp_path / "bootstrap.json"
    boot.write_text(json.dumps(sidecar_bootstrap(node, ("127.0.0.1", PILOT), ADMIN,
                                                 source=XdsSource(request_timeout_ms=10000))))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = []
    try:
        procs.append(subprocess.Popen(inns(sys.executable, "-c", MESH_SIDE, str(PORT),
                                           str(PILOT), str(events), str(rules)), env=env))
        time.sleep(1.0)
        procs.append(subprocess.Popen(
            inns(envoy_bin, "-c", str(boot), "--concurrency", "1", "--disable-hot-restart",
                 "-l", "warning", "--log-path", str(tmp_path / "envoy.log")),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            evs = [json.loads(x) for x in events.read_text().splitlines()] \
                if events.exists() else []
            if {e["type"] for e in evs if e["event"] == "ack"} >= {"routes", "endpoints"}:
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"Envoy never ACKed; log: {(tmp_path / 'envoy.log').read_text()[-2000:]}")
        vip = service_vips(["echo"])["echo"]

        def client(host: str, agent: str, n: int = 50) -> dict:
            out = subprocess.run(inns(sys.executable, "-c", CLIENT, vip, str(PORT), str(n),
                                      host, agent), env=env, capture_output=True, text=True,
                                 timeout=60)
            assert out.returncode == 0, out.stderr[-1000:]
            return json.loads(out.stdout)
        # the client dials the VIP; iptables hands the connection to Envoy, which routes
        # by Host: the service name (as after DNS) or the VIP itself
        assert client(f"echo:{PORT}", "Android") == {"200 v2": 50}
        assert client(f"echo:{PORT}", "iPhone") == {"200 v1": 50}
        assert client(f"{vip}:{PORT}", "Android") == {"200 v2": 50}
        assert client("nosuch:1", "iPhone", 5) == {"404 ": 5}
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
