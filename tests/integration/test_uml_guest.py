"""The kernel most users have, in CI: tests that need sch_netem (marker ``netem``) run inside a
user-mode-linux guest (tests/support/uml.py) when this host's kernel lacks it, and the mesh
runs on netem there. A run reports its boot and run costs (``-s`` shows them).

On a host whose kernel has netem the ``netem`` tests run in place and the guest slice skips
(they ran). Inside the guest (``MINIMESH_IN_UML=1``) this module is not collected again.
"""
from __future__ import annotations

import json
import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.support import uml

pytestmark = [pytest.mark.root, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
NETEM_FILES = ["tests/integration/test_link_fidelity.py"]


@pytest.fixture(scope="module")
def guest():
    if os.environ.get(uml.IN_GUEST_ENV):
        pytest.skip("already inside the guest")
    ok, why = uml.available()
    if not ok:
        pytest.fail(f"the UML guest cannot run: {why}")  # a CI machine without it is misconfigured
    return uml


def _junit(path: Path) -> dict[str, int]:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    return {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}


def test_guest_runs_a_command_and_brings_back_its_status_and_files(guest, tmp_path):
    r = guest.run_in_guest(["sh", "-c", f"{uml.guest_python()} -m testbed doctor --json"
                            " > /run/mm-out/doctor.json; uname -r; exit 7"],
                           timeout=120, outdir=tmp_path)
    print(f"\nguest doctor: boot {r.boot_s:.1f} s, whole guest {r.run_s:.1f} s")
    assert r.returncode == 7
    assert r.output.strip().endswith(uml.release() or "?")
    doctor = json.loads((tmp_path / "doctor.json").read_text())
    # doctor and `auto` pick netem on a netem kernel; OVS's kernel datapath loads
    assert doctor["netem"] is True and doctor["link_backend"] == "netem", doctor
    assert doctor["ovs"] is True and doctor["tun"] is True, doctor
    assert 0 < r.boot_s < 30


def test_a_hung_guest_is_killed_at_its_timeout_and_leaves_nothing(guest, tmp_path):
    with pytest.raises(guest.GuestTimeout, match="still running after 10 s") as info:
        guest.run_in_guest(["sleep", "600"], timeout=10, outdir=tmp_path)
    assert info.value.session > 0
    assert guest.session_pids(info.value.session) == []


def test_netem_tests_pass_in_the_guest(guest, tmp_path, request):
    from testbed.links import probe_netem
    ok, _ = probe_netem()
    if ok:
        pytest.skip("this kernel has netem: the `netem` tests ran in place")
    r = guest.run_in_guest(
        [uml.guest_python(), "-m", "pytest", "-q", "-m", "netem", "-p", "no:cacheprovider",
         "--junitxml=/run/mm-out/junit.xml", *NETEM_FILES], timeout=540, outdir=tmp_path)
    counts = _junit(tmp_path / "junit.xml")
    print(f"\nguest netem slice: {counts}; boot {r.boot_s:.1f} s, whole guest {r.run_s:.1f} s")
    assert r.returncode == 0, r.output[-4000:]
    assert counts["tests"] >= 10 and counts["failures"] == counts["errors"] == 0, counts
    assert counts["skipped"] == 0, r.output[-4000:]  # no netem test is skipped any more


@pytest.mark.parametrize("experiment", [
    "crash_failover",     # availability checks: they hold at any host load (docs/uml.md)
    pytest.param("link_delay", marks=pytest.mark.skipif(
        os.environ.get("MINIMESH_FULL_RUNS") != "1",
        reason="timer-precision checks that a loaded host breaks in the guest (docs/uml.md): "
               "set MINIMESH_FULL_RUNS=1"))])
def test_the_mesh_on_netem_in_the_guest(guest, tmp_path, experiment):
    out = "/run/mm-out/run"
    r = guest.run_in_guest([uml.guest_python(), f"experiments/{experiment}.py", "--quick",
                            "--link-backend", "netem", "--no-capture", "--out", out],
                           timeout=300, outdir=tmp_path)
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    print(f"\nguest {experiment} --quick on netem: valid {res.get('valid')}; "
          f"boot {r.boot_s:.1f} s, whole guest {r.run_s:.1f} s")
    # --link-backend netem never falls back (test_link_fidelity): a pass ran on netem
    assert r.returncode == 0 and res.get("valid") is True, r.output[-4000:]


# A Mininet script run by `minimesh mininet`: which of Mininet's classes are stock, and
# whether the shim put its stand-ins on PATH.
STOCK_CHECK = """
import json, os
import mininet.link as ml, mininet.node as mn
from testbed.compat.substitute import ENV, Kernel
kernel = Kernel.from_json(os.environ[ENV])
path = os.environ["PATH"].split(os.pathsep)
print("RESULT " + json.dumps({
    "netem": kernel.netem, "ovs": kernel.ovs, "vlan": kernel.vlan,
    "tclink": ml.TCLink.__module__, "tcintf": ml.TCIntf.__module__, "ovsswitch": mn.OVSSwitch.__module__,
    "controller": mn.DefaultController.__module__,
    "stand_ins": [p for p in path if p.endswith(("ovs-bin", "ofdp-bin", "vlan-bin"))]}))
"""


def test_stock_mininet_kept_where_the_kernel_has_netem_ovs_and_8021q(guest, tmp_path):
    script = tmp_path / "stock_check.py"
    script.write_text(STOCK_CHECK)
    r = guest.run_in_guest([uml.guest_python(), "-m", "testbed", "mininet", "/run/mm-out/stock_check.py"],
                           timeout=120, outdir=tmp_path)
    assert r.returncode == 0, r.output[-3000:]
    got = json.loads([x for x in r.output.splitlines() if x.startswith("RESULT ")][-1][len("RESULT "):])
    # the reference switch (ofdatapath) is no kernel matter: its stand-in stays where it is not installed
    ofdp = [] if shutil.which("ofdatapath") else [str(REPO / "testbed/compat/shim/ofdp-bin")]
    assert got == {"netem": True, "ovs": True, "vlan": True, "tclink": "mininet.link", "tcintf": "mininet.link",
                   "ovsswitch": "mininet.node", "controller": "mininet.node", "stand_ins": ofdp}, got
    assert "*** minimesh:" not in r.output          # nothing substituted took effect, so nothing announced
