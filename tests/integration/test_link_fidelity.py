"""Fidelity of the link backends on a real Mininet h1 - s1 - h2 (root).

Every fidelity test runs against both backends. The netem ones carry the ``netem`` marker:
where this kernel has no sch_netem they run inside a user-mode-linux guest instead
(tests/integration/test_uml_guest.py), never skipped. Tolerances: median RTT within +-1 ms,
jitter uniform over delay +- jitter, loss within binomial 99 % bounds, rate within +-10 %,
the queue limit exact to a packet, live change within 100 ms.
"""
import functools
import hashlib
import json
import os
import shlex
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")]

from mininet.net import Mininet  # noqa: E402  (after pytestmark)
from mininet.nodelib import LinuxBridge  # noqa: E402  (after pytestmark)
from mininet.topo import Topo  # noqa: E402  (after pytestmark)

from testbed.journal import Journal, proc_alive  # noqa: E402  (after pytestmark)
from testbed.links import BackendUnavailable, probe_netem, select_backend  # noqa: E402  (after pytestmark)
from testbed.links.measure import binomial_bounds, parse_ping  # noqa: E402  (after pytestmark)
from testbed.shape import LinkShape  # noqa: E402  (after pytestmark)

SWITCH = f"mmf{os.getpid() % 10000}"  # distinctive: the bridge lives in the root namespace


@pytest.fixture(params=["userspace", pytest.param("netem", marks=pytest.mark.netem)])
def backend_name(request):
    if request.param == "netem":
        ok, why = probe_netem()
        if not ok:  # conftest deselects netem tests here and runs them in a UML guest
            pytest.fail(f"a netem test ran on a kernel without netem: {why}")
    return request.param


class Line(Topo):
    """h1 - s1 - h2; each link shaped (forward, backward) = (host -> switch, switch -> host)."""

    def build(self, left=(None, None), right=(None, None)):
        s1 = self.addSwitch(SWITCH)
        for name, (fwd, bwd) in (("h1", left), ("h2", right)):
            self.addLink(self.addHost(name), s1, shape1=fwd or LinkShape(), shape2=bwd or LinkShape())


@contextmanager
def line_net(backend_name, tmp_path, left=(None, None), right=(None, None)):
    journal = Journal(Path(tmp_path) / "journal")
    net = None
    try:
        backend = select_backend(backend_name, journal)
        net = Mininet(topo=Line(left=left, right=right), link=backend.link_class,
                      switch=LinuxBridge, controller=None, autoSetMacs=True)
        net.start()
        h1, h2 = net.get("h1", "h2")
        h1.cmd("ping -c 2 -i 0.2 -W 2", h2.IP())  # ARP settled before measuring
        yield net, journal
    finally:
        if net is not None:
            net.stop()
        leftovers = journal.outstanding()
        errors = journal.cleanup()
        assert leftovers == [] and errors == [], f"left behind: {leftovers} {errors}"


def wait_listening(host, port, timeout=30.0):
    """Until something in HOST's namespace listens on TCP PORT (a fixed sleep is too short for
    a program starting in a slow guest, such as UML's). Passive, by ``ss -l``: a probe
    connection (mininet.util.waitListening, Experiment.wait_tcp) would be the one connection
    that ``iperf3 -s -1`` and the one-shot receiver accept."""
    deadline = time.monotonic() + timeout
    while f":{port} " not in host.cmd(f"ss -Hltn 'sport = :{port}'") + " ":
        assert time.monotonic() < deadline, f"nothing listens on {host.name}:{port} after {timeout:g} s"
        time.sleep(0.05)


def ping(h1, h2, count, interval, replies=False):
    """Ping h2 from h1; per-reply lines (with -D timestamps) only when asked for."""
    opts = "-n -D" if replies else "-n -q"
    return parse_ping(h1.cmd(f"ping {opts} -c {count} -i {interval} -W 2 {h2.IP()}"))


@pytest.mark.parametrize("delay_ms", [5, 25, 100])
def test_median_rtt_is_twice_the_one_way_sum(backend_name, tmp_path, delay_ms):
    d = LinkShape(delay_ms=delay_ms)
    with line_net(backend_name, tmp_path, left=(d, d), right=(d, d)) as (net, _):
        h1, h2 = net.get("h1", "h2")
        count = {5: 50, 25: 40, 100: 20}[delay_ms]
        replies, tx, rx = ping(h1, h2, count, 0.02, replies=True)
        assert rx == tx == count
        median = statistics.median(r.rtt_ms for r in replies)
        assert median == pytest.approx(2 * (delay_ms + delay_ms), abs=1.0)


