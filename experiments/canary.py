"""Canary release: 5 % of the traffic to echo goes to the new version v2.

    sudo python3 experiments/canary.py [--quick] [--out DIR] [--weight 5]

    "In the top diagram, 5% of all traffic between SvcA and SvcB is routed to a canary
    version SvcB' (a canary version is a newly updated version that still needs to be
    tested)."

The mesh of topologies/mesh-lab.yaml runs (echo v1 x3, v2 x1, each with its sidecar; etcd;
Pilot). A VirtualService sends ``weight`` % to subset v2, the rest to v1 (the rule files
topologies/mesh-lab/echo-subsets.yaml and echo-weights.yaml, with the weights set). Client
c0 sends an open-loop stream to http://echo:8080/ through its sidecar; each answer says
which version served it. Claims: every request succeeds; the observed v2 share's 99.9 % Wilson interval
contains the configured share, and an exact binomial test does not reject it (p >= 0.001):
at that level a correct split fails the check about once in a thousand runs.
"""
from __future__ import annotations

import _bootstrap  # noqa: F401  (re-exec under the project's interpreter if needed)

import argparse

import yaml

from lablib.mesh import with_replicas
from lablib.tshark import V2_ANSWERS, print_tshark

from testbed.history import HistoryData
from testbed.paths import REPO
from testbed.run import Context, Experiment, plot_split, start_mesh
from testbed.run.checkers import check_availability, check_split

WORKLOAD_HEADER = "x-minimesh-workload"    # lower case, as the sidecar forwards header names (tshark matches case)
RULES = REPO / "topologies" / "mesh-lab"      # echo-subsets.yaml, echo-weights.yaml (90/10)


def rules(v2_percent: int) -> str:
    """The echo subsets and echo-weights.yaml with ``v2_percent`` % to v2, the rest to v1."""
    weights = {"v1": 100 - v2_percent, "v2": v2_percent}
    vs = yaml.safe_load((RULES / "echo-weights.yaml").read_text())
    for route in vs["spec"]["http"][0]["route"]:
        route["weight"] = weights[route["destination"]["subset"]]
    return (RULES / "echo-subsets.yaml").read_text() + "---\n" + yaml.safe_dump(vs, sort_keys=False)


def _replicas(text: str) -> dict[str, int]:
    try:
        return {k.strip(): int(v) for k, v in (x.split("=") for x in text.split(",") if x.strip())}
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: VERSION=N,... e.g. v1=1,v2=1") from None


def configure(ap) -> None:
    ap.add_argument("--weight", type=int, default=5, help="percent of traffic to v2 (default 5)")
    ap.add_argument("--rate", type=float, default=None, help="requests per second (default quick 60, full 100)")
    ap.add_argument("--duration", type=float, default=None, help="seconds of traffic (default quick 20, full 120)")
    ap.add_argument("--replicas", type=_replicas, default={}, help="replicas per version, at most the topology's "
                    "(v1=3,v2=1), e.g. v1=1,v2=1 (question 3)")


def run(ctx: Context) -> None:
    w = ctx.args.weight
    if not 0 <= w <= 100:
        raise ValueError(f"--weight {w}: allowed 0 to 100 (percent to v2)")
    rate, duration = ctx.args.rate or (60 if ctx.quick else 100), ctx.args.duration or (20 if ctx.quick else 120)
    spec = with_replicas(ctx.topology.sections["mesh"], ctx.args.replicas)
    ctx.params.update(weights={"v1": 100 - w, "v2": w}, rate=rate, duration_s=duration,
                      replicas={v.name: v.replicas for s in spec.services for v in s.versions if s.name == "echo"})
    start_mesh(ctx, rules(w), spec=spec)    # returns once every sidecar has the route
    # the header names the students' traffic in the capture: harness probes and Pilot's xDS carry none
    ctx.workload("c0", "http", rate, duration, url="http://echo:8080/", client="c0", service="echo", timeout=5,
                 header={WORKLOAD_HEADER: "canary"})
    ctx.wait("workload", duration + 20)


def analyze(ctx: Context, data: HistoryData) -> None:
    split = check_split(data.requests, ctx.params["weights"], confidence=0.999, alpha=0.001)
    ctx.verdicts["split"] = split
    ctx.verdicts["availability"] = check_availability(data.requests, 1.0, 0.99)
    v2 = next(s for s in split.shares if s.version == "v2")
    ctx.metrics.update(requests=split.requests, v2_share=v2.observed, v2_ci=[v2.ci_low, v2.ci_high])
    ctx.claim(f"the 99.9 % interval of the v2 share contains {ctx.args.weight} %", v2.within_ci,
              f"v2 served {v2.count}/{split.requests} = {v2.observed:.2%}, 99.9 % Wilson CI "
              f"[{v2.ci_low:.2%}, {v2.ci_high:.2%}], binomial p = {split.p_value:.3g}")
    plot_split(ctx.out / "split.png", split, title=f"canary: {ctx.args.weight} % to v2",
               requests=data.requests)
    v2_ip = ctx.topology.host("h4").ip.split("/")[0]         # echo-v2-0's host
    mine = f'http.request.line contains "{WORKLOAD_HEADER}"'
    print_tshark(ctx, "c0-eth0.pcapng", [f"http.request && {mine} && ip.dst == {v2_ip}",
                                         V2_ANSWERS,
                                         "tcp.port == 15010 && http.request.uri contains \"routes\""])


EXPERIMENT = Experiment("canary", __doc__, REPO / "topologies" / "mesh-lab.yaml", run, analyze, configure)

if __name__ == "__main__":
    raise SystemExit(EXPERIMENT.main())
