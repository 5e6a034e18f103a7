"""Crash one of three replicas under load, without and with retries + outlier detection.

    sudo python3 experiments/crash_failover.py [--quick] [--out DIR]

    "[...] a service mesh also collects usage statistics from individual services, handles
    node failures and overload conditions [...]"

The mesh of topologies/mesh-lab.yaml; all echo traffic goes to subset v1 (3 replicas, round
robin). Two phases on the same mesh, each: client c0 sends an open-loop stream through its
sidecar; after a few seconds replica echo-v1-0 is killed (app, sidecar and registration
agent: SIGKILL, as if its host died); at the end of the phase it is restarted.

- ``plain``: no retries (``attempts: 0``), no outlier detection. Requests sent to the dead
  replica fail (503) until its lease expires (ttl 3 s) and Pilot pushes the removal.
- ``istio-default`` (full run only): no retry policy written, so Istio's default applies
  (2 retries on connect-failure,refused-stream).
- ``resilient``: retries (3 attempts on connect-failure/reset/5xx) and outlier detection
  (eject after 1 gateway error, for 30 s).

The rules of each phase are files in topologies/mesh-lab/ (PHASES).

Claims: plain — some requests fail, and the errors stop within ttl + 4 s of the crash;
istio-default and resilient — at most 1 % of the requests after the crash fail, fewer than
in the plain phase. Reported per phase: when a sidecar first ejected the crashed replica
(``ejected_after_s``, from the sidecars' outlier event logs imported into history.jsonl).
"""
from __future__ import annotations

import _bootstrap  # noqa: F401  (re-exec under the project's interpreter if needed)

from dataclasses import replace

from lablib.exercises import add_exercise_flag, apply_exercise
from lablib.mesh import rule_files
from lablib.tshark import print_tshark
from testbed.faults import Crash
from testbed.history import HistoryData
from testbed.mesh.spec import ADMIN_PORT_BASE
from testbed.paths import REPO
from testbed.run import Context, Experiment, fetch_stats, start_mesh, total, wait_for_config
from testbed.run.checkers import check_failover
from testbed.run.outlier_events import first_ejection

VICTIM, TTL_S = "echo-v1-0", 3
RULES = REPO / "topologies" / "mesh-lab"
PHASES = {"plain": ("echo-subsets.yaml", "echo-all-v1-no-retries.yaml"),      # rule files in RULES
          "istio-default": ("echo-subsets.yaml", "echo-all-v1.yaml"),
          "resilient": ("echo-all-v1-resilient.yaml",)}


def retries(ctx: Context) -> int:
    """upstream_rq_retry summed over c0's sidecar's echo clusters (its admin /stats; a
    client sidecar's admin listens on ADMIN_PORT_BASE)."""
    return total(fetch_stats(ctx.tb, "c0", ADMIN_PORT_BASE), "cluster.*echo*.upstream_rq_retry")


def configure(ap) -> None:
    ap.add_argument("--phases", default=None, help=f"of {', '.join(PHASES)}, student (--rules) "
                    "(quick: plain,resilient)")
    ap.add_argument("--rules", nargs="+", metavar="FILE", help="Istio YAML of the 'student' phase (your own "
                    "DestinationRule/VirtualService for echo)")
    ap.add_argument("--ttl-s", type=int, help=f"the registry's lease TTL (topology: {TTL_S} s; question 2)")
    add_exercise_flag(ap, "crash_failover")


def phase_rules(ctx: Context, phase: str) -> str:
    if phase == "student":
        if not ctx.args.rules:
            raise ValueError("--phases student needs --rules FILE...")
        return rule_files(ctx.args.rules)
    if phase not in PHASES:
        raise ValueError(f"--phases: unknown phase {phase!r}; allowed: {', '.join(PHASES)}, student")
    return "---\n".join((RULES / f).read_text() for f in PHASES[phase])