def test_jitter_is_uniform_over_delay_plus_minus_jitter(backend_name, tmp_path):
    # netem without a distribution table draws delay +- jitter uniformly, as the emulator does:
    # one jittered direction makes the RTT uniform on [15, 25] ms (stdev 10 / sqrt(12) = 2.89)
    with line_net(backend_name, tmp_path, left=(LinkShape(delay_ms=20, jitter_ms=5), None)) as (net, _):
        h1, h2 = net.get("h1", "h2")
        replies, tx, rx = ping(h1, h2, 300, 0.01, replies=True)
        rtts = [r.rtt_ms for r in replies]
        assert rx == tx == 300
        assert min(rtts) >= 15.0 - 0.2, sorted(rtts)[:5]  # never early
        # deciles of U(15, 25): 16, 17, ..., 24, each within 1.5 ms (the sampling error of a
        # decile of 300 is 0.3 ms, plus the backend's own latency; a loaded machine's scheduler
        # adds outliers to single replies, so the extremes are not bounded above)
        got = statistics.quantiles(rtts, n=10)
        assert got == pytest.approx([16.0 + k for k in range(9)], abs=1.5), got
        assert got[-1] - got[0] == pytest.approx(8.0, abs=1.5), got  # the spread: +-5 ms


UDP_BURST = ("import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
             "for i in range(100): s.sendto(bytes(1000), (sys.argv[1], 9))")
# says "ready" once bound; counts until 2 s pass without a datagram (30 s for the first: a
# python starting in a slow guest, such as UML's, can take seconds)
UDP_COUNT = ("import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('', 9)); "
             "print('ready', flush=True); s.settimeout(30.0); n=0\n"
             "try:\n  while True: s.recv(2000); n+=1; s.settimeout(2.0)\nexcept socket.timeout: pass\nprint(n)")


def test_queue_limit_tail_drops_a_burst(backend_name, tmp_path):
    # 100 datagrams at once into a 0.5 Mbit/s link (16 ms each) holding 10 packets: the
    # queue keeps the first 10 and drops the rest (netem's tfifo limit, the emulator's queue)
    import sys
    shape = LinkShape(bw_mbit=0.5, queue_pkts=10)
    with line_net(backend_name, tmp_path, left=(shape, None)) as (net, _):
        h1, h2 = net.get("h1", "h2")
        counter = h2.popen([sys.executable, "-c", UDP_COUNT])
        assert counter.stdout.readline() == b"ready\n"       # bound before the burst leaves
        h1.cmd(f"{sys.executable} -c {shlex.quote(UDP_BURST)} {h2.IP()}")
        out, _ = counter.communicate(timeout=60)
        assert 10 <= int(out) <= 11, f"{int(out)} of 100 delivered through a 10-packet queue"


def test_partition_drops_both_ways_and_heals(backend_name, tmp_path):
    # the partition primitive (iptables drops, what `partition` faults apply) on a shaped
    # testbed: A and B cut off from each other, C still reaches both, the delay intact after
    from test_net_support import HA, HB, HC, topology_yaml

    from testbed.net.network import Testbed
    from testbed.topology.load import parse_topology
    bed = Testbed(parse_topology(topology_yaml("10ms"), "t.yaml"), link_backend=backend_name,
                  journal=Journal(Path(tmp_path) / "journal"))
    bed.start()
    try:
        def rtts(a, b, n=5):
            return ping(bed.host(a), bed.host(b), n, 0.05, replies=True)
        assert rtts(HA, HB)[2] == 5
        bed.drop(HA, HB)
        assert rtts(HA, HB)[2] == 0 and rtts(HB, HA)[2] == 0
        assert rtts(HC, HA)[2] == 5 and rtts(HC, HB)[2] == 5
        assert bed.restore(HA, HB) == 2
        replies, tx, rx = rtts(HA, HB, 10)
        assert rx == tx == 10
        assert statistics.median(r.rtt_ms for r in replies) == pytest.approx(20.0, abs=1.0)
    finally:
        assert bed.stop() == []


