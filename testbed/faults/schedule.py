"""Fault schedules and the runner that plays them against a target, healing at the end.

A :class:`Schedule` is a plain tuple of :class:`Step` values (fault, start time, duration)
with every random choice already made: builders that need randomness (``every`` or
``flip_flop`` with a fault *generator*, e.g. a fresh random-halves grudge each time) draw
from the ``random.Random`` they are given, so the same seed gives the same schedule.

    rng = random.Random(seed)
    sched = (at(10, LinkChange("h1", "s1", {"delay": "100ms"}), for_s=5)
             + every(20, lambda r: Partition(random_halves(members, r)), for_s=5,
                     start_s=5, until_s=60, rng=rng))
    with History("out/history.jsonl") as hist:
        ops = run_schedule(sched, target, clock, hist, until_s=60)

:func:`run_schedule` sleeps on the same clock as the workload, applies and reverts each
step at its time, records every op in the history, and **always** reverts whatever is
still applied when it returns — at ``until_s``, on an error, on KeyboardInterrupt.
"""
from __future__ import annotations

import asyncio
import dataclasses
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Union

from testbed.faults.base import Fault, FaultError, NemesisTarget, Op
from testbed.faults.kinds import Blocks, LinkChange
from testbed.history import History

__all__ = ["Step", "Schedule", "at", "every", "flip_flop", "Nemesis", "run_schedule",
           "run_schedule_async", "HealError", "FaultGen"]

FaultGen = Callable[[random.Random], Fault]


class HealError(RuntimeError):
    """Some reverts failed while healing; ``ops`` are the failed revert ops."""

    def __init__(self, ops: list[Op]):
        super().__init__("healing failed: " + "; ".join(f"{o.fault.describe()}: {o.error}" for o in ops))
        self.ops = ops


@dataclass(frozen=True)
class Step:
    """Apply ``fault`` at ``at_s``; revert it ``for_s`` later (None: keep it until the run
    heals at the end). ``source``: where it was written (file:line), for messages."""

    at_s: float
    fault: Fault
    for_s: float | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if self.at_s < 0:
            raise FaultError(f"start time must be >= 0 s, got {self.at_s:g}", "at")
        if self.for_s is not None and self.for_s <= 0:
            raise FaultError(f"duration must be > 0 s, got {self.for_s:g}", "for")


@dataclass(frozen=True)
class Schedule:
    steps: tuple[Step, ...] = ()

    def __add__(self, other: "Schedule") -> "Schedule":
        return Schedule(tuple(sorted(self.steps + other.steps, key=lambda s: s.at_s)))

    def __len__(self) -> int:
        return len(self.steps)

    def timeline(self) -> list[tuple[float, str, int]]:
        """(time, "apply"|"revert", step index), in the order they happen. At equal times
        reverts come before applies (a flip-flop heals before the next cut)."""
        ev: list[tuple[float, int, str, int]] = []
        for i, s in enumerate(self.steps):
            ev.append((s.at_s, 1, "apply", i))
            if s.for_s is not None and not s.fault.instant:
                ev.append((s.at_s + s.for_s, 0, "revert", i))
        return [(t, phase, i) for t, _, phase, i in sorted(ev)]

    @property
    def end_s(self) -> float:
        return max((t for t, _, _ in self.timeline()), default=0.0)

    def check_until(self, until_s: float | None) -> None:
        """An open-ended step needs the run's end time, or it would be healed at once."""
        if until_s is None:
            for s in self.steps:
                if s.for_s is None and not s.fault.instant:
                    raise FaultError(f"{s.source + ': ' if s.source else ''}{s.fault.describe()} at {s.at_s:g}s "
                                     "has no duration: give it one, or give the run's end (until_s)", "until_s")

    def describe(self) -> list[str]:
        return [f"{s.at_s:g}s{'+' + format(s.for_s, 'g') + 's' if s.for_s else ''}: {s.fault.describe()}"
                for s in self.steps]


def _draw(fault: Union[Fault, FaultGen], rng: random.Random | None) -> Fault:
    if isinstance(fault, Fault):
        return fault
    if rng is None:
        raise FaultError("a fault generator needs rng=random.Random(seed)", "rng")
    return fault(rng)


