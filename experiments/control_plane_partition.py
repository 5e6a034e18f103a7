"""Cut the sidecars off from the control plane: traffic keeps flowing on the last config,
and a change applied during the cut arrives after the heal.

    sudo python3 experiments/control_plane_partition.py [--quick] [--out DIR]

    "Note that the Istio control plane is completely out of the data path in the traffic
    flow."

The mesh of topologies/mesh-lab.yaml; a VirtualService sends all echo traffic to v1. Client
c0 sends an open-loop stream through its sidecar for the whole run. Then every sidecar host
(c0, h1..h4) is cut from Pilot's host cp (a mesh-aware partition: the registry and the data
plane stay connected). During the cut the route is changed to send everything to v2
(applied to Pilot, which accepts it; topologies/mesh-lab/echo-all-v1.yaml, then
echo-all-v2.yaml). After the heal the sidecars reconnect and get it.
Claims: >= 99 % of requests succeed in every second, cut included; no request reaches v2
before the heal; after the heal v2 takes over within 15 s and then serves everything.
"""
from __future__ import annotations

import _bootstrap  # noqa: F401  (re-exec under the project's interpreter if needed)

from lablib.tshark import print_tshark
from testbed.faults import Partition, control_plane_cut
from testbed.history import HistoryData
from testbed.paths import REPO
from testbed.run import Context, Experiment, start_mesh
from testbed.run.checkers import check_availability

RULES = REPO / "topologies" / "mesh-lab"
SUBSETS = (RULES / "echo-subsets.yaml").read_text()


def route(subset: str) -> str:
    """The echo subsets and echo-all-<subset>.yaml: all echo traffic to ``subset``."""
    return SUBSETS + "---\n" + (RULES / f"echo-all-{subset}.yaml").read_text()


SIDECARS = ["c0", "h1", "h2", "h3", "h4"]


def run(ctx: Context) -> None:
    before, cut_s, after = (4.0, 12.0, 16.0) if ctx.quick else (10.0, 60.0, 30.0)
    ctx.params.update(before_s=before, cut_s=cut_s, after_s=after, change_at_s=cut_s / 3)
    mesh = start_mesh(ctx, route("v1"))     # returns once every sidecar has the route
    t = ctx.clock.now() + 0.3
    ctx.workload("c0", "http", 20, before + cut_s + after, start_s=t, url="http://echo:8080/", client="c0",
                 service="echo", timeout=5)
    nem = ctx.nemesis()
    ctx.sleep_until(t + before)
    roles = {"sidecars": SIDECARS, "control": [mesh.spec.control_plane], "registry": list(mesh.spec.registry.members)}
    nem.apply(Partition(control_plane_cut(roles)), fault_id=0).raise_for_error()
    cut_t = ctx.clock.now()
    ctx.sleep_until(cut_t + cut_s / 3)
    mesh.apply_text(route("v2"), "route-v2.yaml")
    change_t = ctx.clock.now()
    ctx.event("experiment", "config_applied", route="v2")
    ctx.sleep_until(cut_t + cut_s)
    nem.revert(0)
    ctx.metrics.update(cut_t=cut_t, change_t=change_t, heal_t=ctx.clock.now(), end_t=t + before + cut_s + after)
    ctx.wait("workload", after + 20)


def analyze(ctx: Context, data: HistoryData) -> None:
    m = ctx.metrics
    reqs = sorted(data.requests, key=lambda r: r.t_start)
    ctx.verdicts["availability (1 s windows >= 99 %)"] = check_availability(reqs, 1.0, 0.99)
    print_tshark(ctx, "c0-eth0.pcapng", ["tcp.port == 15010 && http.request", "http.response.code >= 500"])
    early_v2 = [r for r in reqs if r.version == "v2" and r.t_end < m["heal_t"]]
    cut = [r for r in reqs if m["cut_t"] <= r.t_start < m["heal_t"]]
    ctx.claim("traffic keeps flowing on the last config during the cut",
              bool(cut) and all(r.ok for r in cut) and not early_v2,
              f"{sum(r.ok for r in cut)}/{len(cut)} requests ok during the cut, all by "
              f"{sorted({r.version for r in cut})}; v2 before the heal: {len(early_v2)}")
    first_v2 = next((r for r in reqs if r.version == "v2"), None)
    delay = first_v2.t_start - m["heal_t"] if first_v2 else None
    later = [r for r in reqs if first_v2 and r.t_start > first_v2.t_end + 1.0 and r.ok]
    m.update(change_arrived_after_heal_s=round(delay, 2) if delay is not None else None,
             v2_share_after=sum(r.version == "v2" for r in later) / len(later) if later else None)
    ctx.claim("the change applied during the cut arrives after the heal (<= 15 s) and sticks",
              delay is not None and 0 <= delay <= 15 and m["v2_share_after"] == 1.0,
              f"first v2 answer {m['change_arrived_after_heal_s']} s after the heal; then v2 served "
              f"{m['v2_share_after']} of requests")
    acks = [e.t for e in data.events if e.source == "pilot" and e.kind == "ack" and e.t > m["change_t"]
            and "client" in str(e.details.get("node", ""))]
    m["client_ack_after_change_s"] = round(acks[0] - m["heal_t"], 2) if acks else None   # vs the heal


EXPERIMENT = Experiment("control_plane_partition", __doc__, REPO / "topologies" / "mesh-lab.yaml", run, analyze)

if __name__ == "__main__":
    raise SystemExit(EXPERIMENT.main())
