"""The fault commands of `minimesh up` against an in-memory FakeTarget (no root)."""
from __future__ import annotations

import random
import signal

import pytest

from testbed.faults.targets import FakeTarget
from testbed.faults.grudge import complete, random_halves
from testbed.history import FakeClock
from testbed.cli.faults import FaultCommandError, FaultCommands, FaultSession, parse_partition

HOSTS = ["h1", "h2", "h3", "h4"]


def session(processes=("web", "etcd1")) -> tuple[FaultSession, FakeTarget]:
    t = FakeTarget(links=[(h, "s1") for h in HOSTS], hosts=HOSTS, processes=processes)
    return FaultSession(t, FakeClock(), lambda: HOSTS, lambda: t.process_state, random.Random(1)), t


# --- parsing -----------------------------------------------------------------------------

def test_groups_give_a_complete_grudge():
    g, how = parse_partition("h1,h2 h3,h4", HOSTS)
    assert g == complete([["h1", "h2"], ["h3", "h4"]])
    assert how == "groups h1,h2 | h3,h4"
    g, _ = parse_partition("h1 h2", HOSTS)
    assert g.pairs() == [("h1", "h2"), ("h2", "h1")]


def test_isolate_cuts_one_host_from_all_others():
    g, how = parse_partition("isolate h3", HOSTS)
    assert g == complete([["h3"], ["h1", "h2", "h4"]]) and how == "isolate h3"


def test_builders_are_seeded():
    g, how = parse_partition("halves 7", HOSTS)
    assert g == random_halves(HOSTS, random.Random(7)) and how == "random-halves seed 7"
    g2, how2 = parse_partition("random-halves", HOSTS, draw_seed=lambda: 7)
    assert g2 == g and how2 == how
    g3, _ = parse_partition("ring 3", HOSTS)
    assert len(g3) == 4                  # majorities-ring: every node drops someone


@pytest.mark.parametrize("line, message", [
    ("", "usage: partition"),
    ("h1,h2", "at least two groups"),
    ("h1 hx", "no host 'hx'; hosts: h1, h2, h3, h4"),
    ("isolate", "usage: partition"),
    ("isolate hx", "no host 'hx'"),
    ("halves x", "seed 'x': expected an integer"),
    ("h1,h2 h2,h3", "overlap"),
    ("bridge 1 2", "usage: partition"),
])
def test_bad_partitions(line, message):
    with pytest.raises(FaultCommandError, match=message.replace("(", r"\(")):
        parse_partition(line, HOSTS)


# --- the session ---------------------------------------------------------------------------

def test_partition_then_heal_restores_everything():
    s, t = session()
    out = s.partition("h1,h2 h3")
    assert out.startswith("#0: partition (") and "[groups h1,h2 | h3]" in out
    assert not t.can_send("h1", "h3") and not t.can_send("h3", "h2") and t.can_send("h1", "h2")
    assert "#0: partition" in s.faults()
    out = s.heal()
    assert out.startswith("healed #0: partition") and t.pristine
    assert s.heal() == "nothing to heal\n"
    assert s.faults().startswith("no outstanding faults")


def test_overlapping_partitions_heal_newest_first():
    s, t = session()
    s.partition("h1 h2")
    s.partition("isolate h1")
    assert s.heal().splitlines()[0].startswith("healed #1")
    assert t.pristine


def test_crash_restart_pause_resume():
    s, t = session()
    assert "crash web (SIGKILL)" in s.crash("web")
    assert t.process_state["web"] == "dead"
    with pytest.raises(FaultCommandError, match="web is already crashed: restart web first"):
        s.crash("web")
    assert s.restart("web").startswith("healed #0: crash web")
    assert t.process_state["web"] == "running" and t.restarts["web"] == 1
    assert s.restart("web") == "restart web\n"            # not crashed: a plain restart
    assert t.restarts["web"] == 2 and not s.nemesis.outstanding
    s.pause("etcd1")
    assert t.process_state["etcd1"] == "stopped"
    with pytest.raises(FaultCommandError, match="etcd1 is paused: resume etcd1 first"):
        s.restart("etcd1")
    s.resume("etcd1")
    assert t.process_state["etcd1"] == "running"
    with pytest.raises(FaultCommandError, match="etcd1 is not paused"):
        s.resume("etcd1")
    assert t.pristine


