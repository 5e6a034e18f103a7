"""Header-based routing: Android and iPhone clients are served by different versions.

    sudo python3 experiments/header_routing.py [--quick] [--out DIR]

    "Similarly, in the bottom diagram, traffic from different systems (Android and iPhone
    here) can be redirected to different versions."

The mesh of topologies/mesh-lab.yaml (echo v1 x3, v2 x1). A VirtualService matches the
User-Agent header (topologies/mesh-lab/echo-user-agent.yaml, with echo-subsets.yaml):
``.*Android.*`` goes to subset v2, ``.*iPhone.*`` to subset v1. From c0
two open-loop streams run at the same time through c0's sidecar, one with an Android
User-Agent, one with an iPhone one. Claims: every request succeeds, 100 % of Android
requests are served by v2 and 100 % of iPhone requests by v1.
"""
from __future__ import annotations

import _bootstrap  # noqa: F401  (re-exec under the project's interpreter if needed)

from lablib.exercises import add_exercise_flag, apply_exercise
from lablib.mesh import rule_files
from lablib.tshark import V2_ANSWERS, print_tshark
from testbed.history import HistoryData
from testbed.paths import REPO
from testbed.run import Context, Experiment, plot_split, start_mesh
from testbed.run.checkers import check_availability, check_split

AGENTS = {"android": "Mozilla/5.0 (Linux; Android 14; Pixel 8)",
          "iphone": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X)"}
EXPECTED = {"android": "v2", "iphone": "v1"}
RULES = "---\n".join((REPO / "topologies" / "mesh-lab" / f).read_text()
                    for f in ("echo-subsets.yaml", "echo-user-agent.yaml"))


def configure(ap) -> None:
    ap.add_argument("--rules", nargs="+", metavar="FILE", help="Istio YAML instead of the lab's rules "
                    "(topologies/mesh-lab/echo-subsets.yaml + echo-user-agent.yaml), e.g. the rules swapped "
                    "(question 2)")
    ap.add_argument("--rate", type=float, help="requests per second per User-Agent (default quick 20, full 50)")
    ap.add_argument("--duration", type=float, help="seconds of traffic (default quick 15, full 60)")
    add_exercise_flag(ap, "header_routing")


def run(ctx: Context) -> None:
    rate = ctx.args.rate or (20 if ctx.quick else 50)
    duration = ctx.args.duration or (15 if ctx.quick else 60)
    rules = rule_files(ctx.args.rules) if ctx.args.rules else RULES
    ctx.params.update(rate_per_agent=rate, duration_s=duration, agents=AGENTS, expected=EXPECTED,
                      rules=ctx.args.rules or ["echo-subsets.yaml", "echo-user-agent.yaml"])
    start_mesh(ctx, rules)               # returns once every sidecar has the route
    t = ctx.clock.now() + 0.5
    for name, ua in AGENTS.items():
        ctx.workload("c0", "http", rate, duration, start_s=t, name=name, url="http://echo:8080/", client=name,
                     service="echo", header={"User-Agent": ua}, timeout=5)
    for name in AGENTS:
        ctx.wait(name, duration + 20)


def analyze(ctx: Context, data: HistoryData) -> None:
    ctx.verdicts["availability"] = check_availability(data.requests, 1.0, 0.99)
    for name, version in EXPECTED.items():
        mine = [r for r in data.requests if r.client == name]
        split = check_split(mine, {version: 1})
        ctx.verdicts[f"{name} -> {version}"] = split
        served = {s.version: s.count for s in split.shares}
        ctx.metrics[name] = {"requests": len(mine), "ok": sum(r.ok for r in mine), "served": served,
                             "unexpected": dict(split.unexpected)}
        ctx.claim(f"100 % of {name} requests served by {version}",
                  bool(mine) and served.get(version, 0) == len(mine) and not split.unexpected,
                  f"{served.get(version, 0)}/{len(mine)} by {version}; others: {dict(split.unexpected) or 'none'}")
        plot_split(ctx.out / f"split-{name}.png", split, title=f"{name} User-Agent", requests=mine)
    print_tshark(ctx, "c0-eth0.pcapng", ['http.request && http.user_agent contains "Android"',
                                         V2_ANSWERS])
    apply_exercise(ctx, data)


EXPERIMENT = Experiment("header_routing", __doc__, REPO / "topologies" / "mesh-lab.yaml", run, analyze, configure)

if __name__ == "__main__":
    raise SystemExit(EXPERIMENT.main())
