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
stay there, stale, for the whole jump — see the lab's question 6). The
delay on e3's link grows step by step, then jumps. Per registry change: time to Pilot's
config, its EDS push and every sidecar's ACK (experiments/lablib/mesh.py). Claims: at the
first step writes, Pilot's config and every ACK come 4 (up to 6) x the one-way delay later
(request, append, its ack, response); config -> every ACK stays small: the registry is the
bottleneck, not xDS. Default: the jump elects a new leader, writes and ACKs are fast again.
Tuned: the delayed leader stays, most writes take > 1 s or time out, ACKs come seconds late.
"""
from __future__ import annotations

import _bootstrap  # noqa: F401  (re-exec under the project's interpreter if needed)

from pathlib import Path
from typing import Any

from lablib.etcd import PLAN_KEYS, read_plan
from lablib.exercises import add_exercise_flag, apply_exercise
from lablib.tshark import print_tshark
from lablib import (RegistryChanger, etcd_log_events, etcd_ops, keep_etcd_logs, leaders_elected, move_leader,
                    plot_pilot_latency, registry_mesh_spec, window_summary, write_summary, xds_latency)
from testbed.faults import LinkChange
from testbed.history import HistoryData
from testbed.paths import REPO
from testbed.run import Context, Experiment, start_mesh, wait_for_config

CONFIGS = {"default": (100, 1000), "tuned": (500, 5000)}
LEADER = "e3"                   # Pilot's watch uses its first endpoint, e1: a follower
XDS_MAX_MS = 300                # config -> every sidecar's ACK, p50 per step


def _ms_list(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def configure(ap) -> None:
    ap.add_argument("--configs", default=None, help="which timeout sets to run: default, tuned, custom "
                    "(--heartbeat-ms/--election-ms); default: default,tuned, or custom when those are given")
    ap.add_argument("--plan", type=Path, help="a plan file (YAML; keys: " + ", ".join(PLAN_KEYS) + "); flags win")
    ap.add_argument("--delays", type=_ms_list, help="growing one-way delays on the leader's link, ms "
                    "(default quick 0,100; full 0,50,100,200,400,800)")
    ap.add_argument("--step-s", type=float, help="seconds per growing step (default quick 3, full 10)")
    ap.add_argument("--jump-ms", type=float, help="the final jump, ms (default 2400; 0: no jump)")
    ap.add_argument("--jump-s", type=float, help="seconds of the jump (default quick 8, full 25)")
    ap.add_argument("--heartbeat-ms", type=int, help="etcd heartbeat of the 'custom' config")
    ap.add_argument("--election-ms", type=int, help="etcd election timeout of the 'custom' config")
    ap.add_argument("--leader", choices=("e1", "e2", "e3"), help=f"the member made leader and delayed "
                    f"(default {LEADER}; e1 is the member Pilot watches through)")
    ap.add_argument("--pilot-etcd", help="members Pilot may use, in order, or 'all' (default e1,e2)")
    ap.add_argument("--cp-delay-ms", type=float, help="one-way delay on cp's (Pilot's) link during the "
                    "growing steps (question 6; default 0)")
    add_exercise_flag(ap, "etcd_leader_latency")


def settings(ctx: Context) -> dict[str, Any]:
    """What this run does: --quick's or the full run's schedule, then the plan file, then the flags."""
    a = ctx.args
    s: dict[str, Any] = {"delays_ms": [0, 100] if ctx.quick else [0, 50, 100, 200, 400, 800],
                         "step_s": 3.0 if ctx.quick else 10.0, "jump_ms": 2400, "jump_s": 8.0 if ctx.quick else 25.0,
                         "leader": LEADER, "pilot_etcd": "e1,e2", "cp_delay_ms": 0}
    plan = read_plan(a.plan) if a.plan else {}
    s.update(plan)
    flags = {"delays_ms": a.delays, "step_s": a.step_s, "jump_ms": a.jump_ms, "jump_s": a.jump_s,
             "heartbeat_ms": a.heartbeat_ms, "election_ms": a.election_ms, "leader": a.leader,
             "pilot_etcd": a.pilot_etcd, "cp_delay_ms": a.cp_delay_ms}
    s.update({k: v for k, v in flags.items() if v is not None})
    configs = dict(CONFIGS)
    if "heartbeat_ms" in s or "election_ms" in s:
        configs["custom"] = (int(s.get("heartbeat_ms", 100)), int(s.get("election_ms", 1000)))
    names = (a.configs or ("custom" if "custom" in configs else "default,tuned")).split(",")
    unknown = [n for n in names if n not in configs]
    if unknown:
        raise ValueError(f"--configs {a.configs}: unknown {', '.join(unknown)}; allowed: {', '.join(configs)}"
                         " (custom needs --heartbeat-ms/--election-ms or the plan's keys)")
    pe = s["pilot_etcd"]
    pe = pe.split(",") if isinstance(pe, str) else list(pe)
    s.update(configs={n: configs[n] for n in names}, pilot_etcd=[] if pe == ["all"] else pe, plan=plan)
    return s


def run(ctx: Context) -> None:
    s = settings(ctx)
    ctx.params.update(s)
    ctx.metrics["runs"] = {}
    for tag, (hb, el) in s["configs"].items():
        ctx.metrics["runs"][tag] = run_config(ctx, s, tag, hb, el)


def run_config(ctx: Context, s: dict[str, Any], tag: str, hb: int, el: int) -> dict[str, Any]:
    delays, step, jump, jump_s, leader = s["delays_ms"], s["step_s"], s["jump_ms"], s["jump_s"], s["leader"]
    spec = registry_mesh_spec(ctx.topology.sections["mesh"], hb, el)
    mesh = start_mesh(ctx, spec=spec, tag=tag, pilot_etcd=tuple(s["pilot_etcd"]))
    assert mesh.etcd is not None
    move_leader(ctx, mesh.etcd, leader)
    ctx.event("etcd", "leader", config=tag, leader=leader)
    url = {m.name: m.client_url for m in mesh.etcd.cluster.members}
    changer = next(m for m in ("e2", "e1", "e3") if m != leader)
    # the leader first: the client sticks to it, so a write crosses the slow link 4 times
    eps = [url[leader]] + [u for m, u in url.items() if m != leader]
    nem = ctx.nemesis()
    steps = list(delays) + ([jump] if jump else [])
    lengths = [step] * len(delays) + ([jump_s] if jump else [])
    t, total = ctx.clock.now() + 0.5, sum(lengths)
    ctx.workload("c1", "etcd", 10, total, start_s=t, name=f"writes-{tag}", endpoints=eps,
                 key=f"/minimesh/latency/{tag}", process=tag, reads="none", timeout=6)
    changes = RegistryChanger(ctx, "c1", url[changer], tag).start(t + 0.5, t + total, 0.5)
    windows, base = [], len(ctx.nemeses) * 100
    if s["cp_delay_ms"]:
        ctx.sleep_until(t)
        nem.apply(LinkChange(*ctx.host_link("cp"), {"delay": f"{s['cp_delay_ms']:g}ms"}), fault_id=base + 99)
    for i, d in enumerate(steps):
        start = t + sum(lengths[:i])
        ctx.sleep_until(start)
        if i:
            nem.revert(base + i - 1)           # one delay in force at a time (one shaded window each)
        if s["cp_delay_ms"] and jump and i == len(delays):
            nem.revert(base + 99)              # cp's delay: the growing steps only
        nem.apply(LinkChange(*ctx.host_link(leader), {"delay": f"{d:g}ms"}), fault_id=base + i)
        windows.append({"delay_ms": d, "jump": bool(jump) and i == len(delays), "t0": ctx.clock.now(),
                        "t1": start + lengths[i]})
    ctx.sleep_until(t + total)
    nem.heal()
    changes.stop()
    ctx.wait(f"writes-{tag}", 20)
    wait_for_config(mesh, f"the last registry change ({tag})", timeout_s=15)   # every sidecar has ACKed it
    events, _ = etcd_log_events(ctx, mesh.etcd, tag), keep_etcd_logs(ctx, mesh.etcd, tag)
    t_delay = windows[0]["t0"]                 # start-up elections and the leader move are before it
    nodes = mesh.node_ids()
    mesh.stop()
    return {"heartbeat_ms": hb, "election_ms": el, "first_leader": leader, "windows": windows,
            "t_end": ctx.clock.now(), "nodes": nodes, "others": len(spec.instances),
            "log": {k: sum(e.kind == k and e.t >= t_delay for e in events) for k in
                    ("heartbeat_late", "slow_request", "campaign", "leader", "lost_leader")},
            "log_counts_from_s": round(t_delay, 3)}


def _cell(v: float | None) -> str:
    return f"{v:8.0f}" if v is not None else "       -"


def print_table(tag: str, r: dict[str, Any]) -> None:
    f = _cell
    print(f"\n{tag} (heartbeat {r['heartbeat_ms']} ms, election {r['election_ms']} ms), leader {r['first_leader']}:"
          f" members' log events from the first delay on (t >= {r['log_counts_from_s']} s): {r['log']}; "
          f"leaders elected then: {r['leaders_elected'] or 'none'}")
    print(f"registry change -> Pilot config -> every sidecar's ACK ({len(r['nodes'])} sidecars); times in ms, "
          "t = experiment time (s)")
    print(f"{'delay ms':>8} {'from t s':>8} {'writes':>6} {'ok':>4} {'p50':>8} {'p99':>8} {'last3s':>8} | "
          f"{'changes':>7} {'config':>8} {'ACK p50':>8} {'ACK max':>8} {'cfg->ACK':>8}")
    for w in r["windows"]:
        print(f"{w['delay_ms']:8g} {w['t0']:8.1f} {w['writes']:6d} {w['ok']:4d} {f(w['p50_ms'])} {f(w['p99_ms'])} "
              f"{f(w['last3s_p50_ms'])} | {w['changes']:7d} {f(w['config_p50_ms'])} {f(w['ack_p50_ms'])} "
              f"{f(w['ack_max_ms'])} {f(w['xds_p50_ms'])}")


def analyze(ctx: Context, data: HistoryData) -> None:
    ops = [o for o in etcd_ops(data.etcd) if o["f"] == "write"]
    for tag, r in ctx.metrics["runs"].items():
        mine = [o for o in ops if str(o["process"]).startswith(tag + "-")]
        changes = xds_latency(data.events, tag, r["nodes"], r["others"])
        for w in r["windows"]:
            w.update(window_summary(changes, w["t0"] + 0.5, w["t1"]), **write_summary(mine, w["t0"] + 0.5, w["t1"]),
                     elected=leaders_elected(data.events, tag, w["t0"], w["t1"]) if w["delay_ms"] else [])
        delayed = [w for w in r["windows"] if w["delay_ms"] > 0]
        end = r["windows"][-1]["t1"]              # the delays end there (then the heal)
        r["leaders_elected"] = leaders_elected(data.events, tag, delayed[0]["t0"], end) if delayed else []
        r["elections"] = [{"t": round(e.t, 3), "leader": e.details.get("leader"), "seen_by": e.source}
                          for e in data.events if e.source.startswith("etcd:") and e.kind == "leader"
                          and e.details.get("config") == tag and delayed and e.t >= delayed[0]["t0"]]
        jw = r["windows"][-1] if r["windows"][-1]["jump"] else None
        r["leaders_after_jump"] = leaders_elected(data.events, tag, jw["t0"], jw["t1"]) if jw else []
        # who leads at the end of the jump: the last election a member logged in it (a member
        # may log an earlier term's winner late: the delayed leader re-elected before the jump)
        last = sorted((e for e in r["elections"] if jw and jw["t0"] <= e["t"] <= jw["t1"]), key=lambda e: e["t"])
        r["leader_at_jump_end"] = last[-1]["leader"] if last else None
        print_table(tag, r)
        growth_claims(ctx, tag, r)
        if jw is not None and ctx.params["jump_ms"] == 2400 and tag in CONFIGS:
            jump_claims(ctx, tag, r, jw)
    plot_pilot_latency(ctx.out / "pilot_latency.png", ctx.metrics["runs"], "etcd leader delay: writes, Pilot, ACKs")
    leader = ctx.params["leader"]
    ip = ctx.topology.host(leader).ip.split("/")[0]
    raft = ("-d", "tcp.port==2380,http")      # Decode As: rafthttp is HTTP (streams, POST /raft)
    print_tshark(ctx, f"{leader}-eth0.pcapng", [
        ("tcp.port == 2380 && http.request", raft),                        # the peers' streams opened
        (f"ip.src == {ip} && tcp.srcport == 2380 && tcp.len > 0", raft),   # the leader's appends and heartbeats
        ("tcp.analysis.retransmission", ())])
    print_tshark(ctx, "cp-eth0.pcapng", ["tcp.srcport == 2379 && tcp.len > 0"])   # watch events reaching Pilot
    apply_exercise(ctx, data)


def growth_claims(ctx: Context, tag: str, r: dict[str, Any]) -> None:
    f = _cell
    ws = r["windows"]
    ctx.claim(f"{tag}: every delay step had etcd writes", all(w["writes"] > 0 for w in ws),
              f"writes per step: {[w['writes'] for w in ws]}")
    grow = [w for w in ws[1:] if not w["jump"]]
    if ws[0]["delay_ms"] == 0 and grow and grow[0]["delay_ms"] > 0 and ctx.params["cp_delay_ms"] == 0:
        w0, d0 = ws[0], grow[0]["delay_ms"]     # larger delays vary run to run (elections, piled-up watches)
        ratio = {k: round(((grow[0][k] or 0) - (w0[k] or 0)) / d0, 2)
                 for k in ("p50_ms", "config_p50_ms", "ack_p50_ms")}
        ctx.claim(f"{tag}: at {d0:g} ms write latency grows by 4 to 6 x the leader's one-way delay",
                  3.5 <= ratio["p50_ms"] <= 6.5, f"(p50 - base) / delay: {ratio['p50_ms']}", ratios=ratio)
        cr, ar = ratio["config_p50_ms"], ratio["ack_p50_ms"]
        ctx.claim(f"{tag}: at {d0:g} ms Pilot's config and every sidecar's ACK come 3.5 to 6.5 x the delay later "
                  "(the same multiple within 1)", 3.5 <= cr <= 6.5 and 3.5 <= ar <= 6.5 and abs(ar - cr) <= 1.0,
                  f"(p50 - base) / delay: config {cr}, every ACK {ar} (base {f(w0['config_p50_ms']).strip()} / "
                  f"{f(w0['ack_p50_ms']).strip()} ms)", config_ratio=cr, ack_ratio=ar)
    xds = [w["xds_p50_ms"] for w in ws]
    if ctx.params["cp_delay_ms"] == 0:
        ctx.claim(f"{tag}: Pilot config -> every sidecar's ACK p50 < {XDS_MAX_MS} ms in every step, every change "
                  "reached every sidecar (the registry is the bottleneck, not xDS)",
                  all(x is not None and x < XDS_MAX_MS for x in xds) and not sum(w["unacked"] for w in ws),
                  f"p50 per step {[None if x is None else round(x) for x in xds]} ms; not ACKed by every sidecar: "
                  f"{sum(w['unacked'] for w in ws)}", xds_p50_ms=xds)


def jump_claims(ctx: Context, tag: str, r: dict[str, Any], jw: dict[str, Any]) -> None:
    f = _cell
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
                  r["leader_at_jump_end"] is not None and r["leader_at_jump_end"] != r["first_leader"]
                  and jw["last3s_p50_ms"] is not None and jw["last3s_p50_ms"] < 200,
                  f"leaders elected in the jump: {r['leaders_after_jump']}, the last {r['leader_at_jump_end']}; "
                  f"write p50 in the last 3 s "
                  f"of the jump: {jw['last3s_p50_ms']} ms")
    else:
        ctx.claim(f"{tag}: no election; the delayed leader stays and >= 80 % of writes take > 1 s or time out",
                  not r["leaders_after_jump"] and (jw["slow_share"] or 0) >= 0.8,
                  f"leaders elected after the jump: {r['leaders_after_jump'] or 'none'}; slow or failed "
                  f"writes: {jw['slow_share']:.0%}; p50 of acknowledged ones {f(jw['p50_ms']).strip()} ms, "
                  f"{jw['not_ok']}/{jw['writes']} not acknowledged (client timeout 6 s)")


EXPERIMENT = Experiment("etcd_leader_latency", __doc__, REPO / "topologies" / "etcd-mesh.yaml", run, analyze, configure)

if __name__ == "__main__":
    raise SystemExit(EXPERIMENT.main())