def at(at_s: float, fault: Union[Fault, FaultGen], for_s: float | None = None,
       rng: random.Random | None = None, source: str = "") -> Schedule:
    """One fault at ``at_s`` seconds, for ``for_s`` seconds (None: until the end)."""
    return Schedule((Step(at_s, _draw(fault, rng), for_s, source),))


def every(period_s: float, fault: Union[Fault, FaultGen], for_s: float, *, until_s: float,
          start_s: float = 0.0, rng: random.Random | None = None, source: str = "") -> Schedule:
    """The fault at start_s, start_s + period_s, ... (starts before until_s), each for
    ``for_s`` (< period_s). A generator is called once per occurrence."""
    if period_s <= 0:
        raise FaultError(f"period must be > 0 s, got {period_s}", "every")
    if for_s >= period_s:
        raise FaultError(f"duration {for_s:g}s must be shorter than the "
                         f"period {period_s:g}s (occurrences would overlap)", "for")
    steps = []
    n = 0
    while (t := start_s + n * period_s) < until_s:
        steps.append(Step(t, _draw(fault, rng), min(for_s, until_s - t), source))
        n += 1
    return Schedule(tuple(steps))


def flip_flop(fault: Union[Fault, FaultGen], on_s: float, off_s: float | None = None, *, until_s: float,
              start_s: float = 0.0, rng: random.Random | None = None, source: str = "") -> Schedule:
    """On for ``on_s``, off for ``off_s`` (default on_s), repeatedly, from start_s until until_s."""
    off = on_s if off_s is None else off_s
    if off <= 0:
        raise FaultError(f"off time must be > 0 s, got {off}", "off")
    return every(on_s + off, fault, on_s, until_s=until_s, start_s=start_s, rng=rng, source=source)


class Nemesis:
    """Applies and reverts faults on a target, recording each op in a history, and knows
    what is still applied (``outstanding``) so that ``heal()`` can revert it."""

    def __init__(self, target: NemesisTarget, clock: Any, history: History | None = None):
        self.target, self.clock, self.history = target, clock, history
        self.outstanding: dict[int, Op] = {}      # fault id -> apply op, in apply order
        self.ops: list[Op] = []
        self._next_id = 0

    def _record(self, fid: int, op: Op, t0: float) -> Op:
        self.ops.append(op)
        if self.history is not None:
            self.history.fault(t_start=t0, t_end=self.clock.now(), fault_id=fid, phase=op.phase,
                               fault=op.fault.to_dict(), actions=op.actions, ok=op.ok, error=op.error,
                               description=op.fault.describe())
        return op

    def apply(self, fault: Fault, fault_id: int | None = None) -> Op:
        """Apply now. Even a failed apply stays outstanding (part of it may be in force)."""
        fid = self._next_id if fault_id is None else fault_id
        self._next_id = max(self._next_id, fid + 1)
        t0 = self.clock.now()
        op = fault.apply(self.target)
        if not fault.instant:
            self.outstanding[fid] = op
        return self._record(fid, op, t0)

    def revert(self, fault_id: int) -> Op:
        order = list(self.outstanding)
        applied = self.outstanding.pop(fault_id)
        t0 = self.clock.now()
        fault = applied.fault
        if isinstance(fault, Blocks):   # keep the drops other outstanding faults still want
            keep = frozenset(p for o in self.outstanding.values() if isinstance(o.fault, Blocks)
                             for p in o.fault.pairs())
            return self._record(fault_id, fault.revert(self.target, applied, keep=keep), t0)
        if isinstance(fault, LinkChange):
            return self._record(fault_id, self._revert_link(fault_id, applied, order), t0)
        return self._record(fault_id, fault.revert(self.target, applied), t0)

    def _revert_link(self, fault_id: int, applied: Op, order: list[int]) -> Op:
        """Other link faults on the same link may still be in force, applied before or after
        this one: go back to the shapes before the earliest of them, then re-apply the
        others in their order (the first re-applied one now holds that baseline)."""
        fault = applied.fault
        assert isinstance(fault, LinkChange)
        link = {fault.a, fault.b}
        same = [i for i in order if i != fault_id and i in self.outstanding
                and isinstance(other := self.outstanding[i].fault, LinkChange) and {other.a, other.b} == link]
        if not same:
            return fault.revert(self.target, applied)
        first = applied if order.index(fault_id) < order.index(same[0]) else self.outstanding[same[0]]
        if "before" not in first.state:
            return Op(fault, "revert", ok=False, error="an overlapping link fault on this link never applied")
        before = list(first.state["before"])
        first_fault = first.fault
        assert isinstance(first_fault, LinkChange)      # `applied` or one of `same`: link changes
        if first_fault.a != fault.a:
            before.reverse()
        both = dataclasses.replace(fault, direction=None)
        back = both.revert(self.target, Op(fault, "apply", state={"before": before}))
        actions, error = list(back.actions), back.error
        for i in same:
            if error is None:
                again = self.outstanding[i].fault.apply(self.target)
                self.outstanding[i] = again
                actions += [f"re-apply {a}" for a in again.actions]
                error = again.error
        return Op(fault, "revert", tuple(actions), ok=error is None, error=error, state=applied.state)

    def heal(self) -> list[Op]:
        """Revert everything outstanding, newest first. Every revert is attempted even if
        some fail or a KeyboardInterrupt arrives; then raises HealError (or the interrupt)."""
        failed: list[Op] = []
        interrupt: BaseException | None = None
        for fid in reversed(list(self.outstanding)):
            try:
                op = self.revert(fid)
            except BaseException as e:   # finish healing first, then re-raise
                interrupt = interrupt or e
                continue
            if not op.ok:
                failed.append(op)
        if interrupt is not None:
            raise interrupt
        if failed:
            raise HealError(failed)
        return failed

    def fire(self, schedule: Schedule, phase: str, index: int) -> Op:
        if phase == "apply":
            op = self.apply(schedule.steps[index].fault, index)
            op.raise_for_error()
            return op
        return self.revert(index)


