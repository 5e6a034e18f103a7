"""The bridge's FORWARD rule: only where br_netfilter hands bridged frames to iptables."""
from __future__ import annotations

from testbed.net.hosts import bridge_calls_iptables, forward_rule


def test_bridge_calls_iptables_reads_the_sysctl(tmp_path):
    f = tmp_path / "bridge-nf-call-iptables"
    assert bridge_calls_iptables(str(tmp_path / "absent")) is False      # no br_netfilter module
    f.write_text("0\n")
    assert bridge_calls_iptables(str(f)) is False
    f.write_text("1\n")
    assert bridge_calls_iptables(str(f)) is True


def test_forward_rule_accepts_only_frames_bridged_on_that_bridge():
    args = forward_rule("mmlab1")
    assert args[0] == "FORWARD" and args[-2:] == ["-j", "ACCEPT"]
    assert args[args.index("-i") + 1] == args[args.index("-o") + 1] == "mmlab1"
    assert "minimesh testbed bridge" in args
