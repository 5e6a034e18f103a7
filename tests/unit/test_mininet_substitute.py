"""testbed.compat (no root): which substitutions are installed for which kernel, the shim's
environment, the runner's command lines, and Mininet's --custom topologies. install()
patches Mininet's modules, so it runs in a child Python, as the shim runs it."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from testbed.cli.app import main
from testbed.cli.mininet import mn_argv, script_argv
from testbed.compat.substitute import SHIM_DIR, Kernel, shim_env
from testbed.topology.custom import custom_topology
from testbed.topology.spec import TopologyError

REPO = Path(__file__).resolve().parents[2]
BARE = Kernel(False, "no netem here", False, "no openvswitch here", False, "no ofdatapath here",
              False, "no 8021q here")
FULL = Kernel(True, "netem works", True, "openvswitch loaded", True, "ofdatapath installed", True, "8021q loaded")

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
                   "addlink": True}


def test_full_kernel_keeps_stock_mininet():
    got = installed(FULL)
    assert not any(v for k, v in got.items() if k != "remote_kept")


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
