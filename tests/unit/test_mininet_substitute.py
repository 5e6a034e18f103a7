"""testbed.compat (no root): which substitutions are installed for which kernel, the shim's
environment, the runner's command lines, and Mininet's --custom topologies. install()
patches Mininet's modules, so it runs in a child Python, as the shim runs it."""
import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from testbed.cli.app import main
from testbed.cli.mininet import mn_argv, script_argv
from testbed.compat.substitute import (SHIM_DIR, Kernel, parse_cpus, probe_rt_share, rt_plan, shim_env,
                                       spread_cpus)
from testbed.topology.custom import custom_topology
from testbed.topology.spec import TopologyError

REPO = Path(__file__).resolve().parents[2]
BARE = Kernel(False, "no netem here", False, "no openvswitch here", False, "no ofdatapath here",
              False, "kernel 6.18 >= 5.10", False, "no 8021q here")
FULL = Kernel(True, "netem works", True, "openvswitch loaded", True, "ofdatapath installed",
              True, "kernel 5.4 < 5.10", True, "8021q loaded")

PROBE = textwrap.dedent("""
    import json
    import mininet.link as ml, mininet.node as mn, mininet.net as mnet
    from testbed.compat import substitute as s
    d = mnet.Mininet.__init__.__defaults__
    print(json.dumps({
        "tclink": ml.TCLink is s.TCLink, "tculink": ml.TCULink is s.TCULink, "tcintf": ml.TCIntf is s.TCIntf,
        "ovs": mn.OVSSwitch is s.Bridge and mn.OVSKernelSwitch is s.Bridge and mn.OVSBridge is s.Bridge,
        "user": mn.UserSwitch is s.Bridge,
        "controller": mn.Controller is s.NoController and mn.DefaultController is s.NoController,
        "find": mn.findController() is s.NoController,
        "net_defaults": s.Bridge in d and s.NoController in d,
        "remote_kept": mn.RemoteController.__module__ == "mininet.node",
        "addlink": getattr(mnet.Mininet.addLink, "minimesh_substitute", False),
        "cpulimited": mn.CPULimitedHost is s.CPULimitedHost,
    }))
""")


def installed(kernel):
    env = shim_env(kernel, {"PATH": os.environ["PATH"]})
    proc = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                          timeout=60, cwd="/")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_bare_kernel_gets_every_substitution_through_the_shim():
    got = installed(BARE)
    assert got == {"tclink": True, "tculink": True, "tcintf": True, "ovs": True, "user": True,
                   "controller": True, "find": True, "net_defaults": True, "remote_kept": True,
                   "addlink": True, "cpulimited": True}


OVS_USER_PROBE = textwrap.dedent("""
    import json
    import mininet.node as mn, mininet.net as mnet
    from testbed.compat import substitute as s
    d = mnet.Mininet.__init__.__defaults__
    # no node is started (no root, no Open vSwitch here): the stock __init__ records its datapath
    s.OVSSwitch.__init__ = lambda self, name, **params: setattr(self, "datapath", params["datapath"])
    sw = mn.OVSKernelSwitch("s9")
    print(json.dumps({
        "ovs": mn.OVSSwitch is s.UserOVSSwitch and mn.OVSKernelSwitch is s.UserOVSSwitch,
        "ovsbr": mn.OVSBridge is s.UserOVSBridge, "user": mn.UserSwitch is s.UserOVSSwitch,
        "controller_stock": mn.Controller.__module__ == "mininet.node"
                            and mn.DefaultController.__module__ == "mininet.node",
        "net_default": s.UserOVSSwitch in d, "datapath": sw.datapath,
    }))
""")


def test_private_open_vswitch_replaces_the_kernel_datapath_and_keeps_controllers():
    kernel = dataclasses.replace(BARE, ovs_user=True, ovs_user_why="Open vSwitch is installed")
    env = shim_env(kernel, {"PATH": os.environ["PATH"]})
    assert str(SHIM_DIR / "ovs-user-bin") in env["PATH"].split(os.pathsep)
    assert str(SHIM_DIR / "ovs-bin") not in env["PATH"].split(os.pathsep)
    proc = subprocess.run([sys.executable, "-c", OVS_USER_PROBE], env=env, capture_output=True, text=True,
                          timeout=60, cwd="/")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"ovs": True, "ovsbr": True, "user": True, "controller_stock": True,
                                       "net_default": True, "datapath": "user"}
    assert "OVS switch -> Open vSwitch's userspace datapath (datapath='kernel' asked)" in proc.stderr


