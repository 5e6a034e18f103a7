"""Mininet material through ``minimesh mininet`` / ``minimesh mn`` / ``minimesh up --custom``
(root): TCLink's parameters measured on the wire, with the fidelity tests' tolerances
(tests/integration/test_link_fidelity.py: median RTT within +-1 ms, rate within +-10 %,
loss within binomial 99 % bounds), an unknown parameter refused with nothing left behind,
``mn --link tc,delay=10ms`` and a ``--custom`` topology in ``mn`` and ``up``.

On a kernel with sch_netem stock TCLink is kept (no substitution), so the same
measurements then check stock Mininet.
"""
import json
import os
import statistics
import subprocess
import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path

import pytest

from testbed.links.measure import binomial_bounds, parse_ping

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")]

REPO = Path(__file__).resolve().parents[2]
RTT_TOL_MS = 1.0          # the fidelity tests' median-RTT tolerance
RATE_TOL = 0.10           # ... and their rate tolerance

# A Mininet script as a user writes it: h1 - s1 - h2, TCLink parameters on h1's link (from
# argv as JSON), measurements printed as one JSON line.
SCRIPT = textwrap.dedent("""
    import json, re, sys
    from mininet.net import Mininet
    from mininet.link import TCLink
    from mininet.topo import Topo

    class Line(Topo):
        def build(self, **opts):
            s1 = self.addSwitch('s1')
            self.addLink(self.addHost('h1'), s1, cls=TCLink, **opts)
            self.addLink(self.addHost('h2'), s1)

    what, opts = sys.argv[1], json.loads(sys.argv[2])
    net = Mininet(topo=Line(**opts), autoStaticArp=True)
    net.start()
    h1, h2 = net.get('h1', 'h2')
    h1.cmd('ping -c 2 -i 0.2 -W 2', h2.IP())
    out = {}
    if what == 'ping':
        out['ping'] = h1.cmd('ping -n -c %s -i %s -W 2' % (sys.argv[3], sys.argv[4]), h2.IP())
        if len(sys.argv) > 5:     # then change the live link as TCIntf's config does
            net.links[0].intf1.config(**json.loads(sys.argv[5]))
            out['ping2'] = h1.cmd('ping -n -c %s -i %s -W 2' % (sys.argv[3], sys.argv[4]), h2.IP())
    elif what == 'iperf':
        out['iperf'] = net.iperf((h1, h2), seconds=5)
    net.stop()
    print('RESULT ' + json.dumps(out))
""")


def minimesh(*args, stdin=None, timeout=240):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "testbed", *args], input=stdin, capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=REPO)


def run_script(tmp_path, *args):
    script = tmp_path / "line.py"
    script.write_text(SCRIPT)
    proc = minimesh("mininet", str(script), *[a if isinstance(a, str) else json.dumps(a) for a in args])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):]), proc.stderr


def median_rtt(text):
    replies, _tx, _rx = parse_ping(text)
    return statistics.median(r.rtt_ms for r in replies)


def links():
    """`ip -o link` of the root namespace: what a run may have left."""
    return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout


@contextmanager
def killed_run(*args, **popen):
    """`minimesh ARGS` for the block to use; leaving the block SIGKILLs it (as a user's kill -9
    would), and on a normal exit `minimesh clean` must then succeed."""
    proc = subprocess.Popen([sys.executable, "-m", "testbed", *args], text=True, cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=str(REPO)), **popen)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()
    clean = minimesh("clean")
    assert clean.returncode == 0, clean.stdout + clean.stderr


def test_delay_sets_the_rtt_and_intf_config_changes_it_live(tmp_path):
    out, err = run_script(tmp_path, "ping", {"delay": "10ms"}, "40", "0.05", {"delay": "30ms"})
    # delay on both interfaces of h1's link: 10 ms each way
    assert median_rtt(out["ping"]) == pytest.approx(20.0, abs=RTT_TOL_MS)
    # intf1 (h1 -> s1) now 30 ms, intf2 still 10 ms
    assert median_rtt(out["ping2"]) == pytest.approx(40.0, abs=RTT_TOL_MS)
    if "minimesh: TCLink" not in err:
        pytest.skip("stock TCLink kept (the kernel has netem): measured stock Mininet")


def test_params1_and_params2_shape_one_direction_each(tmp_path):
    out, _ = run_script(tmp_path, "ping", {"params1": {"delay": "15ms"}, "params2": {"delay": "2ms"}},
                        "40", "0.05")
    assert median_rtt(out["ping"]) == pytest.approx(17.0, abs=RTT_TOL_MS)


