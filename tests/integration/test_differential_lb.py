"""Differential load balancing (tests/configs/lb.yaml): three echo endpoints behind
ROUND_ROBIN, RANDOM, LEAST_REQUEST and RING_HASH clusters, sequential requests through
real Envoy and through minimesh-proxy. Properties both must show:

- ROUND_ROBIN: 30 requests -> exactly 10 per endpoint, in a repeating cycle of 3.
- RANDOM and LEAST_REQUEST (all endpoints idle: power-of-two choices among equals):
  300 requests -> counts fit uniform by a chi-square test (2 degrees of freedom, critical
  value 13.82 = 99.9 %: six such tests run, so a 1 % level would fail ~6 % of runs).
- RING_HASH on x-mm-user: every user always reaches the same endpoint; 30 users use at
  least 2 endpoints (all on one: probability 3 * 3**-30).
"""
from __future__ import annotations

from collections import Counter

import pytest

from testbed.apps.echo import Behaviour, Identity
from tests.support.differential import Req, run_sequence

UPS = {f"r{i}": (Identity("r", "v1", f"r{i}-0"), Behaviour()) for i in (1, 2, 3)}
KINDS = ["envoy", "minimesh"]
CHI2_DF2_999 = 13.816


def _need(kind: str, request) -> None:
    request.getfixturevalue("envoy_bin")
    if kind == "minimesh":
        request.getfixturevalue("minimesh_proxy")


def _instances(kind: str, reqs: list[Req]) -> list[str | None]:
    outs = run_sequence(kind, "lb.yaml", UPS, reqs)
    assert all(o.status == 200 for o in outs), f"{kind}: statuses {Counter(o.status for o in outs)}"
    return [o.instance for o in outs]


@pytest.mark.parametrize("kind", KINDS)
def test_round_robin_cycles(kind, request):
    _need(kind, request)
    seq = _instances(kind, [Req(f"/rr/{i}") for i in range(30)])
    assert Counter(seq) == {"r1-0": 10, "r2-0": 10, "r3-0": 10}, f"{kind}: {Counter(seq)}"
    assert all(seq[i] == seq[i + 3] for i in range(27)), f"{kind}: not a cycle of 3: {seq[:9]}"


@pytest.mark.parametrize("path", ["/random", "/least"])
@pytest.mark.parametrize("kind", KINDS)
def test_random_and_least_request_spread(kind, path, request):
    _need(kind, request)
    n = 300
    counts = Counter(_instances(kind, [Req(f"{path}/{i}") for i in range(n)]))
    assert set(counts) <= {"r1-0", "r2-0", "r3-0"}, f"{kind} {path}: {dict(counts)}"
    chi2 = sum((counts[i] - n / 3) ** 2 / (n / 3) for i in ("r1-0", "r2-0", "r3-0"))
    assert chi2 <= CHI2_DF2_999, f"{kind} {path}: {dict(counts)} is not uniform (chi2 {chi2:.1f} > {CHI2_DF2_999})"


@pytest.mark.parametrize("kind", KINDS)
def test_ring_hash_sticks_per_user(kind, request):
    _need(kind, request)
    users = [f"user{u}" for u in range(30)]
    reqs = [Req(f"/ring/{k}", headers=(("x-mm-user", u),)) for k in range(3) for u in users]
    seq = _instances(kind, reqs)
    by_user: dict[str, set] = {}
    for req, inst in zip(reqs, seq, strict=True):
        by_user.setdefault(dict(req.headers)["x-mm-user"], set()).add(inst)
    moved = {u: s for u, s in by_user.items() if len(s) != 1}
    assert not moved, f"{kind}: users reached more than one endpoint: {moved}"
    assert len(set(seq)) >= 2, f"{kind}: all 30 users hashed to {set(seq)}"
