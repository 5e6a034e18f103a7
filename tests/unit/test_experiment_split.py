"""lablib.split: the pure helpers and the claims of registry_split_brain on
synthetic histories (a cut from t=10 to t=30, the run ends at t=45)."""
from __future__ import annotations

import argparse
import dataclasses
import math

import pytest

from testbed.run.experiment import Context
from lablib.split import (NO_RETRIES, Sides, etcd_claims, first_answer_after, outcome_counts,
                                      pilot_claims, plot_sides, registry_claims, removal_windows, routing_claims,
                                      stream_summary)
from testbed.history import EtcdOp, Event, HistoryData, Request

SIDE = Sides("c2", "c1", "echo-v1-1", "echo-v1-0")
P0, P1, END = 10.0, 30.0, 45.0
KEY = "/minimesh/split"


def ctx(tmp_path) -> Context:
    return Context("t", argparse.Namespace(), tmp_path, 1, True)


def op(t, process, op_type, f="write", value=None, serializable=False):
    return EtcdOp(t, process, op_type, f, KEY, value, serializable)


def requests(cross: bool = False) -> list[Request]:
    """Every client answered by both instances outside the cut, by its own side's during it;
    the no-retries streams lose two requests at the cut (the unreachable endpoint)."""
    out = []
    for i in range(int(END / 0.1)):
        t = i * 0.1
        for client in ("c1", "c2", "c1" + NO_RETRIES, "c2" + NO_RETRIES):
            own = SIDE.minority_instance if client.startswith("c2") else SIDE.majority_instance
            other = SIDE.majority_instance if own == SIDE.minority_instance else SIDE.minority_instance
            inst = (own if i % 2 else other) if not P0 <= t < P1 else own
            if cross and client == "c1" and P0 + 5 <= t < P0 + 5.05:
                inst = SIDE.minority_instance
            if client.endswith(NO_RETRIES) and P0 + 0.5 <= t < P0 + 0.7:
                out.append(Request(t, t + 1.0, 503, flags="UC", client=client))
            else:
                out.append(Request(t, t + (1.0 if client in ("c1", "c2") and P0 <= t < P0 + 0.3 else 0.01), 200,
                                   instance=inst, version="v1", client=client))
    return out


def events(majority_removed: bool = False, minority_removed: bool = True) -> list[Event]:
    ev = [Event(1.0, "observer", "endpoint_added", {"instance": SIDE.majority_instance}),
          Event(1.0, "observer", "endpoint_added", {"instance": SIDE.minority_instance}),
          Event(1.0, "pilot", "discovery", {"healthy": True, "endpoints": ["echo-v1-0", "echo-v1-1"]}),
          Event(13.0, "pilot", "discovery", {"healthy": False, "endpoints": ["echo-v1-0", "echo-v1-1"]}),
          Event(30.6, "pilot", "discovery", {"healthy": True, "endpoints": ["echo-v1-0"]}),
          Event(32.0, "pilot", "discovery", {"healthy": True, "endpoints": ["echo-v1-0", "echo-v1-1"]})]
    if minority_removed:
        ev += [Event(15.0, "observer", "endpoint_removed", {"instance": SIDE.minority_instance}),
               Event(32.0, "observer", "endpoint_added", {"instance": SIDE.minority_instance})]
    if majority_removed:
        ev += [Event(20.0, "observer", "endpoint_removed", {"instance": SIDE.majority_instance})]
    return ev


def etcd(minority_ack_in_cut: bool = False) -> list[EtcdOp]:
    """c1 writes c1-i every second (all acknowledged); c2 writes during the cut never
    complete (info) and its serializable reads return c1-9, from before the cut; after the
    heal c2's writes are acknowledged again."""
    out: list[EtcdOp] = []
    for i in range(45):
        t = float(i)
        out += [op(t, f"c1-{i}", "invoke", value=f"c1-{i}"), op(t + 0.01, f"c1-{i}", "ok", value=f"c1-{i}")]
        if P0 <= t < P1:
            done = "ok" if minority_ack_in_cut and i == 20 else "info"
            out += [op(t + 0.3, f"c2-{i}", "invoke", value=f"c2-{i}"), op(t + 1.3, f"c2-{i}", done, value=f"c2-{i}")]
            out += [op(t + 0.5, f"c2-{i}-r1", "invoke", "read", serializable=True),
                    op(t + 0.51, f"c2-{i}-r1", "ok", "read", "c1-9", serializable=True)]
        elif t >= P1:
            out += [op(t + 0.3, f"c2-{i}", "invoke", value=f"c2-{i}"), op(t + 0.31, f"c2-{i}", "ok", value=f"c2-{i}")]
    return out


def data(**kw) -> HistoryData:
    ev = {k: kw.pop(k) for k in ("majority_removed", "minority_removed") if k in kw}
    return HistoryData(tuple(requests(**kw.pop("req", {})) + events(**ev) + etcd(**kw)))


def analyze(tmp_path, d: HistoryData) -> Context:
    c = ctx(tmp_path)
    etcd_claims(c, d, SIDE, P0, P1)
    registry_claims(c, d, SIDE, P0, P1, 3)
    pilot_claims(c, d, SIDE, P0, P1)
    routing_claims(c, d, SIDE, P0, P1, END)
    return c


# --- pure helpers --------------------------------------------------------------------------------

def test_outcome_counts():
    ops = [{"outcome": o} for o in ("ok", "ok", "fail", "info", None)]
    assert outcome_counts(ops) == {"ok": 2, "fail": 1, "info": 1, "none": 1}
    assert outcome_counts([]) == {"ok": 0, "fail": 0, "info": 0, "none": 0}


