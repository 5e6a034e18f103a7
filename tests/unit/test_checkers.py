"""Checkers over requests and etcd ops, and the statistics under them."""
from __future__ import annotations

import random
from fractions import Fraction
from math import comb

import pytest

from testbed.run.checkers import (check_availability, check_failover, check_removed_endpoint_routing, check_split,
                              check_stale_reads, windows)
from testbed.run.checkers.stats import binomial_two_sided, chi2_sf, percentile, wilson
from testbed.history import EtcdOp, Event, Request


def req(t, ok=True, lat=0.01, version="v1", instance="i1"):
    return Request(t, t + lat, 200 if ok else 503, instance=instance, version=version)


# --- statistics (reference values from R / SciPy) ---------------------------------------------

def test_wilson_reference_values():
    lo, hi = wilson(5, 100, 0.95)
    assert lo == pytest.approx(0.02154, abs=1e-4) and hi == pytest.approx(0.11175, abs=1e-4)
    assert wilson(0, 10)[0] == 0.0 and wilson(0, 0) == (0.0, 1.0)
    lo, hi = wilson(50, 50, 0.99)
    assert hi == 1.0 and lo == pytest.approx(0.8826, abs=1e-3)


def exact_binomial(k, n, p):
    """Oracle in exact rational arithmetic."""
    q = Fraction(p).limit_denominator(10**6)
    pmf = [comb(n, i) * q**i * (1 - q)**(n - i) for i in range(n + 1)]
    return float(sum(x for x in pmf if x <= pmf[k]))


def test_binomial_reference_values():
    assert binomial_two_sided(3, 10, 0.5) == pytest.approx(0.34375)
    assert binomial_two_sided(5, 100, 0.05) == pytest.approx(1.0)
    for k, n, p in [(10, 100, 0.05), (2, 40, 0.2), (17, 30, 0.5), (0, 20, 0.1)]:
        assert binomial_two_sided(k, n, p) == pytest.approx(exact_binomial(k, n, p), rel=1e-9)
    assert binomial_two_sided(0, 5, 0.0) == 1.0 and binomial_two_sided(1, 5, 0.0) == 0.0


@pytest.mark.parametrize("x,dof,p", [(3.841458820694124, 1, 0.05), (5.991464547107979, 2, 0.05),
                                     (11.070497693516351, 5, 0.05), (0.0, 3, 1.0), (1.0, 1, 0.31731),
                                     (30.0, 10, 0.000857)])
def test_chi2_sf_reference_values(x, dof, p):
    assert chi2_sf(x, dof) == pytest.approx(p, rel=1e-3, abs=1e-6)


def test_percentile_nearest_rank():
    assert percentile([], 50) is None
    assert percentile([5, 1, 3, 2, 4], 50) == 3 and percentile(list(range(1, 101)), 99) == 99
    assert percentile([7], 99) == 7


# --- availability -------------------------------------------------------------------------

def test_windows_and_availability():
    rs = [req(t / 10) for t in range(100)]                          # 10 req/s for 10 s
    rs += [req(5 + t / 10, ok=False) for t in range(5)]             # 5 errors in [5, 6)
    ws = windows(rs, 1.0)
    assert len(ws) == 10 and ws[5].requests == 15 and ws[5].ok == 10
    assert ws[0].p50_ms == pytest.approx(10) and ws[0].success_rate == 1.0
    v = check_availability(rs, window_s=1.0, min_success=0.9)
    assert not v.valid and v.worst_window_start == 5 and v.worst_success_rate == pytest.approx(10 / 15)
    assert v.windows_below == 1 and v.requests == 105 and v.ok == 100 and v.empty_windows == 0
    assert check_availability(rs, window_s=1.0, min_success=0.6).valid


def test_availability_reports_empty_windows_and_no_data():
    v = check_availability([req(0), req(3.5)], window_s=1.0)
    assert v.valid and v.empty_windows == 2
    assert not check_availability([], 1.0).valid


# --- failover -----------------------------------------------------------------------------

def test_failover_times():
    rs = [req(t / 10, ok=not (21 <= t <= 25 or t == 28)) for t in range(60)]   # errors 2.1-2.5 and 2.8
    v = check_failover(rs, fault_t=2.0)
    assert v.errors == 6 and v.first_error_s == pytest.approx(0.1)
    assert v.first_success_s == pytest.approx(0.6) and v.recovered_s == pytest.approx(0.9)
    assert v.valid
    assert not check_failover(rs, fault_t=2.0, max_recovery_s=0.5).valid


def test_failover_no_errors_and_never_recovered():
    rs = [req(t / 10) for t in range(30)]
    v = check_failover(rs, fault_t=1.0)
    assert v.valid and v.errors == 0 and v.recovered_s == 0.0
    bad = rs + [req(3.5, ok=False)]
    v = check_failover(bad, fault_t=1.0)
    assert not v.valid and v.recovered_s is None
    assert check_failover(bad, fault_t=1.0, until=3.4).valid


# --- routing split ----------------------------------------------------------------------------

