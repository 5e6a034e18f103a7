"""Small, dependency-free statistics the checkers need (no SciPy on the testbed).

- :func:`wilson`: Wilson score interval for a binomial proportion.
- :func:`binomial_two_sided`: exact two-sided binomial test p-value (the "minlike" rule:
  sum the probabilities of all outcomes no more likely than the observed one, as R's
  binom.test and SciPy's binomtest do).
- :func:`chi2_sf`: chi-square survival function, via the regularized upper incomplete
  gamma function (series / continued fraction, Numerical Recipes 6.2).
- :func:`percentile`: nearest-rank percentile.
"""
from __future__ import annotations

import math
from statistics import NormalDist
from typing import Sequence

__all__ = ["wilson", "binomial_two_sided", "chi2_sf", "percentile", "z_for"]


def z_for(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for k successes out of n. (0, 1) when n == 0."""
    if n == 0:
        return 0.0, 1.0
    z = z_for(confidence)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


def _log_pmf(i: int, n: int, p: float) -> float:
    if p == 0.0:
        return 0.0 if i == 0 else -math.inf
    if p == 1.0:
        return 0.0 if i == n else -math.inf
    return (math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
            + i * math.log(p) + (n - i) * math.log1p(-p))


def binomial_two_sided(k: int, n: int, p: float) -> float:
    """Exact two-sided p-value of k successes in n trials with success probability p."""
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 1.0
    observed = _log_pmf(k, n, p)
    if observed == -math.inf:
        return 0.0
    limit = observed + math.log1p(1e-7)
    total = sum(math.exp(lp) for i in range(n + 1) if (lp := _log_pmf(i, n, p)) <= limit)
    return min(1.0, total)


def _gamma_q(a: float, x: float) -> float:
    """Regularized upper incomplete gamma Q(a, x)."""
    if x <= 0:
        return 1.0
    gln = math.lgamma(a)
    if x < a + 1:           # series for P, Q = 1 - P
        term = total = 1.0 / a
        ap = a
        for _ in range(10000):
            ap += 1
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(-x + a * math.log(x) - gln))
    tiny = 1e-300           # Lentz's continued fraction for Q
    b = x + 1 - a
    c = 1 / tiny
    d = 1 / b
    h = d
    for i in range(1, 10000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-15:
            break
    return math.exp(-x + a * math.log(x) - gln) * h


def chi2_sf(x: float, dof: int) -> float:
    """P(X >= x) for X ~ chi-square with ``dof`` degrees of freedom."""
    if dof < 1:
        raise ValueError(f"dof must be >= 1, got {dof}")
    return _gamma_q(dof / 2.0, x / 2.0)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of ``values``; None when empty."""
    if not values:
        return None
    s = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(s)))
    return s[min(rank, len(s)) - 1]
