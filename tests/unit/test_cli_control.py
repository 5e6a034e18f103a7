"""testbed.net.control without root: direction mapping of set_link, drop rules as argv,
journaled before insertion, restore selection. Nodes and links are small recording fakes."""
from __future__ import annotations

import os
import types

import pytest

from testbed.net.control import Control, ControlError, DropRule
from testbed.journal import Journal
from testbed.shape import LinkShape, ShapeError


NO_SHAPE = LinkShape()       # frozen: one default serves every FakeLink


class FakeLink:
    def __init__(self, n1, n2, fwd=NO_SHAPE, back=NO_SHAPE):
        self.intf1 = types.SimpleNamespace(node=n1)
        self.intf2 = types.SimpleNamespace(node=n2)
        self.shapes = (fwd, back)
        self.up = True

    def get_shapes(self):
        return self.shapes

    def set_shapes(self, forward=None, backward=None):
        self.shapes = (forward or self.shapes[0], backward or self.shapes[1])

    def set_up(self, up):
        self.up = up


class FakeHost:
    def __init__(self, name, ip, journal):
        self.name, self.pid, self._ip, self.journal = name, os.getpid(), ip, journal
        self.argvs: list[list[str]] = []
        self.journaled_at_call: list[int] = []

    def intfList(self):  # Mininet's name
        return [types.SimpleNamespace(name="lo", IP=lambda: "127.0.0.1"),
                types.SimpleNamespace(name=f"{self.name}-eth0", IP=lambda: self._ip)]

    def pexec(self, argv):
        self.journaled_at_call.append(sum(e["kind"] == "iptables" for e in self.journal.outstanding()))
        self.argvs.append(argv)
        return "", "", 0


class FakeSwitch:
    def __init__(self, name):
        self.name = name


class FakeNet:
    def __init__(self, hosts, switches, links):
        self.hosts = hosts
        self.nameToNode = {n.name: n for n in hosts + switches}
        self.links = links

    def linksBetween(self, a, b):  # Mininet's name
        return [lk for lk in self.links
                if (lk.intf1.node, lk.intf2.node) in ((a, b), (b, a))]


@pytest.fixture
def setup(tmp_path):
    j = Journal(tmp_path)
    h1, h2, h3 = (FakeHost(f"h{i}", f"10.0.0.{i}", j) for i in (1, 2, 3))
    s1 = FakeSwitch("s1")
    link = FakeLink(h1, s1, LinkShape(delay_ms=10), LinkShape(delay_ms=1))
    ctl = Control(FakeNet([h1, h2, h3], [s1], [link, FakeLink(h2, s1), FakeLink(h3, s1)]), j)
    yield ctl, link, (h1, h2, h3), j
    j.close()


def test_set_link_both_directions_keeps_other_fields(setup):
    ctl, link, _, _ = setup
    ab, ba = ctl.set_link("h1", "s1", loss="1%")
    assert link.shapes == (LinkShape(delay_ms=10, loss_pct=1), LinkShape(delay_ms=1, loss_pct=1))
    assert (ab, ba) == link.shapes


def test_set_link_one_direction_in_either_name_order(setup):
    ctl, link, _, _ = setup
    ctl.set_link("s1", "h1", direction="s1->h1", delay="30ms")       # s1->h1 is the link's backward
    assert link.shapes == (LinkShape(delay_ms=10), LinkShape(delay_ms=30))
    ab, ba = ctl.set_link("s1", "h1", direction="h1->s1", delay="2ms")
    assert link.shapes == (LinkShape(delay_ms=2), LinkShape(delay_ms=30))
    assert (ab, ba) == (LinkShape(delay_ms=30), LinkShape(delay_ms=2))  # returned as (s1->h1, h1->s1)
    assert ctl.shapes("s1", "h1") == (ab, ba)


def test_set_link_errors(setup):
    ctl, link, _, _ = setup
    before = link.shapes
    with pytest.raises(ShapeError, match="jitter"):
        ctl.set_link("h1", "s1", jitter="20ms")  # more than the 10 ms delay
    with pytest.raises(ControlError, match="no link parameter"):
        ctl.set_link("h1", "s1")
    with pytest.raises(ControlError, match="no node 'h9'"):
        ctl.set_link("h1", "h9", delay="1ms")
    with pytest.raises(ControlError, match="no link between h1 and h2; links: h1-s1, h2-s1, h3-s1"):
        ctl.set_link("h1", "h2", delay="1ms")
    assert link.shapes == before, "a refused change changes nothing"


def test_link_down_up(setup):
    ctl, link, _, _ = setup
    ctl.set_link_up("s1", "h1", False)
    assert link.up is False
    ctl.set_link_up("h1", "s1", True)
    assert link.up is True


def test_drop_both_ways_rules_are_journaled_before_insertion(setup):
    ctl, _, (h1, h2, _), j = setup
    added = ctl.drop("h1", "h2")
    assert added == [DropRule("h1", "h2", "10.0.0.1"), DropRule("h2", "h1", "10.0.0.2")]
    # the rule dropping h1's packets lives in h2 (receiver), and the other way round
    assert h2.argvs == [["iptables", "-w", "-I", "INPUT", "-s", "10.0.0.1", "-m", "comment",
                         "--comment", "minimesh-drop", "-j", "DROP"]]
    assert h1.argvs[0][5] == "10.0.0.2"
    assert h2.journaled_at_call == [1] and h1.journaled_at_call == [2]
    entries = [e for e in j.outstanding() if e["kind"] == "iptables"]
    assert [e["args"] for e in entries] == [r.args for r in added]
    assert ctl.drop("h1", "h2") == [], "idempotent"


def test_drop_oneway_and_restore_selection(setup):
    ctl, _, (h1, h2, h3), j = setup
    ctl.drop("h1", "h2", oneway=True)
    ctl.drop("h2", "h3")
    assert [(r.src, r.dst) for r in ctl.drops()] == [("h1", "h2"), ("h2", "h3"), ("h3", "h2")]
    assert ctl.restore("h3") == 2
    assert h2.argvs[-1][2] == "-D" and h3.argvs[-1][2] == "-D"
    assert ctl.restore("h1", "h2") == 1
    assert ctl.drops() == [] and not [e for e in j.outstanding() if e["kind"] == "iptables"]
    assert ctl.restore() == 0


def test_drop_errors(setup):
    ctl, _, _, _ = setup
    with pytest.raises(ControlError, match="two different hosts"):
        ctl.drop("h1", "h1")
    with pytest.raises(ControlError, match="'s1' is not a host"):
        ctl.drop("h1", "s1")
    with pytest.raises(ControlError, match="give no host, one host, or two"):
        ctl.restore(None, "h1")


def test_failed_insert_is_not_left_in_the_journal(setup):
    ctl, _, (_, h2, _), j = setup
    h2.pexec = lambda argv: ("", "iptables: No chain/target/match by that name.", 1)
    with pytest.raises(ControlError, match="iptables -I INPUT .* in h2 failed: iptables: No chain"):
        ctl.drop("h1", "h2", oneway=True)
    assert not [e for e in j.outstanding() if e["kind"] == "iptables"]
    assert ctl.drops() == []
