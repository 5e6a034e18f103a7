"""`minimesh up --out DIR`: the CLI's fault operations (link commands included) land in a
history.jsonl in the experiments' format, the heal at exit too. No root: an in-memory
FakeTarget (the session) or a fake testbed over it (the Mininet CLI driven through a pipe)."""
from __future__ import annotations

import io
import os
import random
import types

import pytest

from testbed.cli.app import main
from testbed.cli.up import HISTORY, UpOptionError, open_history, up_history_path
from testbed.faults.base import FaultError
from testbed.faults.targets import FakeTarget
from testbed.history import FakeClock, History, RunClock, fault_windows, read_history
from testbed.cli.faults import FaultCommandError, FaultSession

HOSTS = ["h1", "h2", "h3"]


def session(tmp_path, clock=None):
    t = FakeTarget(links=[(h, "s1") for h in HOSTS], hosts=HOSTS, processes=["web"])
    clock = clock or FakeClock()
    hist = History(tmp_path / HISTORY, clock=clock)
    return FaultSession(t, clock, lambda: HOSTS, lambda: t.process_state, random.Random(1), history=hist), t, hist


def faults(tmp_path):
    return read_history(tmp_path / HISTORY).faults


# --- where the history goes -------------------------------------------------------------------

def test_history_path_out_capture_or_none(tmp_path):
    assert up_history_path(None, None) is None
    assert up_history_path(str(tmp_path / "o"), None) == tmp_path / "o" / HISTORY
    assert up_history_path(None, str(tmp_path / "pcap")) == tmp_path / "pcap" / HISTORY   # next to the captures
    assert up_history_path(str(tmp_path / "o"), str(tmp_path / "pcap")) == tmp_path / "o" / HISTORY


def test_existing_history_is_refused_in_the_options_words(tmp_path):
    (tmp_path / HISTORY).write_text("")
    with pytest.raises(UpOptionError, match=rf"--out {tmp_path}: .*{HISTORY} exists; a history is never overwritten"):
        up_history_path(str(tmp_path), None)
    with pytest.raises(UpOptionError,
                       match=r"--capture .* exists \(without --out the history goes next to the captures\)"):
        up_history_path(None, str(tmp_path))
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(UpOptionError, match=rf"--out {f}: not a directory"):
        up_history_path(str(f), None)


def test_open_history_creates_exclusively(tmp_path):
    path = tmp_path / "new" / "dir" / HISTORY
    with open_history(path, RunClock()) as h:
        h.event("minimesh-up", "session_start")
    assert len(read_history(path).events) == 1
    with pytest.raises(UpOptionError, match="exists; a history is never overwritten"):
        open_history(path, RunClock())
    assert len(read_history(path).events) == 1          # untouched