def test_loss_within_binomial_bounds(backend_name, tmp_path):
    with line_net(backend_name, tmp_path, left=(LinkShape(loss_pct=10), None)) as (net, _):
        h1, h2 = net.get("h1", "h2")
        _, tx, rx = ping(h1, h2, 2200, 0.002)
        assert tx >= 2000
        lo, hi = binomial_bounds(tx, 0.10, confidence=0.999)  # 99.9 %: no CI flakes
        assert lo <= tx - rx <= hi, f"{tx - rx} lost of {tx}, expected [{lo}, {hi}]"


def test_rate_by_iperf3(backend_name, tmp_path):
    r = LinkShape(bw_mbit=10)
    with line_net(backend_name, tmp_path, left=(r, r)) as (net, _):
        h1, h2 = net.get("h1", "h2")
        server = h2.popen(["iperf3", "-s", "-1", "-p", "5201"])
        try:
            wait_listening(h2, 5201)
            out = h1.cmd(f"iperf3 -c {h2.IP()} -p 5201 -t 4 -O 1 -J")
            result = json.loads(out[out.index("{"):])
            mbit = result["end"]["sum_received"]["bits_per_second"] / 1e6
        finally:
            server.kill()
            server.wait()
        assert mbit == pytest.approx(10.0, rel=0.10)


def test_live_change_takes_effect_within_100ms(backend_name, tmp_path):
    base = LinkShape(delay_ms=1)
    with line_net(backend_name, tmp_path, left=(base, base), right=(base, base)) as (net, _):
        h1, h2 = net.get("h1", "h2")
        link = net.linksBetween(h1, net.get(SWITCH))[0]
        proc = h1.popen(["ping", "-n", "-D", "-c", "150", "-i", "0.01", "-W", "2", h2.IP()])
        time.sleep(0.6)
        t_call = time.time()
        link.set_shapes(forward=LinkShape(delay_ms=31))
        t_done = time.time()
        out, _ = proc.communicate(timeout=30)
        replies, tx, rx = parse_ping(out.decode())
        assert t_done - t_call < 0.1
        assert link.get_shapes()[0] == LinkShape(delay_ms=31)
        before = [r.rtt_ms for r in replies if r.sent_time < t_call - 0.005]
        after = [r.rtt_ms for r in replies if r.sent_time > t_call + 0.1]
        assert len(before) > 20 and len(after) > 20
        assert statistics.median(before) == pytest.approx(4.0, abs=1.0)
        assert min(after) >= 34.0 - 1.0  # every packet sent 100 ms after the call sees it


def test_link_down_stops_traffic_and_up_restores_it(backend_name, tmp_path):
    with line_net(backend_name, tmp_path) as (net, _):
        h1, h2 = net.get("h1", "h2")
        link = net.linksBetween(h1, net.get(SWITCH))[0]
        link.set_up(False)
        flags = int(h1.cmd("cat /sys/class/net/h1-eth0/flags"), 16)
        assert flags & 1 == 0
        # no reply: with the interface down the kernel may even refuse to send (no route)
        out = h1.cmd(f"ping -n -c 5 -i 0.1 -W 1 {h2.IP()}")
        assert "bytes from" not in out and ("0 received" in out or "unreachable" in out)
        link.set_up(True)
        time.sleep(0.2)
        _, tx, rx = ping(h1, h2, 5, 0.1)
        assert rx == tx == 5


def test_a_stalled_emulator_loses_nothing_that_fits_its_tap_ring(tmp_path):
    # the emulator stopped (as if starved of CPU) while h1 sends 900 datagrams: the TAP's
    # ring (TAP_QUEUE_FRAMES, 1000; tun's default 500 would drop ~400) holds them all
    import signal
    import sys

    from testbed.links.tap import TAP_QUEUE_FRAMES
    assert TAP_QUEUE_FRAMES >= 1000
    with line_net("userspace", tmp_path) as (net, _):
        h1, h2 = net.get("h1", "h2")
        link = net.linksBetween(h1, net.get(SWITCH))[0]
        before = link.stats()["stats"][0]["received"]
        os.kill(link.emulator_pid, signal.SIGSTOP)
        try:
            h1.cmd(f"{sys.executable} -c 'import socket; s = socket.socket(socket.AF_INET, "
                   f"socket.SOCK_DGRAM); [s.sendto(bytes(64), (\"{h2.IP()}\", 9)) for _ in range(900)]'")
        finally:
            os.kill(link.emulator_pid, signal.SIGCONT)
        time.sleep(0.3)
        assert link.stats()["stats"][0]["received"] - before >= 900


