"""Checkers over workload requests: availability per window, failover time, and requests
routed to an endpoint the registry had already removed.

A request's time is its *start* (the open-loop workload's send time); success is
:attr:`testbed.history.Request.ok` (a 2xx/3xx response, no error).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

from testbed.run.checkers.stats import percentile
from testbed.history import Event, Request

__all__ = ["WindowStat", "windows", "AvailabilityVerdict", "check_availability", "FailoverVerdict",
           "check_failover", "StaleRoutingVerdict", "check_removed_endpoint_routing"]


@dataclass(frozen=True)
class WindowStat:
    """Requests started in [t_start, t_start + width). Latencies over successful requests."""

    t_start: float
    requests: int
    ok: int
    success_rate: float | None          # None: no request in the window
    p50_ms: float | None
    p99_ms: float | None


def windows(requests: Sequence[Request], window_s: float, t0: float | None = None,
            t1: float | None = None) -> list[WindowStat]:
    """Bucket requests by start time into windows of ``window_s`` from t0 (default: first
    start) up to t1 (default: last start)."""
    if window_s <= 0:
        raise ValueError(f"window_s must be > 0, got {window_s}")
    if not requests:
        return []
    t0 = min(r.t_start for r in requests) if t0 is None else t0
    t1 = max(r.t_start for r in requests) if t1 is None else t1
    count = max(1, math.floor((t1 - t0) / window_s) + 1)
    buckets: list[list[Request]] = [[] for _ in range(count)]
    for r in requests:
        i = math.floor((r.t_start - t0) / window_s)
        if 0 <= i < count:
            buckets[i].append(r)
    out = []
    for i, b in enumerate(buckets):
        ok = [r for r in b if r.ok]
        lat = [r.latency_s * 1000 for r in ok]
        out.append(WindowStat(t0 + i * window_s, len(b), len(ok), len(ok) / len(b) if b else None,
                              percentile(lat, 50), percentile(lat, 99)))
    return out


@dataclass(frozen=True)
class AvailabilityVerdict:
    valid: bool                       # every non-empty window at or above min_success
    requests: int
    ok: int
    success_rate: float | None
    window_s: float
    min_success: float
    worst_window_start: float | None
    worst_success_rate: float | None
    windows_below: int
    empty_windows: int                # an open-loop workload should leave none


def check_availability(requests: Sequence[Request], window_s: float = 1.0, min_success: float = 0.99,
                       t0: float | None = None, t1: float | None = None) -> AvailabilityVerdict:
    ws = windows(requests, window_s, t0, t1)
    full = [w for w in ws if w.success_rate is not None]
    worst = min(full, key=lambda w: (w.success_rate, w.t_start), default=None)
    below = sum(1 for w in full if w.success_rate is not None and w.success_rate < min_success)
    ok = sum(1 for r in requests if r.ok)
    return AvailabilityVerdict(bool(full) and below == 0, len(requests), ok,
                               ok / len(requests) if requests else None, window_s, min_success,
                               worst.t_start if worst else None, worst.success_rate if worst else None,
                               below, len(ws) - len(full))


@dataclass(frozen=True)
class FailoverVerdict:
    """Times in seconds after ``fault_t``. ``first_error_s``: first failed request;
    ``first_success_s``: first success after that error; ``recovered_s``: start of the
    first request after which every request (until ``until``) succeeded — 0.0 when no
    request failed, None when the last request failed (never recovered)."""

    valid: bool
    fault_t: float
    requests: int
    errors: int
    first_error_s: float | None
    first_success_s: float | None
    recovered_s: float | None
    max_recovery_s: float | None


def check_failover(requests: Iterable[Request], fault_t: float, until: float | None = None,
                   max_recovery_s: float | None = None) -> FailoverVerdict:
    rs = sorted((r for r in requests if r.t_start >= fault_t and (until is None or r.t_start < until)),
                key=lambda r: r.t_start)
    failed = [i for i, r in enumerate(rs) if not r.ok]
    if not failed:
        return FailoverVerdict(bool(rs), fault_t, len(rs), 0, None, None, 0.0, max_recovery_s)
    first = failed[0]
    succ = next((r for r in rs[first + 1:] if r.ok), None)
    last = failed[-1]
    recovered = rs[last + 1].t_start - fault_t if last + 1 < len(rs) else None
    valid = recovered is not None and (max_recovery_s is None or recovered <= max_recovery_s)
    return FailoverVerdict(valid, fault_t, len(rs), len(failed), rs[first].t_start - fault_t,
                           succ.t_start - fault_t if succ else None, recovered, max_recovery_s)


@dataclass(frozen=True)
class StaleRoutingVerdict:
    valid: bool                          # count <= allowed
    count: int                           # requests served by an already-removed instance
    removals: int
    grace_s: float
    by_instance: tuple[tuple[str, int], ...]
    examples: tuple[str, ...]


def check_removed_endpoint_routing(requests: Iterable[Request], events: Iterable[Event], grace_s: float = 0.0,
                                   removed_kinds: Sequence[str] = ("endpoint_removed",),
                                   added_kinds: Sequence[str] = ("endpoint_added",),
                                   allowed: int = 0) -> StaleRoutingVerdict:
    """Count requests served by instance X that *started* more than ``grace_s`` after an
    event (kind in removed_kinds, ``details["instance"] == X``) removed X from the registry,
    and before an event re-added X."""
    intervals: dict[str, list[tuple[float, float]]] = {}
    removed_at: dict[str, float] = {}
    removals = 0
    for ev in sorted(events, key=lambda e: e.t):
        inst = ev.details.get("instance")
        if not inst:
            continue
        if ev.kind in removed_kinds and inst not in removed_at:
            removed_at[inst] = ev.t
            removals += 1
        elif ev.kind in added_kinds and inst in removed_at:
            intervals.setdefault(inst, []).append((removed_at.pop(inst), ev.t))
    for inst, t in removed_at.items():
        intervals.setdefault(inst, []).append((t, math.inf))
    counts: dict[str, int] = {}
    examples: list[str] = []
    for r in requests:
        for lo, hi in intervals.get(r.instance, ()):
            if lo + grace_s < r.t_start < hi:
                counts[r.instance] = counts.get(r.instance, 0) + 1
                if len(examples) < 10:
                    examples.append(f"request at t={r.t_start:.3f}s served by {r.instance}, removed at t={lo:.3f}s")
                break
    total = sum(counts.values())
    return StaleRoutingVerdict(total <= allowed, total, removals, grace_s, tuple(sorted(counts.items())),
                               tuple(examples))
