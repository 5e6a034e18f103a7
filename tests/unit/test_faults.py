"""Fault values: validation, serialization, apply/revert against the in-memory target."""
from __future__ import annotations

import dataclasses
import signal
from types import SimpleNamespace

import pytest

from testbed.net.control import DropRule
from testbed.faults.kinds import Crash, Cut, LinkChange, LinkDown, Partition, Pause, Restart
from testbed.faults.base import FAULTS, FaultError, NemesisTarget, fault_from_dict
from testbed.faults.grudge import Grudge, complete
from testbed.faults.targets import FakeTarget, TestbedTarget
from testbed.shape import LinkShape


def target() -> FakeTarget:
    return FakeTarget(links=[("h1", "s1"), ("h2", "s1")], hosts=["h1", "h2", "h3"], processes=["etcd1", "pilot"])


def test_registry_names():
    # other modules (e.g. Citadel's identity faults) may register more kinds
    assert {"link", "link-down", "partition", "cut", "crash", "restart", "pause"} <= set(FAULTS)
    assert isinstance(target(), NemesisTarget)


def test_faults_are_hashable_values():
    a = Partition({"h1": ["h2"], "h2": "h1"})
    b = Partition(Grudge.of({"h2": {"h1"}, "h1": {"h2"}}))
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert LinkChange("h1", "s1", {"delay": "10ms", "loss": "1%"}) == \
        LinkChange("h1", "s1", (("loss", "1%"), ("delay", "10ms")))
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.grudge = Grudge()


@pytest.mark.parametrize("fault", [
    LinkChange("h1", "s1", {"delay": "100ms", "jitter": "10ms"}, direction="h1->s1"),
    LinkDown("h1", "s1"), Partition(complete([["h1"], ["h2", "h3"]])), Cut("h1", "h2"),
    Crash("etcd1", "SIGTERM", restart_on_heal=False), Restart("pilot"), Pause("etcd1"),
])
def test_to_dict_round_trips(fault):
    d = fault.to_dict()
    assert d["kind"] == fault.kind
    assert fault_from_dict(d) == fault


@pytest.mark.parametrize("make,field", [
    (lambda: LinkChange("h1", "s1", {"delay": "soon"}), "delay"),
    (lambda: LinkChange("h1", "s1", {"colour": "red"}), "colour"),
    (lambda: LinkChange("h1", "s1", {}), "params"),
    (lambda: LinkChange("h1", "s1", {"delay": "1ms"}, direction="h1->h2"), "direction"),
    (lambda: Partition({}), "grudge"),
    (lambda: Partition({"h1": ["h1"]}), "grudge"),
    (lambda: Partition(["h1"]), "grudge"),
    (lambda: Cut("h1", "h1"), "dst"),
    (lambda: Crash("p", "SIGNOPE"), "signal"),
    (lambda: Crash(""), "process"),
    (lambda: fault_from_dict({"kind": "meteor"}), "kind"),
    (lambda: fault_from_dict({"kind": "crash", "proc": "x"}), "proc"),
    (lambda: fault_from_dict({"kind": "crash"}), "kind"),
])
def test_bad_faults_name_the_field(make, field):
    with pytest.raises(FaultError) as e:
        make()
    assert e.value.field == field, str(e.value)


def test_link_change_apply_and_revert_restore_the_previous_shape():
    t = target()
    t.set_link("h1", "s1", delay="5ms", bw="20Mbit")     # the topology's own shape
    before = t.shapes("h1", "s1")
    t.calls.clear()
    f = LinkChange("h1", "s1", {"delay": "100ms", "loss": "2%"})
    op = f.apply(t)
    assert op.ok and op.phase == "apply" and len(op.actions) == 1
    assert t.shapes("h1", "s1") == (LinkShape(delay_ms=100, loss_pct=2, bw_mbit=20),) * 2
    back = f.revert(t, op)
    assert back.ok and len(back.actions) == 2
    assert t.shapes("h1", "s1") == before


def test_link_change_one_direction():
    t = target()
    f = LinkChange("h1", "s1", {"delay": "50ms"}, direction="s1->h1")
    op = f.apply(t)
    ab, ba = t.shapes("h1", "s1")
    assert ab == LinkShape() and ba.delay_ms == 50
    assert f.revert(t, op).actions == ("link h1-s1 s1->h1 back to (no impairment)",)
    assert t.pristine


def test_link_change_revert_needs_the_apply_op():
    op = LinkChange("h1", "s1", {"delay": "1ms"}).revert(target())
    assert not op.ok and "needs the op" in op.error
    with pytest.raises(FaultError):
        op.raise_for_error()


def test_link_change_on_missing_link_reports_error_in_op():
    op = LinkChange("h1", "h2", {"delay": "1ms"}).apply(target())
    assert not op.ok and "no link between h1 and h2" in op.error and op.actions == ()


