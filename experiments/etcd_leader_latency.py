"""The tutorial's warning about etcd: growing delay on the leader's link, and what it does to Pilot's pushes.

    sudo python3 experiments/etcd_leader_latency.py [--quick] [--out DIR]

    "However, the biggest issue with etcd is that latency of the leader node. [...] This
    latency, if allowed to grow unboundedly, will ultimately lead the entire etcd cluster to
    fail [...]"

A mesh (topologies/etcd-mesh.yaml: etcd e1..e3, Pilot on cp, echo on h1/h2, client sidecar on
c1) runs twice: etcd's default timeouts (heartbeat 100 ms, election 1000 ms) and tuned ones
(500, 5000). e3 is made the leader; c1 writes a key 10 times a second (open loop, leader
first) and registers a fake `probe` instance every 0.5 s via e2; Pilot knows only e1 and e2
(it watches via e1; given e3 too, its etcd client can fail over onto the slow member and
stay there, stale, for the whole jump — see the lab's question 7). The
delay on e3's link grows step by step, then jumps. Per registry change: time to Pilot's
config, its EDS push and every sidecar's ACK (experiments/lablib/mesh.py). Claims: at the
first step writes, Pilot's config and every ACK come 4 (up to 6) x the one-way delay later
(request, append, its ack, response); config -> every ACK stays small: the registry is the
bottleneck, not xDS. Default: the jump elects a new leader, writes and ACKs are fast again.
Tuned: the delayed leader stays, most writes take > 1 s or time out, ACKs come seconds late.
"""
from __future__ import annotations

import _bootstrap  # noqa: F401  (re-exec under the project's interpreter if needed)

from lablib import (RegistryChanger, etcd_log_events, etcd_ops, keep_etcd_logs, leaders_elected, move_leader,
                    plot_pilot_latency, registry_mesh_spec, window_summary, write_summary, xds_latency)
from testbed.faults import LinkChange
from testbed.history import HistoryData
from testbed.paths import REPO
from testbed.run import Context, Experiment, start_mesh, wait_for_config

CONFIGS = {"default": (100, 1000), "tuned": (500, 5000)}
LEADER, CHANGER = "e3", "e2"    # Pilot's watch uses its first endpoint, e1: a follower
XDS_MAX_MS = 300                # config -> every sidecar's ACK, p50 per step


def configure(ap) -> None:
    ap.add_argument("--configs", default="default,tuned", help="which timeout sets to run")


def plan(quick: bool) -> tuple[list[float], float, float, float]:
    """(growing one-way delays in ms, seconds per step, jump delay ms, seconds of the jump)."""
    return ([0, 100], 3.0, 2400, 8.0) if quick else ([0, 50, 100, 200, 400, 800], 10.0, 2400, 25.0)


def run(ctx: Context) -> None:
    delays, step, jump, jump_s = plan(ctx.quick)
    ctx.params.update(delays_ms=delays, step_s=step, jump_ms=jump, jump_s=jump_s, configs=CONFIGS, leader=LEADER)
    ctx.metrics["runs"] = {}
    for tag in ctx.args.configs.split(","):
        hb, el = CONFIGS[tag]
        spec = registry_mesh_spec(ctx.topology.sections["mesh"], hb, el)
        mesh = start_mesh(ctx, spec=spec, tag=tag, pilot_etcd=("e1", "e2"))
        assert mesh.etcd is not None
        move_leader(ctx, mesh.etcd, LEADER)
        ctx.event("etcd", "leader", config=tag, leader=LEADER)
        url = {m.name: m.client_url for m in mesh.etcd.cluster.members}
        # the leader first: the client sticks to it, so a write crosses the slow link 4 times
        eps = [url[LEADER]] + [u for m, u in url.items() if m != LEADER]
        nem = ctx.nemesis()
        t = ctx.clock.now() + 0.5
        total = step * len(delays) + jump_s
        ctx.workload("c1", "etcd", 10, total, start_s=t, name=f"writes-{tag}", endpoints=eps,
                     key=f"/minimesh/latency/{tag}", process=tag, reads="none", timeout=6)
        changer = RegistryChanger(ctx, "c1", url[CHANGER], tag).start(t + 0.5, t + total, 0.5)
        windows = []
        for i, d in enumerate(delays + [jump]):
            ctx.sleep_until(t + i * step)
            fid = len(ctx.nemeses) * 100 + i
            if i:
                nem.revert(fid - 1)           # one delay in force at a time (one shaded window each)
            nem.apply(LinkChange(*ctx.host_link(LEADER), {"delay": f"{d:g}ms"}), fault_id=fid)
            windows.append({"delay_ms": d, "t0": ctx.clock.now(), "t1": t + i * step + (jump_s if d == jump else step)})
        ctx.sleep_until(t + total)
        nem.heal()
        changer.stop()
        ctx.wait(f"writes-{tag}", 20)
        wait_for_config(mesh, f"the last registry change ({tag})", timeout_s=15)   # every sidecar has ACKed it
        events, _ = etcd_log_events(ctx, mesh.etcd, tag), keep_etcd_logs(ctx, mesh.etcd, tag)
        ctx.metrics["runs"][tag] = {"heartbeat_ms": hb, "election_ms": el, "first_leader": LEADER,
                                    "windows": windows, "t_end": ctx.clock.now(), "nodes": mesh.node_ids(),
                                    "others": len(spec.instances),
                                    "log": {k: sum(e.kind == k for e in events) for k in
                                            ("heartbeat_late", "slow_request", "campaign", "leader", "lost_leader")}}
        mesh.stop()


