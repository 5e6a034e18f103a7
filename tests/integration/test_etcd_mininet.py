"""etcd on Mininet hosts (root): members started with Testbed.popen, probed from inside
their hosts, clients running in host namespaces; an iptables partition of the leader
elects a new leader, the majority writes on, the isolated member serves a stale
serializable read, refuses writes and fails its watch, and after
the heal --pre-vote keeps the new leader in place (same term)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
              pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd binary not installed")]

from mininet.topo import Topo  # noqa: E402  (after pytestmark)

from testbed.journal import Journal  # noqa: E402  (after pytestmark)
from testbed.mesh.etcd.cluster import EtcdCluster, EtcdMember, EtcdRunner, popen_probe  # noqa: E402  (after pytestmark)
from testbed.net import network as tbnet  # noqa: E402  (not `Testbed`: pytest would collect it)

REPO = str(Path(__file__).resolve().parents[2])
TAG = f"mmt{os.getpid() % 1000}"          # distinctive names: veths are born in the root namespace
HOSTS = [f"{TAG}e{i}" for i in (1, 2, 3)]


class Three(Topo):
    def build(self):
        s = self.addSwitch(f"{TAG}s")
        for h in HOSTS:
            self.addLink(self.addHost(h), s)


CLIENT = r"""
import asyncio, json, sys, time
from testbed.mesh.etcd.client import EtcdClient, EtcdError
from testbed.mesh.etcd.wire import WatchError
mode, eps, value = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
async def main():
    out = {}
    async with EtcdClient(eps, timeout_s=1.0) as c:
        if mode == "write":
            out["rev"] = await c.put("/k", value)
            out["value"] = (await c.get("/k")).value.decode()
        else:  # isolated member: stale read, refused write, failing watch
            out["stale"] = (await c.get("/k", serializable=True)).value.decode()
            try:
                await c.put("/k", "minority")
                out["put"] = "ok"
            except EtcdError as e:
                out["put"] = "indeterminate" if e.indeterminate else "refused"
            t0 = time.monotonic()
            try:
                async with c.watch("/k", prefix=False) as w:
                    async for _ in w:
                        pass
            except WatchError as e:
                out["watch"] = str(e)
            out["watch_failed_s"] = time.monotonic() - t0
    print(json.dumps(out))
asyncio.run(main())
"""


def run_client(tb, host, mode, endpoints, value="", timeout_s=20):
    p = tb.popen(host, [sys.executable, "-c", CLIENT, mode, ",".join(endpoints), value],
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": REPO})
    out, err = p.communicate(timeout=timeout_s)
    assert p.returncode == 0, err.decode()[-2000:]
    return json.loads(out)


def test_partitioned_leader_on_mininet(tmp_path):
    root = tempfile.mkdtemp(prefix="mmt-etcd-")
    tb = tbnet.Testbed(Three(), link_backend="userspace", journal=Journal(tmp_path / "journal"),
                       out=sys.stderr)
    try:
        tb.start()
        cluster = EtcdCluster(tuple(EtcdMember(f"e{i + 1}", tb.ip(h), host=h) for i, h in enumerate(HOSTS)),
                              root, heartbeat_ms=50, election_ms=500)
        run = EtcdRunner(cluster, spawn=lambda m, argv: tb.popen(m.run_on, argv, stdout=subprocess.DEVNULL,
                                                                 stderr=subprocess.DEVNULL),
                         probe=popen_probe(tb.popen))
        run.start()
        try:
            old = run.wait_healthy(30)
            others = [m for m in cluster.members if m is not old]
            assert run_client(tb, others[0].run_on, "write", cluster.endpoints, "before")["value"] == "before"
            for o in others:
                tb.drop(old.run_on, o.run_on)
            t0 = time.monotonic()
            new = run.wait_leader(10, exclude=[old.name])
            elected_s = time.monotonic() - t0
            term = run.status(new.name).raft_term
            majority = [o.client_url for o in others]
            assert run_client(tb, new.run_on, "write", majority, "after")["value"] == "after"
            iso = run_client(tb, old.run_on, "isolated", [old.client_url])   # opened without a leader
            assert iso["stale"] == "before"                                 # a stale serializable read
            assert iso["put"] in ("refused", "indeterminate")
            assert iso["watch_failed_s"] <= 10 * cluster.election_ms / 1000, iso
            tb.restore()
            assert run.wait_healthy(15) == new                      # pre-vote: no deposition
            assert run.status(new.name).raft_term == term
            print(f"mininet: new leader {elected_s:.2f}s after partitioning the leader; isolated "
                  f"member: put {iso['put']}, watch failed after {iso['watch_failed_s']:.2f}s")
        finally:
            run.stop()
    finally:
        errors = tb.stop()
        shutil.rmtree(root, ignore_errors=True)
    assert errors == []