def test_link_down_up():
    t = target()
    f = LinkDown("h2", "s1")
    f.apply(t)
    assert t.down == {frozenset({"h2", "s1"})}
    f.revert(t)
    assert t.pristine


def test_partition_blocks_exactly_the_grudge_and_heals():
    t = target()
    f = Partition({"h1": ["h2", "h3"], "h3": ["h1"]})
    op = f.apply(t)
    assert t.blocked == {("h2", "h1"), ("h3", "h1"), ("h1", "h3")}
    assert not t.can_send("h2", "h1") and t.can_send("h1", "h2")       # asymmetric
    assert op.actions == ("block h1->h3", "block h2->h1", "block h3->h1")
    f.revert(t, op)
    assert t.pristine


def test_cut_is_one_way():
    t = target()
    Cut("h1", "h2").apply(t)
    assert t.blocked == {("h1", "h2")}
    Cut("h1", "h2").revert(t)
    assert t.pristine


def test_partial_failure_is_recorded_with_what_was_done():
    t = target()
    f = Partition({"h1": ["h2", "h3"]})
    calls = 0
    orig = t.block

    def flaky(src, dst, oneway=False):
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError("iptables: resource busy")
        orig(src, dst, oneway)
    t.block = flaky
    op = f.apply(t)
    assert not op.ok and op.actions == ("block h2->h1",) and "block h3->h1: iptables: resource busy" == op.error
    f.revert(t, op)          # revert tries every pair: the partial apply is undone
    assert t.pristine


def test_crash_restart_pause():
    t = target()
    c = Crash("etcd1")
    op = c.apply(t)
    assert op.actions == ("SIGKILL etcd1",) and t.process_state["etcd1"] == "dead"
    c.revert(t, op)
    assert t.process_state["etcd1"] == "running" and t.restarts["etcd1"] == 1
    Crash("etcd1", restart_on_heal=False).apply(t)
    assert Crash("etcd1", restart_on_heal=False).revert(t).actions == ()
    assert t.process_state["etcd1"] == "dead"
    p = Pause("pilot")
    p.apply(t)
    assert t.process_state["pilot"] == "stopped"
    p.revert(t)
    assert t.process_state["pilot"] == "running"
    assert Restart("pilot").instant and Restart("pilot").apply(t).ok and t.restarts["pilot"] == 1
    assert ("signal", ("pilot", signal.SIGSTOP)) in t.calls and ("signal", ("pilot", signal.SIGCONT)) in t.calls


def test_signal_names_are_normalized():
    assert Crash("x", "kill").signal == "SIGKILL" and Crash("x", 15).signal == "SIGTERM"


def test_fake_target_one_shot_failure_injection():
    t = target()
    t.fail["link_down"] = OSError("RTNETLINK answers: busy")
    op = LinkDown("h1", "s1").apply(t)
    assert not op.ok and "busy" in op.error and not t.down
    assert LinkDown("h1", "s1").apply(t).ok          # one shot


def test_unknown_process_is_an_op_error():
    op = Pause("nope").apply(target())
    assert not op.ok and "no process 'nope'" in op.error


# --- TestbedTarget against a stand-in Testbed (the real one needs root) --------------------

class FakeTestbed:
    def __init__(self):
        self.rules: set[tuple[str, str]] = set()
        self.control = SimpleNamespace(drops=lambda: [DropRule(s, d, "10.0.0.1") for s, d in self.rules],
                                       shapes=lambda a, b: (LinkShape(), LinkShape()))

    def drop(self, a, b, oneway=False):
        self.rules.add((a, b))
        if not oneway:
            self.rules.add((b, a))

    def restore(self, a=None, b=None):
        before = len(self.rules)
        self.rules = {r for r in self.rules if not (a in r and b in r)}
        return before - len(self.rules)


def test_testbed_target_unblocks_one_direction_only():
    tb = FakeTestbed()
    t = TestbedTarget(tb)
    Partition({"h1": ["h2"], "h2": ["h1"]}).apply(t)
    assert tb.rules == {("h1", "h2"), ("h2", "h1")}
    t.unblock("h1", "h2", oneway=True)
    assert tb.rules == {("h2", "h1")}
    t.unblock("h2", "h1", oneway=True)
    assert tb.rules == set()


def test_testbed_target_processes():
    sent = []
    proc = SimpleNamespace(send_signal=sent.append)
    new = SimpleNamespace(send_signal=sent.append, new=True)
    t = TestbedTarget(FakeTestbed(), processes={"etcd1": proc}, restarters={"etcd1": lambda: new})
    op = Crash("etcd1").apply(t)
    assert op.ok and sent == [signal.SIGKILL]
    Crash("etcd1").revert(t, op)
    assert t.processes["etcd1"] is new
    op = Pause("ghost").apply(t)
    assert not op.ok and "no process 'ghost'" in op.error