def analyze(ctx: Context, data: HistoryData) -> None:
    ops = [o for o in etcd_ops(data.etcd) if o["f"] == "write"]
    f = lambda v: f"{v:8.0f}" if v is not None else "       -"  # noqa: E731  (a table cell, kept to one line)
    for tag, r in ctx.metrics["runs"].items():
        mine = [o for o in ops if str(o["process"]).startswith(tag + "-")]
        changes = xds_latency(data.events, tag, r["nodes"], r["others"])
        for w in r["windows"]:
            w.update(window_summary(changes, w["t0"] + 0.5, w["t1"]), **write_summary(mine, w["t0"] + 0.5, w["t1"]))
        r["leaders_after_jump"] = leaders_elected(data.events, tag, r["windows"][-1]["t0"], r["t_end"])
        print(f"\n{tag} (heartbeat {r['heartbeat_ms']} ms, election {r['election_ms']} ms), leader {r['first_leader']}:"
              f" log {r['log']}; registry change -> Pilot config -> every sidecar's ACK ({len(r['nodes'])} sidecars)")
        print(f"{'delay':>6} {'writes':>6} {'ok':>4} {'p50':>8} {'p99':>8} {'last3s':>8} | {'changes':>7} {'config':>8}"
              f" {'ACK p50':>8} {'ACK max':>8} {'cfg->ACK':>8}")
        for w in r["windows"]:
            print(f"{w['delay_ms']:6g} {w['writes']:6d} {w['ok']:4d} {f(w['p50_ms'])} {f(w['p99_ms'])} "
                  f"{f(w['last3s_p50_ms'])} | {w['changes']:7d} {f(w['config_p50_ms'])} {f(w['ack_p50_ms'])} "
                  f"{f(w['ack_max_ms'])} {f(w['xds_p50_ms'])}")
        w0, grow, jw = r["windows"][0], r["windows"][1:-1], r["windows"][-1]
        d0 = grow[0]["delay_ms"]      # larger delays vary run to run (elections, piled-up watches)
        ratio = {k: round(((grow[0][k] or 0) - (w0[k] or 0)) / d0, 2)
                 for k in ("p50_ms", "config_p50_ms", "ack_p50_ms")}
        ctx.claim(f"{tag}: at {d0:g} ms write latency grows by 4 to 6 x the leader's one-way delay",
                  3.5 <= ratio["p50_ms"] <= 6.5, f"(p50 - base) / delay: {ratio['p50_ms']}", ratios=ratio)
        cr, ar = ratio["config_p50_ms"], ratio["ack_p50_ms"]
        ctx.claim(f"{tag}: at {d0:g} ms Pilot's config and every sidecar's ACK come 3.5 to 6.5 x the delay later "
                  "(the same multiple within 1)", 3.5 <= cr <= 6.5 and 3.5 <= ar <= 6.5 and abs(ar - cr) <= 1.0,
                  f"(p50 - base) / delay: config {cr}, every ACK {ar} (base {w0['config_p50_ms']:.0f} / "
                  f"{w0['ack_p50_ms']:.0f} ms)", config_ratio=cr, ack_ratio=ar)
        xds = [w["xds_p50_ms"] for w in r["windows"]]
        ctx.claim(f"{tag}: Pilot config -> every sidecar's ACK p50 < {XDS_MAX_MS} ms in every step, every change "
                  "reached every sidecar (the registry is the bottleneck, not xDS)",
                  all(x is not None and x < XDS_MAX_MS for x in xds) and not sum(w["unacked"] for w in r["windows"]),
                  f"p50 per step {[None if x is None else round(x) for x in xds]} ms; not ACKed by every sidecar: "
                  f"{sum(w['unacked'] for w in r['windows'])}", xds_p50_ms=xds)
        c3, a3, ap, am = (jw[k] for k in ("config_last3s_p50_ms", "ack_last3s_p50_ms", "ack_p50_ms", "ack_max_ms"))
        ctx.claim(f"{tag}: in the jump every sidecar ACKs a registry change " + (
                  "fast after the election (config and ACK p50 in the last 3 s < 1 s)" if tag == "default"
                  else "seconds late (ACK p50 > 2 s, max > 4 s): changes pile up until the delay ends"),
                  (c3 is not None and a3 is not None and c3 < 1000 and a3 < 1000) if tag == "default"
                  else (ap or 0) > 2000 and (am or 0) > 4000,
                  "config p50 {}, ACK p50 {}, max {}; last 3 s: config {}, ACK {} ms".format(
                      *(f(jw[k]).strip() for k in ("config_p50_ms", "ack_p50_ms", "ack_max_ms")), f(c3).strip(),
                      f(a3).strip()))
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
                      f"writes: {jw['slow_share']:.0%}; p50 of acknowledged ones {f(jw['p50_ms']).strip()} ms, "
                      f"{jw['not_ok']}/{jw['writes']} not acknowledged (client timeout 6 s)")
    plot_pilot_latency(ctx.out / "pilot_latency.png", ctx.metrics["runs"], "etcd leader delay: writes, Pilot, ACKs")


EXPERIMENT = Experiment("etcd_leader_latency", __doc__, REPO / "topologies" / "etcd-mesh.yaml", run, analyze, configure)

if __name__ == "__main__":
    raise SystemExit(EXPERIMENT.main())