def fake_tools(tmp_path, *names):
    """Executables that print their argv, one per line, standing for the real tools."""
    d = tmp_path / "real"
    d.mkdir(parents=True)
    for name in names:
        (d / name).write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
        (d / name).chmod(0o755)
    return d


def run_stand_in(tmp_path, name, *args, real=("ovs-testcontroller",)):
    d = fake_tools(tmp_path, *real)
    path = os.pathsep.join([str(SHIM_DIR / "ovs-user-bin"), str(d), "/usr/bin", "/bin"])
    out = subprocess.run([str(SHIM_DIR / "ovs-user-bin" / name), *args], capture_output=True, text=True,
                         env={"PATH": path})
    assert out.returncode == 0, out.stderr
    return out.stdout.split(), out.stderr


def test_controller_stand_in_is_ovs_testcontroller_with_the_reference_port(tmp_path):
    argv, _ = run_stand_in(tmp_path, "controller", "-v", "ptcp:")
    assert argv == ["-OOpenFlow10", "-v", "ptcp:6633"]          # the reference controller spoke 1.0 only
    argv, _ = run_stand_in(tmp_path / "2", "controller", "-O", "OpenFlow13", "ptcp:6653")
    assert argv == ["-O", "OpenFlow13", "ptcp:6653"]


def test_ovs_testcontroller_is_offered_openflow_up_to_14(tmp_path):
    argv, _ = run_stand_in(tmp_path, "ovs-testcontroller", "ptcp:6653")
    assert argv == ["-OOpenFlow10,OpenFlow11,OpenFlow12,OpenFlow13,OpenFlow14", "ptcp:6653"]


def test_controller_stand_in_prefers_an_installed_reference_controller(tmp_path):
    argv, _ = run_stand_in(tmp_path, "controller", "-v", "ptcp:", real=("controller", "ovs-testcontroller"))
    assert argv == ["-v", "ptcp:"]


def test_ovs_testcontroller_keeps_given_protocols(tmp_path):
    argv, _ = run_stand_in(tmp_path, "ovs-testcontroller", "-O", "OpenFlow13", "ptcp:6653")
    assert argv == ["-O", "OpenFlow13", "ptcp:6653"]


def test_ovs_vsctl_add_br_by_hand_gets_the_userspace_datapath(tmp_path):
    real = fake_tools(tmp_path, "ovs-vsctl")
    script = (SHIM_DIR / "ovs-user-bin" / "ovs-vsctl").read_text().replace(
        "/usr/bin/ovs-vsctl /usr/sbin/ovs-vsctl", str(real / "ovs-vsctl"))
    shim = tmp_path / "ovs-vsctl"
    shim.write_text(script)
    shim.chmod(0o755)
    out = subprocess.run([str(shim), "add-br", "dp0"], capture_output=True, text=True)
    assert out.stdout.split() == ["add-br", "dp0", "--", "set", "bridge", "dp0", "datapath_type=netdev"]
    assert "ovs-vsctl add-br dp0 -> datapath_type=netdev" in out.stderr
    out = subprocess.run([str(shim), "--", "add-br", "s1", "--", "set", "bridge", "s1", "datapath_type=netdev"],
                         capture_output=True, text=True)
    assert out.stdout.split()[-1] == "datapath_type=netdev" and out.stderr == ""   # Mininet's own: unchanged
    out = subprocess.run([str(shim), "show"], capture_output=True, text=True)
    assert out.stdout.split() == ["show"]


def test_full_kernel_keeps_stock_mininet():
    got = installed(FULL)
    assert not any(v for k, v in got.items() if k != "remote_kept")


# --- CPULimitedHost(sched='rt') where rt runtime is not shared between CPUs ---------------

