"""Schedules and the runner: timing on a fake clock, history records, healing on every exit."""
from __future__ import annotations

import asyncio
import io
import json
import random
import threading
import time

import pytest

from testbed.faults.kinds import Crash, LinkChange, Partition, Pause, Restart
from testbed.faults.base import FaultError
from testbed.faults.grudge import random_halves
from testbed.faults.schedule import (HealError, Nemesis, Schedule, at, every, flip_flop, run_schedule,
                                     run_schedule_async)
from testbed.faults.targets import FakeTarget
from testbed.history import FakeClock, History, RunClock, read_history

NODES = ["e1", "e2", "e3", "h1"]


def target() -> FakeTarget:
    return FakeTarget(links=[("h1", "s1")], hosts=NODES, processes=["etcd1"])


def test_every_and_flip_flop_expand_to_steps():
    s = every(10, Crash("etcd1"), for_s=3, start_s=5, until_s=32)
    assert [(st.at_s, st.for_s) for st in s.steps] == [(5, 3), (15, 3), (25, 3)]
    f = flip_flop(Crash("etcd1"), 2, 3, start_s=0, until_s=11)
    assert [(st.at_s, st.for_s) for st in f.steps] == [(0, 2), (5, 2), (10, 1)]   # clipped at until
    with pytest.raises(FaultError, match="shorter than the period"):
        every(5, Crash("x"), for_s=5, until_s=20)
    with pytest.raises(FaultError, match="must be > 0"):
        at(1, Crash("x"), for_s=0)
    with pytest.raises(FaultError, match=">= 0"):
        at(-1, Crash("x"))


def test_generators_draw_per_occurrence_and_are_seed_deterministic():
    def gen(rng):
        return Partition(random_halves(NODES, rng))
    a = every(10, gen, for_s=5, until_s=100, rng=random.Random(7))
    b = every(10, gen, for_s=5, until_s=100, rng=random.Random(7))
    assert a == b
    assert len({st.fault for st in a.steps}) > 1
    with pytest.raises(FaultError, match="rng"):
        at(0, gen)


def test_timeline_orders_reverts_before_applies_at_the_same_instant():
    s = flip_flop(Pause("etcd1"), 5, until_s=20)
    tl = s.timeline()
    assert tl[:3] == [(0, "apply", 0), (5, "revert", 0), (10, "apply", 1)]
    s2 = at(5, Crash("etcd1"), for_s=5) + at(10, Pause("etcd1"), for_s=1)
    assert s2.timeline()[1:3] == [(10, "revert", 0), (10, "apply", 1)]
    assert at(3, Restart("etcd1"), for_s=9).timeline() == [(3, "apply", 0)]   # instant: nothing to revert


def test_run_schedule_applies_at_the_right_times_and_records_history():
    t = target()
    clock = FakeClock()
    buf = io.StringIO()
    hist = History(stream=buf, clock=clock)
    part = Partition({"e1": ["e2"]})
    sched = at(2, part, for_s=3) + at(4, LinkChange("h1", "s1", {"delay": "50ms"}))
    ops = run_schedule(sched, t, clock, hist, until_s=10)
    assert clock.sleeps == [2, 4, 5, 10]
    assert [(o.phase, o.fault.kind) for o in ops] == [("apply", "partition"), ("apply", "link"),
                                                      ("revert", "partition"), ("revert", "link")]
    assert t.pristine and clock.now() == 10
    recs = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert [(r["phase"], r["fault_id"], r["t_start"]) for r in recs] == \
        [("apply", 0, 2), ("apply", 1, 4), ("revert", 0, 5), ("revert", 1, 10)]
    assert recs[0]["actions"] == ["block e2->e1"] and recs[0]["fault"]["grudge"] == {"e1": ["e2"]}


def test_steps_after_until_are_skipped_and_open_ended_faults_healed():
    t = target()
    ops = run_schedule(at(1, Crash("etcd1")) + at(50, Pause("etcd1"), for_s=1), t, FakeClock(), until_s=20)
    assert [(o.phase, o.fault.kind) for o in ops] == [("apply", "crash"), ("revert", "crash")]
    assert t.pristine