def test_bw_sets_the_iperf_rate(tmp_path):
    out, _ = run_script(tmp_path, "iperf", {"bw": 10})
    server = out["iperf"][0]
    value, unit = server.split()[:2]
    mbit = float(value) * {"Kbits/sec": 1e-3, "Mbits/sec": 1.0, "Gbits/sec": 1e3}[unit]
    # the link's rate counts whole frames; TCP's goodput is ~95 % of it (1448 of 1514 bytes)
    assert 10 * (1 - RATE_TOL) <= mbit <= 10 * (1 + RATE_TOL), server


def test_loss_sets_the_loss_rate(tmp_path):
    n, p = 400, 0.10          # loss only on h1 -> s1 (params1): a ping is lost with p
    out, _ = run_script(tmp_path, "ping", {"params1": {"loss": 10}}, str(n), "0.01")
    _replies, tx, rx = parse_ping(out["ping"])
    lo, hi = binomial_bounds(tx, p, confidence=0.999)  # 99.9 %: no CI flakes
    assert tx == n and lo <= tx - rx <= hi, f"{tx - rx} of {tx} lost, 99.9 % bounds [{lo}, {hi}]"


def test_unknown_parameter_rejected_by_name_nothing_left(tmp_path):
    script = tmp_path / "line.py"
    script.write_text(SCRIPT)
    proc = minimesh("mininet", str(script), "ping", json.dumps({"delya": "10ms"}), "1", "0.2")
    assert proc.returncode != 0
    assert "delya: unknown link parameter" in proc.stderr
    if "minimesh: TCLink" not in proc.stderr:
        pytest.skip("stock TCLink kept (the kernel has netem)")
    left = links()
    assert "s1-eth" not in left and "h1-eth" not in left
    emulators = subprocess.run(["pgrep", "-f", "testbed.links.emulator"], capture_output=True, text=True)
    assert emulators.stdout == ""


# --- mn -----------------------------------------------------------------------------------

def test_mn_linear_tc_delay_pingall_and_rtt(tmp_path):
    post = tmp_path / "post.cli"       # a warm-up (ARP, bridge learning, IPv6 chatter), then measure
    post.write_text("h1 ping -n -q -c 20 -i 0.1 h3\nh1 ping -n -c 40 -i 0.1 h3\n"
                    "link s1 s2 down\nh1 ping -n -c 1 -W 1 h3\nlink s1 s2 up\nh1 ping -n -c 3 -W 2 h3\n"
                    "net\ndump\n")
    proc = minimesh("mn", "--topo", "linear,3", "--link", "tc,delay=10ms", "--test", "pingall",
                    "--post", str(post))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "*** Results: 0% dropped (6/6 received)" in out
    pings = out.split("PING 10.0.0.3")
    assert len(pings) == 5, out[-3000:]
    # h1 - s1 - s2 - s3 - h3: four links, 10 ms each way on each, over what the switches take
    # themselves (a Linux bridge ~0.03 ms, Open vSwitch's userspace datapath ~0.2 ms per pass:
    # six passes per round trip here), measured on the same topology with undelayed links
    base_post = tmp_path / "base.cli"
    base_post.write_text("h1 ping -n -q -c 20 -i 0.1 h3\nh1 ping -n -c 40 -i 0.1 h3\n")
    base = minimesh("mn", "--topo", "linear,3", "--link", "tc", "--post", str(base_post))
    assert base.returncode == 0, (base.stdout + base.stderr)[-3000:]
    switches = median_rtt((base.stdout + base.stderr).split("PING 10.0.0.3")[2])
    assert switches < 5.0, switches
    print(f"\nmn linear,3 delay=10ms: RTT {median_rtt(pings[2]):.2f} ms, switches alone {switches:.2f} ms")
    assert median_rtt(pings[2]) - switches == pytest.approx(80.0, abs=RTT_TOL_MS), switches
    # Mininet's CLI on the substituted links: link down/up, net, dump
    assert "1 packets transmitted, 0 received" in pings[3]
    assert "3 packets transmitted, 3 received" in pings[4]
    assert "s1-eth2:s2-eth2" in out and "<Host h1: h1-eth0:10.0.0.1" in out


CUSTOM = textwrap.dedent("""
    from mininet.topo import Topo

    class Pair(Topo):
        "n hosts on one switch; h1's link delayed as TCLink's delay"
        def build(self, n=2, delay='5ms'):
            s1 = self.addSwitch('s1')
            for i in range(1, n + 1):
                opts = {'delay': delay} if i == 1 else {}
                self.addLink(self.addHost('h%d' % i), s1, **opts)

    topos = {'pair': Pair}
""")


