"""Observed routing split against configured weights.

For each version: the observed share with its Wilson interval, and whether the configured
share lies inside it. The verdict is a goodness-of-fit test of the counts against the
weights: exact two-sided binomial test for two versions, Pearson's chi-square with k-1
degrees of freedom otherwise. ``valid`` when p >= alpha (the split is consistent with the
configuration) and no request went to a version with weight 0.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Mapping

from testbed.run.checkers.stats import binomial_two_sided, chi2_sf, wilson
from testbed.history import Request

__all__ = ["VersionShare", "SplitVerdict", "check_split"]


@dataclass(frozen=True)
class VersionShare:
    version: str
    count: int
    observed: float
    expected: float
    ci_low: float
    ci_high: float
    within_ci: bool


@dataclass(frozen=True)
class SplitVerdict:
    valid: bool
    requests: int                 # successful requests counted
    test: str                     # "binomial" | "chi-square" | "none"
    statistic: float | None       # chi-square statistic (None for the binomial test)
    p_value: float | None
    alpha: float
    confidence: float
    shares: tuple[VersionShare, ...]
    unexpected: tuple[tuple[str, int], ...]    # versions not in the weights (or weight 0) that served


def check_split(requests: Iterable[Request], weights: Mapping[str, float], *, confidence: float = 0.95,
                alpha: float = 0.01, only_ok: bool = True) -> SplitVerdict:
    """``weights``: version -> weight (any scale, e.g. {"v1": 95, "v2": 5})."""
    total_w = sum(weights.values())
    if total_w <= 0 or any(w < 0 for w in weights.values()):
        raise ValueError(f"weights must be >= 0 with a positive sum, got {dict(weights)}")
    counts = Counter(r.version for r in requests if r.ok or not only_ok)
    n = sum(counts.values())
    live = {v: w / total_w for v, w in weights.items() if w > 0}
    unexpected = tuple(sorted((v, c) for v, c in counts.items() if v not in live))
    shares = []
    for v in sorted(weights):
        k = counts.get(v, 0)
        lo, hi = wilson(k, n, confidence)
        exp = weights[v] / total_w
        shares.append(VersionShare(v, k, k / n if n else 0.0, exp, lo, hi, lo <= exp <= hi))
    if n == 0:
        return SplitVerdict(False, 0, "none", None, None, alpha, confidence, tuple(shares), unexpected)
    if unexpected:
        return SplitVerdict(False, n, "none", None, 0.0, alpha, confidence, tuple(shares), unexpected)
    if len(live) == 1:
        return SplitVerdict(True, n, "none", None, 1.0, alpha, confidence, tuple(shares), unexpected)
    if len(live) == 2:
        first = sorted(live)[0]
        p = binomial_two_sided(counts.get(first, 0), n, live[first])
        return SplitVerdict(p >= alpha, n, "binomial", None, p, alpha, confidence, tuple(shares), unexpected)
    stat = sum((counts.get(v, 0) - n * p) ** 2 / (n * p) for v, p in live.items())
    p = chi2_sf(stat, len(live) - 1)
    return SplitVerdict(p >= alpha, n, "chi-square", stat, p, alpha, confidence, tuple(shares), unexpected)
