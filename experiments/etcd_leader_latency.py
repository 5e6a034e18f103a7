"""The tutorial's warning about etcd: growing delay on the leader's link.

    sudo python3 experiments/etcd_leader_latency.py [--quick] [--out DIR]

    "However, the biggest issue with etcd is that latency of the leader node. [...] This
    latency, if allowed to grow unboundedly, will ultimately lead the entire etcd cluster to
    fail [...]"

A 3-member etcd cluster runs on e1..e3; client c1 writes at a fixed rate (open loop). The
one-way delay on the *leader's* link grows step by step, then jumps. The same schedule runs
twice: with etcd's default timeouts (heartbeat 100 ms, election 1000 ms) and with timeouts
tuned for a slow network (heartbeat 500 ms, election 5000 ms). Recorded: write latency per
step, heartbeat warnings, slow-request warnings, campaigns and leader changes (member logs);
and Pilot (on c1) watching the registry while c2 registers a probe instance every 0.5 s
through a follower: the time from that write to Pilot's new config (what triggers its pushes).
Claims: write latency grows by 4 x the one-way delay (the client talks to the leader:
request, append to a follower, its acknowledgement, response) — up to 6 x: some runs show one
more round trip with tuned timeouts (docs/labs/etcd_leader_latency.md, question 1); with default timeouts the jump
elects a new leader (not the delayed member) and writes are fast again; with tuned timeouts
the delayed leader stays and most writes take over a second or time out. Pilot sees a registry
change 4 x the delay later too; fast after the election (default), seconds late (tuned).
"""
from __future__ import annotations

import _bootstrap  # noqa: F401  (re-exec under the project's interpreter if needed)

from testbed.checkers.stats import percentile
from testbed.experiment import REPO, Context, Experiment, etcd_log_events, etcd_ops, start_etcd
from testbed.experiment_mesh import RegistryChanger, plot_pilot_latency, pilot_seen_latency, start_pilot
from testbed.faults import LinkChange

MEMBERS = ("e1", "e2", "e3")
CONFIGS = {"default": (100, 1000), "tuned": (500, 5000)}


def configure(ap) -> None:
    ap.add_argument("--configs", default="default,tuned", help="which timeout sets to run")


def plan(quick: bool) -> tuple[list[float], float, float, float]:
    """(growing one-way delays in ms, seconds per step, jump delay ms, seconds of the jump)."""
    return ([0, 100, 300], 3.0, 2400, 8.0) if quick else ([0, 50, 100, 200, 400, 800], 10.0, 2400, 25.0)


def run(ctx: Context) -> None:
    delays, step, jump, jump_s = plan(ctx.quick)
    ctx.params.update(delays_ms=delays, step_s=step, jump_ms=jump, jump_s=jump_s, configs=CONFIGS)
    ctx.metrics["runs"] = {}
    for tag in ctx.args.configs.split(","):
        hb, el = CONFIGS[tag]
        runner = start_etcd(ctx, MEMBERS, tag, heartbeat_ms=hb, election_ms=el)
        leader = runner.wait_leader(10).name
        ctx.event("etcd", "leader", config=tag, leader=leader)
        # the leader first: the client sticks to it, so a write crosses the slow link 4 times
        # (request, append to a follower, its ack, response) whatever the heartbeat interval
        eps = [runner.cluster.member(leader).client_url] + \
            [m.client_url for m in runner.cluster.members if m.name != leader]
        # Pilot watches through a follower; registry changes via the other one, seen once committed
        pilot = start_pilot(ctx, runner, "c1", tag, eps[1:] + eps[:1])
        nem = ctx.nemesis()
        t = ctx.clock.now() + 0.5
        total = step * len(delays) + jump_s
        ctx.workload("c1", "etcd", 10, total, start_s=t, name=f"writes-{tag}", endpoints=eps,
                     key=f"/minimesh/latency/{tag}", process=tag, reads="none", timeout=6)
        changer = RegistryChanger(ctx, "c2", eps[2], tag).start(t + 0.5, t + total, 0.5)
        windows = []
        for i, d in enumerate(delays + [jump]):
            ctx.sleep_until(t + i * step)
            fid = len(ctx.nemeses) * 100 + i
            if i:
                nem.revert(fid - 1)           # one delay in force at a time (one shaded window each)
            nem.apply(LinkChange(leader, "mmet1", {"delay": f"{d:g}ms"}), fault_id=fid)
            windows.append({"delay_ms": d, "t0": ctx.clock.now(), "t1": t + i * step + (jump_s if d == jump else step)})
        ctx.sleep_until(t + total)
        nem.heal(), changer.stop()
        ctx.wait(f"writes-{tag}", 20), ctx.stop(pilot)
        events = etcd_log_events(ctx, runner, tag)
        ctx.metrics["runs"][tag] = {"heartbeat_ms": hb, "election_ms": el, "first_leader": leader,
                                    "windows": windows, "t_end": ctx.clock.now(),
                                    "log": {k: sum(e.kind == k for e in events) for k in
                                            ("heartbeat_late", "slow_request", "campaign", "leader", "lost_leader")}}
        runner.stop()


