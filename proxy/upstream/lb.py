"""Load balancers over a cluster's current host list (rebuilt on membership/health change).

Each balancer is built from a host list and answers ``choose(hash_key) -> Host | None``.
Registered by Envoy's lb_policy names.
"""
from __future__ import annotations

import bisect
import hashlib
import random
from math import gcd
from typing import Callable, Sequence

__all__ = ["make_lb", "RoundRobin", "LeastRequest", "RandomLb", "RingHash", "ring_hash"]


def _expand(hosts: Sequence) -> list:
    """Hosts repeated by weight (gcd-reduced) so plain rotation honours weights."""
    if all(h.weight == hosts[0].weight for h in hosts):
        return list(hosts)
    g = 0
    for h in hosts:
        g = gcd(g, h.weight)
    # interleave: round k takes every host whose weight/g > k
    out: list = []
    top = max(h.weight for h in hosts) // g
    for k in range(top):
        out.extend(h for h in hosts if h.weight // g > k)
    return out


class RoundRobin:
    __slots__ = ("_hosts", "_i")

    def __init__(self, hosts: Sequence, spec=None):
        self._hosts = _expand(hosts) if hosts else []
        self._i = random.randrange(len(self._hosts)) if self._hosts else 0

    def choose(self, hash_key: bytes | None = None):
        hosts = self._hosts
        if not hosts:
            return None
        i = self._i + 1
        if i >= len(hosts):
            i = 0
        self._i = i
        return hosts[i]


class RandomLb:
    __slots__ = ("_hosts",)

    def __init__(self, hosts: Sequence, spec=None):
        self._hosts = _expand(hosts) if hosts else []

    def choose(self, hash_key: bytes | None = None):
        return random.choice(self._hosts) if self._hosts else None


class LeastRequest:
    """Power of ``choice_count`` choices on active requests (Envoy's default for equal weights)."""

    __slots__ = ("_hosts", "_choices")

    def __init__(self, hosts: Sequence, spec=None):
        self._hosts = list(hosts)
        self._choices = spec.choice_count if spec is not None else 2

    def choose(self, hash_key: bytes | None = None):
        hosts = self._hosts
        n = len(hosts)
        if n == 0:
            return None
        if n == 1:
            return hosts[0]
        best = hosts[random.randrange(n)]
        for _ in range(self._choices - 1):
            h = hosts[random.randrange(n)]
            if h.rq_active * best.weight < best.rq_active * h.weight:
                best = h
        return best


def ring_hash(key: bytes) -> int:
    return int.from_bytes(hashlib.md5(key).digest()[:8], "big")


class RingHash:
    """A ketama-style ring: each host gets ``ring_size * weight / total`` points."""

    __slots__ = ("_points", "_hosts")

    def __init__(self, hosts: Sequence, spec=None):
        size = spec.ring_size if spec is not None else 1024
        total = sum(h.weight for h in hosts) or 1
        ring = []
        for h in hosts:
            n = max(1, round(size * h.weight / total))
            base = f"{h.address}:{h.port}_".encode()
            for i in range(n):
                ring.append((ring_hash(base + str(i).encode()), h))
        ring.sort(key=lambda t: t[0])
        self._points = [p for p, _ in ring]
        self._hosts = [h for _, h in ring]

    def choose(self, hash_key: bytes | None = None):
        if not self._hosts:
            return None
        if hash_key is None:
            return random.choice(self._hosts)
        i = bisect.bisect_left(self._points, ring_hash(hash_key))
        return self._hosts[i if i < len(self._hosts) else 0]


_POLICIES: dict[str, Callable] = {"ROUND_ROBIN": RoundRobin, "LEAST_REQUEST": LeastRequest,
                                  "RANDOM": RandomLb, "RING_HASH": RingHash}


def make_lb(policy: str, hosts: Sequence, spec=None):
    return _POLICIES[policy](hosts, spec)
