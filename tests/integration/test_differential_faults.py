"""Fault filter and outlier detection, beyond the sequence comparison in
test_differential.py (scenario "faults"):

- outlier detection (consecutive_5xx: 3, max_ejection_percent 100): of 12 round-robin
  requests to a good and an always-503 endpoint, the bad one gets exactly 3 and is then
  ejected; /stats shows the ejection (outlier_detection.ejections_enforced_consecutive_5xx).
- abort by percentage header (x-envoy-fault-abort-request-percentage: 50): of 300
  requests, the aborted share lies in the binomial 99.9 % interval around 150.
"""
from __future__ import annotations

import math

import pytest

from tests.support.differential import Req, run_with_stats
from tests.support.scenarios import FAULTS

KINDS = ["envoy", "minimesh"]
Z99 = 3.29  # two-sided 99.9 %: several such checks run in CI, each must flake < 0.1 %


def _need(kind: str, request) -> None:
    request.getfixturevalue("envoy_bin")
    if kind == "minimesh":
        request.getfixturevalue("minimesh_proxy")


@pytest.mark.parametrize("kind", KINDS)
def test_outlier_detection_ejects_after_three_5xx(kind, request):
    _need(kind, request)
    reqs = [Req(f"/od/{i}") for i in range(12)]
    outs, stats = run_with_stats(kind, FAULTS.config, FAULTS.upstreams, reqs)
    bad = [o for o in outs if o.instance == "bad-0"]
    assert len(bad) == 3 and all(o.status == 503 for o in bad), f"{kind}: {[(o.instance, o.status) for o in outs]}"
    assert sum(o.status == 200 and o.instance == "good-0" for o in outs) == 9
    ejected = stats.get("cluster.od.outlier_detection.ejections_enforced_consecutive_5xx", 0)
    active = stats.get("cluster.od.outlier_detection.ejections_active", 0)
    assert (ejected, active) == (1, 1), \
        f"{kind}: ejections_enforced_consecutive_5xx={ejected} ejections_active={active}"


@pytest.mark.parametrize("kind", KINDS)
def test_abort_percentage_header(kind, request):
    _need(kind, request)
    n = 300
    reqs = [Req(f"/p/{i}", headers=(("x-envoy-fault-abort-request", "500"),
                                    ("x-envoy-fault-abort-request-percentage", "50"))) for i in range(n)]
    outs, _ = run_with_stats(kind, FAULTS.config, FAULTS.upstreams, reqs)
    aborted = sum(o.status == 500 and o.attempts == 0 for o in outs)
    passed = sum(o.status == 200 and o.attempts == 1 for o in outs)
    tol = Z99 * math.sqrt(n * 0.25)
    assert aborted + passed == n, f"{kind}: other outcomes {[o for o in outs if o.status not in (200, 500)][:3]}"
    assert abs(aborted - n / 2) <= tol, f"{kind}: {aborted}/{n} aborted, expected 150 ± {tol:.0f}"
