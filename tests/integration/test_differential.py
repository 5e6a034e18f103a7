"""Differential tests: the same config and request sequence through real Envoy and
minimesh-proxy (both on loopback, fresh echo upstreams each) give the same outcomes:
status, upstream instance chosen, Host/path/x-mm-* headers seen upstream, number of
upstream attempts, response x-mm-*/x-echo-* headers, direct_response bodies.
Weighted routing: each proxy's share for cluster a lies in the binomial 99.9 % interval."""
from __future__ import annotations

import math

import pytest

from tests.support.differential import check_expectations, differences, envoy_outcomes, run_sequence
from tests.support.scenarios import SCENARIOS, WEIGHT_A, WEIGHTED, WEIGHTED_N

Z99 = 3.29  # two-sided 99.9 %: several such checks run in CI, each must flake < 0.1 %


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_same_outcomes_as_envoy(scenario, envoy_bin, minimesh_proxy):
    expected = envoy_outcomes(scenario)
    got = run_sequence("minimesh", scenario.config, scenario.upstreams, scenario.requests)
    diff = differences(scenario, expected, got)
    diff += [f"(timing) {line}" for line in check_expectations(scenario, got) if "elapsed" in line]
    assert diff == [], "minimesh-proxy differs from real Envoy:\n" + "\n".join(diff)


def _share_a(kind: str) -> tuple[int, int, int]:
    outs = (envoy_outcomes(WEIGHTED) if kind == "envoy"
            else run_sequence(kind, WEIGHTED.config, WEIGHTED.upstreams, WEIGHTED.requests))
    a = sum(o.instance == "a-0" for o in outs)
    b = sum(o.instance == "b-0" for o in outs)
    return a, b, len(outs) - a - b


def _assert_binomial(kind: str, a: int, b: int, other: int) -> None:
    n = WEIGHTED_N
    tol = Z99 * math.sqrt(n * WEIGHT_A * (1 - WEIGHT_A))
    assert other == 0, f"{kind}: {other} of {n} weighted requests did not reach a or b"
    assert abs(a - n * WEIGHT_A) <= tol, (f"{kind}: {a}/{n} to a, expected {n * WEIGHT_A:.0f} "
                                          f"± {tol:.1f} (binomial 99.9 %)")


def test_weighted_80_20_envoy(envoy_bin):
    _assert_binomial("envoy", *_share_a("envoy"))


def test_weighted_80_20_minimesh(envoy_bin, minimesh_proxy):
    _assert_binomial("minimesh", *_share_a("minimesh"))
