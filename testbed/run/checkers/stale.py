"""Stale reads: a read that returns a value already overwritten by an acknowledged write
before the read started.

Definition (per key, values assumed unique per key, as in Jepsen register tests): a read
``r`` (ok, value v, interval [r.call, r.ret]) is *stale* when some acknowledged write ``w``
(ok write, or ok cas, writing u != v) finished before r started (``w.ret < r.call``) and v
is definitely older than w: every operation that could have written v finished before w
was invoked (``ret < w.call``), or nothing wrote v and v is the initial value. A value
written by an info (indeterminate) op is never called older. Stale serializable reads
(served by any member, possibly a partitioned one) are allowed by etcd and counted apart;
a stale linearizable read is a bug and makes the verdict invalid.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from testbed.run.checkers.linearizability import _freeze, _written, pair_operations
from testbed.history import EtcdOp

__all__ = ["StaleReadsVerdict", "check_stale_reads"]


@dataclass(frozen=True)
class StaleReadsVerdict:
    valid: bool                  # no stale linearizable read
    reads: int
    serializable_reads: int
    stale_serializable: int
    stale_linearizable: int
    examples: tuple[str, ...]    # up to 10, "read ... after acknowledged write ..."


def check_stale_reads(events: Iterable[EtcdOp], initial: Any = None) -> StaleReadsVerdict:
    initial = _freeze(initial)
    reads = ser = stale_ser = stale_lin = 0
    examples: list[str] = []
    for key, ops in sorted(pair_operations(events).items()):
        writers = [o for o in ops if o.f in ("write", "cas")]
        acked = [o for o in writers if not o.info]
        for r in (o for o in ops if o.f == "read"):
            reads += 1
            ser += r.serializable
            sources = [w for w in writers if _written(w) == r.value]
            if not sources and r.value != initial:
                continue   # a value nobody wrote: the linearizability checker reports it
            newer = None
            for w in acked:
                if w.ret < r.call and _written(w) != r.value and all(s.ret < w.call for s in sources):
                    newer = w
                    break
            if newer is None:
                continue
            if r.serializable:
                stale_ser += 1
            else:
                stale_lin += 1
            if len(examples) < 10:
                examples.append(f"{key}: {r.describe()}{' (serializable)' if r.serializable else ''} "
                                f"after acknowledged {newer.describe()}")
    return StaleReadsVerdict(stale_lin == 0, reads, ser, stale_ser, stale_lin, tuple(examples))