def test_heals_on_exception_in_the_clock():
    t = target()

    class Boom(FakeClock):
        def sleep_until(self, when, stop=None):
            if when >= 5:
                raise RuntimeError("workload died")
            return super().sleep_until(when, stop)
    with pytest.raises(RuntimeError, match="workload died"):
        run_schedule(at(1, Partition({"e1": ["e2", "e3"]})) + at(2, Pause("etcd1"), for_s=10), t, Boom(), until_s=9)
    assert t.pristine


def test_heals_on_keyboard_interrupt():
    t = target()

    class Interrupted(FakeClock):
        def sleep_until(self, when, stop=None):
            if when >= 3:
                raise KeyboardInterrupt
            return super().sleep_until(when, stop)
    with pytest.raises(KeyboardInterrupt):
        run_schedule(at(1, Partition({"e1": ["e2"]}), for_s=10) + at(2, Crash("etcd1")), t, Interrupted(), until_s=20)
    assert t.pristine


def test_failed_apply_heals_and_raises():
    t = target()
    t.fail["signal"] = OSError("no such process")
    with pytest.raises(FaultError, match="no such process"):
        run_schedule(at(1, Partition({"e1": ["e2"]}), for_s=10) + at(2, Crash("etcd1"), for_s=1), t, FakeClock())
    assert not t.blocked


def test_failed_revert_continues_healing_then_raises():
    t = target()
    clock = FakeClock()
    nem = Nemesis(t, clock)
    nem.apply(Partition({"e1": ["e2"]}))
    nem.apply(Pause("etcd1"))
    t.fail["signal"] = OSError("EPERM")
    with pytest.raises(HealError, match="EPERM"):
        nem.heal()
    assert not t.blocked and not nem.outstanding       # the partition was still healed


def test_stop_event_ends_early_and_heals():
    t = target()
    stop = threading.Event()
    clock = RunClock()
    result = {}

    def run():
        result["ops"] = run_schedule(at(0, Partition({"e1": ["e2"]})) + at(30, Pause("etcd1")), t, clock,
                                     until_s=60, stop=stop)
    th = threading.Thread(target=run)
    th.start()
    time.sleep(0.2)
    assert t.blocked == {("e2", "e1")}
    stop.set()
    th.join(5)
    assert not th.is_alive() and t.pristine and clock.now() < 5
    assert [o.phase for o in result["ops"]] == ["apply", "revert"]


def test_real_clock_timing_within_tolerance():
    t = target()
    clock = RunClock()
    stamps = []

    orig = t.block

    def block(src, dst, oneway=False):
        stamps.append(clock.now())
        orig(src, dst, oneway)
    t.block = block
    run_schedule(at(0.1, Partition({"e1": ["e2"]}), for_s=0.1) + at(0.3, Partition({"e3": ["e2"]}), for_s=0.05),
                 t, clock)
    assert stamps[0] == pytest.approx(0.1, abs=0.05) and stamps[1] == pytest.approx(0.3, abs=0.05)
    assert t.pristine


def test_async_runner_heals_on_cancel():
    t = target()

    async def main():
        clock = RunClock()
        task = asyncio.create_task(run_schedule_async(at(0, Partition({"e1": ["e2"]})) + at(0.05, Crash("etcd1")),
                                                      t, clock, until_s=30))
        await asyncio.sleep(0.3)
        assert t.blocked and t.process_state["etcd1"] == "dead"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    asyncio.run(main())
    assert t.pristine


def test_async_runner_completes():
    t = target()
    ops = asyncio.run(run_schedule_async(at(0.01, Crash("etcd1"), for_s=0.02), t, RunClock()))
    assert [o.phase for o in ops] == ["apply", "revert"] and t.pristine


def test_history_file_written_by_the_runner_reads_back(tmp_path):
    t = target()
    clock = FakeClock()
    with History(tmp_path / "history.jsonl", clock=clock) as h:
        run_schedule(at(1, Crash("etcd1"), for_s=2), t, clock, h)
    data = read_history(tmp_path / "history.jsonl")
    assert [(f.phase, f.t_start, f.ok) for f in data.faults] == [("apply", 1, True), ("revert", 3, True)]
    assert data.faults[0].description == "crash etcd1 (SIGKILL)"


