"""Linearizability of a register per key (read / write / cas), Wing & Gong's search with
Lowe's memoization (the WGL algorithm, as in Knossos' ``wgl`` and Porcupine).

Input: Jepsen-style etcd op events (:class:`testbed.history.EtcdOp`): each ``invoke`` is
completed by the next ``ok`` / ``fail`` / ``info`` of the same process.

- ``ok``: it happened, between invoke and completion. A read's result is the completion's
  value; a write's value and a cas's ``[expected, new]`` are the invoke's.
- ``fail``: it definitely did not happen (a cas whose compare failed is a ``fail``): dropped.
- ``info`` (or no completion at all): unknown outcome. A write or cas *may* have taken effect
  at any point after its invoke — it gets a return time of +infinity and the search may
  linearize it or leave it out. An info read constrains nothing and is dropped.

The search: events sorted by time (calls before returns at equal times, i.e. touching
intervals count as concurrent) in a doubly-linked list; repeatedly try to linearize the
first call whose model step succeeds, memoizing (set of linearized ops, state) pairs
already explored; on reaching a return whose op is not yet linearized, backtrack. Success
when every op with a finite return is linearized. ``max_steps`` bounds the work per key;
beyond it the key's result is "unknown" instead of a hang.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from testbed.history import EtcdOp, HistoryError

__all__ = ["Operation", "pair_operations", "check_register", "check_linearizability",
           "KeyResult", "LinearizabilityVerdict"]


def _freeze(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    return v


@dataclass(frozen=True)
class Operation:
    """A completed (or indeterminate) register operation. ``ret`` is +inf for info ops."""

    id: int
    process: Any
    f: str
    key: str
    value: Any            # write: value; cas: (expected, new); read: value read
    call: float
    ret: float
    serializable: bool = False

    @property
    def info(self) -> bool:
        return math.isinf(self.ret)

    def describe(self) -> str:
        arg = {"read": f"-> {self.value!r}", "write": f"{self.value!r}",
               "cas": f"{self.value[0]!r} -> {self.value[1]!r}" if isinstance(self.value, tuple) else repr(self.value)}
        ret = "?" if self.info else f"{self.ret:g}"
        return f"p{self.process} {self.f} {arg[self.f]} [{self.call:g}, {ret}]"


def pair_operations(events: Iterable[EtcdOp]) -> dict[str, list[Operation]]:
    """Invoke/completion events -> operations per key (fail ops and info reads dropped).
    A completion without a pending invoke, or a second invoke while one is pending, raises
    HistoryError (a process is single-threaded)."""
    pending: dict[Any, EtcdOp] = {}
    out: dict[str, list[Operation]] = {}
    n = 0

    def add(inv: EtcdOp, ret: float, value: Any) -> None:
        nonlocal n
        out.setdefault(inv.key, []).append(
            Operation(n, inv.process, inv.f, inv.key, _freeze(value), inv.t, ret, inv.serializable))
        n += 1

    for ev in sorted(events, key=lambda e: e.t):
        if ev.op_type == "invoke":
            if ev.process in pending:
                raise HistoryError(f"etcd history: process {ev.process} invoked {ev.f} at t={ev.t:g} while its "
                                   f"{pending[ev.process].f} from t={pending[ev.process].t:g} is still pending")
            pending[ev.process] = ev
            continue
        inv = pending.pop(ev.process, None)
        if inv is None or (inv.f, inv.key) != (ev.f, ev.key):
            raise HistoryError(f"etcd history: {ev.op_type} {ev.f} {ev.key} by process {ev.process} at "
                               f"t={ev.t:g} does not complete a pending invoke")
        if ev.op_type == "fail" or (ev.op_type == "info" and inv.f == "read"):
            continue
        if ev.op_type == "ok":
            add(inv, ev.t, ev.value if inv.f == "read" else inv.value)
        else:
            add(inv, math.inf, inv.value)
    for inv in pending.values():           # never completed: unknown outcome
        if inv.f != "read":
            add(inv, math.inf, inv.value)
    return out


def _step(state: Any, op: Operation) -> tuple[bool, Any]:
    if op.f == "read":
        return op.value == state, state
    if op.f == "write":
        return True, op.value
    expected, new = op.value
    return state == expected, new


@dataclass(frozen=True)
class KeyResult:
    key: str
    valid: bool | None            # None: search budget exhausted ("unknown")
    ops: int                      # searched (after dropping unobserved info writes)
    info_ops: int                 # info writes/cas in the history (before pruning)
    steps: int
    witness: Mapping[str, Any] = field(default_factory=dict)   # when not linearizable


def _written(op: Operation) -> Any:
    return op.value if op.f == "write" else op.value[1]


def prune_unobserved_info(ops: list[Operation]) -> list[Operation]:
    """Drop info writes/cas whose written value nobody observes (no ok read returns it, no
    remaining cas expects it), to a fixed point. Sound: in a linearization that includes
    such an op, the ops right after it cannot depend on its value, so removing it keeps
    the linearization valid; and an info op may always be left out. This keeps the usual
    partition history (many timed-out writes nobody read) cheap to search."""
    kept = list(ops)
    while True:
        observed = {o.value for o in kept if o.f == "read"} | {o.value[0] for o in kept if o.f == "cas"}
        nxt = [o for o in kept if not (o.info and o.f != "read" and _written(o) not in observed)]
        if len(nxt) == len(kept):
            return kept
        kept = nxt


_NIL = -1     # the end of the event list


class _EventList:
    """One key's calls and returns sorted by time (calls before returns at equal times), as a
    doubly-linked list: node 0 is the head, nodes 1..2n the events. A call can be lifted out
    together with its return (when linearized) and put back (when backtracking)."""

    def __init__(self, ops: list[Operation]):
        n = len(ops)
        events = sorted([(o.call, 0, i) for i, o in enumerate(ops)] + [(o.ret, 1, i) for i, o in enumerate(ops)])
        size = 2 * n + 1
        self.nxt, self.prv = [0] * size, [0] * size
        self.node_op, self.is_call, self.match = [0] * size, [False] * size, [0] * size
        ret_node = [0] * n
        for pos, (_, kind, i) in enumerate(events, 1):
            self.node_op[pos], self.is_call[pos] = i, kind == 0
            if kind == 1:
                ret_node[i] = pos
        for pos in range(1, size):
            if self.is_call[pos]:
                self.match[pos] = ret_node[self.node_op[pos]]
        for pos in range(size):
            self.nxt[pos] = pos + 1 if pos + 1 < size else _NIL
            self.prv[pos] = pos - 1

    def lift(self, c: int) -> None:
        nxt, prv = self.nxt, self.prv
        for x in (c, self.match[c]):
            nxt[prv[x]] = nxt[x]
            if nxt[x] != _NIL:
                prv[nxt[x]] = prv[x]

    def unlift(self, c: int) -> None:
        nxt, prv = self.nxt, self.prv
        for x in (self.match[c], c):
            nxt[prv[x]] = x
            if nxt[x] != _NIL:
                prv[nxt[x]] = x


class _Search:
    """The WGL search's state over one key's (pruned) operations: the register, the set of
    linearized ops as a bit mask, the stack of linearized calls, the memo of explored
    (linearized, state) pairs, and the deepest point reached (the witness on failure)."""

    def __init__(self, ops: list[Operation], initial: Any):
        self.ops, self.events = ops, _EventList(ops)
        self.state, self.linearized = _freeze(initial), 0
        self.stack: list[tuple[int, Any]] = []
        self.cache: set[tuple[int, Any]] = set()
        self.best: tuple[int, list[int], Any, int] = (-1, [], self.state, -1)
        self.remaining = sum(1 for o in ops if not o.info)
        self.steps = 0

    def run(self, max_steps: int) -> bool | None:
        """True: linearizable; False: not (see :meth:`witness`); None: ``max_steps`` exhausted."""
        ev = self.events
        entry = ev.nxt[0]
        while True:
            if self.remaining == 0:
                return True
            self.steps += 1
            if self.steps > max_steps:
                return None
            if entry == _NIL:   # cannot happen: every call has its return after it
                raise AssertionError("linearizability search ran off the event list")
            if ev.is_call[entry]:
                entry = self._try_call(entry)
                continue
            # a return whose op is not linearized yet: backtrack
            if len(self.stack) > self.best[0]:
                self.best = (len(self.stack), [ev.node_op[c] for c, _ in self.stack], self.state,
                             ev.node_op[entry])
            if not self.stack:
                return False
            entry = self._backtrack()

    def _try_call(self, entry: int) -> int:
        """Linearize the call at ``entry`` if the register allows it and the resulting
        (linearized, state) is unexplored; the next entry to look at."""
        ev = self.events
        op = self.ops[ev.node_op[entry]]
        ok, new = _step(self.state, op)
        if ok:
            bits = self.linearized | (1 << ev.node_op[entry])
            if (bits, new) not in self.cache:
                self.cache.add((bits, new))
                self.stack.append((entry, self.state))
                self.state, self.linearized = new, bits
                ev.lift(entry)
                if not op.info:
                    self.remaining -= 1
                return ev.nxt[0]
        return ev.nxt[entry]

    def _backtrack(self) -> int:
        """Undo the last linearized call; the entry after it."""
        ev = self.events
        entry, self.state = self.stack.pop()
        self.linearized &= ~(1 << ev.node_op[entry])
        ev.unlift(entry)
        if not self.ops[ev.node_op[entry]].info:
            self.remaining += 1
        return ev.nxt[entry]

    def witness(self) -> dict[str, Any]:
        ops = self.ops
        depth, path, st, stuck = self.best
        return {"linearized": [ops[i].describe() for i in path], "state": st,
                "stuck": ops[stuck].describe(),
                "explanation": f"after the longest linearizable prefix ({depth} ops, register = {st!r}), "
                               f"no order lets {ops[stuck].describe()} complete"}


def check_register(ops: list[Operation], initial: Any = None, max_steps: int = 1_000_000) -> KeyResult:
    """WGL search over one key's operations."""
    key = ops[0].key if ops else ""
    info_total = sum(1 for o in ops if o.info)
    ops = prune_unobserved_info(ops)
    search = _Search(ops, initial)
    valid = search.run(max_steps)
    if valid is None:
        return KeyResult(key, None, len(ops), info_total, search.steps,
                         {"reason": f"search budget of {max_steps} steps exhausted"})
    if valid:
        return KeyResult(key, True, len(ops), info_total, search.steps)
    return KeyResult(key, False, len(ops), info_total, search.steps, search.witness())


@dataclass(frozen=True)
class LinearizabilityVerdict:
    valid: bool                     # True only when every key is linearizable
    outcome: str                    # "linearizable" | "not linearizable" | "unknown"
    keys: int
    operations: int
    info_ops: int
    failed_keys: tuple[str, ...]
    unknown_keys: tuple[str, ...]
    results: tuple[KeyResult, ...]


def check_linearizability(events: Iterable[EtcdOp], initial: Any = None,
                          max_steps: int = 1_000_000) -> LinearizabilityVerdict:
    """Check every key independently (linearizability is compositional per object).
    ``initial``: the register's value before the history (None: key absent)."""
    per_key = pair_operations(events)
    results = tuple(check_register(ops, initial, max_steps) for _, ops in sorted(per_key.items()))
    failed = tuple(r.key for r in results if r.valid is False)
    unknown = tuple(r.key for r in results if r.valid is None)
    outcome = "not linearizable" if failed else "unknown" if unknown else "linearizable"
    return LinearizabilityVerdict(not failed and not unknown, outcome, len(results),
                                  sum(r.ops for r in results), sum(r.info_ops for r in results),
                                  failed, unknown, results)