def run_schedule(schedule: Schedule, target: NemesisTarget, clock: Any, history: History | None = None,
                 *, until_s: float | None = None, stop: threading.Event | None = None) -> list[Op]:
    """Play ``schedule`` (blocking). Returns every op. Stops early when ``stop`` is set.
    Steps starting after ``until_s`` are skipped; at ``until_s`` (default: the schedule's
    last event) everything still applied is reverted. A failed apply raises FaultError
    after healing."""
    schedule.check_until(until_s)
    nem = Nemesis(target, clock, history)
    nem._next_id = len(schedule.steps)
    try:
        for t, phase, i in schedule.timeline():
            if until_s is not None and t > until_s:
                break
            if not clock.sleep_until(t, stop):
                break
            nem.fire(schedule, phase, i)
        if until_s is not None:
            clock.sleep_until(until_s, stop)
    finally:
        nem.heal()
    return nem.ops


async def run_schedule_async(schedule: Schedule, target: NemesisTarget, clock: Any,
                             history: History | None = None, *, until_s: float | None = None) -> list[Op]:
    """As :func:`run_schedule`, as an asyncio task: sleeps with asyncio, runs the (blocking)
    target calls in one worker thread, in order. Cancelling the task heals before it ends
    (after any target call already running has finished)."""
    schedule.check_until(until_s)
    nem = Nemesis(target, clock, history)
    nem._next_id = len(schedule.steps)
    loop = asyncio.get_running_loop()
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nemesis")

    async def sleep_until(t: float) -> None:
        while (left := t - clock.now()) > 0:
            await asyncio.sleep(left)

    try:
        for t, phase, i in schedule.timeline():
            if until_s is not None and t > until_s:
                break
            await sleep_until(t)
            await loop.run_in_executor(worker, nem.fire, schedule, phase, i)
        if until_s is not None:
            await sleep_until(until_s)
    finally:
        healing = loop.run_in_executor(worker, nem.heal)   # queued after a running fire()
        worker.shutdown(wait=False)
        try:
            await asyncio.shield(healing)
        except asyncio.CancelledError:   # cancelled again while healing: finish healing anyway
            await healing
            raise
    return nem.ops
