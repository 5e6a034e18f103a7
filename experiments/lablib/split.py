"""Analysis of a registry split brain on a deployed mesh (experiments/registry_split_brain.py).

The run cuts a mesh in two: the etcd leader, Pilot, one instance and one client sidecar on
the minority side; the other members, instance and client on the majority side. This module
turns the history into claims:

    etcd_claims(ctx, data, side, p0, p1)       # linearizable, no minority write, stale reads
    registry_claims(ctx, data, side, p0, p1, ttl_s)   # the live instance's lease expires
    pilot_claims(ctx, data, side, p0, p1)             # Pilot keeps its last snapshot
    routing_claims(ctx, data, side, p0, p1, end)      # what the sidecars did meanwhile
    plot_sides(ctx.out / "sides.png", data, side, p0, p1)   # success and instance share per client

``p0``: the cut is complete; ``p1``: the heal starts (every "after the heal" counts from it);
``end``: the workloads' last send time.
``side`` is a :class:`Sides` (who is where). The pure helpers (:func:`outcome_counts`,
:func:`removal_windows`, :func:`stream_summary`, :func:`first_answer_after`) are unit-tested
in tests/unit/test_experiment_split.py.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

from lablib.etcd import etcd_ops
from lablib.mesh import PilotWatcher
from testbed.history import HistoryData
from testbed.run.checkers.linearizability import check_linearizability
from testbed.run.checkers.requests import check_failover, check_removed_endpoint_routing
from testbed.run.checkers.stale import check_stale_reads
from testbed.run.experiment import Context
from testbed.run.outlier_events import first_ejection
from testbed.run.results import pyplot

__all__ = ["Sides", "NO_RETRIES", "pilot_watcher", "outcome_counts", "removal_windows", "stream_summary",
           "first_answer_after", "etcd_claims", "registry_claims", "pilot_claims", "routing_claims", "plot_sides"]

NO_RETRIES = "/no-retries"     # suffix of a client label: that stream sent "x-retries: off"


@dataclass(frozen=True)
class Sides:
    """Who is on which side: a client host and an instance name per side."""

    minority_client: str          # e.g. "c2"
    majority_client: str          # e.g. "c1"
    minority_instance: str        # e.g. "echo-v1-1" (on the minority's host)
    majority_instance: str        # e.g. "echo-v1-0"


def pilot_watcher(ctx: Context, socket: Any) -> PilotWatcher:
    """A started :class:`~lablib.mesh.PilotWatcher` polling the Pilot at ``socket``
    (a deployed mesh's ``mesh.socket``); stopped at the end of the run (history still open)
    whatever happens, or earlier by ``.stop()``."""
    w = PilotWatcher(ctx, socket)
    ctx.finishers.insert(0, w.stop)
    return w.start()


# --- pure helpers ------------------------------------------------------------------------------

def outcome_counts(ops: Iterable[dict]) -> dict[str, int]:
    """How many of ``ops`` (:func:`lablib.etcd.etcd_ops` dicts) ended ok / fail / info
    (unknown outcome) / None (never completed)."""
    out = {"ok": 0, "fail": 0, "info": 0, "none": 0}
    for o in ops:
        out[o["outcome"] if o["outcome"] in out else "none"] += 1
    return out


def removal_windows(events: Iterable[Any], instance: str, source: str = "observer") -> list[tuple[float, float]]:
    """``[(removed_t, re_added_t), ...]`` of ``instance`` by the registry observer's
    ``endpoint_removed``/``endpoint_added`` events; ``math.inf`` if never re-added."""
    out: list[tuple[float, float]] = []
    gone: float | None = None
    for e in sorted((e for e in events if e.source == source and e.details.get("instance") == instance),
                    key=lambda e: e.t):
        if e.kind == "endpoint_removed" and gone is None:
            gone = e.t
        elif e.kind == "endpoint_added" and gone is not None:
            out.append((gone, e.t))
            gone = None
    if gone is not None:
        out.append((gone, math.inf))
    return out


def stream_summary(requests: Iterable[Any], t0: float, t1: float, slow_s: float = 0.9) -> dict[str, Any]:
    """Requests started in [t0, t1): count, ok, success share, answers per instance, failures
    per reason (response flags, else status, else the client's error), and ``slow_ok``:
    successes that took >= ``slow_s`` (with a 1 s connect timeout: answered by a retry)."""
    rs = [r for r in requests if t0 <= r.t_start < t1]
    ok = [r for r in rs if r.ok]
    by_instance: dict[str, int] = {}
    for r in ok:
        by_instance[r.instance or "?"] = by_instance.get(r.instance or "?", 0) + 1
    failures: dict[str, int] = {}
    for r in rs:
        if not r.ok:
            why = r.flags or (f"HTTP {r.status}" if r.status is not None else (r.error or "?").split(":")[0])
            failures[why] = failures.get(why, 0) + 1
    return {"requests": len(rs), "ok": len(ok), "success": round(len(ok) / len(rs), 4) if rs else None,
            "by_instance": dict(sorted(by_instance.items())), "failures": dict(sorted(failures.items())),
            "slow_ok": sum(1 for r in ok if r.latency_s >= slow_s)}


def first_answer_after(requests: Iterable[Any], instance: str, t: float) -> float | None:
    """Seconds from ``t`` to the start of the first successful request at or after ``t``
    answered by ``instance``; None if there is none."""
    ts = [r.t_start for r in requests if r.ok and r.instance == instance and r.t_start >= t]
    return round(min(ts) - t, 2) if ts else None


def _by_client(requests: Sequence[Any], client: str) -> list[Any]:
    return sorted((r for r in requests if r.client == client), key=lambda r: r.t_start)


# --- claims --------------------------------------------------------------------------------------

def etcd_claims(ctx: Context, data: HistoryData, side: Sides, p0: float, p1: float) -> None:
    """Linearizability and stale reads (verdicts); no write acknowledged on the minority;
    the majority keeps writing; stale serializable reads on the minority."""
    ctx.verdicts["linearizability (linearizable ops)"] = check_linearizability(
        [e for e in data.etcd if not e.serializable])
    stale = ctx.verdicts["stale reads"] = check_stale_reads(data.etcd)
    ops = etcd_ops(data.etcd)

    def writes(client: str, a: float, b: float) -> list[dict]:
        return [o for o in ops if o["f"] == "write" and str(o["process"]).startswith(client + "-")
                and a <= o["t_invoke"] < b]
    minority = writes(side.minority_client, p0 + 0.2, p1)
    n = outcome_counts(minority)
    acked = sum(o["outcome"] == "ok" and o["t_done"] < p1 for o in minority)   # later: after the heal
    ctx.claim("no write acknowledged on the minority during the partition", bool(minority) and acked == 0,
              f"{len(minority)} writes from {side.minority_client}: {n['fail']} failed, {n['info']} unknown "
              f"outcome, {acked} acknowledged during the partition ({n['ok'] - acked} after the heal)", **n)
    major = writes(side.majority_client, p0 + 3.0, p1)
    share = sum(o["outcome"] == "ok" for o in major) / len(major) if major else 0.0
    ctx.claim("the majority keeps accepting writes (>= 90 % from 3 s after the cut)", share >= 0.9,
              f"{share:.0%} of {len(major)} writes from {side.majority_client} acknowledged")
    ctx.claim("serializable reads on the minority are stale (and counted)", stale.stale_serializable > 0,
              f"{stale.stale_serializable} stale of {stale.serializable_reads} serializable reads; "
              f"{stale.stale_linearizable} stale linearizable reads")
    back = [o["t_invoke"] - p1 for o in writes(side.minority_client, p1, math.inf) if o["outcome"] == "ok"]
    ctx.metrics["minority_writes_after_heal_s"] = round(back[0], 2) if back else None


def registry_claims(ctx: Context, data: HistoryData, side: Sides, p0: float, p1: float, ttl_s: int) -> None:
    """The live minority instance's lease expires on the majority (within TTL + 5 s of the
    cut: TTL after the last keep-alive, the new leader's election-timeout extension, the
    observer's period); the majority instance is never removed; re-registered after the heal."""
    gone = [w for w in removal_windows(data.events, side.minority_instance) if p0 <= w[0] <= p1]
    lost = removal_windows(data.events, side.majority_instance)
    m = ctx.metrics
    m.update(lease_expired_after_s=round(gone[0][0] - p0, 2) if gone else None,
             reregistered_after_heal_s=round(gone[0][1] - p1, 2) if gone and gone[0][1] < math.inf else None)
    ctx.claim(f"the live minority instance's lease ({ttl_s} s) expires on the majority during the partition",
              bool(gone) and gone[0][0] - p0 <= ttl_s + 5 and not lost,
              f"{side.minority_instance} removed {m['lease_expired_after_s']} s after the cut; "
              f"{side.majority_instance} (majority) removed {len(lost)} times")
    after = m["minority_writes_after_heal_s"]
    ctx.claim("heal: the instance re-registered and the minority client writes again within 10 s",
              m["reregistered_after_heal_s"] is not None and m["reregistered_after_heal_s"] <= 10
              and after is not None and after <= 10,
              f"{side.minority_instance} back {m['reregistered_after_heal_s']} s after the heal; first "
              f"acknowledged {side.minority_client} write {after} s after it")


def pilot_claims(ctx: Context, data: HistoryData, side: Sides, p0: float, p1: float) -> None:
    """Pilot (minority) flags its watch as failed, keeps its last snapshot, recovers."""
    disc = [e for e in data.events if e.source == "pilot" and e.kind == "discovery"]
    down = [e.t - p0 for e in disc if not e.details["healthy"] and p0 <= e.t <= p1]
    up = [e.t - p1 for e in disc if e.details["healthy"] and e.t > p1]
    during = [e for e in disc if e.t <= p1]
    served = during[-1].details["endpoints"] if during else []
    m = ctx.metrics
    m.update(pilot_unhealthy_after_s=round(down[0], 2) if down else None,
             pilot_healthy_after_heal_s=round(up[0], 2) if up else None, pilot_served_at_heal=served,
             pilot_discovery=[(round(e.t, 2), e.details["healthy"], e.details["endpoints"]) for e in disc])
    # the old leader steps down after an election timeout without a quorum (CheckQuorum, 1-2 s);
    # etcd then cancels hasleader watches after 3 leaderless checks, one per election timeout
    # (v3rpc monitorLeader: 2-3 s more); + the watcher's 0.25 s polling: <= 7 s with 1 s timeouts
    ctx.claim("Pilot on the minority flags its registry watch as failed (hasleader) within 7 s of the cut,"
              " healthy again within 10 s of the heal", bool(down) and down[0] <= 7 and bool(up) and up[0] <= 10,
              f"unhealthy {m['pilot_unhealthy_after_s']} s after the cut, healthy "
              f"{m['pilot_healthy_after_heal_s']} s after the heal")
    gap = [e.t - p1 for e in disc if e.t > p1 and side.minority_instance not in e.details["endpoints"]]
    back = [e.t - p1 for e in disc if gap and e.t - p1 > gap[0] and side.minority_instance in e.details["endpoints"]]
    m["pilot_without_minority_instance_after_heal_s"] = [round(gap[0], 2), round(back[0], 2) if back else None] \
        if gap else None      # Pilot relisted before the agent re-registered: a live instance dropped
    ctx.claim("meanwhile Pilot keeps its last snapshot (the expired minority instance still served)",
              side.minority_instance in served, f"Pilot's endpoints at the end of the cut: {served}")


def routing_claims(ctx: Context, data: HistoryData, side: Sides, p0: float, p1: float, end: float) -> None:
    """What the sidecars did: the minority sidecar routes to the removed instance (counted by
    check_removed_endpoint_routing); neither side is answered across the cut; retries and
    outlier detection keep the cut invisible; after the heal both clients get both instances."""
    reqs = sorted(data.requests, key=lambda r: r.t_start)
    mino, majo = side.minority_client, side.majority_client
    observed = [e for e in data.events if e.source == "observer"]
    removed = check_removed_endpoint_routing(_by_client(reqs, mino) + _by_client(reqs, mino + NO_RETRIES), observed)
    win = removal_windows(data.events, side.minority_instance)
    m = ctx.metrics
    m["removed_endpoint_routing"] = asdict(removed)    # a finding here, not a failure: in metrics
    m["removed_window"] = [round(win[0][0], 2), round(win[0][1], 2)] if win else None
    streams = {c: _by_client(reqs, c) for c in (mino, mino + NO_RETRIES, majo, majo + NO_RETRIES)}
    cut = {c: stream_summary(rs, p0 + 0.5, p1) for c, rs in streams.items()}   # from 0.5 s: fully cut
    m["cut"] = cut
    m["before"] = {c: stream_summary(rs, 0.0, p0) for c, rs in streams.items()}
    in_cut = check_removed_endpoint_routing([r for r in reqs if r.client.startswith(mino) and r.t_start < p1],
                                            observed).count
    m["removed_endpoint_requests_in_cut"] = in_cut
    m["ejected_in_cut"] = ejections_in_cut(data.events, side, p0, p1)
    ctx.claim(f"the minority sidecar keeps routing to {side.minority_instance} after the registry removed it",
              in_cut > 0 and bool(win),
              f"{removed.count} requests from {mino} ({in_cut} during the cut) answered by "
              f"{side.minority_instance} between its removal "
              f"(t={m['removed_window'][0] if win else None} s) and its re-registration "
              f"(t={m['removed_window'][1] if win else None} s)", count=removed.count)
    crossed = {c: sorted(set(s["by_instance"]) - {side.minority_instance if c.startswith(mino)
                                                  else side.majority_instance}) for c, s in cut.items()}
    ctx.claim("during the cut each client is answered only by the instance on its own side",
              all(s["ok"] > 0 for s in cut.values()) and not any(crossed.values()),
              "; ".join(f"{c}: {s['by_instance']}" for c, s in cut.items()))
    with_r = [cut[c]["success"] or 0.0 for c in (mino, majo)]
    fails = [cut[c]["requests"] - cut[c]["ok"] for c in (mino + NO_RETRIES, majo + NO_RETRIES)]
    ctx.claim("retries hide the unreachable endpoint (>= 95 % ok during the cut); without retries "
              "requests fail until outlier detection ejects it", min(with_r) >= 0.95 and min(fails) > 0,
              f"with retries: {mino} {with_r[0]:.1%}, {majo} {with_r[1]:.1%} ok ({cut[mino]['slow_ok']} and "
              f"{cut[majo]['slow_ok']} of them after a 1 s connect timeout); without: "
              f"{mino} {fails[0]} failed {cut[mino + NO_RETRIES]['failures']}, {majo} {fails[1]} failed "
              f"{cut[majo + NO_RETRIES]['failures']}")
    heal_claims(ctx, streams, side, p1, end)


def ejections_in_cut(events: Any, side: Sides, p0: float, p1: float) -> dict[str, Any]:
    """Per client sidecar: when (s after the cut) it first ejected the instance across the
    cut (from the sidecars' outlier event logs in the history; None: not ejected)."""
    out = {}
    for client, other in ((side.majority_client, side.minority_instance),
                          (side.minority_client, side.majority_instance)):
        ej = first_ejection(events, other, p0, p1, sidecar=f"client@{client}")
        out[client] = {"instance": other, "after_s": round(ej.t - p0, 3) if ej else None,
                       "type": ej.details["type"] if ej else None}
    return out


def heal_claims(ctx: Context, streams: dict[str, list[Any]], side: Sides, p1: float, end: float) -> None:
    """After the heal (from its start ``p1``): every stream error-free within 10 s (every
    request from then on to ``end`` succeeds); both clients answered by both instances again
    within 15 s (the outlier ejection still in force, up to baseEjectionTime x ejections, and
    Pilot's relist delay it)."""
    rec = {c: check_failover(rs, p1, until=end).recovered_s for c, rs in streams.items()}
    both = {c: {i: first_answer_after(streams[c], i, p1) for i in (side.minority_instance, side.majority_instance)}
            for c in (side.minority_client, side.majority_client)}
    rec = {c: None if v is None else round(v, 2) for c, v in rec.items()}
    ctx.metrics.update(error_free_after_heal_s=rec, answered_after_heal_s=both)
    ctx.claim("heal: every stream is error-free within 10 s (and stays so to the end)",
              all(v is not None and v <= 10 for v in rec.values()), f"error-free after {rec} s")
    late = [v for d in both.values() for v in d.values()]
    ctx.claim("heal: both clients are answered by both instances again within 15 s",
              all(v is not None and v <= 15 for v in late), f"first answer after the heal (s): {both}")


def plot_sides(path: Any, data: HistoryData, side: Sides, p0: float, p1: float, window_s: float = 1.0) -> Any:
    """``sides.png``: per second and per client stream, the success rate (top) and the share of
    answers from the minority instance (bottom); the cut shaded, the registry's removal of
    the minority instance hatched."""
    plt = pyplot()
    reqs = sorted(data.requests, key=lambda r: r.t_start)
    if not reqs:
        return None
    t0 = reqs[0].t_start
    fig, (ax_ok, ax_mi) = plt.subplots(2, 1, sharex=True, figsize=(9, 5.5))
    try:
        for c in (side.minority_client, side.minority_client + NO_RETRIES, side.majority_client,
                  side.majority_client + NO_RETRIES):
            rs = _by_client(reqs, c)
            bins = [stream_summary(rs, t0 + i * window_s, t0 + (i + 1) * window_s)
                    for i in range(int((rs[-1].t_start - t0) / window_s) + 1)] if rs else []
            xs = [t0 + (i + 0.5) * window_s for i in range(len(bins))]
            style = "--" if c.endswith(NO_RETRIES) else "-"
            ax_ok.plot(xs, [b["success"] for b in bins], style, marker=".", label=c)
            ax_mi.plot(xs, [b["by_instance"].get(side.minority_instance, 0) / b["ok"] if b["ok"] else None
                            for b in bins], style, marker=".", label=c)
        for ax in (ax_ok, ax_mi):
            ax.axvspan(p0, p1, color="tab:red", alpha=0.12, label="partition" if ax is ax_ok else None)
            for lo, hi in removal_windows(data.events, side.minority_instance):
                ax.axvspan(lo, min(hi, reqs[-1].t_end), fill=False, hatch="//", edgecolor="grey", linewidth=0,
                           label=f"registry: {side.minority_instance} removed" if ax is ax_ok else None)
            ax.set_ylim(-0.05, 1.05)
        ax_ok.set_ylabel("success rate")
        ax_mi.set_ylabel(f"share by {side.minority_instance}")
        ax_mi.set_xlabel(f"time (s), {window_s:g} s windows")
        ax_ok.legend(loc="lower left", fontsize="small", ncol=3)
        fig.suptitle("registry split brain: each client's view")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path
