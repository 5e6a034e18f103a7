"""etcd helpers for experiments on a deployed mesh (``mesh.etcd`` is the EtcdRunner):

    move_leader(ctx, mesh.etcd, "e1")            # who leads is known before the faults
    ops = etcd_ops(data.etcd)                    # invoke/complete pairs from the history
    events = etcd_log_events(ctx, mesh.etcd, tag)   # members' log events into the history
"""
from __future__ import annotations

import datetime
import os
import time
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from testbed.run.experiment import Context

__all__ = ["move_leader", "etcd_log_events", "etcd_ops", "read_plan", "PLAN_KEYS"]


def move_leader(ctx: Context, runner: Any, name: str, timeout_s: float = 10.0) -> None:
    """Make member ``name`` the etcd leader (``etcdctl move-leader``, run in the current
    leader's host) so that who leads is known in advance; recorded as an ``etcd``/``leader``
    event. Raises with etcdctl's words if the transfer does not happen within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        leader = runner.wait_leader(max(0.5, deadline - time.monotonic()))
        if leader.name == name:
            ctx.event("etcd", "leader", leader=name, moved=True)
            return
        target = runner.cluster.member(name)
        r = ctx.tb.host(leader.run_on).pexec(["etcdctl", f"--endpoints={leader.client_url}", "move-leader",
                                               f"{runner.cluster.member_id(target):x}"],
                                              env={**os.environ, "ETCDCTL_API": "3"})
        if time.monotonic() > deadline:
            raise RuntimeError(f"etcd leadership did not move from {leader.name} to {name} within "
                               f"{timeout_s:g} s: {r[0].strip()} {r[1].strip()}")
        time.sleep(0.2)


def etcd_log_events(ctx: Context, runner: Any, tag: str) -> list[Any]:
    """Each member's log events (heartbeat_late, slow_request, leader, lost_leader,
    campaign) appended to the history as ``event`` records (source etcd:<member>, run
    time from the log's timestamp); returns them."""
    assert ctx.history is not None
    out = []
    for m in runner.cluster.members:
        for ev in runner.cluster.read_log(m):
            try:
                wall = datetime.datetime.fromisoformat(ev.ts.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
            leader = runner.cluster.member_by_id(ev.leader) if ev.leader else None
            rec = ctx.history.event(f"etcd:{m.name}", ev.kind, t=wall - ctx.clock.wall0, config=tag, term=ev.term,
                                    leader=leader.name if leader else ev.leader, detail=ev.detail)
            out.append(rec)
    return out


def etcd_ops(events: Sequence[Any]) -> list[dict[str, Any]]:
    """Completed etcd operations from history events: one dict per invoke with process, f,
    value, t_invoke, t_done (None: never completed), outcome (ok | fail | info | None)."""
    open_: dict[Any, dict[str, Any]] = {}
    ops: list[dict[str, Any]] = []
    for e in events:
        if e.op_type == "invoke":
            op = {"process": e.process, "f": e.f, "key": e.key, "value": e.value, "t_invoke": e.t,
                  "t_done": None, "outcome": None, "error": None, "serializable": e.serializable}
            open_[e.process] = op
            ops.append(op)
        elif e.process in open_:
            op = open_.pop(e.process)
            op.update(t_done=e.t, outcome=e.op_type, error=e.error)
            if e.f == "read":
                op["value"] = e.value
    return ops


PLAN_KEYS = {"delays_ms": "growing one-way delays on the leader's link, ms (list)",
             "step_s": "seconds per growing step", "jump_ms": "the final jump's delay, ms (0: no jump)",
             "jump_s": "seconds of the jump", "heartbeat_ms": "etcd heartbeat interval (a 'custom' config)",
             "election_ms": "etcd election timeout (a 'custom' config)", "leader": "the delayed leader: e1, e2 or e3",
             "pilot_etcd": "members Pilot may use (list, or 'all')", "cp_delay_ms": "delay on cp's link during "
             "the growing steps, ms", "expect_write_p50_ms": "your measured write p50 at the largest delay "
             "(graded by `minimesh lab check etcd_leader_latency no-election`)"}


def read_plan(path: str | os.PathLike) -> dict[str, Any]:
    """The plan file of experiments/etcd_leader_latency.py (``--plan FILE``): YAML mapping with
    keys of :data:`PLAN_KEYS`. Raises ValueError ``file:line: key: what is allowed``."""
    import yaml   # late: only a run with --plan reads YAML here

    text = open(path, encoding="utf-8").read()
    try:
        node = yaml.compose(text)
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not YAML: {e}") from None
    if node is None or not isinstance(node, yaml.MappingNode):
        raise ValueError(f"{path}:1: a plan is a YAML mapping with keys {', '.join(PLAN_KEYS)}")
    plan: dict[str, Any] = {}
    for k, v in node.value:
        where = f"{path}:{k.start_mark.line + 1}: {k.value}"
        if k.value not in PLAN_KEYS:
            raise ValueError(f"{where}: unknown key; allowed: {', '.join(PLAN_KEYS)}")
        value = yaml.safe_load(yaml.serialize(v))
        if k.value in ("delays_ms", "pilot_etcd") and not isinstance(value, (list, str)):
            raise ValueError(f"{where}: a list, got {value!r}")
        if k.value in ("delays_ms",) and not all(isinstance(x, (int, float)) and x >= 0 for x in value):
            raise ValueError(f"{where}: delays are numbers >= 0 (ms), got {value!r}")
        if k.value not in ("delays_ms", "pilot_etcd", "leader") and (
                not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0):
            raise ValueError(f"{where}: {PLAN_KEYS[k.value]}: a number >= 0, got {value!r}")
        if k.value == "leader" and value not in ("e1", "e2", "e3"):
            raise ValueError(f"{where}: allowed e1, e2, e3, got {value!r}")
        plan[k.value] = value
    return plan
