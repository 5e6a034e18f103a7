"""Split brain in the service registry: partition the etcd cluster, a client on each side.

    sudo python3 experiments/registry_split_brain.py [--quick] [--out DIR] [--seed N]

    "Etcd [...] can handle multiple node failures and split-brain networks. Etcd is a Raft
    based system and can handle all issues that Raft can."

Three etcd members e1..e3 (default timeouts). Clients c1 and c2 write unique values to one
key and read it back, linearizable and serializable, at a fixed rate; each also keeps a
service instance registered with a 3 s lease (c2's talks only to its local member, as a
sidecar would); c1 lists the registry every 0.5 s. Then the *leader* and c2 are cut off
from the rest (a complete grudge) for a while, and healed. Claims: every linearizable
operation is linearizable (Wing-Gong checker); no write is acknowledged on the minority; the
majority keeps accepting writes; serializable reads on the minority return stale values and
no linearizable read does; the minority-registered instance, although alive, disappears from
the registry when its lease expires and comes back after the heal; c2 writes again after it.
Pilot runs on c2 (the minority): its registry watch fails (hasleader) instead of serving stale
data silently, it keeps its last snapshot (inst-c2 included) and recovers after the heal.
"""
from __future__ import annotations

import _bootstrap  # noqa: F401  (re-exec under the project's interpreter if needed)

from testbed.checkers import check_linearizability, check_stale_reads
from testbed.experiment import REPO, Context, Experiment, etcd_ops, start_etcd
from testbed.experiment_mesh import PilotWatcher, start_pilot
from testbed.faults import Partition
from testbed.faults_grudge import complete

MEMBERS = ("e1", "e2", "e3")
TTL_S = 3


def run(ctx: Context) -> None:
    before, cut_s, after = (5.0, 12.0, 8.0) if ctx.quick else (10.0, 30.0, 20.0)
    runner = start_etcd(ctx, MEMBERS, "split")
    leader = runner.wait_leader(10).name
    rest = [m for m in MEMBERS if m != leader]
    url = {m.name: m.client_url for m in runner.cluster.members}
    ctx.event("etcd", "leader", leader=leader)
    ctx.names.update({ctx.tb.ip("c1"): "client-majority", ctx.tb.ip("c2"): "client-minority/pilot"})
    # Pilot on the minority host, its own side's member first (as the mesh configures it)
    start_pilot(ctx, runner, "c2", "split", [url[leader]] + [url[m] for m in rest])
    watcher = PilotWatcher(ctx, "split").start()
    total = before + cut_s + after
    t = ctx.clock.now() + 1.0
    order = {"c1": rest + [leader], "c2": [leader] + rest}
    for c in ("c1", "c2"):
        ctx.workload(c, "etcd", 5, total, start_s=t, name=f"ops-{c}", endpoints=[url[m] for m in order[c]],
                     key="/minimesh/split", process=c, reads="both", timeout=1)
    ctx.workload("c2", "registry", 1, total + 2, start_s=t - 1, name="reg-c2", endpoints=[url[leader]],
                 register="reviews/v1/inst-c2", ttl=TTL_S, timeout=1)
    ctx.workload("c1", "registry", 1, total + 2, start_s=t - 1, name="reg-c1", endpoints=[url[m] for m in rest],
                 register="reviews/v1/inst-c1", ttl=TTL_S, observe=0.5, timeout=1)
    nem = ctx.nemesis()
    ctx.sleep_until(t + before)
    fault = Partition(complete([[leader, "c2"], rest + ["c1"]]))
    nem.apply(fault, fault_id=0).raise_for_error()
    p0 = ctx.clock.now()
    ctx.sleep_until(t + before + cut_s)
    p1 = ctx.clock.now()                      # the heal starts: from here on, some links are back
    nem.revert(0)
    ctx.metrics.update(leader=leader, partition=[p0, p1], healed=ctx.clock.now(), minority=[leader, "c2"],
                       majority=rest + ["c1"])
    for name in ("ops-c1", "ops-c2", "reg-c1", "reg-c2"):
        ctx.wait(name, total + 15)
    watcher.stop()


