"""testbed.compat.vlan (no root): 802.1Q tagging and untagging, the names vconfig gives,
``ip link add ... type vlan`` parsing, the shim's ``ip`` passing everything else to the
real ip, and refusals that name what is allowed. The relay itself runs in
tests/integration/test_mininet_compat.py and through Mininet's vlanhost example test."""
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.compat import vlan
from testbed.compat.substitute import SHIM_DIR
from testbed.compat.vlan import TP_STATUS_VLAN_TPID_VALID, TP_STATUS_VLAN_VALID, VlanError

DST, SRC = bytes.fromhex("ffffffffffff"), bytes.fromhex("020000000001")
ARP = DST + SRC + b"\x08\x06" + bytes(28)


def test_tag_inserts_8021q_after_the_addresses():
    tagged = vlan.tag(ARP, 100)
    assert tagged[:12] == DST + SRC
    assert struct.unpack("!HH", tagged[12:16]) == (0x8100, 100)
    assert tagged[16:] == ARP[12:]
    assert len(tagged) == len(ARP) + 4


def test_untag_inline_tag_of_its_vid_only():
    assert vlan.untag(vlan.tag(ARP, 100), 100, None) == ARP
    assert vlan.untag(vlan.tag(ARP, 101), 100, None) is None
    assert vlan.untag(ARP, 100, None) is None                # untagged: not the VLAN's
    pcp = vlan.tag(ARP, 100)[:14] + struct.pack("!H", (5 << 13) | 100) + ARP[12:]
    assert vlan.untag(pcp, 100, None) == ARP                 # priority bits are not the VID


def test_untag_tag_moved_into_metadata_by_the_kernel():
    # the kernel strips a received tag into the packet socket's auxdata
    assert vlan.untag(ARP, 100, (TP_STATUS_VLAN_VALID, 100, 0)) == ARP
    assert vlan.untag(ARP, 100, (TP_STATUS_VLAN_VALID | TP_STATUS_VLAN_TPID_VALID, 100, 0x8100)) == ARP
    assert vlan.untag(ARP, 100, (TP_STATUS_VLAN_VALID, 200, 0)) is None
    assert vlan.untag(ARP, 100, (TP_STATUS_VLAN_VALID | TP_STATUS_VLAN_TPID_VALID, 100, 0x88A8)) is None
    assert vlan.untag(ARP, 100, (0, 0, 0)) is None           # no tag at all


@pytest.mark.parametrize("kind,name", [("DEV_PLUS_VID_NO_PAD", "h1-eth0.7"), ("DEV_PLUS_VID", "h1-eth0.0007"),
                                       ("VLAN_PLUS_VID", "vlan0007"), ("VLAN_PLUS_VID_NO_PAD", "vlan7")])
def test_vconfig_names(kind, name):
    assert vlan.vlan_name("h1-eth0", 7, kind) == name


def test_vconfig_unknown_name_type_is_refused():
    with pytest.raises(VlanError, match="DEV_PLUS_VID_NO_PAD"):
        vlan.vlan_name("h1-eth0", 7, "ETH_PLUS")


@pytest.mark.parametrize("words", [
    ["link", "h1-eth0", "name", "h1-eth0.10", "type", "vlan", "id", "10"],
    ["h1-eth0.10", "link", "h1-eth0", "type", "vlan", "id", "10"],
    ["link", "h1-eth0", "h1-eth0.10", "type", "vlan", "protocol", "802.1Q", "id", "10"],
])
def test_ip_link_add_forms(words):
    assert vlan.parse_ip_link_add(words) == ("h1-eth0", 10, "h1-eth0.10")


@pytest.mark.parametrize("words,says", [
    (["link", "h1-eth0", "name", "x", "type", "vlan", "id", "0"], "1 to 4094"),
    (["link", "h1-eth0", "name", "x", "type", "vlan", "id", "4095"], "1 to 4094"),
    (["link", "h1-eth0", "name", "x", "type", "vlan", "id", "ten"], "1 to 4094"),
    (["link", "h1-eth0", "name", "x", "type", "vlan", "id", "10", "protocol", "802.1ad"], "802.1Q only"),
    (["link", "h1-eth0", "name", "x", "type", "vlan", "id", "10", "mtu", "1400"], "'mtu' is not supported"),
    (["name", "x", "type", "vlan", "id", "10"], "needs link PARENT"),
    (["link", "h1-eth0", "name", "x", "type", "vlan", "id"], "'id' needs a value"),
])
def test_ip_link_add_refusals_name_what_is_allowed(words, says):
    with pytest.raises(VlanError, match=says):
        vlan.parse_ip_link_add(words)


def test_vconfig_refuses_what_it_does_not_do():
    with pytest.raises(VlanError, match="add IFACE VID, rem NAME and set_name_type"):
        vlan.vconfig(["set_flag", "h1-eth0.10", "1", "1"])


def test_main_reports_refusal_with_exit_2(capsys):
    assert vlan.main(["vconfig", "add", "h1-eth0", "5000"]) == 2
    assert "minimesh: VLAN id '5000': a number from 1 to 4094" in capsys.readouterr().err


def test_add_refuses_a_missing_parent_before_starting_anything():
    with pytest.raises(VlanError, match="no-such-if0: no such interface"):
        vlan.add("no-such-if0", 10, "no-such-if0.10")


def test_shim_ip_passes_everything_else_to_the_real_ip(tmp_path):
    env = dict(os.environ, MINIMESH_PYTHON=sys.executable)
    out = subprocess.run([str(SHIM_DIR / "vlan-bin" / "ip"), "-V"], capture_output=True, text=True, env=env)
    real = subprocess.run([vlan.REAL_IP, "-V"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout == real.stdout


def test_shim_ip_hands_vlan_adds_to_minimesh():
    env = dict(os.environ, MINIMESH_PYTHON=sys.executable, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    out = subprocess.run([str(SHIM_DIR / "vlan-bin" / "ip"), "link", "add", "link", "eth0", "name", "e.1",
                          "type", "vlan", "id", "99999"], capture_output=True, text=True, env=env)
    assert out.returncode == 2 and "VLAN id '99999'" in out.stderr
