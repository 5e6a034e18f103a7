"""`minimesh doctor` report logic and the demo's measurement helpers, without root."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.cli.demo import (Measurement, Part, canary_part, delay_part, format_summary, front_proxy_part,
                          parse_ping, path_between)
from testbed.cli.doctor import Check, report

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


# --- the demo's summary (no root: results.json files written here) ----------------------------

def _write(path: Path, doc: dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps(doc))
    return path


def _front_proxy_doc(ok: bool = True) -> dict:
    """The shape testbed.run.results.write_results gives experiments/front_proxy.py's verdicts."""
    verdicts = {"curl succeeds with 200": {"valid": ok, "detail": "curl exit 0, status 200", "numbers": {}},
                "latency rose by >= 2 x 50 ms while web's link was delayed":
                    {"valid": True, "detail": "p50 2.4 -> 202.8 ms", "numbers": {"rise_ms": 200.4}},
                "upstream saw Host: gwadvnet20.github.io (host_rewrite)":
                    {"valid": True, "detail": "gwadvnet20.github.io", "numbers": {}}}
    return {"experiment": "front_proxy", "seed": 1, "params": {"proxy": "minimesh", "delay_ms": 50.0},
            "metrics": {}, "verdicts": verdicts, "valid": ok, "failed": [] if ok else ["curl succeeds with 200"]}


def _canary_doc(valid: bool = True) -> dict:
    return {"experiment": "canary", "valid": valid, "failed": [] if valid else ["the 95 % interval"],
            "params": {"weights": {"v1": 95, "v2": 5}},
            "metrics": {"requests": 1200, "v2_share": 0.0533, "v2_ci": [0.042, 0.0675]}}


def test_delay_part_reports_first_and_last_measurement():
    ms = [Measurement("ping h1 -> h2", 20.0, (20.3, 20.4)), Measurement("before", 20.0, (20.2,)),
          Measurement("after link-set", 80.0, (80.3, 80.6, 80.2))]
    p = delay_part(ms, 2.0, "userspace")
    assert p.ok and "ping h1 -> h2: median RTT 20.35 ms vs configured 20.0 ms" in p.key
    assert "after link-set: median RTT 80.30 ms vs configured 80.0 ms" in p.key and "before" not in p.key
    assert not delay_part([Measurement("x", 20.0, (25.0,))], 2.0, "netem").ok
    assert not delay_part([], 2.0, "netem").ok


def test_front_proxy_part(tmp_path):
    out = _write(tmp_path / "front_proxy", _front_proxy_doc())
    (out / "pcap").mkdir()
    (out / "pcap" / "h1-eth0.pcapng").write_bytes(b"x")
    (out / "timeline.png").write_bytes(b"png")
    p = front_proxy_part(out, 0)
    assert p.ok and p.key == ("curl via the proxy got 200; upstream saw Host: gwadvnet20.github.io; "
                              "web's link +50 ms one-way: p50 +200.4 ms")
    assert p.files == (str(out / "timeline.png"), str(out / "pcap" / "h1-eth0.pcapng"))
    bad = front_proxy_part(_write(tmp_path / "bad", _front_proxy_doc(False)), 1)
    assert not bad.ok and "FAILED" in bad.key and bad.key.endswith("failed: curl succeeds with 200")
    assert not front_proxy_part(_write(tmp_path / "rc", _front_proxy_doc()), 1).ok, "exit status counts"
    old = _write(tmp_path / "old", {"experiment": "front_proxy", "passed": True, "checks": []})
    assert not front_proxy_part(old, 0).ok, "a results.json without verdicts is not a pass"
    missing = front_proxy_part(tmp_path / "none", 1)
    assert not missing.ok and str(tmp_path / "none" / "run.log") in missing.key


def test_missing_results_is_a_failure_naming_the_log(tmp_path):
    p = canary_part(tmp_path / "canary", 137)
    assert not p.ok and "exit status 137" in p.key and str(tmp_path / "canary" / "run.log") in p.key


def test_canary_part(tmp_path):
    out = _write(tmp_path / "canary", _canary_doc())
    (out / "split.png").write_bytes(b"png")
    p = canary_part(out, 0)
    assert p.ok and p.key == "v2 served 5.33% of 1200 requests, 99.9 % CI [4.20%, 6.75%], configured 5 %"
    assert p.files == (str(out / "split.png"),)
    bad = canary_part(_write(tmp_path / "c2", _canary_doc(False)), 1)
    assert not bad.ok and bad.key.endswith("failed: the 95 % interval")


def test_format_summary_says_where_everything_is(tmp_path):
    fp = Part("front_proxy", True, "curl ok", (str(tmp_path / "front_proxy/pcap/h1-eth0.pcapng"),
                                               str(tmp_path / "front_proxy/pcap/web-eth0.pcapng")))
    ca = Part("canary", False, "v2 served 3%", (str(tmp_path / "canary/split.png"),
                                                str(tmp_path / "canary/pcap/c0-eth0.pcapng")))
    text = format_summary([Part("delay", True, "20 vs 20"), fp, ca], tmp_path)
    lines = text.splitlines()
    assert "  [ok] delay: 20 vs 20" in lines and "  [FAIL] canary: v2 served 3%" in lines
    assert f"Plots:   {tmp_path}/canary/split.png" in lines
    assert any(line.startswith(f"Captures (front_proxy): {tmp_path}/front_proxy/pcap/*.pcapng  (2 files")
               for line in lines)
    assert f"  tshark -r {tmp_path}/front_proxy/pcap/h1-eth0.pcapng -N n -d tcp.port==15001,http " \
           "-Y 'http || dns'" in lines
    assert any(line.startswith(f"  wireshark -r {tmp_path}/canary/pcap/c0-eth0.pcapng") for line in lines)
    assert lines[-1] == "FAIL: 2/3 parts passed"
    assert format_summary([Part("delay", True, "ok")], tmp_path).splitlines()[-1] == "PASS: 1/1 parts passed"
    assert "Open them:" not in format_summary([Part("delay", True, "ok")], tmp_path)


def test_demo_help_lists_parts_and_out():
    from testbed.cli.app import build_parser
    args = build_parser().parse_args(["demo", "--only", "canary", "--only", "delay", "--out", "x"])
    assert args.only == ["canary", "delay"] and args.out == Path("x")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--only", "nope"])