def test_schedule_describe_and_sum():
    s = at(1, Crash("etcd1"), for_s=2) + at(0, Pause("etcd1"))
    assert [st.at_s for st in s.steps] == [0, 1] and len(s) == 2 and s.end_s == 3
    assert s.describe() == ["0s: pause etcd1", "1s+2s: crash etcd1 (SIGKILL)"]
    assert Schedule().timeline() == []


def test_overlapping_partitions_keep_shared_drops_until_both_end():
    t = target()
    a = Partition({"e1": ["e2", "e3"]})
    b = Partition({"e1": ["e2"], "h1": ["e2"]})
    states = {}

    class Watch(FakeClock):
        def sleep_until(self, when, stop=None):
            states[self.t] = set(t.blocked)
            return super().sleep_until(when, stop)
    run_schedule(at(1, a, for_s=4) + at(2, b, for_s=5), t, Watch(), until_s=10)
    assert states[5] == {("e2", "e1"), ("e2", "h1")}          # a ended: its e2->e1 still wanted by b
    assert states[7] == set() and t.pristine


def test_open_ended_fault_needs_the_run_end():
    t = target()
    with pytest.raises(FaultError, match="has no duration"):
        run_schedule(at(1, Crash("etcd1")), t, FakeClock())
    assert t.calls == []                                   # refused before touching anything
    assert run_schedule(at(1, Restart("etcd1")), t, FakeClock())[0].ok   # instant faults need none


@pytest.mark.parametrize("seed", range(30))
def test_overlapping_link_faults_compose_and_heal_to_the_original(seed):
    rng = random.Random(seed)
    t = FakeTarget(links=[("h1", "s1")], hosts=["h1"])
    t.set_link("h1", "s1", delay="5ms", bw="20Mbit")                # the topology's shape
    original = t.shapes("h1", "s1")
    params = [{"delay": "100ms"}, {"loss": "3%"}, {"bw": "1Mbit"}, {"delay": "40ms", "jitter": "5ms"}]
    sched = Schedule()
    for _ in range(rng.randint(2, 4)):
        a, b = rng.choice([("h1", "s1"), ("s1", "h1")])
        direction = rng.choice([None, f"{a}->{b}", f"{b}->{a}"])
        sched = sched + at(rng.uniform(0, 5), LinkChange(a, b, rng.choice(params), direction), for_s=rng.uniform(1, 5))
    seen = []

    class Watch(FakeClock):
        def sleep_until(self, when, stop=None):
            seen.append((self.t, t.shapes("h1", "s1")))
            return super().sleep_until(when, stop)
    ops = run_schedule(sched, t, Watch(), until_s=20)
    assert all(o.ok for o in ops)
    assert t.shapes("h1", "s1") == original
    # at every instant, each direction carries exactly the outstanding faults' parameters
    # applied in order over the original shape
    from testbed.shape import parse_params
    for now, shapes in seen:
        active = [st for st in sched.steps if st.at_s <= now < st.at_s + st.for_s] if now else []
        active.sort(key=lambda st: st.at_s)
        for k, (src, dst) in enumerate((("h1", "s1"), ("s1", "h1"))):
            want = original[k]
            for st in active:
                f = st.fault
                if f.direction is None or f.direction == f"{src}->{dst}":
                    want = parse_params(dict(f.params), want)
            assert shapes[k] == want, (now, k)


def test_async_cancel_during_a_slow_apply_still_heals_it():
    t = target()
    started = threading.Event()
    orig = t.block

    def slow_block(src, dst, oneway=False):
        started.set()
        time.sleep(0.3)
        orig(src, dst, oneway)
    t.block = slow_block

    async def main():
        task = asyncio.create_task(run_schedule_async(at(0, Partition({"e1": ["e2"]})), t, RunClock(), until_s=30))
        while not started.is_set():
            await asyncio.sleep(0.01)
        task.cancel()                       # while block() is still running in the worker
        with pytest.raises(asyncio.CancelledError):
            await task
    asyncio.run(main())
    assert t.pristine