def split_requests(rng, n, shares):
    versions = list(shares)
    return [Request(i, i + 0.01, 200, version=rng.choices(versions, [shares[v] for v in versions])[0])
            for i in range(n)]


def test_split_consistent_with_weights():
    v = check_split(split_requests(random.Random(1), 4000, {"v1": 95, "v2": 5}), {"v1": 95, "v2": 5})
    assert v.valid and v.test == "binomial" and v.requests == 4000
    v2 = {s.version: s for s in v.shares}["v2"]
    assert v2.ci_low < 0.05 < v2.ci_high and v2.within_ci and abs(v2.observed - 0.05) < 0.015


def test_split_detects_a_wrong_split():
    v = check_split(split_requests(random.Random(2), 4000, {"v1": 90, "v2": 10}), {"v1": 95, "v2": 5})
    assert not v.valid and v.p_value < 1e-6
    assert not {s.version: s for s in v.shares}["v2"].within_ci


def test_split_three_versions_uses_chi_square():
    shares = {"a": 50, "b": 30, "c": 20}
    v = check_split(split_requests(random.Random(3), 3000, shares), shares)
    assert v.valid and v.test == "chi-square" and v.statistic is not None
    v = check_split(split_requests(random.Random(3), 3000, {"a": 40, "b": 40, "c": 20}), shares)
    assert not v.valid


def test_split_false_rejection_rate_matches_alpha():
    rng = random.Random(4)
    rejections = sum(not check_split(split_requests(rng, 300, {"v1": 80, "v2": 20}), {"v1": 80, "v2": 20},
                                     alpha=0.05).valid for _ in range(300))
    assert 3 <= rejections <= 30, rejections            # ~5% of 300 = 15


def test_split_zero_weight_and_unknown_versions():
    rs = [Request(0, 1, 200, version="v1")] * 50 + [Request(0, 1, 200, version="v3")]
    v = check_split(rs, {"v1": 100, "v2": 0})
    assert not v.valid and v.unexpected == (("v3", 1),)
    assert check_split([Request(0, 1, 200, version="v1")] * 5, {"v1": 1, "v2": 0}).valid
    assert not check_split([Request(0, 1, 503, version="v1")], {"v1": 1}).valid      # only failures: no data
    with pytest.raises(ValueError):
        check_split(rs, {"v1": 0})


# --- routed to a removed endpoint --------------------------------------------------------------

def test_removed_endpoint_routing():
    events = [Event(10, "registry", "endpoint_removed", {"instance": "b-1"}),
              Event(30, "registry", "endpoint_added", {"instance": "b-1"}),
              Event(40, "registry", "endpoint_removed", {"instance": "b-2"}),
              Event(41, "pilot", "config_push", {})]
    rs = [req(t, instance="b-1") for t in (9, 10.5, 12, 20, 31)] + [req(t, instance="b-2") for t in (39, 45)]
    v = check_removed_endpoint_routing(rs, events, grace_s=1.0)
    assert v.count == 3 and v.removals == 2 and not v.valid      # b-1 at 12 and 20; b-2 at 45
    assert v.by_instance == (("b-1", 2), ("b-2", 1))
    assert check_removed_endpoint_routing(rs, events, grace_s=15.0).count == 0
    assert check_removed_endpoint_routing(rs, events, grace_s=1.0, allowed=3).valid


# --- stale reads -------------------------------------------------------------------------------

def E(t, p, typ, f, value=None, key="k", ser=False):
    return EtcdOp(t, p, typ, f, key, value, ser)


def test_stale_reads():
    events = [E(0, 1, "invoke", "write", 1), E(1, 1, "ok", "write", 1),
              E(2, 1, "invoke", "write", 2), E(3, 1, "ok", "write", 2),
              E(4, 2, "invoke", "read", ser=True), E(5, 2, "ok", "read", 1, ser=True),     # stale, serializable
              E(6, 3, "invoke", "read"), E(7, 3, "ok", "read", 1),                         # stale, linearizable
              E(8, 4, "invoke", "read"), E(9, 4, "ok", "read", 2),                         # fresh
              E(2.5, 5, "invoke", "read"), E(2.6, 5, "ok", "read", 1)]                     # during the write: fine
    v = check_stale_reads(events)
    assert (v.reads, v.serializable_reads, v.stale_serializable, v.stale_linearizable) == (4, 1, 1, 1)
    assert not v.valid and len(v.examples) == 2


def test_stale_reads_initial_value_and_info_writes():
    events = [E(0, 1, "invoke", "write", 1), E(1, 1, "ok", "write", 1),
              E(2, 2, "invoke", "read", ser=True), E(3, 2, "ok", "read", None, ser=True)]   # initial: stale
    assert check_stale_reads(events).stale_serializable == 1
    events = [E(0, 1, "invoke", "write", 1), E(1, 1, "info", "write", 1),
              E(2, 3, "invoke", "write", 2), E(3, 3, "ok", "write", 2),
              E(4, 2, "invoke", "read"), E(5, 2, "ok", "read", 1)]          # 1's writer may land after 2
    v = check_stale_reads(events)
    assert v.valid and v.stale_linearizable == 0