def test_custom_topology_in_mn(tmp_path):
    custom = tmp_path / "pair.py"
    custom.write_text(CUSTOM)
    post = tmp_path / "post.cli"
    post.write_text("h1 ping -n -c 30 -i 0.1 h3\n")
    proc = minimesh("mn", "--custom", str(custom), "--topo", "pair,3,delay=8ms", "--link", "tc",
                    "--test", "pingall", "--post", str(post))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "*** Results: 0% dropped (6/6 received)" in out
    assert median_rtt(out) == pytest.approx(16.0, abs=RTT_TOL_MS)


def test_custom_topology_in_up(tmp_path):
    custom = tmp_path / "pair.py"
    custom.write_text(CUSTOM)
    proc = minimesh("up", "--custom", str(custom), "--topo", "pair,3",
                    stdin="pingall\nh1 ping -n -c 30 -i 0.1 h2\nexit\n")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "0% dropped (6/6 received)" in out
    assert median_rtt(out) == pytest.approx(10.0, abs=RTT_TOL_MS)


def test_custom_topology_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from mininet.topo import Topo\n\nx = 1 +\n")
    proc = minimesh("up", "--custom", str(bad), "--topo", "pair")
    assert proc.returncode == 2 and f"{bad}:3: syntax error" in proc.stderr
    custom = tmp_path / "pair.py"
    custom.write_text(CUSTOM)
    proc = minimesh("up", "--custom", str(custom), "--topo", "nope")
    assert proc.returncode == 2 and "no topology 'nope'; defined: pair" in proc.stderr


# --- VLANs -----------------------------------------------------------------------------------

# Four hosts on one switch: two on VLAN 10 (one made the ip(8) way, one the vconfig way),
# one on VLAN 20, one untagged; the reachability matrix, the tags on the switch's wire, and
# the capture, printed as one JSON line. It sleeps at the end when asked (the SIGKILL test).
VLAN_SCRIPT = textwrap.dedent("""
    import json, sys, time
    from mininet.net import Mininet
    from mininet.node import Host
    from mininet.topo import Topo

    class VLANHost(Host):
        def config(self, vlan=None, how='ip', **params):
            r = super().config(**params)
            if vlan:
                intf = self.defaultIntf()
                self.cmd('ip addr flush dev %s' % intf)
                if how == 'ip':
                    print(self.cmd('ip link add link %s name %s.%d type vlan id %d' % (intf, intf, vlan, vlan)))
                else:
                    print(self.cmd('vconfig add %s %d' % (intf, vlan)))
                self.cmd('ip addr add %s dev %s.%d' % (params['ip'], intf, vlan))
                self.cmd('ip link set %s.%d up' % (intf, vlan))
                intf.name = '%s.%d' % (intf, vlan)
                self.nameToIntf[intf.name] = intf
            return r

    class Star(Topo):
        def build(self):
            s1 = self.addSwitch('s1')
            for name, vlan, how in (('a', 10, 'ip'), ('b', 10, 'vconfig'), ('c', 20, 'ip'), ('d', None, '')):
                self.addLink(self.addHost(name, cls=VLANHost, vlan=vlan, how=how), s1)

    net = Mininet(topo=Star(), waitConnected=True)
    net.start()
    s1 = net.get('s1')
    pcap = sys.argv[1]
    s1.cmd('tcpdump -U -eni s1-eth1 -w %s &' % pcap)
    time.sleep(1)
    hosts = net.hosts
    reach = {}
    for h in hosts:
        for o in hosts:
            if h is not o:
                out = h.cmd('ping -c 1 -W 1', o.IP())
                reach[h.name + o.name] = ' 0% packet loss' in out
    s1.cmd('kill %tcpdump')
    time.sleep(0.5)
    tags = s1.cmd('tcpdump -enr %s 2>/dev/null | grep -c "vlan 10"' % pcap).split()[-1]
    ifaces = net.get('a').cmd('ip -o link')
    print('RESULT ' + json.dumps({'reach': reach, 'tags': int(tags), 'ifaces': ifaces}), flush=True)
    if len(sys.argv) > 2:
        time.sleep(600)
    net.stop()
""")


def vlan_daemons():
    return subprocess.run(["pgrep", "-f", "testbed.compat.vlan serve"], capture_output=True, text=True).stdout


