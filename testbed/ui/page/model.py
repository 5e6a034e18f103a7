"""The page's state, computed from raw signals: pure functions and small windows, no I/O
(tested without a network in tests/unit/test_ui_model.py).

- :func:`sidecar_sample`: one sidecar's ``/stats/prometheus`` -> per destination (service,
  version) request and success counts and latency buckets (Istio's
  ``istio_requests_total`` / ``istio_request_duration_milliseconds``), its outlier gauges
  and its certificate's days left;
- :class:`RateWindow`: samples over the last seconds -> rps, success rate, p50/p99 of the
  requests in the window (Prometheus ``rate`` and ``histogram_quantile`` on the deltas);
- :func:`link_state`, :func:`timeline_item`: a link's shapes and a history record as the
  page draws them.
"""
from __future__ import annotations

import collections
import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

__all__ = ["DestStats", "SidecarSample", "sidecar_sample", "RateWindow", "EdgeRates", "quantile",
           "link_state", "timeline_item", "shape_label", "shape_color", "split_series"]

_SERIES = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def split_series(series: str) -> tuple[str, dict[str, str]]:
    """'name{a="1",b="2"}' -> ('name', {'a': '1', 'b': '2'})."""
    m = _SERIES.match(series.strip())
    if m is None:
        return series, {}
    return m.group(1), dict(_LABEL.findall(m.group(2) or ""))


@dataclass
class DestStats:
    """Cumulative counts towards one (service, version) seen by one sidecar."""

    requests: float = 0.0
    ok: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)     # le (ms) -> cumulative count


@dataclass
class SidecarSample:
    dests: dict[tuple[str, str], DestStats] = field(default_factory=dict)
    ejections_active: dict[str, float] = field(default_factory=dict)   # cluster -> gauge
    cert_days: float | None = None


def _ok_code(code: str) -> bool:
    return code.isdigit() and 200 <= int(code) < 400


def sidecar_sample(prom: Mapping[str, float]) -> SidecarSample:
    """A sidecar's parsed ``/stats/prometheus`` (testbed.run.sidecar_stats.parse_prometheus)."""
    s = SidecarSample()
    for series, value in prom.items():
        name, labels = split_series(series)
        if name == "istio_requests_total":
            d = s.dests.setdefault((labels.get("destination_service", ""), labels.get("destination_version", "")),
                                   DestStats())
            d.requests += value
            if _ok_code(labels.get("response_code", "")):
                d.ok += value
        elif name == "istio_request_duration_milliseconds_bucket":
            d = s.dests.setdefault((labels.get("destination_service", ""), labels.get("destination_version", "")),
                                   DestStats())
            le = math.inf if labels.get("le") in ("+Inf", "inf") else float(labels.get("le", "inf"))
            d.buckets[le] = d.buckets.get(le, 0.0) + value
        elif name == "envoy_cluster_outlier_detection_ejections_active":
            s.ejections_active[labels.get("envoy_cluster_name", "")] = value
        elif name in ("envoy_server_days_until_first_cert_expiring",
                      "envoy_server_days_until_first_cert_expiring_total"):   # minimesh-proxy exports it so
            s.cert_days = value
    return s


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """``histogram_quantile``: the q-quantile (ms) of cumulative buckets {le: count},
    linear inside the bucket; None without observations."""
    les = sorted(buckets)
    if not les:
        return None
    total = buckets[les[-1]]
    if total <= 0:
        return None
    rank, prev_le, prev_count = q * total, 0.0, 0.0
    for le in les:
        count = buckets[le]
        if count >= rank:
            if math.isinf(le):
                return prev_le
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return prev_le


@dataclass(frozen=True)
class EdgeRates:
    rps: float
    success: float | None        # fraction of requests 2xx/3xx in the window; None: no requests
    p50_ms: float | None
    p99_ms: float | None
    total: float                 # requests since the sidecar started

    def to_dict(self) -> dict[str, Any]:
        r = lambda x, n=1: None if x is None else round(x, n)   # noqa: E731  (a local rounding helper)
        return {"rps": r(self.rps), "success": r(self.success, 4), "p50_ms": r(self.p50_ms),
                "p99_ms": r(self.p99_ms), "total": int(self.total)}


class RateWindow:
    """Samples of one sidecar over the last ``window_s`` seconds; rates over the window."""

    def __init__(self, window_s: float = 5.0):
        self.window_s = window_s
        self.samples: collections.deque[tuple[float, SidecarSample]] = collections.deque()

    def add(self, t: float, sample: SidecarSample) -> None:
        self.samples.append((t, sample))
        while len(self.samples) > 2 and self.samples[1][0] <= t - self.window_s:
            self.samples.popleft()

    @property
    def latest(self) -> SidecarSample | None:
        return self.samples[-1][1] if self.samples else None

    def rates(self, key: tuple[str, str]) -> EdgeRates | None:
        """Over the window, towards (service, version); None if never seen."""
        if not self.samples:
            return None
        (t0, old), (t1, new) = self.samples[0], self.samples[-1]
        cur = new.dests.get(key)
        if cur is None:
            return None
        prev = old.dests.get(key, DestStats()) if len(self.samples) > 1 else DestStats()
        if cur.requests < prev.requests:        # the sidecar restarted: its counters too
            prev = DestStats()
        n = cur.requests - prev.requests
        dt = max(t1 - t0, 1e-9) if len(self.samples) > 1 else None
        delta = {le: c - prev.buckets.get(le, 0.0) for le, c in cur.buckets.items()}
        return EdgeRates(n / dt if dt else 0.0, (cur.ok - prev.ok) / n if n > 0 else None,
                         quantile(0.5, delta) if n > 0 else None, quantile(0.99, delta) if n > 0 else None,
                         cur.requests)


