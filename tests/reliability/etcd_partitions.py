"""The registry under repeated partitions (issue 14): etcd e1..e3 of topologies/etcd-split.yaml,
cut and healed again and again -- the leader isolated, random halves, a bridge (two halves
and one member that sees both), in turn -- while clients c1 and c2 (each seeing every
member, in opposite orders) write unique values to one key and read it back (linearizable
and serializable reads).

    sudo python3 tests/reliability/etcd_partitions.py [--cycles N] [--cut-s S] [--heal-s S] [--out DIR]

Claims: the history of linearizable operations is linearizable (testbed.run.checkers);
no acknowledged write is lost: after the last heal, etcd's own record of the key (a watch
from revision 1: every put it committed) holds the value of every write it acknowledged;
every member ends with the same value; writes were acknowledged in every heal.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[2] / p) for p in ("", "experiments")]

from lablib import etcd_ops  # noqa: E402  (after the path set-up: run as a script)
from testbed.faults import Partition, complete  # noqa: E402
from testbed.faults.grudge import bridge, random_halves  # noqa: E402
from testbed.history import HistoryData  # noqa: E402
from testbed.paths import REPO  # noqa: E402
from testbed.run import Context, Experiment, start_mesh  # noqa: E402
from testbed.run.checkers.linearizability import check_linearizability  # noqa: E402

KEY = "/minimesh/partitions"
KINDS = ("isolate-leader", "halves", "bridge")


def configure(ap) -> None:
    ap.add_argument("--cycles", type=int, default=10, help="partition/heal cycles (default 10)")
    ap.add_argument("--cut-s", type=float, default=4.0, help="seconds each partition lasts")
    ap.add_argument("--heal-s", type=float, default=4.0, help="seconds after each heal")


def _grudge(ctx: Context, kind: str, members: list[str], leader: str):
    if kind == "isolate-leader":
        return complete([[leader], [m for m in members if m != leader]])
    return random_halves(members, ctx.rng) if kind == "halves" else bridge(members, ctx.rng)


def _committed(ctx: Context, mesh, host: str) -> list[str]:
    """Every value etcd committed to KEY: a watch from revision 1 (no compaction is set)."""
    url = ",".join(mesh.etcd_endpoints)
    out, _err, _rc = ctx.tb.host(host).pexec(["timeout", "5", "etcdctl", f"--endpoints={url}", "watch", "--rev=1",
                                              KEY], env={**os.environ, "ETCDCTL_API": "3"})
    lines = out.splitlines()
    return [lines[i + 2] for i in range(len(lines) - 2) if lines[i] == "PUT" and lines[i + 1] == KEY]


def _finals(ctx: Context, mesh, host: str) -> dict[str, str]:
    out = {}
    for m, url in zip(mesh.spec.registry.members, mesh.etcd_endpoints, strict=True):
        o, _e, _rc = ctx.tb.host(host).pexec(["etcdctl", f"--endpoints={url}", "get", "--print-value-only",
                                              "--consistency=s", KEY], env={**os.environ, "ETCDCTL_API": "3"})
        out[m] = o.strip()
    return out


def run(ctx: Context) -> None:
    a = ctx.args
    cycles, cut_s, heal_s = a.cycles, a.cut_s, a.heal_s
    mesh = start_mesh(ctx)
    members = list(mesh.spec.registry.members)
    urls = dict(zip(members, mesh.etcd_endpoints, strict=True))
    total = 3.0 + cycles * (cut_s + heal_s) + 2.0
    t = ctx.clock.now() + 1.0
    for c, order in (("c1", members), ("c2", members[::-1])):
        ctx.workload(c, "etcd", 10, total, start_s=t, name=f"ops-{c}", endpoints=[urls[m] for m in order],
                     key=KEY, process=c, reads="both", timeout=1)
    nem = ctx.nemesis()
    ctx.sleep_until(t + 3.0)
    cuts = []
    for i in range(cycles):
        kind = KINDS[i % len(KINDS)]
        leader = mesh.etcd.wait_leader(10).name
        grudge = _grudge(ctx, kind, members, leader)
        nem.apply(Partition(grudge), fault_id=i).raise_for_error()
        p0 = ctx.clock.now()
        ctx.sleep_until(p0 + cut_s)
        p1 = ctx.clock.now()
        nem.revert(i)
        cuts.append({"kind": kind, "leader": leader, "start": p0, "heal": p1,
                     "grudge": {k: sorted(v) for k, v in grudge.items()}})
        ctx.sleep_until(p1 + heal_s)
    for c in ("c1", "c2"):
        ctx.wait(f"ops-{c}", total + 20)
    mesh.etcd.wait_leader(10)
    ctx.metrics.update(cuts=cuts, committed=_committed(ctx, mesh, "c1"), finals=_finals(ctx, mesh, "c1"))


def analyze(ctx: Context, data: HistoryData) -> None:
    m = ctx.metrics
    lin = ctx.verdicts["linearizability (linearizable ops)"] = check_linearizability(
        [e for e in data.etcd if not e.serializable])
    ops = [o for o in etcd_ops(data.etcd) if o["f"] == "write"]
    acked = [o["value"] for o in ops if o["outcome"] == "ok"]
    committed = set(m["committed"])
    lost = [v for v in acked if v not in committed]
    m.update(cycles=len(m["cuts"]), writes=len(ops), acknowledged=len(acked), lost=lost[:20], lost_count=len(lost),
             committed_count=len(committed),
             unknown=sum(o["outcome"] == "info" for o in ops), failed=sum(o["outcome"] == "fail" for o in ops))
    ctx.claim("no acknowledged write is lost (etcd's watch from revision 1 holds each)",
              bool(acked) and not lost, f"{len(acked)} of {len(ops)} writes acknowledged, {len(lost)} missing "
              f"from the {len(committed)} values etcd committed")
    finals = m["finals"]
    ctx.claim("every member ends with the same value", len(set(finals.values())) == 1 and "" not in finals.values(),
              f"{finals}")
    ok_after = [any(o["outcome"] == "ok" and c["heal"] + 1.0 <= o["t_invoke"] for o in ops) for c in m["cuts"]]
    ctx.claim("writes are acknowledged again after every heal", all(ok_after), f"{sum(ok_after)} of {len(m['cuts'])}")
    ctx.claim("linearizable", lin.valid is True, f"{lin.outcome}: {lin.operations} operations")


EXPERIMENT = Experiment("etcd_partitions", __doc__ or "", REPO / "topologies" / "etcd-split.yaml", run, analyze,
                        configure=configure)

if __name__ == "__main__":
    raise SystemExit(EXPERIMENT.main())
