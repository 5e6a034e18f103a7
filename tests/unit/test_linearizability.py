"""The WGL linearizability checker: classic hand-written histories, random histories produced
by a real sequential register (must be linearizable), and mutated ones checked against an
exhaustive brute-force oracle."""
from __future__ import annotations

import itertools
import math
import random
import time

import pytest

from testbed.run.checkers.linearizability import (Operation, _step, check_linearizability, check_register,
                                              pair_operations)
from testbed.history import EtcdOp, HistoryError


def op(p, f, call, ret, value=None, result=None, kind="ok", key="k", serializable=False):
    """Invoke at ``call``; complete (ok/fail/info) at ``ret`` (None: never completes)."""
    out = [EtcdOp(call, p, "invoke", f, key, value, serializable)]
    if ret is not None:
        out.append(EtcdOp(ret, p, kind, f, key, result if f == "read" else value, serializable))
    return out


def H(*ops):
    return [e for o in ops for e in o]


def lin(*ops, **kw) -> bool | None:
    v = check_linearizability(H(*ops), **kw)
    return True if v.valid else (None if v.outcome == "unknown" else False)


# --- classic histories --------------------------------------------------------------------

def test_empty_and_sequential():
    assert lin() is True
    assert lin(op(1, "write", 0, 1, 1), op(1, "read", 2, 3, result=1)) is True
    assert lin(op(1, "read", 0, 1, result=None)) is True        # initial value: absent


def test_read_of_initial_value_other_than_none():
    assert lin(op(1, "read", 0, 1, result=0), initial=0) is True
    assert lin(op(1, "read", 0, 1, result=None), initial=0) is False


def test_stale_read_after_acknowledged_write_is_not_linearizable():
    v = check_linearizability(H(op(1, "write", 0, 1, 1), op(2, "read", 2, 3, result=None)))
    assert not v.valid and v.outcome == "not linearizable" and v.failed_keys == ("k",)
    w = v.results[0].witness
    assert "read -> None" in w["stuck"] and w["state"] == 1


def test_read_concurrent_with_write_may_see_either_value():
    for seen in (None, 1):
        assert lin(op(1, "write", 0, 10, 1), op(2, "read", 2, 3, result=seen)) is True
    assert lin(op(1, "write", 0, 10, 1), op(2, "read", 2, 3, result=2)) is False   # never written


def test_read_cannot_go_back_in_time():
    # write 1 concurrent with two sequential reads: new then old is impossible
    assert lin(op(1, "write", 0, 10, 1), op(2, "read", 1, 2, result=None), op(2, "read", 3, 4, result=1)) is True
    assert lin(op(1, "write", 0, 10, 1), op(2, "read", 1, 2, result=1), op(2, "read", 3, 4, result=None)) is False


@pytest.mark.parametrize("first,second", [(1, 2), (2, 1)])
def test_concurrent_writes_reads_in_either_order(first, second):
    w1, w2 = op(1, "write", 0, 10, 1), op(2, "write", 0, 10, 2)
    # reads during the writes: either order of the writes explains them
    assert lin(w1, w2, op(3, "read", 1, 2, result=first), op(3, "read", 3, 4, result=second)) is True
    # after both writes completed, the value is fixed: it cannot flip
    assert lin(w1, w2, op(3, "read", 11, 12, result=first), op(3, "read", 13, 14, result=second)) is False
    assert lin(w1, w2, op(3, "read", 11, 12, result=first), op(3, "read", 13, 14, result=first)) is True


def test_three_reads_flip_flopping_is_not_linearizable():
    w1, w2 = op(1, "write", 0, 10, 1), op(2, "write", 0, 10, 2)
    reads = [op(3, "read", 1 + 2 * i, 2 + 2 * i, result=r) for i, r in enumerate((1, 2, 1))]
    assert lin(w1, w2, *reads) is False