def merge_rates(parts: Iterable[EdgeRates | None]) -> EdgeRates | None:
    """Several (service, version) rates as one edge: rps and totals add; success weighted;
    the quantiles are the worst part's (an upper bound, stated on the page)."""
    ps = [p for p in parts if p is not None]
    if not ps:
        return None
    rps = sum(p.rps for p in ps)
    weighted = [(p.success, p.rps) for p in ps if p.success is not None]
    w = sum(r for _, r in weighted)
    success = sum(s * r for s, r in weighted) / w if w > 0 else (weighted[0][0] if weighted else None)
    worst = lambda xs: max(xs) if xs else None   # noqa: E731
    return EdgeRates(rps, success, worst([p.p50_ms for p in ps if p.p50_ms is not None]),
                     worst([p.p99_ms for p in ps if p.p99_ms is not None]), sum(p.total for p in ps))


# --- links --------------------------------------------------------------------------------

def shape_label(shape: Any) -> str:
    """'10ms 1% 10Mbit' from a LinkShape-like value (delay_ms, loss_pct, bw_mbit); '' unshaped."""
    parts = []
    delay = getattr(shape, "delay_ms", None) or 0
    if delay:
        parts.append(f"{delay:g}ms")
    jitter = getattr(shape, "jitter_ms", None) or 0
    if jitter:
        parts.append(f"±{jitter:g}ms")
    loss = getattr(shape, "loss_pct", None) or 0
    if loss:
        parts.append(f"{loss:g}%")
    bw = getattr(shape, "bw_mbit", None)
    if bw:
        parts.append(f"{bw:g}Mbit")
    return " ".join(parts)


def shape_color(shape: Any) -> str:
    """The link's colour class: lossy (red) > slow (orange, >= 20 ms) > shaped (blue) > plain."""
    if (getattr(shape, "loss_pct", None) or 0) > 0:
        return "lossy"
    if (getattr(shape, "delay_ms", None) or 0) >= 20:
        return "slow"
    if shape_label(shape):
        return "shaped"
    return "plain"


_RANK = {"plain": 0, "shaped": 1, "slow": 2, "lossy": 3}


def link_state(a: str, b: str, fwd: Any, back: Any, up: bool, cut: bool) -> dict[str, Any]:
    """One link as the page draws it: both directions' labels, the worse direction's colour."""
    la, lb = shape_label(fwd), shape_label(back)
    color = max(shape_color(fwd), shape_color(back), key=_RANK.__getitem__)
    label = la if la == lb else f"{a}→{b} {la or '-'} / {b}→{a} {lb or '-'}"
    return {"a": a, "b": b, "label": label, "color": color, "up": up, "cut": cut,
            "fwd": la, "back": lb}


# --- timeline -----------------------------------------------------------------------------

_EVENT_CLASS = {"leader_change": "leader", "config": "push", "config_push": "push", "rules_applied": "push",
                "nack": "nack", "ejection": "eject", "unejection": "eject"}


def timeline_item(record: Any) -> dict[str, Any] | None:
    """A history record (testbed.history) as a timeline entry, or None (requests, etcd ops
    and acks are too many to draw one by one)."""
    rtype = getattr(type(record), "type", None)
    if rtype == "fault":
        f = record.fault
        desc = record.description or (f.get("kind", "fault") if isinstance(f, Mapping) else "fault")
        failed = "" if record.ok else f" FAILED: {record.error}"
        return {"t": round(record.t_start, 3), "kind": "fault", "phase": record.phase, "id": record.fault_id,
                "label": f"{record.phase} #{record.fault_id}: {desc}{failed}",
                "cls": "fault" if record.ok else "fault failed"}
    if rtype == "event":
        cls = _EVENT_CLASS.get(record.kind)
        if cls is None and record.source in ("pilot",) and record.kind in ("push", "ack"):
            return None
        detail = ", ".join(f"{k}={v}" for k, v in list(record.details.items())[:4])
        return {"t": round(record.t, 3), "kind": record.kind, "cls": cls or "event",
                "label": f"{record.source}: {record.kind}" + (f" ({detail})" if detail else "")}
    return None


def fault_spans(items: Iterable[Mapping[str, Any]], now: float | None) -> list[dict[str, Any]]:
    """Fault windows [apply, revert) from timeline entries (open windows end at ``now``)."""
    opened: dict[int, Mapping[str, Any]] = {}
    spans = []
    for it in items:
        if it.get("kind") != "fault":
            continue
        if it["phase"] == "apply":
            opened[it["id"]] = it
        elif it["id"] in opened:
            a = opened.pop(it["id"])
            spans.append({"t0": a["t"], "t1": it["t"], "label": a["label"].split(": ", 1)[-1], "open": False})
    for a in opened.values():
        spans.append({"t0": a["t"], "t1": now, "label": a["label"].split(": ", 1)[-1], "open": True})
    return sorted(spans, key=lambda s: s["t0"])
