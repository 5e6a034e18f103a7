"""The labs' plots (issue 15, point 3): the interval's level printed as 99.9 %, not 100 %;
milestones (rules applied, workloads, elections, ejections) marked once; a timeline drawn
from etcd operations when a run has no HTTP requests; the canary's share over time."""
from __future__ import annotations

from testbed.history import EtcdOp, Event, FaultRecord, Request
from testbed.run.checkers import check_split
from testbed.run.results import _percent_label, etcd_requests, milestones, plot_split, plot_timeline


def test_level_label():
    assert _percent_label(0.999) == "99.9 %" and _percent_label(0.95) == "95 %"


def test_milestones_once_and_named():
    ev = [Event(1.0, "experiment", "rules_applied", {"rules": "x"}), Event(2.0, "etcd:e1", "leader", {"leader": "e2"}),
          Event(2.1, "etcd:e3", "leader", {"leader": "e2"}), Event(3.0, "sidecar:client@c0", "ejection",
                                                                  {"instance": "echo-v1-0"}),
          Event(4.0, "pilot", "ack", {})]
    assert milestones(ev) == [(1.0, "rules applied"), (2.0, "etcd leader elected e2"), (3.0, "ejection echo-v1-0")]


def test_timeline_from_etcd_ops_and_split_over_time(tmp_path):
    ops = []
    for i in range(40):
        ops += [EtcdOp(i * 0.25, i, "invoke", "write", "/k", i), EtcdOp(i * 0.25 + 0.01, i, "ok" if i % 10 else "info",
                                                                          "write", "/k", i)]
    reqs = etcd_requests(ops)
    assert len(reqs) == 40 and sum(not r.ok for r in reqs) == 4
    faults = [FaultRecord(2.0, 2.0, 1, "apply", {"kind": "link"}, description="delay"),
              FaultRecord(6.0, 6.0, 1, "revert", {"kind": "link"})]
    path = plot_timeline(tmp_path / "t.png", [], faults, events=[Event(1.0, "experiment", "rules_applied", {})],
                         etcd=ops)
    assert path.stat().st_size > 10_000
    http = [Request(i / 50, i / 50 + 0.01, 200, version="v2" if i % 20 == 0 else "v1") for i in range(1000)]
    split = check_split(http, {"v1": 95, "v2": 5}, confidence=0.999)
    assert plot_split(tmp_path / "s.png", split, requests=http).stat().st_size > 10_000


def test_up_banner_lists_hosts_services_and_minimesh_commands():
    from testbed.cli.shell import banner_text
    text = banner_text([("h1", "10.0.0.1"), ("h2", "10.0.0.2")], ["echo:8080 (10.96.0.1)"], ["apply", "registry"])
    assert "*** hosts: h1 10.0.0.1, h2 10.0.0.2" in text and "*** services: echo:8080 (10.96.0.1)" in text
    assert "link-set" in text and "apply, registry" in text and "the others are Mininet's" in text
    assert "services" not in banner_text([("h1", "10.0.0.1")], [], [])
