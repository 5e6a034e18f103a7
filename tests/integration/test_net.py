"""Testbed (in-process, real Mininet, userspace link backend): runtime primitives, private
/etc/hosts and resolv.conf, journaled processes, cleanup on stop. Root only."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from test_net_support import HA, HB, HC, SW, assert_nothing_left, median, rtts, snapshot, topology_yaml

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

UDP_RECV = ("import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('', 9999)); "
            "s.settimeout(float(sys.argv[1])); n=0\n"
            "try:\n  while True: s.recv(100); n+=1\nexcept socket.timeout: pass\nprint(n)")
UDP_SEND = ("import socket,sys,time; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "for i in range(5): s.sendto(b'x', (sys.argv[1], 9999)); time.sleep(0.02)")


@pytest.fixture
def tb(tmp_path):
    from mininet.log import setLogLevel

    from testbed.journal import Journal
    from testbed.net.network import Testbed
    from testbed.topology.load import parse_topology
    setLogLevel("error")
    before = snapshot()
    topo = parse_topology(topology_yaml("5ms"), "t.yaml")
    bed = Testbed(topo, link_backend="userspace", journal=Journal(tmp_path))
    bed.start()
    netns = {os.readlink(f"/proc/{bed.host(h).pid}/ns/net") for h in (HA, HB, HC)}
    try:
        yield bed
    finally:
        assert bed.stop() == []
        assert not list(tmp_path.glob("*.jsonl")), "journal not emptied"
        assert not list(tmp_path.glob("*.hosts")), "private /etc/hosts files left"
        assert_nothing_left(before, netns)


def udp_delivered(bed, src: str, dst: str) -> int:
    """Datagrams (of 5) that arrive at dst from src."""
    recv = bed.popen(dst, [sys.executable, "-c", UDP_RECV, "1.0"], text=True)
    time.sleep(0.4)  # receiver bound
    sender = bed.popen(src, [sys.executable, "-c", UDP_SEND, bed.ip(dst)])
    sender.wait(timeout=10)
    out, _ = recv.communicate(timeout=10)
    return int(out.strip())


def ping_ok(bed, src: str, dst: str) -> bool:
    out = bed.host(src).cmd(f"ping -c 2 -i 0.2 -W 1 {bed.ip(dst)}")
    return " 0 received" not in out and "received" in out


def test_drop_both_ways_and_restore(tb):
    assert udp_delivered(tb, HA, HB) == 5 and udp_delivered(tb, HB, HA) == 5
    tb.drop(HA, HB)
    assert udp_delivered(tb, HA, HB) == 0
    assert udp_delivered(tb, HB, HA) == 0
    assert udp_delivered(tb, HA, HC) == 5, "a drop between A and B must not touch C"
    assert tb.restore(HA, HB) == 2
    assert udp_delivered(tb, HA, HB) == 5 and udp_delivered(tb, HB, HA) == 5


def test_drop_one_way(tb):
    tb.drop(HA, HB, oneway=True)
    assert udp_delivered(tb, HA, HB) == 0
    assert udp_delivered(tb, HB, HA) == 5
    assert not ping_ok(tb, HA, HB)      # requests vanish
    assert tb.restore() == 1
    assert ping_ok(tb, HA, HB)


def test_drop_rule_is_journaled_and_left_to_clean_if_not_restored(tb):
    tb.drop(HB, HC, oneway=True)
    entries = [e for e in tb.journal.outstanding() if e["kind"] == "iptables" and e["pid"] is not None]
    assert len(entries) == 1 and entries[0]["pid"] == tb.host(HC).pid
    assert "DROP" in entries[0]["args"]
    # not restored: the fixture's stop() must still leave nothing behind


def test_bridge_frames_pass_a_dropping_forward_chain(tb):
    """br_netfilter sends bridged frames through the root FORWARD chain: the bridge's own
    journaled ACCEPT rule keeps the testbed working under a DROP policy (Docker hosts)."""
    from testbed.net.hosts import bridge_calls_iptables, forward_rule
    if not bridge_calls_iptables():
        pytest.skip("bridged frames do not traverse iptables here (no br_netfilter)")
    rules = [e["args"] for e in tb.journal.outstanding() if e["kind"] == "iptables" and e["pid"] is None]
    assert rules == [forward_rule(SW)]
    subprocess.run(["iptables", "-w", "-A", "FORWARD", "-i", SW, "-j", "DROP"], check=True)   # after ours
    try:
        assert ping_ok(tb, HA, HB)
        subprocess.run(["iptables", "-w", "-D", *forward_rule(SW)], check=True)
        try:
            assert not ping_ok(tb, HA, HB), "without the bridge's rule the DROP must bite"
        finally:
            subprocess.run(["iptables", "-w", "-I", *forward_rule(SW)], check=True)
    finally:
        subprocess.run(["iptables", "-w", "-D", "FORWARD", "-i", SW, "-j", "DROP"], check=True)


def test_link_down_up(tb):
    assert ping_ok(tb, HA, HB)
    tb.link_down(HA, SW)
    assert not ping_ok(tb, HA, HB)
    assert ping_ok(tb, HB, HC), "other links stay up"
    tb.link_up(HA, SW)
    assert ping_ok(tb, HA, HB)


def test_live_change_while_traffic_flows(tb):
    """Configured 5 ms one way on A-SW: RTT A->B ~ 10 ms; set 30 ms mid-ping: ~ 60 ms.
    Tolerance: +-2 ms on medians (the userspace emulator's error is well below)."""
    ip = tb.ip(HB)
    tb.host(HA).cmd(f"ping -c 1 -W 1 {ip}")  # ARP
    proc = tb.popen(HA, ["ping", "-D", "-n", "-c", "30", "-i", "0.05", ip], text=True)
    time.sleep(0.7)
    tb.set_link(HA, SW, delay="30ms")
    t_changed = time.time()
    out, _ = proc.communicate(timeout=20)
    samples = []
    for line in out.splitlines():
        if "time=" in line:
            t_recv = float(line[1:line.index("]")])
            samples.append((t_recv, rtts(line)[0]))
    before = [r for t, r in samples if t < t_changed - 0.1]
    after = [r for t, r in samples if t - r / 1000 > t_changed]
    assert len(before) >= 5 and len(after) >= 5
    assert abs(median(before) - 10) <= 2
    assert abs(median(after) - 60) <= 2


def test_set_link_one_direction(tb):
    ab, ba = tb.set_link(SW, HA, direction=f"{SW}->{HA}", delay="20ms", loss="0%")
    assert ab.delay_ms == 20 and ba.delay_ms == 5
    out = tb.host(HA).cmd(f"ping -c 6 -i 0.1 {tb.ip(HB)}")
    assert abs(median(rtts(out)[1:]) - 25) <= 2  # 5 (A->SW) + 20 (SW->A)


def test_set_link_errors_name_the_field(tb):
    from testbed.net.control import ControlError
    from testbed.shape import ShapeError
    with pytest.raises(ShapeError, match="delay"):
        tb.set_link(HA, SW, delay="fast")
    with pytest.raises(ShapeError, match="loss"):
        tb.set_link(HA, SW, loss="120%")
    with pytest.raises(ControlError, match="no link between"):
        tb.set_link(HA, HB, delay="1ms")
    with pytest.raises(ControlError, match="direction"):
        tb.set_link(HA, SW, direction=f"{HA}->{HB}", delay="1ms")


def test_private_hosts_and_resolver(tb):
    with open("/etc/hosts") as f:
        root_hosts = f.read()
    tb.set_hosts_entries(HA, {"svc-b": tb.ip(HB), "svc-c": tb.ip(HC)})
    out = tb.host(HA).cmd("getent hosts svc-b; getent hosts svc-c")
    assert f"{tb.ip(HB)}" in out and f"{tb.ip(HC)}" in out
    assert "svc-b" not in tb.host(HB).cmd("cat /etc/hosts"), "entries are per host"
    assert tb.host(HA).cmd("ping -c 1 -W 1 svc-b").count("1 received") == 1
    proc = tb.popen(HA, ["getent", "hosts", "svc-c"], text=True)  # popen joins the mount ns too
    assert tb.ip(HC) in proc.communicate(timeout=10)[0]
    tb.set_resolver(HA, tb.ip(HC))
    assert f"nameserver {tb.ip(HC)}" in tb.host(HA).cmd("cat /etc/resolv.conf")
    with open("/etc/hosts") as f:
        assert f.read() == root_hosts, "the root namespace's /etc/hosts must not change"


def test_popen_is_journaled_and_killed_on_stop(tmp_path):
    from mininet.log import setLogLevel

    from testbed.journal import Journal, proc_alive, proc_start
    from testbed.net.network import Testbed
    from testbed.topology.load import parse_topology
    setLogLevel("error")
    before = snapshot()
    bed = Testbed(parse_topology(topology_yaml(), "t.yaml"), "userspace", journal=Journal(tmp_path))
    with bed:
        proc = bed.popen(HB, ["sleep", "300"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        start = proc_start(proc.pid)
        assert any(e["kind"] == "process" and e.get("pid") == proc.pid for e in bed.journal.outstanding())
    assert not proc_alive(proc.pid, start)
    assert_nothing_left(before)


def test_failed_start_cleans_up(tmp_path):
    """An exception while building (here: an impossible MAC) still leaves nothing."""
    from mininet.log import setLogLevel

    from testbed.journal import Journal
    from testbed.net.network import Testbed
    from testbed.topology.load import parse_topology
    setLogLevel("critical")
    before = snapshot()
    topo = parse_topology(topology_yaml(), "t.yaml")

    class Boom(Exception):
        pass

    bed = Testbed(topo, "userspace", journal=Journal(tmp_path))
    orig = bed._select_backend

    def backend_then_boom():
        backend = orig()
        cls = backend.link_class

        def link(node1, node2, **kw):
            if node1.name == HC or node2.name == HC:
                raise Boom("third link fails")
            return cls(node1, node2, **kw)
        backend_obj = type("B", (), {"name": backend.name, "reason": "test", "link_class": staticmethod(link)})()
        return backend_obj
    bed._select_backend = backend_then_boom
    with pytest.raises(Boom):
        bed.start()
    assert not list(tmp_path.glob("*.jsonl"))
    assert_nothing_left(before)


def test_second_run_with_the_same_names_is_refused(tb, tmp_path):
    """Mininet would delete the first run's bridge/interfaces; the testbed refuses instead,
    and the refused run removes only what it created itself."""
    from testbed.net.hosts import NameTaken
    from testbed.journal import Journal
    from testbed.net.network import Testbed
    from testbed.topology.load import parse_topology
    (tmp_path / "second").mkdir()
    second = Testbed(parse_topology(topology_yaml(), "t.yaml"), "userspace",
                     journal=Journal(tmp_path / "second"))
    with pytest.raises(NameTaken, match=f"bridge '{SW}' already exists"):
        second.start()
    assert not list((tmp_path / "second").glob("*.jsonl"))
    assert ping_ok(tb, HA, HB), "the first run still works"
    assert SW in snapshot().links


def test_pyroute2_fork_helpers_never_run_our_teardown(tmp_path):
    """pyroute2's IPRoute(netns=...) forks a helper and stops it with SIGTERM; the helper
    inherits our handlers. It must die, never raise Terminated into the copied stack (the
    child would then run the runner's teardown). Without the pid guard some child raises within
    60 rounds (3 of 3 runs failed); the marker file records it."""
    from pyroute2 import IPRoute, netns

    from testbed.net.lifecycle import Terminated, teardown_signals
    parent = os.getpid()
    marker = tmp_path / "child-raised"
    name = f"mmq{parent % 100000}x"
    netns.create(name)
    try:
        with teardown_signals(sigint=True):
            for _ in range(60):
                try:
                    with IPRoute(netns=name) as ipr:
                        ipr.get_links()
                except Terminated:
                    if os.getpid() != parent:
                        marker.write_text("x")
                        os._exit(0)
                    raise
    finally:
        netns.remove(name)
    time.sleep(0.2)
    assert not marker.exists(), "a forked pyroute2 helper raised Terminated"
