"""Measuring links from the outside: shared by the fidelity tests and benchmarks/links.py."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass


def binomial_bounds(n: int, p: float, confidence: float = 0.99) -> tuple[int, int]:
    """Smallest [lo, hi] holding at least ``confidence`` of Binomial(n, p), equal tails."""
    tail = (1.0 - confidence) / 2.0
    logs = [math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
            + (k * math.log(p) if k else 0.0) + ((n - k) * math.log1p(-p) if n - k else 0.0)
            for k in range(n + 1)] if 0.0 < p < 1.0 else None
    if logs is None:
        k = 0 if p <= 0.0 else n
        return k, k
    pmf = [math.exp(v) for v in logs]
    acc, lo = 0.0, 0
    for k in range(n + 1):
        if acc + pmf[k] > tail:
            lo = k
            break
        acc += pmf[k]
    acc, hi = 0.0, n
    for k in range(n, -1, -1):
        if acc + pmf[k] > tail:
            hi = k
            break
        acc += pmf[k]
    return lo, hi


@dataclass(frozen=True)
class PingReply:
    seq: int
    rtt_ms: float
    recv_time: float | None  # from ping -D (Unix time), else None

    @property
    def sent_time(self) -> float | None:
        return None if self.recv_time is None else self.recv_time - self.rtt_ms / 1000.0


_REPLY = re.compile(r"(?:\[(?P<ts>[0-9.]+)\] )?\d+ bytes from .*icmp_seq=(?P<seq>\d+) .*time=(?P<rtt>[0-9.]+) ms")
_SUMMARY = re.compile(r"(?P<tx>\d+) packets transmitted, (?P<rx>\d+) received")


def parse_ping(output: str) -> tuple[list[PingReply], int, int]:
    """Replies, packets transmitted, packets received (duplicates are not replies)."""
    replies = []
    for line in output.splitlines():
        if "(DUP!)" in line:
            continue
        m = _REPLY.search(line)
        if m:
            replies.append(PingReply(int(m["seq"]), float(m["rtt"]),
                                     float(m["ts"]) if m["ts"] else None))
    s = _SUMMARY.search(output)
    if not s:
        raise ValueError(f"no ping summary in output: {output[-300:]!r}")
    return replies, int(s["tx"]), int(s["rx"])


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank-interpolated percentile (pct in [0, 100])."""
    if not values:
        raise ValueError("no values")
    v = sorted(values)
    pos = (len(v) - 1) * pct / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)
