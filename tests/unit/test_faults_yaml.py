"""Schedules from YAML: the documented form, seeds, and file:line errors."""
from __future__ import annotations

import textwrap

import pytest

from testbed.faults.kinds import Crash, LinkChange, Partition
from testbed.faults.grudge import complete
from testbed.faults.schedule import run_schedule
from testbed.faults.targets import FakeTarget
from testbed.faults.source import ScheduleError, load_schedule, parse_schedule
from testbed.history import FakeClock

DOC = textwrap.dedent("""\
    seed: 7
    duration: 60s
    roles:
      registry: [e1, e2, e3]
      sidecars: [h1, h2]
      control: [cp]
    steps:
      - at: 10s
        for: 5s
        fault: {kind: link, a: h1, b: s1, delay: 100ms, loss: 1%}
      - every: 20s
        start: 5s
        for: 5s
        fault: {kind: partition, grudge: random-halves, role: registry}
      - flip-flop: 5s
        off: 10s
        start: 30s
        until: 50s
        fault: {kind: mesh-cut, cut: control-plane}
      - at: 1s
        fault: {kind: crash, process: etcd1, signal: SIGTERM}
      - at: 2s
        for: 500ms
        fault:
          kind: partition
          grudge: {e1: [e2], e2: [e1]}
      - at: 3s
        for: 1s
        fault: {kind: partition, grudge: complete, components: [[e1], [e2, e3]]}
    """)


def test_documented_form_parses():
    ld = parse_schedule(DOC, "s.yaml")
    assert ld.seed == 7 and ld.duration_s == 60 and ld.roles["registry"] == ("e1", "e2", "e3")
    steps = [(s.at_s, s.for_s, s.fault.kind) for s in ld.schedule.steps]
    assert steps == [(1, None, "crash"), (2, 0.5, "partition"), (3, 1, "partition"), (5, 5, "partition"),
                     (10, 5, "link"), (25, 5, "partition"), (30, 5, "partition"), (45, 5, "partition"),
                     (45, 5, "partition")]
    by_time = {s.at_s: s.fault for s in ld.schedule.steps}
    assert by_time[10] == LinkChange("h1", "s1", {"delay": "100ms", "loss": "1%"})
    assert by_time[1] == Crash("etcd1", "SIGTERM")
    assert by_time[3] == Partition(complete([["e1"], ["e2", "e3"]]))
    assert by_time[30].grudge.nodes() == {"h1", "h2", "cp"}
    assert by_time[5].grudge.nodes() <= {"e1", "e2", "e3"}
    assert ld.schedule.steps[0].source == "s.yaml:20"     # the "- at: 1s" item


def test_seed_makes_schedule_deterministic_and_override_wins():
    a = parse_schedule(DOC, "s.yaml").schedule
    b = parse_schedule(DOC, "s.yaml").schedule
    assert a == b
    seeds = {parse_schedule(DOC, "s.yaml", seed=s).schedule for s in range(12)}
    assert len(seeds) > 1                                 # random-halves grudges depend on the seed
    assert parse_schedule(DOC, "s.yaml", seed=3).seed == 3


def test_roles_from_the_caller():
    doc = "steps:\n  - at: 1s\n    fault: {kind: mesh-cut, cut: registry-quorum}\n"
    ld = parse_schedule(doc, roles={"registry": ["a", "b", "c"]})
    assert ld.schedule.steps[0].fault.grudge.nodes() <= {"a", "b", "c"}


def test_loaded_schedule_runs_and_heals():
    ld = parse_schedule(DOC, "s.yaml")
    t = FakeTarget(links=[("h1", "s1")], hosts=["e1", "e2", "e3", "h1", "h2", "cp"], processes=["etcd1"])
    ops = run_schedule(ld.schedule, t, FakeClock(), until_s=ld.duration_s)
    assert all(o.ok for o in ops) and t.pristine
    assert sum(o.phase == "apply" for o in ops) == 9 and sum(o.phase == "revert" for o in ops) == 9


def test_load_from_file(tmp_path):
    p = tmp_path / "chaos.yaml"
    p.write_text(DOC)
    assert load_schedule(p).schedule == parse_schedule(DOC, str(p)).schedule
    with pytest.raises(ScheduleError, match="cannot read"):
        load_schedule(tmp_path / "missing.yaml")