def test_up_with_existing_history_exits_2_before_building_anything(tmp_path, capsys):
    topo = tmp_path / "t.yaml"
    topo.write_text("name: t\nhosts:\n  h1: {}\n")
    (tmp_path / HISTORY).write_text('{"type":"event","t":0,"source":"x","kind":"y","details":{}}\n')
    assert main(["up", str(topo), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"minimesh up: --out {tmp_path}: ") and "never overwritten" in err
    assert len(read_history(tmp_path / HISTORY).events) == 1


# --- the session records every op ------------------------------------------------------------

def test_link_commands_are_fault_ops_with_apply_revert_pairs(tmp_path):
    clock = FakeClock()
    s, t, hist = session(tmp_path, clock)
    out = s.link_set("h1", "s1", {"delay": "50ms", "loss": "1%"}, "h1->s1")
    assert out.startswith("#0: link h1-s1 h1->s1 delay=50ms loss=1%\n") and "h1->s1: delay=50ms" in out
    clock.advance(1)
    assert s.link_down("h2", "s1").startswith("#1: link-down h2-s1")
    clock.advance(1)
    assert s.drop("h1", "h3").startswith("#2: partition (h1 drops h3; h3 drops h1)  (dropping h1 -> h3 and h3 -> h1")
    assert s.drop("h2", "h3", oneway=True).startswith("#3: cut h2->h3")
    clock.advance(1)
    assert s.link_up("h2", "s1").startswith("healed #1: link-down h2-s1 (link_up h2-s1)")
    out = s.restore("h1", "h3")
    assert "healed #2: partition" in out and "removed 2 drop rules" in out
    assert t.blocked == {("h2", "h3")}
    clock.advance(1)
    out = s.close()
    assert "*** at exit: healed #3: cut h2->h3" in out and "*** at exit: healed #0: link h1-s1" in out
    assert t.pristine
    hist.close()
    recs = faults(tmp_path)
    assert [(r.fault_id, r.phase, r.ok) for r in recs] == [
        (0, "apply", True), (1, "apply", True), (2, "apply", True), (3, "apply", True),
        (1, "revert", True), (2, "revert", True), (3, "revert", True), (0, "revert", True)]
    assert recs[0].fault == {"kind": "link", "a": "h1", "b": "s1", "direction": "h1->s1",
                             "delay": "50ms", "loss": "1%"}
    assert recs[0].description == "link h1-s1 h1->s1 delay=50ms loss=1%"
    assert recs[3].fault == {"kind": "cut", "src": "h2", "dst": "h3"}
    assert recs[-1].actions[0].startswith("link h1-s1 h1->s1 back to ")
    assert [r.t_start for r in recs] == [0, 1, 2, 2, 3, 3, 4, 4]
    assert all(end is not None for _, end, _ in fault_windows(recs)), "every fault window closed"


def test_fault_commands_and_the_heal_at_exit_are_recorded(tmp_path):
    s, t, hist = session(tmp_path)
    s.partition("isolate h2")
    s.pause("web")
    s.heal()
    s.crash("web")
    s.close()
    hist.close()
    recs = faults(tmp_path)
    assert [(r.fault_id, r.phase, r.fault["kind"]) for r in recs] == [
        (0, "apply", "partition"), (1, "apply", "pause"), (1, "revert", "pause"), (0, "revert", "partition"),
        (2, "apply", "crash"), (2, "revert", "crash")]
    assert recs[-1].actions == ("restart web",) and t.pristine


def test_bad_link_commands_record_nothing(tmp_path):
    s, t, hist = session(tmp_path)
    with pytest.raises(FaultCommandError, match="no link between h1 and s9"):
        s.link_set("h1", "s9", {"delay": "5ms"})
    with pytest.raises(FaultError, match="delay: bad time 'fast'"):
        s.link_set("h1", "s1", {"delay": "fast"})
    with pytest.raises(FaultCommandError, match=r"link h1-s1 is not down \(link-down h1 s1 first\)"):
        s.link_up("h1", "s1")
    with pytest.raises(FaultCommandError, match="no host 'hx'; hosts: h1, h2, h3"):
        s.drop("h1", "hx")
    with pytest.raises(FaultCommandError, match="two different hosts"):
        s.drop("h1", "h1")
    s.link_down("h1", "s1")
    with pytest.raises(FaultCommandError, match=r"link s1-h1 is already down \(link-up s1 h1 first\)"):
        s.link_down("s1", "h1")
    hist.close()
    assert [(r.fault_id, r.phase) for r in faults(tmp_path)] == [(0, "apply")]


def test_restore_reverts_whole_drops_and_leaves_wider_partitions(tmp_path):
    s, t, hist = session(tmp_path)
    s.partition("h1 h2,h3")                     # #0: h1 | h2,h3
    s.drop("h1", "h2")                          # #1: the same pair again
    out = s.restore("h1", "h2")
    assert "healed #1" in out and "removed 0 drop rules" in out   # the partition still wants h1<->h2
    assert "#0 (partition (" in out and "still in force (heal reverts it)" in out
    assert not t.can_send("h1", "h2")
    out = s.restore("h1")                       # every cut of #0 involves h1: reverted whole
    assert "healed #0" in out and "removed 4 drop rules" in out and t.pristine
    s.drop("h2", "h3", oneway=True)
    assert "removed 1 drop rule\n" in s.restore()
    hist.close()
    assert [(r.fault_id, r.phase) for r in faults(tmp_path)] == [
        (0, "apply"), (1, "apply"), (1, "revert"), (0, "revert"), (2, "apply"), (2, "revert")]


# --- the Mininet CLI, driven through a pipe ---------------------------------------------------

class FakeTestbed:
    """What TestbedTarget and the CLI use of testbed.net.network.Testbed, over a FakeTarget."""

    def __init__(self):
        self.t = FakeTarget(links=[(h, "s1") for h in HOSTS], hosts=HOSTS)
        self.net: dict = {}
        self.host_names = HOSTS
        self.control = types.SimpleNamespace(
            shapes=self.t.shapes, links=lambda: [],
            drops=lambda: [types.SimpleNamespace(src=s, dst=d) for s, d in sorted(self.t.blocked)])

    def set_link(self, a, b, direction=None, **params):
        return self.t.set_link(a, b, direction, **params)

    def link_down(self, a, b):
        self.t.link_down(a, b)

    def link_up(self, a, b):
        self.t.link_up(a, b)

    def drop(self, a, b, oneway=False):
        self.t.block(a, b, oneway)

    def restore(self, a=None, b=None):          # Control.restore: both directions between a and b
        gone = {p for p in self.t.blocked if (a is None or a in p) and (b is None or b in p)}
        self.t.blocked -= gone
        return len(gone)


def test_testbed_cli_records_link_and_fault_commands_and_heals_at_exit(tmp_path):
    from testbed.cli.shell import TestbedCLI
    tb, clock = FakeTestbed(), RunClock()
    r, w = os.pipe()
    os.write(w, b"link-set h1 s1 delay=20ms\ndrop h1 h2 oneway\nlink-down h3 s1\nlink-up h3 s1\n"
                b"partition h1 h3\nlink-set h1 s9 delay=1ms\nfaults\n")
    os.close(w)
    with History(tmp_path / HISTORY, clock=clock) as hist, os.fdopen(r) as stdin:
        cli = TestbedCLI(tb, stdin=stdin, stdout=io.StringIO(), history=hist, clock=clock)
    assert cli.errors == 1                                   # the link to s9 does not exist
    assert tb.t.pristine, "healed at exit"
    recs = faults(tmp_path)
    applies = [(r.fault_id, r.fault["kind"]) for r in recs if r.phase == "apply"]
    assert applies == [(0, "link"), (1, "cut"), (2, "link-down"), (3, "partition")]
    reverts = [r.fault_id for r in recs if r.phase == "revert"]
    assert reverts == [2, 3, 1, 0]                           # link-up, then the heal at exit, newest first
    assert all(r.ok for r in recs)
    ts = [r.t_start for r in recs]
    assert ts == sorted(ts) and 0 <= ts[0] and ts[-1] < 30, ts    # on the session's RunClock
