"""`minimesh doctor` report logic and the demo's measurement helpers, without root."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.demo import Measurement, parse_ping, path_between
from testbed.doctor import Check, report

REPO = Path(__file__).resolve().parents[2]
KEYS = ("root", "namespaces", "mininet", "netem", "ovs", "tun", "iptables", "tcpdump", "tshark", "etcd")


def checks(**ok: bool) -> list[Check]:
    required = {"root", "namespaces", "mininet", "iptables"}
    return [Check(k, k, ok.get(k, True), f"{k} detail", k in required) for k in KEYS]


def test_report_prefers_netem():
    data = report(checks())
    assert data["link_backend"] == "netem" and data["ok"] is True
    assert all(data[k] is True for k in KEYS)


def test_report_userspace_without_netem():
    data = report(checks(netem=False, ovs=False))
    assert data["link_backend"] == "userspace"
    assert data["ok"] is True, "netem and OVS are optional"
    assert "netem detail" in data["details"]["link_backend"]


def test_report_no_backend_is_not_ok():
    data = report(checks(netem=False, tun=False))
    assert data["link_backend"] is None and data["ok"] is False


def test_report_missing_required_is_not_ok():
    assert report(checks(mininet=False))["ok"] is False
    assert report(checks(etcd=False))["ok"] is True


def test_doctor_json_has_the_documented_keys():
    p = subprocess.run([sys.executable, "-m", "testbed", "doctor", "--json"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    data = json.loads(p.stdout)
    for key in ("root", "mininet", "netem", "ovs", "tun", "etcd", "link_backend"):
        assert key in data
    assert data["link_backend"] in ("netem", "userspace", None)
    assert p.returncode == (0 if data["ok"] else 1)


def test_parse_ping():
    text = ("PING 10.0.0.2 (10.0.0.2) 56(84) bytes of data.\n"
            "[1795763602.507572] 64 bytes from 10.0.0.2: icmp_seq=1 ttl=64 time=40.9 ms\n"
            "[1795763602.707572] 64 bytes from 10.0.0.2: icmp_seq=2 ttl=64 time=20.4 ms\n"
            "[1795763602.907572] no answer yet for icmp_seq=3\n"
            "--- 10.0.0.2 ping statistics ---\n")
    assert parse_ping(text) == [(1795763602.507572, 1, 40.9), (1795763602.707572, 2, 20.4)]


def test_path_between():
    links = [("h1", "s1"), ("s1", "s2"), ("s2", "h2"), ("s1", "h3")]
    assert path_between(links, "h1", "h2") == [("h1", "s1"), ("s1", "s2"), ("s2", "h2")]
    assert path_between(links, "h2", "h3") == [("h2", "s2"), ("s2", "s1"), ("s1", "h3")]
    with pytest.raises(ValueError, match="no path"):
        path_between(links, "h1", "h9")


def test_measurement_tolerance():
    m = Measurement("x", 20.0, (20.3, 21.9, 20.4))
    assert m.median_ms == 20.4 and m.ok(2.0)
    assert not Measurement("x", 20.0, (23.0, 22.5, 22.1)).ok(2.0)
    assert not Measurement("x", 20.0, ()).ok(2.0), "no samples is a failure, not a pass"