def run(ctx: Context) -> None:
    rate, before, after = (40, 3.0, 9.0) if ctx.quick else (100, 10.0, 30.0)
    spec = ctx.topology.sections["mesh"]
    if ctx.args.ttl_s:
        spec = replace(spec, registry=replace(spec.registry, ttl_s=ctx.args.ttl_s))
    ctx.params.update(rate=rate, crash_after_s=before, phase_s=before + after, victim=VICTIM,
                      ttl_s=spec.registry.ttl_s)
    mesh = start_mesh(ctx, spec=spec)
    # VICTIM is its app, sidecar and agent, as if its host died; the crash is over (reverted)
    # once the restarted instance is registered and every sidecar has ACKed again
    nem = ctx.nemesis(target=mesh.fault_target(ready_timeout_s=40))
    ctx.metrics["phases"] = {}
    phases = (ctx.args.phases or ("plain,resilient" if ctx.quick else ",".join(PHASES))).split(",")
    for fid, phase in enumerate(phases):
        rules = phase_rules(ctx, phase)
        mesh.apply_text(rules, f"{phase}.yaml")
        retried_before = retries(ctx)
        wait_for_config(mesh, f"the {phase} rules")
        t = ctx.clock.now() + 0.3
        ctx.workload("c0", "http", rate, before + after, start_s=t, name=f"load-{phase}", url="http://echo:8080/",
                     client=phase, service="echo", timeout=5)
        ctx.sleep_until(t + before)
        t0 = ctx.clock.now()
        nem.apply(Crash(VICTIM, "SIGKILL"), fault_id=fid).raise_for_error()
        ctx.wait(f"load-{phase}", after + 20)
        nem.revert(fid).raise_for_error()
        ctx.metrics["phases"][phase] = {"crash_t": t0, "end_t": t + before + after,
                                        "sidecar_retries": retries(ctx) - retried_before}


def analyze(ctx: Context, data: HistoryData) -> None:
    res = {}
    for phase, p in ctx.metrics["phases"].items():     # also istio-default in a full run
        mine = [r for r in data.requests if r.client == phase]
        v = check_failover(mine, p["crash_t"], until=p["end_t"], max_recovery_s=ctx.params["ttl_s"] + 4)
        after = [r for r in mine if r.t_start >= p["crash_t"]]
        res[phase] = v
        ej = first_ejection(data.events, VICTIM, p["crash_t"], p["end_t"])    # sidecars' outlier logs
        p.update(requests=len(mine), after_crash=len(after), errors=v.errors,
                 error_share=v.errors / len(after) if after else None, recovered_s=v.recovered_s,
                 flags=sorted({r.flags or str(r.status) for r in after if not r.ok}),
                 ejected_after_s=round(ej.t - p["crash_t"], 3) if ej else None,
                 ejected_by=ej.source if ej else None, ejection_type=ej.details["type"] if ej else None)
        print(f"{phase}: {v.errors}/{len(after)} failed after the crash; first error "
              f"{v.first_error_s}, error-free from {v.recovered_s} s after it; flags {p['flags']}; "
              f"{VICTIM} ejected after {p['ejected_after_s']} s ({p['ejected_by']})")
    phases = ctx.metrics["phases"]
    plain = phases.get("plain")
    if plain is not None:
        ctx.verdicts["plain: failover within ttl + 4 s"] = res["plain"]
        ctx.claim("plain: the crash is visible to clients", plain["errors"] > 0,
                  f"{plain['errors']} of {plain['after_crash']} requests failed, error-free after "
                  f"{plain['recovered_s']} s")
    for name in ("istio-default", "resilient"):
        p = phases.get(name)
        if p is not None:
            ctx.claim(f"{name}: <= 1 % of requests fail" + (", fewer than without" if plain else ""),
                      p["error_share"] is not None and p["error_share"] <= 0.01
                      and (plain is None or p["errors"] < max(plain["errors"], 1)),
                      f"{p['errors']} of {p['after_crash']} failed"
                      + (f" (plain: {plain['errors']})" if plain else "")
                      + f"; c0's sidecar retried {p['sidecar_retries']} times"
                      + (f"; {VICTIM} ejected after {p['ejected_after_s']} s" if name == "resilient" else ""))

    student = phases.get("student")
    if student is not None:
        ctx.claim("student: 0 client errors", student["errors"] == 0 and student["requests"] > 0,
                  f"{student['errors']} of {student['after_crash']} failed after the crash; c0's sidecar retried "
                  f"{student['sidecar_retries']} times; {VICTIM} ejected after {student['ejected_after_s']} s")
    victim_ip = ctx.topology.host("h1").ip.split("/")[0]      # echo-v1-0's host
    # the clients' 503s are the sidecar's own replies (not on the wire); on the wire: its
    # connects to the dead replica, refused (RST) or unanswered
    print_tshark(ctx, "c0-eth0.pcapng", [f"ip.dst == {victim_ip} && tcp.flags.syn == 1 && tcp.flags.ack == 0",
                                         "tcp.flags.reset == 1 || icmp.type == 3",
                                         "tcp.port == 15010 && http.request.uri contains \"endpoints\""])
    apply_exercise(ctx, data)

EXPERIMENT = Experiment("crash_failover", __doc__, REPO / "topologies" / "mesh-lab.yaml", run, analyze, configure)

if __name__ == "__main__":
    raise SystemExit(EXPERIMENT.main())