def analyze(ctx: Context, data) -> None:
    p0, p1 = ctx.metrics["partition"]         # fully cut in [p0, p1]; healed from "healed" on
    healed = ctx.metrics["healed"]
    lin = [e for e in data.etcd if not e.serializable]
    ctx.verdicts["linearizability (linearizable ops)"] = check_linearizability(lin)
    stale = check_stale_reads(data.etcd)
    ctx.verdicts["stale reads"] = stale
    ops = etcd_ops(data.etcd)
    writes = lambda c, a, b: [o for o in ops if o["f"] == "write" and str(o["process"]).startswith(c + "-")  # noqa: E731
                              and a <= o["t_invoke"] < b]
    minority = writes("c2", p0 + 0.2, p1)
    outcomes = {k: sum(o["outcome"] == k for o in minority) for k in ("ok", "fail", "info")}
    acked = sum(o["outcome"] == "ok" and o["t_done"] < p1 for o in minority)   # later: after the heal
    ctx.claim("no write acknowledged on the minority during the partition",
              bool(minority) and acked == 0,
              f"{len(minority)} writes from c2: {outcomes['fail']} failed, {outcomes['info']} unknown outcome, "
              f"{acked} acknowledged during the partition ({outcomes['ok'] - acked} after the heal)", **outcomes)
    major = writes("c1", p0 + 3.0, p1)
    ok_share = sum(o["outcome"] == "ok" for o in major) / len(major) if major else 0.0
    ctx.claim("the majority keeps accepting writes (>= 90 % from 3 s after the cut)", ok_share >= 0.9,
              f"{ok_share:.0%} of {len(major)} writes from c1 acknowledged")
    ctx.claim("serializable reads on the minority are stale (and counted)", stale.stale_serializable > 0,
              f"{stale.stale_serializable} stale of {stale.serializable_reads} serializable reads; "
              f"{stale.stale_linearizable} stale linearizable reads")
    obs = [e for e in data.events if e.source == "observer"]
    removed = [e.t for e in obs if e.kind == "endpoint_removed" and e.details.get("instance") == "inst-c2"]
    readded = [e.t - healed for e in obs if e.kind == "endpoint_added" and e.details.get("instance") == "inst-c2"
               and e.t > p1]               # delays after the heal count from its end
    lost_c1 = [e.t for e in obs if e.kind == "endpoint_removed" and e.details.get("instance") == "inst-c1"]
    expired = [t for t in removed if p0 <= t <= healed]
    ctx.metrics.update(lease_expired_after_s=round(expired[0] - p0, 2) if expired else None,
                       reregistered_after_heal_s=round(readded[0], 2) if readded else None)
    # TTL after the last keep-alive (sent every TTL/3), plus the election timeout by which a new
    # leader extends every lease, plus the observer's 0.5 s period: within TTL + 5 s
    ctx.claim(f"the live minority instance's lease ({TTL_S} s) expires during the partition",
              bool(expired) and expired[0] - p0 <= TTL_S + 5 and not lost_c1,
              f"inst-c2 removed {ctx.metrics['lease_expired_after_s']} s after the cut; "
              f"inst-c1 (majority) removed {len(lost_c1)} times")
    pilot_claims(ctx, data, p0, p1, healed)
    recovered = [o["t_invoke"] - healed for o in ops if o["f"] == "write" and str(o["process"]).startswith("c2-")
                 and o["t_invoke"] >= p1 and o["outcome"] == "ok"]
    ctx.metrics["minority_writes_after_heal_s"] = round(recovered[0], 2) if recovered else None
    ctx.claim("heal: inst-c2 re-registered and c2 writes again within 10 s",
              bool(readded) and readded[0] <= 10 and bool(recovered) and recovered[0] <= 10,
              f"inst-c2 back {ctx.metrics['reregistered_after_heal_s']} s after the heal; first acknowledged "
              f"c2 write {ctx.metrics['minority_writes_after_heal_s']} s after it")


def pilot_claims(ctx: Context, data, p0: float, p1: float, healed: float) -> None:
    disc = [e for e in data.events if e.source == "pilot" and e.kind == "discovery"]
    down = [e.t - p0 for e in disc if not e.details["healthy"] and p0 <= e.t <= p1]
    up = [e.t - healed for e in disc if e.details["healthy"] and e.t > p1]
    during = [e for e in disc if e.t <= p1]
    served = during[-1].details["endpoints"] if during else []   # what Pilot served at the end of the cut
    ctx.metrics.update(pilot_unhealthy_after_s=round(down[0], 2) if down else None,
                       pilot_healthy_after_heal_s=round(up[0], 2) if up else None, pilot_served_at_heal=served,
                       pilot_discovery=[(round(e.t, 2), e.details["healthy"], e.details["endpoints"]) for e in disc])
    ctx.claim("Pilot on the minority flags its registry watch as failed (hasleader) within 5 s of the cut,"
              " healthy again within 10 s of the heal", bool(down) and down[0] <= 5 and bool(up) and up[0] <= 10,
              f"unhealthy {ctx.metrics['pilot_unhealthy_after_s']} s after the cut, healthy "
              f"{ctx.metrics['pilot_healthy_after_heal_s']} s after the heal")
    # the registry (majority's observer) removed inst-c2; how long did Pilot go on serving it?
    obs = [e for e in data.events if e.source == "observer" and e.details.get("instance") == "inst-c2" and e.t >= p0]
    gone = next((e.t for e in obs if e.kind == "endpoint_removed"), None)
    back = next((e.t for e in obs if e.kind == "endpoint_added" and gone is not None and e.t > gone), None)
    dropped = [e.t for e in disc if gone is not None and e.t >= gone and "inst-c2" not in e.details["endpoints"]]
    ctx.metrics.update(pilot_dropped_inst_c2=bool(dropped), pilot_served_removed_s=round(
        (min(dropped + [back]) if back else ctx.metrics["healed"]) - gone, 2) if gone else None)
    ctx.claim("meanwhile Pilot keeps its last snapshot (inst-c2, expired on the majority, still served)",
              "inst-c2" in served, f"Pilot's endpoints at the end of the cut: {served}; it served inst-c2 for "
              f"{ctx.metrics['pilot_served_removed_s']} s after the registry removed it, "
              f"{'then dropped it' if dropped else 'never dropped it (re-registered before Pilot relisted)'}")


EXPERIMENT = Experiment("registry_split_brain", __doc__, REPO / "topologies" / "etcd3.yaml", run, analyze)

if __name__ == "__main__":
    raise SystemExit(EXPERIMENT.main())
