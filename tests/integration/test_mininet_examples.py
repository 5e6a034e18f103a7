"""Mininet's own example tests (Debian's mininet package: /usr/share/doc/mininet/examples/test)
run unchanged through ``minimesh mininet`` (root). Each test file spawns ``python -m
mininet.examples.X`` with pexpect; the runner's shim gives those processes the same
substitutions. The fast ones run in CI (~3 min together); the long ones (link shaping
with iperf, the 64-host tree, CPU limits) and three more are opt-in:

    sudo MINIMESH_FULL_RUNS=1 ./minimesh test tests/integration/test_mininet_examples.py

``limit`` and ``simpleperf`` use CPULimitedHost, which Mininet 2.3.0 builds on cgroup v1's
cpu/cpuacct/cpuset controllers (cgcreate): where /sys/fs/cgroup/cpu is missing (inside
mm-isolated, which mounts a private sysfs with cgroup2 only) they run in a private mount
namespace that has the machine's cgroup v1 hierarchies back over a private sysfs, and are
skipped, saying why, where the machine has none.
The results table is in docs/mininet.md.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_TESTS = Path("/usr/share/doc/mininet/examples/test")
FAST = ["emptynet", "intfoptions", "multiping", "multipoll", "popen", "linuxrouter", "scratchnet", "vlanhost",
        "controllers", "numberedports", "mobility", "hwintf"]
# opt-in: the long ones (link shaping with iperf, the 64-host tree, CPU limits), and three
# more that pass but test nothing the ones above do not (private dirs, multiple links, CLI)
LONG = ["simpleperf", "linearbandwidth", "limit", "treeping64", "bind", "multilink", "multitest"]
CPU_LIMITED = {"simpleperf", "limit"}
FULL = os.environ.get("MINIMESH_FULL_RUNS") == "1"
NO_CGROUP_V1 = 97
# Each example test runs in a private mount namespace with a private /tmp: Mininet's cleanup
# (test_baresshd, examples/cpu.py, runner.py call it) removes /tmp/*.log and /tmp/*.out.
PRIVATE_TMP = "mount -t tmpfs tmpfs /tmp"
# Under a sysfs mounted over the machine's (as mm-isolated does): uncover the machine's
# /sys/fs/cgroup (cgroup v1, where cgcreate looks), carry it over onto a fresh sysfs of this
# network namespace, drop the copy. Nothing outside the namespace changes.
CGROUP_V1 = ("d=$(mktemp -d) && umount /sys/fs/cgroup && umount /sys && "
             "[ -e /sys/fs/cgroup/cpu/cpu.cfs_quota_us ] && mount --rbind /sys/fs/cgroup \"$d\" && "
             "umount -l /sys && mount -t sysfs sysfs /sys && mount --rbind \"$d\" /sys/fs/cgroup && "
             f"umount -l \"$d\" && rmdir \"$d\" || exit {NO_CGROUP_V1}")


def run_example_test(name, timeout):
    path = EXAMPLE_TESTS / f"test_{name}.py"
    if not path.exists():
        pytest.skip(f"{path} is not installed (Debian's mininet package ships it)")
    setup = [CGROUP_V1] if name in CPU_LIMITED and not Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").exists() else []
    setup.append(PRIVATE_TMP)
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", " && ".join(setup) + ' && exec "$@"',
            "sh", sys.executable, "-m", "testbed", "mininet", str(path)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    out = proc.stdout + proc.stderr
    if proc.returncode == NO_CGROUP_V1 or "libcgroup initialization failed" in out:
        pytest.skip("CPULimitedHost needs cgroup v1's cpu controllers (cgcreate), which are not "
                    "usable here (e.g. inside mm-isolated, which mounts only cgroup2)")
    assert proc.returncode == 0 and re.search(r"^OK\b", proc.stderr, re.M), out[-4000:]
    assert "skipped" not in proc.stderr.splitlines()[-1], out[-2000:]
    return out


@pytest.mark.parametrize("name", FAST)
def test_fast_example(name):
    run_example_test(name, timeout=300)


def test_intfoptions_example_output():
    """test_intfoptions asserts nothing when the example prints nothing (stock Mininet here:
    it exits at once without OVS, and the test passes); so the example's own output is
    checked too, with the test's tolerances (+-25 %)."""
    proc = subprocess.run([sys.executable, "-m", "testbed", "mininet", "-m", "mininet.examples.intfoptions"],
                          capture_output=True, text=True, timeout=300, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "minimesh: TCLink" in out or "netem" not in out
    tcp = float(re.search(r"Results: \['([\d.]+) Mbits/sec", out)[1])
    udp = float(re.search(r"Results: \['10M', '([\d.]+) Mbits/sec", out)[1])
    rtt = float(re.search(r"rtt min/avg/max/mdev [\d.]+/([\d.]+)/", out)[1])
    assert 7.5 <= tcp <= 12.5, out[-2000:]          # bw=10 on h1's interface
    assert 3.75 <= udp <= 6.25, out[-2000:]         # 10M UDP through loss=50
    assert 11.25 <= rtt <= 18.75, out[-2000:]       # delay=15ms one way


@pytest.mark.skipif(not FULL, reason="long Mininet example tests (~5 min): set MINIMESH_FULL_RUNS=1")
@pytest.mark.parametrize("name", LONG)
def test_long_example(name):
    run_example_test(name, timeout=1800)
