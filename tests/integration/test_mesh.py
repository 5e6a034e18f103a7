"""The mesh on Mininet (root): echo v1 x2 + v2 x1 with minimesh-proxy sidecars, a client
sidecar, a real 3-member etcd registry and Pilot on the control-plane host, all from a
topology's mesh: section (testbed.mesh.deploy.mesh.Mesh). Names carry a per-run prefix so
concurrent Mininet tests cannot clash; everything is removed on every exit path.

The service `other` always runs real Envoy as its sidecar (a mixed mesh). Set
MINIMESH_TEST_SIDECAR=envoy to run every other sidecar as real Envoy too."""
from __future__ import annotations

import json
import math
import os
import random
import string
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.pilot import BY_USER_AGENT as RULES_AGENT, SPLIT_90_10, SUBSETS

pytestmark = [pytest.mark.root, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
SIDECAR = os.environ.get("MINIMESH_TEST_SIDECAR", "minimesh")
TTL_S = 2

# the rule files students apply (topologies/mesh-lab/)
RULES_SPLIT = SUBSETS + "---\n" + SPLIT_90_10
RULES_BY_AGENT = SUBSETS + "---\n" + RULES_AGENT
RULES_INVALID = RULES_AGENT.replace("subset: v2", "subset: v9")


def topology_text(p: str) -> str:
    hosts = ["c0", "h1", "h2", "h3", "h4", "e1", "e2", "e3", "cp"]
    lines = ["name: meshtest", "hosts:", *[f"  {p}{h}: {{}}" for h in hosts],
             "switches:", f"  {p}s: {{}}", "links:", *[f"  - {{between: [{p}{h}, {p}s]}}" for h in hosts]]
    return "\n".join(lines) + f"""
mesh:
  registry: {{members: [{p}e1, {p}e2, {p}e3], heartbeat_ms: 50, election_ms: 500, ttl_s: {TTL_S}}}
  control_plane: {{host: {p}cp}}
  clients: [{p}c0]
  services:
    echo:
      port: 8080
      run: builtin:echo
      versions:
        v1: {{replicas: 2}}
        v2: {{replicas: 1, hosts: [{p}h3]}}
    other:
      port: 9090
      run: builtin:echo
      sidecar: envoy
      versions: {{v1: {{hosts: [{p}h4]}}}}
"""


@pytest.fixture(scope="module")
def mesh():
    import testbed.mesh.spec  # noqa: F401  (registers the mesh: section)
    from testbed.mesh.deploy.mesh import Mesh
    from testbed.net.network import Testbed
    from testbed.topology.load import parse_topology

    p = "mm" + "".join(random.choice(string.ascii_lowercase) for _ in range(3))
    topo = parse_topology(topology_text(p), "<test_mesh>")
    t0 = time.monotonic()
    with Testbed(topo, link_backend="auto") as tb:
        with Mesh(tb, topo.sections["mesh"], sidecar_default=SIDECAR) as m:
            m.prefix = p
            m.boot_s = time.monotonic() - t0
            yield m


def client(m) -> str:
    return f"{m.prefix}c0"


def test_boot_registry_and_curl_through_the_client_sidecar(mesh):
    assert mesh.boot_s < 30
    reg = mesh.registry()
    assert sorted(e["instance"] for e in reg["services"]["echo"]) == ["echo-v1-0", "echo-v1-1", "echo-v2-0"]
    assert reg["discovery"]["healthy"]
    status, body = mesh.curl(client(mesh), "http://echo:8080/hello")
    assert status == 200, body
    answer = json.loads(body)
    assert answer["service"] == "echo" and answer["path"] == "/hello"
    assert "x-request-id" in answer["headers"]      # added by the sidecar
    # by VIP too; every instance has app, sidecar and agent running
    assert mesh.curl(client(mesh), "http://10.96.0.1:8080/")[0] == 200
    # (a real-Envoy sidecar also has its SDS agent: Citadel runs in every mesh)
    assert all(set(i.pids) == {"app", "sidecar", "agent"} | ({"sds"} if i.sidecar == "envoy" else set())
               for i in mesh.instances())


def test_mixed_mesh_minimesh_and_envoy_sidecars_reach_each_other(mesh):
    kinds = {i.instance: i.sidecar for i in mesh.instances()}
    assert kinds["other-v1-0"] == "envoy" and kinds["echo-v1-0"] == SIDECAR
    status, body = mesh.curl(client(mesh), "http://other:9090/x")       # client sidecar -> Envoy
    assert status == 200 and json.loads(body)["service"] == "other"
    status, body = mesh.curl(f"{mesh.prefix}h4", "http://echo:8080/y")  # Envoy host -> echo
    assert status == 200 and json.loads(body)["service"] == "echo"


def test_root_namespace_cli_apply_and_registry(mesh, tmp_path):
    rules = tmp_path / "split.yaml"
    rules.write_text(RULES_SPLIT)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = ["--run", str(os.getpid())]
    r = subprocess.run([sys.executable, "-m", "testbed", "registry", *run], capture_output=True,
                       text=True, env=env, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "echo-v2-0" in r.stdout and "4 endpoint(s)" in r.stdout
    r = subprocess.run([sys.executable, "-m", "testbed", "apply", "-f", str(rules), *run],
                       capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 0 and "applied 1 file(s)" in r.stdout, r.stderr
    assert sorted(mesh.status()["rules"]) == ["DestinationRule/echo", "VirtualService/echo"]


def test_90_10_split_over_2000_requests_within_3_sigma(mesh):
    mesh.apply_text(RULES_SPLIT, "split.yaml")
    mesh.wait_ready(10)
    n, p = 2000, 0.10
    r = mesh.requests(client(mesh), "http://echo:8080/", n)
    assert r["errors"] == 0 and r["codes"] == {"200": n}, r
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(r["versions"].get("v2", 0) - n * p) <= 3 * sigma, r["versions"]
    assert r["versions"].get("v1", 0) + r["versions"].get("v2", 0) == n


def test_header_routing_is_100_percent_correct(mesh):
    mesh.apply_text(RULES_BY_AGENT, "agent.yaml")
    mesh.wait_ready(10)
    for agent, version in (("Mozilla/5.0 (Linux; Android 14)", "v2"),
                           ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0)", "v1")):
        r = mesh.requests(client(mesh), "http://echo:8080/", 300, {"User-Agent": agent})
        assert r["versions"] == {version: 300} and r["codes"] == {"200": 300}, (agent, r)
    r = mesh.requests(client(mesh), "http://echo:8080/", 5, {"User-Agent": "curl"})
    assert r["codes"] == {"404": 5}, r


def test_invalid_rule_is_rejected_and_nothing_changes(mesh, tmp_path):
    from testbed.mesh.deploy.mesh import ApplyError
    mesh.apply_text(RULES_BY_AGENT, "agent.yaml")
    before = mesh.status()
    with pytest.raises(ApplyError) as e:
        mesh.apply_text(RULES_INVALID, "bad.yaml")
    assert any(line.startswith("Error [IST0101]") and "bad.yaml:" in line and "v9" in line
               for line in e.value.errors), e.value.errors
    bad = tmp_path / "bad.yaml"
    bad.write_text(RULES_INVALID)
    r = subprocess.run([sys.executable, "-m", "testbed", "apply", "-f", str(bad), "--run", str(os.getpid())],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=30)
    assert r.returncode == 1 and "IST0101" in r.stderr and "nothing was changed" in r.stderr
    after = mesh.status()
    assert after["generation"] == before["generation"] and after["rules"] == before["rules"]
    r = mesh.requests(client(mesh), "http://echo:8080/", 100, {"User-Agent": "Android"})
    assert r["versions"] == {"v2": 100}, r


def _events(mesh, since: float) -> list[dict]:
    return [e for e in mesh.iter_events() if e["t"] >= since]


def _leaves_registry_and_eds_reaches_every_sidecar(mesh, victim, kill) -> tuple[float, float]:
    """Run ``kill()``; assert the victim leaves the registry within the TTL and every live
    sidecar ACKs an EDS update within 500 ms of Pilot seeing the removal. Returns
    (seconds to leave the registry, worst EDS delay)."""
    t_kill = time.time()
    kill()
    deadline = t_kill + TTL_S + 3
    while time.time() < deadline:
        names = [e["instance"] for e in mesh.registry()["services"].get("echo", [])]
        if victim.instance not in names:
            break
        time.sleep(0.05)
    t_gone = time.time()
    assert victim.instance not in names
    assert t_gone - t_kill <= TTL_S + 1.0, f"left the registry {t_gone - t_kill:.2f} s after the kill"
    time.sleep(1.5)                                  # let every push and ACK land
    events = _events(mesh, t_kill)
    total = len(mesh.spec.instances)
    removed = [e for e in events if e["event"] == "config" and e["reason"] == "endpoints"
               and e["endpoints"] == total - 1]
    assert removed, [e for e in events if e["event"] == "config"]
    t_removed = removed[0]["t"]
    live = [mesh.node_id(s) for s in mesh.spec.instances if s.instance != victim.instance] + \
        [mesh.client_node_id(h) for h in mesh.spec.client_sidecar_hosts]
    delays = {}
    for node in live:
        acks = [e["t"] for e in events if e["event"] == "ack" and e["node"] == node
                and e["type"] == "endpoints" and t_removed <= e["t"] <= t_removed + 1.5]
        assert acks, f"{node} did not ACK an EDS update"
        delays[node] = max(acks) - t_removed
    assert max(delays.values()) <= 0.5, delays
    clusters = mesh.sidecar_admin(f"client@{client(mesh)}", "/clusters")
    assert f"{victim.ip}:8080" not in clusters and "outbound|8080||echo::" in clusters
    print(f"\n{victim.instance}: left the registry {t_gone - t_kill:.2f} s after the fault "
          f"(TTL {TTL_S} s); EDS ACKed by all {len(live)} live sidecars within "
          f"{max(delays.values()) * 1000:.0f} ms of Pilot's update")
    return t_gone - t_kill, max(delays.values())


def test_killed_replica_leaves_registry_within_ttl_and_every_sidecar_gets_eds_within_500ms(mesh):
    victim = next(i for i in mesh.instances() if i.instance == "echo-v1-1")
    # the host crashes: app, sidecar and agent get SIGKILL
    _leaves_registry_and_eds_reaches_every_sidecar(mesh, victim, lambda: mesh.crash(victim.instance))
    r = mesh.requests(client(mesh), "http://echo:8080/", 100, {"User-Agent": "iPhone"})
    assert r["codes"] == {"200": 100}, r              # the surviving v1 replica answers
    mesh.restart(victim.instance)
    mesh.wait_ready(20)
    assert f"{victim.ip}:8080" in mesh.sidecar_admin(f"client@{client(mesh)}", "/clusters")


def test_replica_host_cut_off_by_link_down_leaves_registry_and_rejoins(mesh):
    victim = next(i for i in mesh.instances() if i.instance == "echo-v1-0")
    switch = f"{mesh.prefix}s"
    _leaves_registry_and_eds_reaches_every_sidecar(
        mesh, victim, lambda: mesh.tb.link_down(victim.host, switch))
    r = mesh.requests(client(mesh), "http://echo:8080/", 50, {"User-Agent": "iPhone"})
    assert r["codes"] == {"200": 50}, r
    mesh.tb.link_up(victim.host, switch)
    mesh.wait_ready(20)                               # the agent registers again (new lease)
    assert victim.instance in [e["instance"] for e in mesh.registry()["services"]["echo"]]


def test_clean_stop_of_an_agent_deregisters_at_once(mesh):
    t0 = time.time()
    agent = mesh._procs["echo-v2-0"]["agent"]
    agent.terminate()
    agent.wait(5)
    names = [e["instance"] for e in mesh.registry()["services"]["echo"]]
    assert "echo-v2-0" not in names and time.time() - t0 < 2.0
    mesh.crash("echo-v2-0")
    mesh.restart("echo-v2-0")
    mesh.wait_ready(20)


def test_pilot_stopped_traffic_continues_on_the_last_config(mesh):
    mesh.apply_text(RULES_BY_AGENT, "agent.yaml")
    mesh.wait_ready(10)
    mesh.stop_pilot()
    try:
        time.sleep(1.0)                                # sidecars notice (failed polls)
        for agent, version in (("Android", "v2"), ("iPhone", "v1")):
            r = mesh.requests(client(mesh), "http://echo:8080/", 200, {"User-Agent": agent})
            assert r["versions"] == {version: 200} and r["errors"] == 0, r
    finally:
        mesh.start_pilot(wait=True)
    mesh.wait_ready(20)
    # the restarted Pilot re-applied what had been applied: routing is unchanged
    assert "VirtualService/echo" in mesh.status()["rules"]
    r = mesh.requests(client(mesh), "http://echo:8080/", 50, {"User-Agent": "Android"})
    assert r["versions"] == {"v2": 50}, r
