"""Split brain in the service registry of a running mesh: cut etcd in two, with the leader,
Pilot, one instance and one client on the minority side.

    sudo python3 experiments/registry_split_brain.py [--quick] [--out DIR] [--seed N]

    "Etcd [...] can handle multiple node failures and split-brain networks. Etcd is a Raft
    based system and can handle all issues that Raft can."

The mesh of topologies/etcd-split.yaml: etcd e1..e3 (leader moved to e1), Pilot on cp, echo
instances echo-v1-0 on h1 and echo-v1-1 on h2 (3 s leases), client sidecars on c1 and c2;
topologies/etcd-split/rules.yaml gives echo a 1 s connect timeout, outlier detection, and
3 retries unless a request says "x-retries: off". Workloads from both clients for the whole
run: HTTP through the sidecar (with and without retries), etcd writes + linearizable and
serializable reads; a registry observer on c1 lists the registry through the majority
members. Then {e1, cp, h2, c2} is cut from {e2, e3, h1, c1} (a complete grudge) and healed.
Claims: linearizable; no minority write acknowledged, the majority keeps writing, stale
serializable reads counted; echo-v1-1, alive, expires on the majority; Pilot flags its watch
and keeps its last snapshot; c2's sidecar keeps routing to the removed echo-v1-1; each client
is answered only on its own side, retries hide the dead half, no retries fail until the
ejection; after the heal everything converges.
"""
from __future__ import annotations

import _bootstrap  # noqa: F401  (re-exec under the project's interpreter if needed)

from lablib.tshark import print_tshark
from dataclasses import replace

from lablib import (NO_RETRIES, Sides, etcd_claims, move_leader, pilot_claims, pilot_watcher, plot_sides,
                    registry_claims, routing_claims)
from testbed.faults import Partition, complete
from testbed.history import HistoryData
from testbed.paths import REPO
from testbed.run import Context, Experiment, start_mesh, wait_for_config

MINORITY = ["e1", "cp", "h2", "c2"]           # e1 is made the leader before the cut
MAJORITY = ["e2", "e3", "h1", "c1"]
SIDES = Sides(minority_client="c2", majority_client="c1", minority_instance="echo-v1-1",
              majority_instance="echo-v1-0")
URL = "http://echo:8080/"
HTTP_RATE, ETCD_RATE = 10, 5


def configure(ap) -> None:
    ap.add_argument("--pilot-side", choices=("minority", "majority"), default="minority",
                    help="the side of the cut Pilot (cp) is on (default minority; question 3)")
    ap.add_argument("--ttl-s", type=int, help="the registry's lease TTL (topology's by default; question 6)")


def sides(ctx: Context) -> tuple[list[str], list[str]]:
    if ctx.args.pilot_side == "minority":
        return MINORITY, MAJORITY
    return [h for h in MINORITY if h != "cp"], MAJORITY + ["cp"]


def run(ctx: Context) -> None:
    before, cut_s, after = (4.0, 12.0, 16.0) if ctx.quick else (10.0, 30.0, 25.0)
    minority, majority = sides(ctx)
    ctx.params.update(before_s=before, cut_s=cut_s, after_s=after, minority=minority, majority=majority)
    spec = ctx.topology.sections["mesh"]
    if ctx.args.ttl_s:
        spec = replace(spec, registry=replace(spec.registry, ttl_s=ctx.args.ttl_s))
    mesh = start_mesh(ctx, spec=spec)
    move_leader(ctx, mesh.etcd, "e1")
    url = dict(zip(mesh.spec.registry.members, mesh.etcd_endpoints, strict=True))
    ctx.params["ttl_s"] = mesh.spec.registry.ttl_s
    wait_for_config(mesh, "the mesh's config", sidecars=["client@c1", "client@c2"])   # both clients route
    watcher = pilot_watcher(ctx, mesh.socket)
    total = before + cut_s + after
    t = ctx.clock.now() + 1.0
    order = {"c1": [url[m] for m in ("e2", "e3", "e1")], "c2": [url[m] for m in ("e1", "e2", "e3")]}
    ctx.workload("c1", "registry", 1, total + 2, start_s=t - 1, name="observer", endpoints=order["c1"][:2],
                 observe=0.5, timeout=1)
    for c in ("c1", "c2"):
        ctx.workload(c, "etcd", ETCD_RATE, total, start_s=t, name=f"ops-{c}", endpoints=order[c],
                     key="/minimesh/split", process=c, reads="both", timeout=1)
        ctx.workload(c, "http", HTTP_RATE, total, start_s=t, name=f"http-{c}", url=URL, client=c,
                     service="echo", timeout=5)
        ctx.workload(c, "http", HTTP_RATE / 2, total, start_s=t, name=f"plain-{c}", url=URL,
                     client=c + NO_RETRIES, service="echo", timeout=5, header={"x-retries": "off"})
    nem = ctx.nemesis()
    ctx.sleep_until(t + before)
    nem.apply(Partition(complete([minority, majority])), fault_id=0).raise_for_error()
    p0 = ctx.clock.now()
    ctx.sleep_until(t + before + cut_s)
    p1 = ctx.clock.now()                      # the heal starts: from here on, some links are back
    nem.revert(0)
    ctx.metrics.update(partition=[p0, p1], healed=ctx.clock.now(), end=t + total)
    for name in ("observer", "ops-c1", "ops-c2", "http-c1", "http-c2", "plain-c1", "plain-c2"):
        ctx.wait(name, total + 20)
    watcher.stop()


def analyze(ctx: Context, data: HistoryData) -> None:
    p0, p1 = ctx.metrics["partition"]         # fully cut in [p0, p1]; "after the heal" counts from p1
    etcd_claims(ctx, data, SIDES, p0, p1)
    registry_claims(ctx, data, SIDES, p0, p1, ctx.params["ttl_s"])
    print_tshark(ctx, "c2-eth0.pcapng", ["http.response.code >= 500", "tcp.flags.syn == 1 && tcp.flags.ack == 0",
                                         ("tcp.port == 2379 && http.request", ("-d", "tcp.port==2379,http"))])
    pilot_claims(ctx, data, SIDES, p0, p1)
    routing_claims(ctx, data, SIDES, p0, p1, ctx.metrics["end"])
    plot_sides(ctx.out / "sides.png", data, SIDES, p0, p1)


EXPERIMENT = Experiment("registry_split_brain", __doc__, REPO / "topologies" / "etcd-split.yaml", run, analyze,
                        configure)

if __name__ == "__main__":
    raise SystemExit(EXPERIMENT.main())