def test_crash_with_signal_and_heal_restarts():
    s, t = session()
    assert "crash web (SIGTERM)" in s.crash("web term")
    s.pause("etcd1")
    out = s.heal()
    assert "healed #1: pause etcd1" in out and "healed #0: crash web" in out
    assert t.pristine and t.restarts["web"] == 1
    assert ("signal", ("web", signal.SIGTERM)) in t.calls


@pytest.mark.parametrize("command, line, message", [
    ("crash", "", "usage: crash NAME"),
    ("crash", "nope", "crash: no process 'nope'; processes: etcd1, web"),
    ("crash", "web SIGNOPE", "unknown signal 'SIGNOPE'"),
    ("restart", "a b", "usage: restart NAME"),
    ("pause", "nope", "pause: no process 'nope'"),
    ("heal", "now", "usage: heal"),
])
def test_bad_process_commands(command, line, message):
    s, t = session()
    with pytest.raises(FaultCommandError, match=message):
        getattr(s, command)(line)
    assert t.pristine and not s.nemesis.outstanding


def test_without_a_mesh_processes_are_unknown():
    s, _ = session(processes=())
    for cmd in ("crash", "restart", "pause", "resume"):
        with pytest.raises(FaultCommandError, match="no processes are known without a mesh"):
            getattr(s, cmd)("web")
    assert "processes: none (no mesh)" in s.faults()


def test_failed_apply_stays_listed_and_heal_reverts_what_was_done():
    s, t = session()
    t.fail["block"] = RuntimeError("iptables said no")
    with pytest.raises(FaultCommandError, match="iptables said no.*heal reverts"):
        s.partition("h1 h2")
    assert "apply failed" in s.faults()
    s.heal()
    assert t.pristine


def test_close_heals_and_reports():
    s, t = session()
    assert s.close() == ""
    s.partition("h1 h2")
    s.crash("web")
    out = s.close()
    assert out.startswith("*** at exit: healed #1: crash web") and t.pristine


# --- the mixin ------------------------------------------------------------------------------

class FakeCLI(FaultCommands):
    def __init__(self, s):
        self.faults_session, self.errors = s, 0


def test_mixin_prints_and_counts_errors(monkeypatch):
    import mininet.log
    s, t = session()
    cli = FakeCLI(s)
    lines = []
    monkeypatch.setattr(mininet.log, "output", lambda msg, *a: lines.append(("out", msg)))
    monkeypatch.setattr(mininet.log, "error", lambda msg, *a: lines.append(("err", msg)))
    cli.do_partition("h1 h2")
    cli.do_crash("nope")
    cli.do_resume("web")
    cli.close_faults()
    assert cli.errors == 2
    assert lines[0][0] == "out" and "partition" in lines[0][1]
    assert lines[1] == ("err", "*** crash: no process 'nope'; processes: etcd1, web\n")
    assert lines[2] == ("err", "*** web is not paused (pause web first)\n")
    assert lines[3][0] == "out" and "at exit: healed #0" in lines[3][1]
    assert t.pristine


def test_a_mesh_without_named_processes_says_so():
    from testbed.cli.faults import NO_MESH_PROCESSES
    t = FakeTarget(links=[("h1", "s1")], hosts=["h1"])
    s = FaultSession(t, FakeClock(), lambda: ["h1"], lambda: (), no_processes=NO_MESH_PROCESSES)
    with pytest.raises(FaultCommandError, match=r"names no processes"):
        s.pause("pilot")
    assert "processes: none (the mesh names none)" in s.faults()
