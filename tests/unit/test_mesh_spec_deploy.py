"""Deploy pieces that need no root: the capture plumbing's exact argv and journaling
(against a recording fake host), Mesh argument checks, node identities."""
from __future__ import annotations

from pathlib import Path

import pytest

from testbed.mesh.deploy.mesh import Mesh
from testbed.mesh.deploy.net import CAPTURE_COMMENT, Plumbing, capture_args
from testbed.topology.load import load_topology

REPO = Path(__file__).resolve().parents[2]


class FakeIntf:
    name = "h1-eth0"


class FakeHost:
    def __init__(self, name: str, pid: int):
        self.name, self.pid = name, pid
        self.calls: list[list[str]] = []
        self.hosts_entries: dict[str, str] = {"db": "10.0.0.9"}

    def defaultIntf(self):  # Mininet's name
        return FakeIntf()

    def IP(self):  # Mininet's name
        return "10.0.0.1"

    def pexec(self, argv):
        self.calls.append(list(argv))
        return "", "", 0

    def set_hosts_entries(self, entries):
        self.hosts_entries = dict(entries)


class FakeJournal:
    def __init__(self):
        self.live: dict[int, dict] = {}

    def record(self, kind, **data):
        eid = len(self.live) + 100
        self.live[eid] = {"kind": kind, **data}
        return eid

    def forget(self, eid):
        del self.live[eid]


class FakeTb:
    def __init__(self, journal: FakeJournal):
        import os
        self.journal = journal
        self.hosts = {"h1": FakeHost("h1", os.getpid())}

    def host(self, name):
        return self.hosts[name]


def test_capture_rule_is_journaled_installed_and_removed():
    journal = FakeJournal()
    tb = FakeTb(journal)
    pl = Plumbing(tb)
    pl.set_names({"echo": "10.96.0.1"}, ["h1"])
    assert tb.hosts["h1"].hosts_entries == {"db": "10.0.0.9", "echo": "10.96.0.1",
                                            "echo.default.svc.cluster.local": "10.96.0.1"}
    pl.capture("h1")
    h = tb.hosts["h1"]
    assert h.calls[0] == ["ip", "route", "replace", "10.96.0.0/16", "dev", "h1-eth0", "src", "10.0.0.1"]
    assert h.calls[1] == ["iptables", "-w", "-I", "OUTPUT", "-t", "nat", "-p", "tcp", "-d", "10.96.0.0/16",
                          "-m", "comment", "--comment", CAPTURE_COMMENT, "-j", "REDIRECT",
                          "--to-ports", "15001"]
    entries = [e for e in journal.live.values() if e["kind"] == "iptables"]
    assert len(entries) == 1 and entries[0]["args"] == capture_args() and entries[0]["pid"] == h.pid
    assert pl.remove() == []
    assert h.calls[2] == ["iptables", "-w", "-D", *capture_args()]
    assert h.calls[3] == ["ip", "route", "del", "10.96.0.0/16"]
    assert not [e for e in journal.live.values() if e["kind"] == "iptables"]
    assert h.hosts_entries == {"db": "10.0.0.9"}


def test_mesh_rejects_unknown_sidecar_and_builds_node_ids():
    topo = load_topology(REPO / "topologies/mesh-echo.yaml")

    class Tb:
        topology = topo

        def ip(self, host):
            return {h.name: h.ip.split("/")[0] for h in topo.hosts}[host]
    with pytest.raises(ValueError, match="allowed: minimesh, envoy"):
        Mesh(Tb(), sidecar_default="istio-proxy")
    m = Mesh(Tb())
    assert m.node_ids() == ["sidecar~10.0.0.2~echo-v1-0~echo", "sidecar~10.0.0.3~echo-v1-1~echo",
                            "sidecar~10.0.0.4~echo-v2-0~echo", "sidecar~10.0.0.1~h0~client"]
    assert m.sidecar_kind(m.spec.instances[0]) == "minimesh"
    with pytest.raises(KeyError, match="instances: echo-v1-0"):
        m.crash("nope")