def test_cas_success_and_failure():
    w = op(1, "write", 0, 1, 1)
    assert lin(w, op(2, "cas", 2, 3, (1, 2)), op(1, "read", 4, 5, result=2)) is True
    assert lin(w, op(2, "cas", 2, 3, (1, 2)), op(1, "read", 4, 5, result=1)) is False
    assert lin(w, op(2, "cas", 2, 3, (3, 4))) is False                       # ok cas on a wrong value
    # a failed cas did not happen and constrains nothing here
    assert lin(w, op(2, "cas", 2, 3, (3, 4), kind="fail"), op(1, "read", 4, 5, result=1)) is True
    # concurrent cas racing: only one of two cas 1->x may succeed
    assert lin(w, op(2, "cas", 2, 5, (1, 2)), op(3, "cas", 2, 5, (1, 3))) is False
    assert lin(w, op(2, "cas", 2, 5, (1, 2)), op(3, "cas", 2, 5, (2, 3)), op(1, "read", 6, 7, result=3)) is True


def test_failed_write_did_not_happen():
    assert lin(op(1, "write", 0, 1, 1, kind="fail"), op(2, "read", 2, 3, result=1)) is False
    assert lin(op(1, "write", 0, 1, 1, kind="fail"), op(2, "read", 2, 3, result=None)) is True


def test_info_write_may_or_may_not_take_effect():
    info = op(1, "write", 0, 1, 1, kind="info")
    assert lin(info, op(2, "read", 5, 6, result=1)) is True
    assert lin(info, op(2, "read", 5, 6, result=None)) is True
    assert lin(info, op(2, "read", 5, 6, result=None), op(2, "read", 7, 8, result=1)) is True  # took effect late
    assert lin(info, op(2, "read", 5, 6, result=1), op(2, "read", 7, 8, result=None)) is False  # cannot undo
    # an info op can take effect long after it "completed" (it never returns)
    assert lin(info, op(2, "read", 50, 51, result=None), op(2, "read", 100, 101, result=1)) is True
    # but not before it was invoked
    assert lin(op(2, "read", 0, 1, result=1), op(1, "write", 2, 3, 1, kind="info")) is False


def test_never_completed_invoke_counts_as_info():
    pending = op(1, "write", 0, None, 1)
    assert lin(pending, op(2, "read", 5, 6, result=1)) is True
    v = check_linearizability(H(pending, op(2, "read", 5, 6, result=None)))
    assert v.valid and v.info_ops == 1


def test_info_cas_and_info_read():
    w = op(1, "write", 0, 1, 1)
    assert lin(w, op(2, "cas", 2, 3, (1, 2), kind="info"), op(3, "read", 4, 5, result=2)) is True
    assert lin(w, op(2, "cas", 2, 3, (1, 2), kind="info"), op(3, "read", 4, 5, result=1)) is True
    assert lin(w, op(2, "cas", 2, 3, (5, 2), kind="info"), op(3, "read", 4, 5, result=2)) is False
    # an info read says nothing (its value is unknown)
    assert lin(w, op(2, "read", 2, 3, result=99, kind="info")) is True


def test_keys_are_checked_independently():
    v = check_linearizability(H(op(1, "write", 0, 1, 1, key="a"), op(2, "read", 2, 3, result=1, key="a"),
                                op(3, "write", 0, 1, 1, key="b"), op(4, "read", 2, 3, result=None, key="b")))
    assert v.keys == 2 and v.failed_keys == ("b",) and not v.valid
    assert [r.valid for r in v.results] == [True, False]


def test_touching_intervals_count_as_concurrent():
    # read returns at t=1 exactly when the write is invoked: either order allowed
    assert lin(op(1, "write", 1, 2, 1), op(2, "read", 0, 1, result=1)) is True


def test_malformed_histories_are_errors():
    with pytest.raises(HistoryError, match="does not complete a pending invoke"):
        check_linearizability([EtcdOp(0, 1, "ok", "write", "k", 1)])
    with pytest.raises(HistoryError, match="still pending"):
        check_linearizability([EtcdOp(0, 1, "invoke", "write", "k", 1), EtcdOp(1, 1, "invoke", "read", "k")])
    with pytest.raises(HistoryError, match="allowed invoke"):
        EtcdOp(0, 1, "done", "read", "k")