@pytest.mark.parametrize("f, ncores, cores, expected", [
    (0.1, 2, None, (1, 20000)),         # test_limit here: 1 CPU with 20 % of it = 10 % of 2
    (0.1, 4, None, (1, 40000)),
    (0.3, 4, None, (2, 60000)),         # ceil(1.2) = 2 CPUs with 60 % each
    (0.3, 10, None, (3, 95000)),        # f x n = 3.0000000000000004: still 3 CPUs, not 4
    (0.75, 4, None, (3, 95000)),        # 100 % of 3 CPUs, capped at what the kernel allows
    (0.1, 4, [2, 3], (2, 20000)),       # cores given: those 2 CPUs
    (0.4, 4, [1], (1, 95000)),          # cores given: 1 CPU cannot hold 160 %: capped
    (0.6, 2, None, None),               # f x n > 1: every core, stock's per-CPU f is right
    (0.1, 2, [0, 1], None),             # cores given: every core, stock
    (0.1, 1, None, None),               # one core: no change
    (0.5, 1, [0], None),
])
def test_rt_plan(f, ncores, cores, expected):
    assert rt_plan(f, ncores, 100000, cores, max_ratio=0.95) == expected


def test_rt_plan_total_is_f_of_the_machine():
    for n in (2, 3, 4, 8):
        for f in (0.05, 0.1, 0.25, 0.4):
            k, runtime = rt_plan(f, n, 100000)
            assert k == -(-round(f * n * 1000) // 1000) and abs(k * runtime / 100000 / n - f) < 1e-4


def test_cpu_lists():
    assert parse_cpus("0-1,3") == [0, 1, 3]
    assert parse_cpus([3, 1]) == [1, 3] and parse_cpus(2) == [2] and parse_cpus(None) == []
    assert spread_cpus([0, 1], 1, 0) == [0] and spread_cpus([0, 1], 1, 1) == [1]
    assert spread_cpus([0, 1, 2], 2, 2) == [0, 2]


def test_rt_share_probe(tmp_path):
    on, off = tmp_path / "on", tmp_path / "off"
    on.write_text("GENTLE_FAIR_SLEEPERS RT_RUNTIME_SHARE NO_LB_MIN\n")
    off.write_text("GENTLE_FAIR_SLEEPERS NO_RT_RUNTIME_SHARE NO_LB_MIN\n")
    missing = str(tmp_path / "missing")
    assert probe_rt_share((missing, str(on)), "6.18.1")[0] is True
    assert probe_rt_share((str(off),), "4.19.0")[0] is False
    assert probe_rt_share((missing,), "6.18.44-fc")[0] is False
    assert probe_rt_share((missing,), "5.10.0")[0] is False
    assert probe_rt_share((missing,), "5.4.0-42-generic")[0] is True


class FakeCgroups:
    """cgset/cgget/cgclassify/chrt as CPULimitedHost calls them, on a dict."""

    def __init__(self):
        self.groups = {"/": {"cpuset.cpus": "0-1", "cpuset.mems": "0"}}
        self.commands = []

    def err_run(self, cmd, **_):
        self.commands.append(cmd)
        words = cmd.split()
        if words[0] == "cgset":
            param, value = words[2].split("=", 1)
            self.groups.setdefault(words[3], {})[param] = value
        elif words[0] == "cgget":
            value = self.groups.get(words[-1], {}).get(words[-2])
            return (f"{value}\n", "", 0) if value is not None else ("", "no such", 1)
        return "", "", 0

    def quiet_run(self, cmd, **_):
        words = cmd.split()
        if words[0] == "cgget":         # stock cgroupGet: 'cgget -r cpu.X /h'
            self.commands.append(cmd)
            return f"{words[-1]}:\n{words[2]}: {self.groups[words[-1]][words[2]]}\n"
        if words[0] == "chrt":
            return f"pid {words[-1]}'s current scheduling policy: SCHED_RR\n"
        return self.err_run(cmd)[0]


def cpu_host(monkeypatch, fake, name, sched="rt"):
    import mininet.node as mnode
    import mininet.util as mutil

    from testbed.compat import substitute as s
    monkeypatch.setattr(mutil, "errRun", fake.err_run)
    monkeypatch.setattr(mutil, "numCores", lambda: 2)
    monkeypatch.setattr(mnode, "numCores", lambda: 2)
    monkeypatch.setattr(mnode, "quietRun", fake.quiet_run)
    monkeypatch.setattr(mnode, "errRun", fake.err_run)
    monkeypatch.setattr(s, "_rt_max_ratio", lambda: 0.95)
    host = object.__new__(s.CPULimitedHost)
    host.name, host.pid, host.period_us, host.sched, host.rtprio = name, 100, 100000, sched, 20
    host.minimesh_cores = []
    return host


def test_rt_hosts_are_pinned_in_turn_with_the_machine_fraction(monkeypatch):
    from testbed.compat import substitute as s
    monkeypatch.setattr(s.CPULimitedHost, "_next_cpu", 0)
    fake = FakeCgroups()
    for name in ("h1", "h2"):
        cpu_host(monkeypatch, fake, name).setCPUFrac(0.1)
    assert fake.groups["/h1"] == {"cpu.rt_period_us": "100000", "cpu.rt_runtime_us": "20000",
                                  "cpuset.cpus": "0", "cpuset.mems": "0"}
    assert fake.groups["/h2"]["cpuset.cpus"] == "1" and fake.groups["/h2"]["cpu.rt_runtime_us"] == "20000"
    assert "cgclassify -g cpuset:/h1 100" in fake.commands


def test_cfs_and_wide_rt_hosts_are_stock(monkeypatch):
    fake = FakeCgroups()
    cpu_host(monkeypatch, fake, "h1", sched="cfs").setCPUFrac(0.1)
    assert fake.groups["/h1"] == {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "20000"}
    cpu_host(monkeypatch, fake, "h2").setCPUFrac(0.6)         # f x 2 cores > 1: every core
    assert fake.groups["/h2"] == {"cpu.rt_period_us": "100000", "cpu.rt_runtime_us": "60000"}
    assert not any("cpuset" in c for c in fake.commands)


def test_rt_host_refused_by_the_kernel_gets_stocks_limit(monkeypatch):
    fake = FakeCgroups()
    refuse = fake.err_run

    def err_run(cmd, **kw):
        if cmd.startswith("cgset -r cpu.rt_runtime_us=20000"):
            fake.commands.append(cmd)
            return "", "Invalid argument", 50
        return refuse(cmd, **kw)
    host = cpu_host(monkeypatch, fake, "h1")
    fake.err_run = err_run
    import mininet.util as mutil
    monkeypatch.setattr(mutil, "errRun", err_run)
    host.setCPUFrac(0.1)
    assert fake.groups["/h1"]["cpu.rt_runtime_us"] == "10000" and "cpuset.cpus" not in fake.groups["/h1"]


def test_cgroup_removed_from_each_hierarchy(monkeypatch):
    fake = FakeCgroups()
    host = cpu_host(monkeypatch, fake, "h1", sched="cfs")
    host.cgroup = "cpu,cpuacct,cpuset:/h1"
    assert host.cgroupDel() is True
    assert [c for c in fake.commands if c.startswith("cgdelete")] == [
        "cgdelete -r cpu,cpuacct,cpuset:/h1", "cgdelete -r cpu:/h1", "cgdelete -r cpuacct:/h1",
        "cgdelete -r cpuset:/h1"]


def test_shim_not_installed_without_the_runner():
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": os.pathsep.join([str(SHIM_DIR), str(REPO)])}
    proc = subprocess.run([sys.executable, "-c", "import mininet.link as l; print(l.TCLink.__module__)"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "mininet.link"


def test_shim_env_puts_the_shim_first_and_the_stand_ins_only_where_needed():
    env = shim_env(BARE, {"PATH": "/usr/bin", "PYTHONPATH": "/x"})
    assert env["PYTHONPATH"].split(os.pathsep) == [str(SHIM_DIR), str(REPO), "/x"]
    assert env["PATH"].split(os.pathsep) == [str(SHIM_DIR / "bin"), str(SHIM_DIR / "ovs-bin"),
                                             str(SHIM_DIR / "ofdp-bin"), str(SHIM_DIR / "vlan-bin"), "/usr/bin"]
    assert Kernel.from_json(env["MINIMESH_MININET"]) == BARE
    assert env["MINIMESH_PYTHON"] == sys.executable
    assert shim_env(FULL, {"PATH": "/usr/bin"})["PATH"].split(os.pathsep) == [str(SHIM_DIR / "bin"), "/usr/bin"]


def test_shim_python_runs_minimeshs_interpreter():
    env = {"MINIMESH_PYTHON": sys.executable, "PATH": "/usr/bin:/bin"}
    out = subprocess.run([str(SHIM_DIR / "bin" / "python"), "-c", "import sys; print(sys.executable)"],
                         env=env, capture_output=True, text=True, timeout=30).stdout.strip()
    assert out == sys.executable


def test_runner_command_lines(tmp_path, capsys):
    assert mn_argv(["--topo", "linear,3"])[-2:] == ["--topo", "linear,3"]
    assert mn_argv([])[0] == sys.executable
    script = tmp_path / "s.py"
    script.write_text("")
    assert script_argv([str(script), "a"]) == [sys.executable, str(script), "a"]
    assert script_argv(["-m", "mininet.examples.emptynet"])[1:] == ["-m", "mininet.examples.emptynet"]
    with pytest.raises(SystemExit) as e:
        script_argv([str(tmp_path / "missing.py")])
    assert e.value.code == 2 and "no such file" in capsys.readouterr().err


def test_mn_options_reach_the_runner_not_argparse(monkeypatch):
    seen = {}
    import testbed.cli.mininet as m
    monkeypatch.setattr(m, "_exec", lambda what, argv, probe=True: seen.update(argv=argv, probe=probe) or 0)
    assert main(["mn", "--topo", "linear,3", "--link", "tc,delay=10ms", "--test", "pingall"]) == 0
    assert seen["argv"][-6:] == ["--topo", "linear,3", "--link", "tc,delay=10ms", "--test", "pingall"]
    main(["mn", "-h"])
    assert seen["probe"] is False           # mn's own help: nothing probed, no root needed


CUSTOM = textwrap.dedent("""
    from mininet.topo import Topo

    class Pair(Topo):
        def build(self, n=2, delay='5ms'):
            s1 = self.addSwitch('s1')
            for i in range(1, n + 1):
                self.addLink(self.addHost('h%d' % i), s1, delay=delay)

    topos = {'pair': Pair, 'fn': lambda: Pair(n=1)}
""")


def test_custom_topology_with_mininets_arguments(tmp_path):
    f = tmp_path / "pair.py"
    f.write_text(CUSTOM)
    topo = custom_topology([str(f)], "pair,3,delay=8ms")
    assert topo.hosts() == ["h1", "h2", "h3"]
    assert topo.linkInfo("h1", "s1")["delay"] == "8ms"
    assert custom_topology([str(f)], "fn").hosts() == ["h1"]


@pytest.mark.parametrize("text, topo, message", [
    ("x = (\n", "pair", ":1: syntax error"),
    ("import nosuchmodule\n", "pair", ":1: ModuleNotFoundError"),
    ("topos = {}\n", "pair", "defines no topologies"),
    (CUSTOM, "nope", "no topology 'nope'; defined: fn, pair"),
    (CUSTOM, "pair,1,2,3", "--topo pair,1,2,3: TypeError"),
    ("topos = {'x': lambda: 42}\n", "x", "gave int, not a mininet.topo.Topo"),
])
def test_custom_topology_errors(tmp_path, text, topo, message):
    f = tmp_path / "t.py"
    f.write_text(text)
    with pytest.raises(TopologyError) as e:
        custom_topology([str(f)], topo)
    assert str(e.value).startswith(str(f)) and message in str(e.value)


def test_custom_topology_missing_file():
    with pytest.raises(TopologyError, match="no such custom topology file"):
        custom_topology(["/nonexistent/t.py"], "x")