def test_removal_windows_pairs_and_open_end():
    ev = [Event(5, "observer", "endpoint_removed", {"instance": "a"}),
          Event(6, "observer", "endpoint_removed", {"instance": "a"}),     # repeated: the first counts
          Event(9, "observer", "endpoint_added", {"instance": "a"}),
          Event(12, "pilot", "endpoint_removed", {"instance": "a"}),       # another source: ignored
          Event(20, "observer", "endpoint_removed", {"instance": "a"}),
          Event(3, "observer", "endpoint_removed", {"instance": "b"})]
    assert removal_windows(reversed(ev), "a") == [(5, 9), (20, math.inf)]
    assert removal_windows(ev, "b") == [(3, math.inf)]
    assert removal_windows(ev, "c") == []
    assert removal_windows(ev, "a", source="pilot") == [(12, math.inf)]


def test_stream_summary_window_reasons_and_slow():
    rs = [Request(0.0, 0.01, 200, instance="x"), Request(0.5, 1.6, 200, instance="y"),
          Request(0.7, 1.7, 503, flags="UC"), Request(0.8, 1.0, 504),
          Request(0.9, 5.9, None, error="client timeout after 5 s"), Request(1.0, 1.01, 200, instance="x")]
    s = stream_summary(rs, 0.0, 1.0)                 # [0, 1): the last one is outside
    assert s["requests"] == 5 and s["ok"] == 2 and s["success"] == pytest.approx(0.4)
    assert s["by_instance"] == {"x": 1, "y": 1}
    assert s["failures"] == {"HTTP 504": 1, "UC": 1, "client timeout after 5 s": 1}
    assert s["slow_ok"] == 1
    assert stream_summary(rs, 10, 11) == {"requests": 0, "ok": 0, "success": None, "by_instance": {},
                                          "failures": {}, "slow_ok": 0}


def test_first_answer_after():
    rs = [Request(1.0, 1.1, 200, instance="a"), Request(2.0, 2.1, 503, instance="b"),
          Request(3.5, 3.6, 200, instance="b")]
    assert first_answer_after(rs, "b", 1.0) == 2.5           # the failed one does not count
    assert first_answer_after(rs, "a", 1.0) == 0.0
    assert first_answer_after(rs, "a", 1.5) is None


# --- claims on synthetic histories ------------------------------------------------------------------

def test_every_claim_holds_on_the_expected_history(tmp_path):
    c = analyze(tmp_path, data())
    bad = {k: getattr(v, "detail", v) for k, v in c.verdicts.items() if not v.valid}
    assert not bad
    m = c.metrics
    assert m["lease_expired_after_s"] == 5.0 and m["reregistered_after_heal_s"] == 2.0
    assert m["pilot_unhealthy_after_s"] == 3.0 and m["pilot_healthy_after_heal_s"] == pytest.approx(0.6)
    assert m["pilot_served_at_heal"] == ["echo-v1-0", "echo-v1-1"]
    assert m["pilot_without_minority_instance_after_heal_s"] == [pytest.approx(0.6), 2.0]
    # c2 (both streams) answered by echo-v1-1 strictly after its removal at t=15 up to its
    # re-registration at 32: during the cut every request (2 x 149), after the heal every other one
    assert m["removed_endpoint_requests_in_cut"] == 2 * 149
    assert m["removed_endpoint_routing"]["count"] == 2 * 149 + 2 * 10
    assert m["cut"]["c1" + NO_RETRIES]["failures"] == {"UC": 2}
    assert m["cut"]["c2"]["by_instance"] == {"echo-v1-1": 195}
    assert m["error_free_after_heal_s"] == {c: 0.0 for c in ("c2", "c2" + NO_RETRIES, "c1", "c1" + NO_RETRIES)}
    assert m["minority_writes_after_heal_s"] == pytest.approx(0.3)


def test_a_minority_write_acknowledged_during_the_cut_fails_its_claim(tmp_path):
    c = analyze(tmp_path, data(minority_ack_in_cut=True))
    assert not c.verdicts["no write acknowledged on the minority during the partition"].valid
    assert c.verdicts["the majority keeps accepting writes (>= 90 % from 3 s after the cut)"].valid


def test_lease_claims_need_the_minority_removed_and_the_majority_kept(tmp_path):
    name = "the live minority instance's lease (3 s) expires on the majority during the partition"
    assert not analyze(tmp_path, data(majority_removed=True)).verdicts[name].valid
    c = analyze(tmp_path, data(minority_removed=False))
    assert not c.verdicts[name].valid
    assert not c.verdicts["the minority sidecar keeps routing to echo-v1-1 after the registry removed it"].valid


def test_a_request_answered_across_the_cut_fails_the_sides_claim(tmp_path):
    c = analyze(tmp_path, data(req={"cross": True}))
    assert not c.verdicts["during the cut each client is answered only by the instance on its own side"].valid


def test_heal_claim_fails_when_errors_go_on(tmp_path):
    d = data()
    late = tuple(dataclasses.replace(r, status=503, instance="")
                 if isinstance(r, Request) and r.client == "c1" and 41 <= r.t_start < 42 else r for r in d.records)
    c = analyze(tmp_path, HistoryData(late))
    v = c.verdicts["heal: every stream is error-free within 10 s (and stays so to the end)"]
    assert not v.valid and c.metrics["error_free_after_heal_s"]["c1"] == pytest.approx(12.0)


def test_plot_sides_writes_a_png(tmp_path):
    path = plot_sides(tmp_path / "sides.png", data(), SIDE, P0, P1)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    assert plot_sides(tmp_path / "none.png", HistoryData(tuple(events())), SIDE, P0, P1) is None
    assert not (tmp_path / "none.png").exists()