def test_stop_leaves_no_interface_or_process(backend_name, tmp_path):
    with line_net(backend_name, tmp_path) as (net, journal):
        pids = [lk.emulator_pid for lk in net.links if hasattr(lk, "emulator_pid")]
        assert [e["kind"] for e in journal.outstanding()].count("link") == 4
    # line_net asserted the journal is empty; now check the system itself
    root_links = os.listdir("/sys/class/net")
    assert not [n for n in root_links if n.startswith(SWITCH)]
    assert not any(proc_alive(p, None) for p in pids)


def test_auto_says_what_it_chose_and_netem_never_falls_back(tmp_path):
    journal = Journal(Path(tmp_path) / "journal")
    try:
        ok, why = probe_netem(journal, refresh=True)
        backend = select_backend("auto", journal)
        assert backend.name == ("netem" if ok else "userspace")
        assert why in backend.reason
        if not ok:
            with pytest.raises(BackendUnavailable, match="netem.*not available.*sch_netem"):
                select_backend("netem", journal)
        assert not [n for n in os.listdir("/run/netns") if n.startswith("mmprobe-")] \
            if os.path.isdir("/run/netns") else True
        assert journal.outstanding() == []
    finally:
        journal.cleanup()


@pytest.mark.netem
def test_auto_picks_netem_where_the_kernel_has_it(tmp_path):
    journal = Journal(Path(tmp_path) / "journal")
    try:
        backend = select_backend("auto", journal)
        assert backend.name == "netem" and "auto: kernel netem works" in backend.reason
        assert select_backend("netem", journal).name == "netem"
        assert journal.outstanding() == []
    finally:
        journal.cleanup()


# one TCP connection on port 5203: the receiver writes what it got to argv[1]
_RECEIVE_ONE = """
import socket, sys
srv = socket.create_server(("0.0.0.0", 5203))
conn, _ = srv.accept()
with open(sys.argv[1], "wb") as out:
    while chunk := conn.recv(65536):
        out.write(chunk)
"""
_SEND_ONE = """
import socket, sys
with socket.create_connection((sys.argv[1], 5203), timeout=120) as conn:
    conn.sendall(open(sys.argv[2], "rb").read())
    conn.shutdown(socket.SHUT_WR)
    conn.recv(1)
"""


def test_corrupt_makes_the_receiver_drop_bad_frames(backend_name, tmp_path):
    # a flipped bit fails the Ethernet/IP/ICMP checks unless it lands in the source MAC or
    # the multicast bit of the destination (7 of 98 bytes): expect 20 % * 91/98 loss
    with line_net(backend_name, tmp_path, left=(LinkShape(corrupt_pct=20), None)) as (net, _):
        h1, h2 = net.get("h1", "h2")
        _, tx, rx = ping(h1, h2, 1000, 0.004)
        lo, _ = binomial_bounds(tx, 0.17, confidence=0.999)
        _, hi = binomial_bounds(tx, 0.20, confidence=0.999)
        assert lo <= tx - rx <= hi, f"{tx - rx} of {tx} lost"
        # TCP still delivers, intact: checksums are finished before the bit flip, so the
        # receiver drops what was corrupted and the sender retransmits it. A fixed payload,
        # not a timed rate: the rate depends on the CPU (78 MB/2 s here, ~0.1 MB/2 s in a
        # UML guest), the delivery does not.
        payload = tmp_path / "payload"
        payload.write_bytes(os.urandom(256 * 1024))
        received = tmp_path / "received"
        server = h2.popen([sys.executable, "-c", _RECEIVE_ONE, str(received)])
        try:
            wait_listening(h2, 5203)
            sent = h1.popen([sys.executable, "-c", _SEND_ONE, h2.IP(), str(payload)])
            assert sent.wait(timeout=120) == 0
            assert server.wait(timeout=30) == 0
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
        assert hashlib.sha256(received.read_bytes()).digest() == hashlib.sha256(payload.read_bytes()).digest()


def test_duplicate_shows_as_ping_dups(backend_name, tmp_path):
    with line_net(backend_name, tmp_path, left=(LinkShape(duplicate_pct=20), None)) as (net, _):
        h1, h2 = net.get("h1", "h2")
        out = h1.cmd(f"ping -n -c 500 -i 0.004 -W 2 {h2.IP()}")
        dups = out.count("(DUP!)")
        lo, hi = binomial_bounds(500, 0.20, confidence=0.999)  # 99.9 %: no CI flakes
        assert lo <= dups <= hi, (dups, lo, hi)