def analyze(ctx: Context, data) -> None:
    ops = [o for o in etcd_ops(data.etcd) if o["f"] == "write"]
    for tag, r in ctx.metrics["runs"].items():
        mine = [o for o in ops if str(o["process"]).startswith(tag + "-")]
        pilot_lat = pilot_seen_latency(data.events, tag)
        for w in r["windows"]:
            ws = [o for o in mine if w["t0"] + 0.5 <= o["t_invoke"] < w["t1"]]
            lat = [(o["t_done"] - o["t_invoke"]) * 1000 for o in ws if o["outcome"] == "ok"]
            late = [o for o in ws if o["t_invoke"] >= w["t1"] - 3.0]
            seen, seen3 = ([c["seen_ms"] for c in pilot_lat if a <= c["t"] < w["t1"] and c["seen_ms"] is not None]
                           for a in (w["t0"] + 0.5, w["t1"] - 3.0))
            w.update(pilot_changes=len(seen), pilot_p50_ms=percentile(seen, 50), pilot_max_ms=max(seen, default=None),
                     pilot_last3s_p50_ms=percentile(seen3, 50),
                     writes=len(ws), ok=len(lat), p50_ms=percentile(lat, 50), p99_ms=percentile(lat, 99),
                     last3s_p50_ms=percentile([(o["t_done"] - o["t_invoke"]) * 1000 for o in late
                                               if o["outcome"] == "ok"], 50),
                     not_ok=sum(o["outcome"] != "ok" for o in ws),
                     slow_share=(sum(o["outcome"] != "ok" or o["t_done"] - o["t_invoke"] > 1.0 for o in ws) / len(ws)
                                 if ws else None))
        r["leaders_after_jump"] = sorted({e.details.get("leader") for e in data.events if e.source.startswith("etcd:")
                                          and e.details.get("config") == tag and e.kind == "leader"
                                          and r["windows"][-1]["t0"] <= e.t <= r["t_end"]})
        print(f"\n{tag} (heartbeat {r['heartbeat_ms']} ms, election {r['election_ms']} ms), leader {r['first_leader']}:"
              f" log {r['log']}; pilot: registry change -> Pilot's config")
        print(f"{'delay':>6} {'writes':>6} {'ok':>4} {'p50':>8} {'p99':>8} {'last3s p50':>10} {'pilot p50':>9}"
              f" {'max':>8}")
        for w in r["windows"]:
            f = lambda v: f"{v:8.0f}" if v is not None else "       -"  # noqa: E731
            print(f"{w['delay_ms']:6g} {w['writes']:6d} {w['ok']:4d} {f(w['p50_ms'])} {f(w['p99_ms'])} "
                  f"{f(w['last3s_p50_ms']):>10} {f(w['pilot_p50_ms']):>9} {f(w['pilot_max_ms'])}")
        base = r["windows"][0]["p50_ms"] or 0.0
        grow = r["windows"][1:-1]
        ratios = {w["delay_ms"]: round(((w["p50_ms"] or 0) - base) / w["delay_ms"], 2) for w in grow}
        d0 = grow[0]["delay_ms"]  # larger delays vary run to run (elections, piled-up watches)
        ctx.claim(f"{tag}: at {d0:g} ms write latency grows by 4 to 6 x the leader's one-way delay",
                  3.5 <= ratios[d0] <= 6.5, f"(p50 - base) / delay: {ratios}", ratios=ratios)
        jw, pb = r["windows"][-1], r["windows"][0]["pilot_p50_ms"] or 0.0
        pr = {w["delay_ms"]: round(((w["pilot_p50_ms"] or 0) - pb) / w["delay_ms"], 2) for w in grow}
        ctx.claim(f"{tag}: at {d0:g} ms Pilot sees a registry change 3.5 to 6.5 x the leader's delay later",
                  3.5 <= pr[d0] <= 6.5, f"(Pilot p50 - base {pb:.0f} ms) / delay: {pr}", ratios=pr)
        p50, mx, p3 = (jw[k] for k in ("pilot_p50_ms", "pilot_max_ms", "pilot_last3s_p50_ms"))
        ctx.claim(f"{tag}: in the jump Pilot sees registry changes " + ("fast after the election (last 3 s p50 < 1 s)"
                  if tag == "default" else "> 2 s late (p50; max > 4 s): they pile up until the delay ends"),
                  p3 is not None and p3 < 1000 if tag == "default"
                  else (p50 or 0) > 2000 and (mx or 0) > 4000,
                  "Pilot p50 {}, max {}, last 3 s p50 {} ms".format(*(f(v).strip() for v in (p50, mx, p3))))
        if tag == "default":
            ctx.claim("default: the jump elects a new leader, not the delayed member, and writes recover",
                      bool(r["leaders_after_jump"]) and r["first_leader"] not in r["leaders_after_jump"]
                      and jw["last3s_p50_ms"] is not None and jw["last3s_p50_ms"] < 200,
                      f"leaders elected after the jump: {r['leaders_after_jump']}; write p50 in the last 3 s "
                      f"of the jump: {jw['last3s_p50_ms']} ms")
        else:
            ctx.claim(f"{tag}: no election; the delayed leader stays and >= 80 % of writes take > 1 s or time out",
                      not r["leaders_after_jump"] and (jw["slow_share"] or 0) >= 0.8,
                      f"leaders elected after the jump: {r['leaders_after_jump'] or 'none'}; slow or failed "
                      f"writes: {jw['slow_share']:.0%}; p50 of acknowledged ones {jw['p50_ms']:.0f} ms, "
                      f"{jw['not_ok']}/{jw['writes']} not acknowledged (client timeout 6 s)")
    plot_pilot_latency(ctx.out / "pilot_latency.png", ctx.metrics["runs"], "etcd leader delay: writes and Pilot")


EXPERIMENT = Experiment("etcd_leader_latency", __doc__, REPO / "topologies" / "etcd3.yaml", run, analyze, configure)

if __name__ == "__main__":
    raise SystemExit(EXPERIMENT.main())