def test_vlan_interfaces_separate_hosts_tag_the_wire_and_go_with_the_run(tmp_path):
    script = tmp_path / "vlans.py"
    script.write_text(VLAN_SCRIPT)
    proc = minimesh("mininet", str(script), str(tmp_path / "vlan.pcap"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = json.loads([x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1][len("RESULT "):])
    if "userspace 802.1Q" not in proc.stdout + proc.stderr:
        assert "8021q" in open("/proc/modules").read() or os.path.isdir("/sys/module/8021q")
    reach = out["reach"]
    assert reach["ab"] and reach["ba"], reach                   # same VLAN, made two ways
    assert not any(reach[p] for p in ("ac", "ca", "bc", "cb", "ad", "da", "cd", "dc", "bd", "db")), reach
    assert out["tags"] > 0                                       # 802.1Q on the switch's wire
    assert "a-eth0.10" in out["ifaces"]
    assert vlan_daemons() == ""
    assert not [p for p in Path("/run/minimesh").glob("*.jsonl")
                if "userspace VLAN" in p.read_text()] if Path("/run/minimesh").is_dir() else True


def test_vlan_processes_cleaned_after_sigkill(tmp_path):
    script = tmp_path / "vlans.py"
    script.write_text(VLAN_SCRIPT)
    with killed_run("mininet", str(script), str(tmp_path / "vlan.pcap"), "sleep",
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as proc:
        for line in proc.stdout:
            if line.startswith("RESULT "):
                break
        if not vlan_daemons():
            pytest.skip("the kernel makes VLANs itself (8021q): nothing of minimesh's to clean")
    assert vlan_daemons() == ""
    assert controllers() == ""               # the stand-in's controller went with the run's Open vSwitch
    mn_c = minimesh("mn", "-c")              # Mininet's own leftovers (its shells, veths): its cleanup
    assert mn_c.returncode == 0, mn_c.stdout + mn_c.stderr
    assert "s1-eth" not in links()


# --- a private Open vSwitch (userspace datapath) ------------------------------------------------

def controllers():
    """Running ovs-testcontrollers; a killed one stays a zombie until its shell (a Mininet node's,
    left by the killed run until `mn -c`) reaps it, and holds no port."""
    ps = subprocess.run(["ps", "-C", "ovs-testcontroller", "-o", "pid=,stat="], capture_output=True, text=True)
    return "".join(line + "\n" for line in ps.stdout.splitlines() if "Z" not in line.split()[-1])


def ovs_daemons():
    """minimesh's private Open vSwitch daemons (their database lives in <state dir>/ovs-<pid>/)."""
    return subprocess.run(["pgrep", "-f", "^(ovs-vswitchd unix:|ovsdb-server ).*/ovs-[0-9]+-[0-9]+/"],
                          capture_output=True, text=True).stdout


def private_ovs_or_skip():
    from testbed.compat import ovs
    from testbed.compat.substitute import _probe_ovs
    if _probe_ovs()[0]:
        pytest.skip("the kernel has the openvswitch module: stock OVS is kept")
    ok, why = ovs.available()
    if not ok:
        pytest.skip(f"no private Open vSwitch here ({why}): Linux bridges stand in")


def test_mn_on_a_private_open_vswitch_with_openflow_habits_and_nothing_left(tmp_path):
    private_ovs_or_skip()
    post = tmp_path / "post.cli"
    post.write_text("sh ovs-vsctl show\nsh ovs-ofctl dump-flows s1\ndpctl dump-flows\niperf\n")
    proc = minimesh("mn", "--topo", "single,2", "--test", "pingall", "--post", str(post))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "OVS switch -> Open vSwitch's userspace datapath" in out
    assert "*** Results: 0% dropped (2/2 received)" in out
    assert "datapath_type: netdev" in out and "is_connected: true" in out     # ovs-vsctl show
    assert "NXST_FLOW reply" in out and "actions=output:" in out              # the controller's flows
    rate = [x for x in out.splitlines() if "*** Results: ['" in x][-1]       # iperf across the switch
    assert "bits/sec" in rate, out[-2000:]
    assert ovs_daemons() == ""
    assert not list(Path("/run/minimesh").glob("ovs-*"))
    left = links()
    assert "ovs-netdev" not in left and ": s1:" not in left      # the datapath's TAPs


def test_private_open_vswitch_cleaned_after_sigkill(tmp_path):
    private_ovs_or_skip()
    with killed_run("mn", "--topo", "single,2", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT) as proc:
        proc.stdin.write("sh echo READY\n")
        proc.stdin.flush()
        for line in proc.stdout:
            if "READY" in line:
                break
        assert ovs_daemons() != ""
    assert ovs_daemons() == "" and controllers() == ""
    assert not list(Path("/run/minimesh").glob("ovs-*"))
    left = links()
    assert "ovs-netdev" not in left and ": s1:" not in left      # the datapath's TAPs
    mn_c = minimesh("mn", "-c")              # Mininet's own leftovers: its own cleanup, as always
    assert mn_c.returncode == 0, mn_c.stdout + mn_c.stderr
    assert "s1-eth" not in links()