def test_netem_link_where_netem_is_missing_raises_and_leaves_nothing(tmp_path):
    ok, why = probe_netem()
    if ok:
        pytest.skip("the kernel has netem; nothing to refuse")
    from testbed.links.netem import NetemLink
    journal = Journal(Path(tmp_path) / "journal")
    net = Mininet(topo=Line(), link=functools.partial(NetemLink, journal=journal),
                  switch=LinuxBridge, controller=None, build=False)
    try:
        with pytest.raises(BackendUnavailable, match="no sch_netem"):
            net.build()
    finally:
        net.stop()
        assert journal.outstanding() == []
        journal.cleanup()
    assert not [n for n in os.listdir("/sys/class/net") if n.startswith(SWITCH)]


NODE_SRC = """
import os, subprocess

class Node:  # a root-namespace node: just enough of Mininet's Node for Link/Intf
    inNamespace = False
    def __init__(self, name):
        self.name, self.pid, self.intfs, self.ports, self.nameToIntf, self.n = name, os.getpid(), {}, {}, {}, 0
    def newPort(self):
        self.n += 1
        return self.n - 1
    def addIntf(self, intf, port=None, moveIntfFn=None):
        self.intfs[port] = intf; self.ports[intf] = port; self.nameToIntf[intf.name] = intf
    def delIntf(self, intf):
        del self.intfs[self.ports.pop(intf)]; del self.nameToIntf[intf.name]
    def cmd(self, *args, **kw):
        return subprocess.run(" ".join(map(str, args)), shell=True, capture_output=True, text=True).stdout
"""

KILL_SCRIPT = NODE_SRC + """
import sys, time
from testbed.journal import Journal
from testbed.links.userspace import UserspaceLink
from testbed.shape import LinkShape

j = Journal(sys.argv[1])
link = UserspaceLink(Node(sys.argv[2] + "a"), Node(sys.argv[2] + "b"), shape1=LinkShape(delay_ms=5), journal=j)
print(link.emulator_pid, flush=True)
time.sleep(60)
"""


def test_emulator_dies_with_a_sigkilled_runner(tmp_path):
    import signal
    import subprocess
    import sys

    from testbed.journal import clean_stale, read_journal
    prefix = f"mmk{os.getpid() % 10000}"
    runner = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(tmp_path), prefix],
                              stdout=subprocess.PIPE, text=True,
                              cwd=str(Path(__file__).resolve().parents[2]))
    try:
        emu = int(runner.stdout.readline())
        assert proc_alive(emu, None)
        assert f"{prefix}a-eth0" in os.listdir("/sys/class/net")
        _, entries = read_journal(next(Path(tmp_path).glob("*.jsonl")))
        assert sorted(e["kind"] for e in entries.values()) == ["link", "link", "process"]
    finally:
        runner.send_signal(signal.SIGKILL)
        runner.wait()
    deadline = time.monotonic() + 2
    while proc_alive(emu, None) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not proc_alive(emu, None)  # PR_SET_PDEATHSIG
    time.sleep(0.1)
    assert not [n for n in os.listdir("/sys/class/net") if n.startswith(prefix)]
    removed, errors = clean_stale(Path(tmp_path))
    assert errors == [] and removed == 3


def test_name_clash_is_a_clear_error_and_leaves_nothing(tmp_path):
    from testbed.links.userspace import EmulatorError, UserspaceLink
    ns = {}
    exec(NODE_SRC, ns)
    prefix = f"mmc{os.getpid() % 10000}"
    a, b = ns["Node"](prefix + "a"), ns["Node"](prefix + "b")
    journal = Journal(Path(tmp_path) / "journal")
    first = UserspaceLink(a, b, journal=journal)
    try:
        a.n = b.n = 0  # the next link asks for the same names again
        with pytest.raises(EmulatorError, match=f"cannot create TAP '{prefix}a-eth0'.*exist"):
            UserspaceLink(a, b, journal=journal)
        assert len(journal.outstanding()) == 3  # only the first link's entries
    finally:
        first.stop()
    assert journal.outstanding() == [] and journal.cleanup() == []
    assert not [n for n in os.listdir("/sys/class/net") if n.startswith(prefix)]