def test_search_budget_gives_unknown_not_a_hang():
    # many concurrent writes and then a value nobody wrote: exhaustive search is huge
    writes = [op(i, "write", 0, 100, i) for i in range(14)]
    t0 = time.monotonic()
    v = check_linearizability(H(*writes, op(99, "read", 101, 102, result=-1)), max_steps=2000)
    assert v.outcome == "unknown" and not v.valid and v.unknown_keys == ("k",)
    assert v.results[0].steps == 2001
    assert time.monotonic() - t0 < 2.0


def test_memoization_keeps_a_hard_invalid_history_fast():
    # 14 concurrent writes then an impossible read: 2^14 linearized sets, memo bounds the work
    writes = [op(i, "write", 0, 100, i) for i in range(14)]
    t0 = time.monotonic()
    v = check_linearizability(H(*writes, op(99, "read", 101, 102, result=-1)), max_steps=10_000_000)
    assert v.outcome == "not linearizable"
    assert time.monotonic() - t0 < 20.0


def test_unobserved_info_writes_are_pruned_and_keep_partition_histories_cheap():
    # 40 timed-out writes during a partition, nobody read their values; then a stale read
    infos = [op(100 + i, "write", 1 + i * 0.01, 2 + i * 0.01, 1000 + i, kind="info") for i in range(40)]
    stale = H(op(1, "write", 0, 0.5, 1), *infos, op(2, "write", 10, 11, 2), op(3, "read", 12, 13, result=1))
    t0 = time.monotonic()
    v = check_linearizability(stale, max_steps=100_000)
    assert v.outcome == "not linearizable" and v.info_ops == 40 and v.results[0].ops == 3
    assert time.monotonic() - t0 < 1.0
    # an info write whose value *was* read is kept, and explains the read
    seen = H(op(1, "write", 0, 0.5, 1), *infos, op(2, "write", 10, 11, 2), op(3, "read", 12, 13, result=1005))
    v = check_linearizability(seen)
    assert v.valid and v.results[0].ops == 4


# --- random histories from a real register --------------------------------------------------

def register_run(rng: random.Random, n_ops: int, procs: int, p_info: float = 0.1, key: str = "k"):
    """A real sequential register driven by concurrent clients: each op takes effect at a
    random point inside its [invoke, complete] interval. Info ops may or may not take effect."""
    free = {p: 0.0 for p in range(procs)}
    planned = []
    written = [None]
    next_value = 1
    for _ in range(n_ops):
        p = min(free, key=lambda q: (free[q], q))
        call = free[p] + rng.uniform(0, 1)
        point = call + rng.uniform(0, 2)
        ret = point + rng.uniform(0, 2)
        free[p] = ret
        f = rng.choice(("read", "write", "cas"))
        if f == "write":
            value = next_value
            next_value += 1
        elif f == "cas":
            value = (rng.choice(written[-3:]), next_value)
            next_value += 1
        else:
            value = None
        info = rng.random() < p_info
        takes_effect = not info or rng.random() < 0.5
        planned.append((point, p, f, value, call, ret, info, takes_effect))
        if f != "read":
            written.append(value if f == "write" else value[1])
    state = None
    events = []
    for _point, p, f, value, call, ret, info, takes_effect in sorted(planned):
        events.append(EtcdOp(call, p, "invoke", f, key, value))
        if f == "read":
            result, kind = state, "ok"
        elif f == "write":
            result, kind = value, "ok"
            if takes_effect:
                state = value
        else:
            kind = "ok" if state == value[0] else "fail"
            result = value
            if kind == "ok" and takes_effect:
                state = value[1]
        if info:
            kind = "info"
        events.append(EtcdOp(ret, p, kind, f, key, result))
    return events