@pytest.mark.parametrize("doc,line,words", [
    ("steps: [{at: 10, fault: {kind: crash, process: a}}]", 1, "give a unit, e.g. 10s"),
    ("steps:\n  - at: soon\n    fault: {kind: crash, process: a}", 2, "bad time 'soon'"),
    ("steps:\n  - at: 1s\n    fault: {kind: link, a: h1, b: s1, delay: 10 parsecs}", 3, "delay: bad time"),
    ("steps:\n  - at: 1s\n    fault: {kind: link, a: h1, b: s1, colour: red}", 3,
     "colour: unknown field for a link fault; allowed: a, b, direction, delay"),
    ("steps:\n  - at: 1s\n    fault: {kind: partition, grudge: halves, nodes: [a, b]}", 3, "unknown grudge 'halves'"),
    ("steps:\n  - at: 1s\n    fault: {kind: partition, grudge: random-halves}", 3, "nodes: [...] or role"),
    ("steps:\n  - at: 1s\n    fault: {kind: partition, grudge: bridge, nodes: [a, b]}", 3, "at least 3"),
    ("steps:\n  - at: 1s\n    fault: {kind: partition, grudge: random-halves, role: db}", 3, "unknown role 'db'"),
    ("steps:\n  - at: 1s\n    fault: {kind: partition, grudge: {a: [a]}}", 3, "cannot drop traffic from itself"),
    ("steps:\n  - at: 1s\n    fault: {kind: partition, grudge: complete}", 3, "missing required field 'components'"),
    ("steps:\n  - at: 1s\n    fault:\n      kind: partition\n      grudge: random-halves\n      nodes: [a, b]\n"
     "      colour: red", 7, "unknown field 'colour'"),
    ("steps:\n  - every: 10s\n    for: 20s\n    until: 30s\n    fault: {kind: crash, process: a}", 3,
     "shorter than the period"),
    ("steps:\n  - every: 10s\n    until: 30s\n    fault: {kind: crash, process: a}", 2, "every needs for:"),
    ("steps:\n  - every: 10s\n    for: 1s\n    fault: {kind: crash, process: a}", 2, "needs until:"),
    ("steps:\n  - at: 1s\n    every: 2s\n    fault: {kind: crash, process: a}", 2, "exactly one of"),
    ("steps:\n  - at: 1s\n    until: 2s\n    fault: {kind: crash, process: a}", 3, "until goes with every"),
    ("steps:\n  - at: 1s\n    fault: {kind: nope}", 3, "unknown fault kind 'nope'"),
    ("steps:\n  - at: 1s\n    fault: {kind: crash, proc: x}", 3, "proc: unknown field for a crash fault"),
    ("steps:\n  - at: 1s\n    fault: {kind: mesh-cut, cut: control-plane}", 3, "no 'sidecars' role"),
    ("steps:\n  - at: 1s\n    fault: {kind: mesh-cut, cut: everything}", 3, "unknown cut 'everything'"),
    ("steps:\n  - at: 1s\n    fault: {kind: crash, process: a}\n    fault: {kind: crash, process: b}", 4,
     "duplicate key 'fault'"),
    ("stepz: []", 1, "unknown field 'stepz'"),
    ("steps:\n  - at: 1s\n    fault: {kind: crash, process: a, signal: SIGNOPE}", 3, "unknown signal"),
    ("steps: [\n", 2, "YAML syntax error"),
    ("duration: 30s\nsteps:\n  - at: 40s\n    fault: {kind: crash, process: a}", 3, "not before the run's end"),
    ("steps:\n  - at: 1s\n    for: -2s\n    fault: {kind: crash, process: a}", 3, "bad time '-2s'"),
    ("steps:\n  - at: 1s\n    for: 0s\n    fault: {kind: crash, process: a}", 3, "duration must be > 0 s"),
])
def test_errors_name_file_line_and_field(doc, line, words):
    with pytest.raises(ScheduleError) as e:
        parse_schedule(doc, "bad.yaml")
    assert e.value.file == "bad.yaml" and e.value.line == line, str(e.value)
    assert words in str(e.value) and str(e.value).startswith(f"bad.yaml:{line}: ")


def test_empty_document():
    with pytest.raises(ScheduleError, match="empty schedule"):
        parse_schedule("", "e.yaml")


NAMES = {"nodes": ["e1", "e2", "e3", "h1", "h2", "cp", "s1"], "processes": ["etcd1"]}


def test_names_are_checked_against_the_topology_when_given():
    ld = parse_schedule(DOC, "s.yaml", **NAMES)
    assert len(ld.schedule) == 9


@pytest.mark.parametrize("fault,line,words", [
    ("{kind: link, a: h9, b: s1, delay: 1ms}", 3, "unknown node 'h9'; nodes: cp, e1"),
    ("{kind: crash, process: etcd9}", 3, "unknown process 'etcd9'; processes: etcd1"),
    ("{kind: cut, src: e1, dst: zz}", 3, "unknown node 'zz'"),
    ("\n      kind: partition\n      grudge: {e1: [x1]}", 5, "unknown node 'x1'"),
    ("\n      kind: partition\n      grudge: random-halves\n      nodes: [e1, q]", 6, "unknown node 'q'"),
    ("\n      kind: partition\n      grudge: complete\n      components: [[e1], [q]]", 6, "unknown node 'q'"),
])
def test_unknown_names_are_errors_at_their_line(fault, line, words):
    doc = f"steps:\n  - at: 1s\n    fault: {fault}\n"
    with pytest.raises(ScheduleError) as e:
        parse_schedule(doc, "n.yaml", **NAMES)
    assert e.value.line == line and words in str(e.value), str(e.value)


def test_role_hosts_are_checked_for_mesh_cuts():
    doc = ("roles: {sidecars: [h1, ghost], control: [cp]}\n"
           "steps:\n  - at: 1s\n    fault: {kind: mesh-cut, cut: control-plane}\n")
    with pytest.raises(ScheduleError, match="unknown node 'ghost'") as e:
        parse_schedule(doc, "r.yaml", **NAMES)
    assert e.value.line == 4