@pytest.mark.parametrize("seed", range(40))
def test_random_register_runs_are_linearizable(seed):
    rng = random.Random(seed)
    events = register_run(rng, n_ops=rng.randint(5, 60), procs=rng.randint(1, 6))
    v = check_linearizability(events)
    assert v.valid, v.results[0].witness


def test_long_register_run_is_linearizable_and_fast():
    events = register_run(random.Random(7), n_ops=600, procs=5)
    t0 = time.monotonic()
    v = check_linearizability(events)
    elapsed = time.monotonic() - t0
    assert v.valid and v.operations >= 350   # fail ops and info reads are dropped
    assert elapsed < 10.0, f"{elapsed:.1f}s for 600 ops"


def brute_force(ops: list[Operation], initial=None) -> bool:
    """Exhaustive oracle: some subset of info ops plus all others, in some order respecting
    real time, is a legal sequential register history."""
    finite = [o for o in ops if not o.info]
    infos = [o for o in ops if o.info]
    for r in range(len(infos) + 1):
        for chosen in itertools.combinations(infos, r):
            if _orders(finite + list(chosen), initial):
                return True
    return False


def _orders(ops: list[Operation], state) -> bool:
    if not ops:
        return True
    for o in ops:
        # o can go first only if no other op returned before o was invoked
        if any(x.ret < o.call for x in ops if x is not o):
            continue
        ok, new = _step(state, o)
        if ok and _orders([x for x in ops if x is not o], new):
            return True
    return False


def mutate(rng: random.Random, events: list[EtcdOp]) -> list[EtcdOp]:
    events = list(events)
    i = rng.randrange(len(events))
    e = events[i]
    choice = rng.random()
    values = [x.value for x in events if x.f == "write"] + [None, 999]
    if e.op_type == "ok" and e.f == "read" and choice < 0.6:
        events[i] = EtcdOp(e.t, e.process, e.op_type, e.f, e.key, rng.choice(values))
    elif e.op_type in ("ok", "fail", "info") and choice < 0.8:
        events[i] = EtcdOp(e.t, e.process, rng.choice(("ok", "fail", "info")), e.f, e.key, e.value)
    elif e.op_type != "invoke":
        # move the completion earlier, but not before its own invoke
        inv = max(x.t for x in events[:] if x.process == e.process and x.op_type == "invoke" and x.t < e.t)
        events[i] = EtcdOp(rng.uniform(inv, e.t), e.process, e.op_type, e.f, e.key, e.value)
    return events


def test_mutated_histories_agree_with_brute_force():
    rng = random.Random(2024)
    verdicts = {True: 0, False: 0}
    for trial in range(1200):
        events = register_run(rng, n_ops=rng.randint(2, 7), procs=rng.randint(1, 4), p_info=0.2)
        for _ in range(rng.randint(1, 3)):
            events = mutate(rng, events)
        per_key = pair_operations(events)
        ops = per_key.get("k", [])
        expected = brute_force(ops)
        got = check_register(ops).valid
        assert got == expected, f"trial {trial}: WGL {got}, brute force {expected}: " + \
            "; ".join(o.describe() for o in ops)
        verdicts[expected] += 1
    # the mutations produce both kinds, so the comparison has teeth
    assert verdicts[True] > 200 and verdicts[False] > 100, verdicts


def test_unmutated_small_runs_agree_with_brute_force():
    rng = random.Random(99)
    for _ in range(100):
        ops = pair_operations(register_run(rng, n_ops=rng.randint(1, 7), procs=3, p_info=0.3)).get("k", [])
        assert brute_force(ops) and check_register(ops).valid


def test_operation_times_and_info_flag():
    ops = pair_operations(H(op(1, "write", 0, 1, 1, kind="info"), op(2, "cas", 2, 3, [1, 2])))["k"]
    assert ops[0].info and math.isinf(ops[0].ret)
    assert ops[1].value == (1, 2)     # JSON lists become hashable tuples
