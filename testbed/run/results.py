"""Run results: ``results.json`` and PNG plots (matplotlib, Agg backend: no display needed).

    write_results(out, "canary", seed, params, metrics, {"split": split_verdict, ...})
    plot_timeline(out / "timeline.png", hist.requests, hist.faults, window_s=1.0)
    plot_split(out / "split.png", split_verdict)
    plt = pyplot()                     # an experiment's own figure, on the same backend

results.json: ``{"experiment", "seed", "params", "metrics", "verdicts": {name: {...}},
"valid", "failed"}`` — ``valid`` is true when every verdict's ``valid`` is true; ``failed``
names the others. Dataclasses become objects, tuples lists, inf/nan null.

:class:`LiveProgress` shows a run as it happens (rich): elapsed time, requests and their
success rate (overall and over the last second), faults in force, the last event.
"""
from __future__ import annotations

import collections
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

from rich.live import Live
from rich.table import Table

from testbed.paths import hand_over, user_dir
from testbed.run.checkers.requests import windows
from testbed.run.checkers.split import SplitVerdict
from testbed.run.checkers.stats import wilson
from testbed.history import Event, FaultRecord, History, Record, Request, fault_windows, jsonable

__all__ = ["write_results", "read_results", "plot_timeline", "plot_split", "overall_valid", "pyplot", "LiveProgress"]


def _valid(v: Any) -> bool:
    value = v.get("valid") if isinstance(v, Mapping) else getattr(v, "valid", None)
    if not isinstance(value, bool):
        raise ValueError(f"verdict {v!r} has no boolean 'valid'")
    return value


def overall_valid(verdicts: Mapping[str, Any]) -> tuple[bool, list[str]]:
    failed = [name for name, v in verdicts.items() if not _valid(v)]
    return not failed, failed


def write_results(out_dir: str | Path, experiment: str, seed: int | None, params: Mapping[str, Any],
                  metrics: Mapping[str, Any], verdicts: Mapping[str, Any]) -> Path:
    """Write ``out_dir/results.json`` atomically (a reader never sees half a file)."""
    out = user_dir(out_dir)
    valid, failed = overall_valid(verdicts)
    doc = {"experiment": experiment, "seed": seed, "params": jsonable(params), "metrics": jsonable(metrics),
           "verdicts": jsonable(dict(verdicts)), "valid": valid, "failed": failed}
    text = json.dumps(doc, indent=2, sort_keys=False, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".results.", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, out / "results.json")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return hand_over(out / "results.json")     # mkstemp made it 0600: readable, and the sudo user's


def read_results(out_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(out_dir) / "results.json").read_text(encoding="utf-8"))


_SHADES = ("tab:red", "tab:purple", "tab:orange", "tab:brown", "tab:gray")


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (files only, no display): for an
    experiment's own plots."""
    import matplotlib   # late: matplotlib (~300 ms) only when a plot is drawn
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _short(text: str, width: int = 60) -> str:
    """A legend label: long fault descriptions (a complete grudge names every host) cut."""
    return text if len(text) <= width else text[:width - 1] + "…"


MILESTONES = {("experiment", "rules_applied"): "rules applied", ("experiment", "workload_started"): "workload started",
              ("etcd", "leader"): "etcd leader elected", ("sidecar", "ejection"): "ejection"}


def milestones(events: Sequence[Event]) -> list[tuple[float, str]]:
    """(t, label) of the events a timeline marks: rules applied, workloads started, etcd
    elections (a member's log saw a new leader), outlier ejections."""
    out = []
    for e in events:
        key = (e.source.split(":")[0], e.kind)
        if key in MILESTONES:
            who = e.details.get("leader") or e.details.get("instance") or e.details.get("name") or ""
            out.append((e.t, f"{MILESTONES[key]} {who}".strip()))
    kept: list[tuple[float, str]] = []     # the same milestone seen by several members: once
    for t, label in sorted(set(out)):
        if not any(lb == label and t - tk < 1.0 for tk, lb in kept):
            kept.append((t, label))
    return kept


def etcd_requests(etcd: Sequence[Any]) -> list[Request]:
    """etcd operations (history ``etcd`` records, invoke + completion) as requests for the
    timeline: a failed or unfinished one is a failure."""
    open_: dict[Any, Any] = {}
    out = []
    for e in etcd:
        if e.op_type == "invoke":
            open_[e.process] = e
        elif e.process in open_:
            inv = open_.pop(e.process)
            out.append(Request(inv.t, e.t, 200 if e.op_type == "ok" else None, client=str(e.process),
                               service="etcd", error=None if e.op_type == "ok" else (e.error or e.op_type)))
    return out


def plot_timeline(path: str | Path, requests: Sequence[Request], faults: Sequence[FaultRecord] = (),
                  window_s: float = 1.0, title: str = "", events: Sequence[Event] = (),
                  etcd: Sequence[Any] = ()) -> Path:
    """Two panels over experiment time: latency p50/p99 of successful requests per window
    (ms), and the success rate per window (%); fault windows (apply -> revert) shaded and
    milestones (:func:`milestones`) marked on both. Without requests, the etcd operations."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter   # late: matplotlib only when a plot is drawn
    plt = pyplot()
    what = "requests"
    if not requests and etcd:
        requests, what = etcd_requests(etcd), "etcd operations"
    ws = windows(requests, window_s)
    t = [w.t_start + window_s / 2 for w in ws]
    fig, (ax_lat, ax_ok) = plt.subplots(2, 1, sharex=True, figsize=(9, 5.5))
    try:
        ax_lat.plot(t, [w.p50_ms for w in ws], label="p50", marker=".")
        ax_lat.plot(t, [w.p99_ms for w in ws], label="p99", marker=".")
        ax_lat.set_ylabel(f"latency of {what} (ms)")
        if any(w.p99_ms for w in ws):
            ax_lat.set_yscale("log")
            ax_lat.yaxis.set_major_formatter(ScalarFormatter())     # 6, not 6x10^0
            ax_lat.yaxis.set_minor_formatter(NullFormatter())
        ax_ok.plot(t, [None if w.success_rate is None else 100 * w.success_rate for w in ws], color="tab:green",
                   marker=".", label="success rate")
        ax_ok.set_ylabel("success (%)")
        ax_ok.set_ylim(-5, 105)
        ax_ok.set_xlabel(f"experiment time t (s), {window_s:g} s windows")
        end = max((r.t_end for r in requests), default=0.0)
        for i, (start, stop, desc) in enumerate(fault_windows(faults)):
            stop = stop if stop is not None else max(end, start)
            for ax in (ax_lat, ax_ok):
                ax.axvspan(start, max(stop, start + 1e-3), color=_SHADES[i % len(_SHADES)], alpha=0.15,
                           label=_short(desc) if ax is ax_ok and i < 5 else None)
        for tm, label in milestones(events)[:12]:
            for ax in (ax_lat, ax_ok):
                ax.axvline(tm, color="black", linestyle=":", linewidth=0.8)
            ax_lat.annotate(label, (tm, 1), xycoords=("data", "axes fraction"), rotation=90, fontsize=6,
                            va="top", ha="right")
        ax_lat.legend(loc="upper left", fontsize="small")
        ax_ok.legend(loc="lower left", fontsize="small")
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return hand_over(path)


def _percent_label(confidence: float) -> str:
    """99.9 % from 0.999 (``{:.0%}`` would print 100 %)."""
    return f"{confidence * 100:.10g} %"


def plot_split(path: str | Path, verdict: SplitVerdict, title: str = "",
               requests: Sequence[Request] = ()) -> Path:
    """Left: observed share per version (percent) with its Wilson interval, a marker at the
    configured share, each bar labelled with its numbers. Right (with ``requests``): the
    smallest configured version's cumulative share over experiment time, with its interval
    band and the configured share, on an axis zoomed to it."""
    plt = pyplot()
    shares = verdict.shares
    fig, axes = plt.subplots(1, 2 if requests else 1, figsize=(11 if requests else 6, 4), squeeze=False)
    ax = axes[0][0]
    level = _percent_label(verdict.confidence)
    try:
        x = list(range(len(shares)))
        obs = [100 * s.observed for s in shares]
        err = [[100 * (s.observed - s.ci_low) for s in shares], [100 * (s.ci_high - s.observed) for s in shares]]
        ax.bar(x, obs, yerr=err, capsize=6, color="tab:blue", alpha=0.7, label=f"observed ({level} Wilson interval)")
        ax.scatter(x, [100 * s.expected for s in shares], color="tab:red", marker="_", s=600, zorder=3,
                   label="configured")
        for i, s in enumerate(shares):
            ax.annotate(f"{100 * s.observed:.1f} %\n[{100 * s.ci_low:.1f}, {100 * s.ci_high:.1f}]",
                        (i, 100 * s.ci_high), textcoords="offset points", xytext=(0, 4), ha="center", fontsize=8)
        ax.set_xticks(x, [f"{s.version}\n{s.count}/{verdict.requests}" for s in shares])
        ax.set_ylabel("share of requests (%)")
        ax.set_ylim(0, 115)
        p = f"p = {verdict.p_value:.3g}" if verdict.p_value is not None else "no test"
        ax.set_title(title or f"routing split ({verdict.test}, {p})", fontsize=10)
        ax.legend(fontsize="small", loc="upper left")
        if requests and shares:
            canary = min(shares, key=lambda s: s.expected)
            done = sorted((r.t_start, r.version == canary.version) for r in requests if r.ok)
            t, k, lo, hi, cum = [], 0, [], [], []
            for n, (ts, hit) in enumerate(done, 1):
                k += hit
                a, b = wilson(k, n, verdict.confidence)
                t.append(ts)
                cum.append(100 * k / n)
                lo.append(100 * a)
                hi.append(100 * b)
            ax2 = axes[0][1]
            ax2.fill_between(t, lo, hi, color="tab:blue", alpha=0.2, label=f"{level} Wilson interval")
            ax2.plot(t, cum, color="tab:blue", label=f"{canary.version} share so far")
            ax2.axhline(100 * canary.expected, color="tab:red", linestyle="--", label="configured")
            ax2.set_ylim(0, min(105, max(3 * 100 * canary.expected, 5)))
            ax2.set_xlabel("experiment time t (s)")
            ax2.set_ylabel(f"{canary.version} share (%)")
            ax2.set_title(f"{canary.version}'s share over time", fontsize=10)
            ax2.legend(fontsize="small")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return hand_over(path)


class LiveProgress:
    """``with LiveProgress(history, clock, duration_s=60, title="canary"):`` — a live
    status panel fed by the history's appends (rich; on a non-terminal it prints the last
    state once, at exit)."""

    def __init__(self, history: History, clock: Any, duration_s: float | None = None, title: str = "",
                 console: Any = None, refresh_per_second: float = 4):
        self.history, self.clock, self.duration_s, self.title = history, clock, duration_s, title
        self.console, self.refresh = console, refresh_per_second
        self.requests = self.ok = 0
        self.recent: collections.deque[tuple[float, bool]] = collections.deque()
        self.active: dict[int, str] = {}
        self.last_event = ""
        self._lock = threading.Lock()
        self._unsubscribe: Any = None
        self._live: Any = None

    def _on(self, rec: Record) -> None:
        with self._lock:
            if isinstance(rec, Request):
                self.requests += 1
                self.ok += rec.ok
                self.recent.append((rec.t_start, rec.ok))
            elif isinstance(rec, FaultRecord):
                if rec.phase == "apply" and rec.fault.get("kind") != "restart":
                    self.active[rec.fault_id] = rec.description or str(rec.fault.get("kind"))
                else:
                    self.active.pop(rec.fault_id, None)
            elif isinstance(rec, Event):
                self.last_event = f"{rec.t:.1f}s {rec.source}: {rec.kind}"

    def render(self) -> Any:
        now = self.clock.now()
        with self._lock:
            while self.recent and self.recent[0][0] < now - 1.0:
                self.recent.popleft()
            last = [ok for _, ok in self.recent]
            rows = [("time", f"{now:.1f} s" + (f" / {self.duration_s:g} s" if self.duration_s else "")),
                    ("requests", f"{self.ok}/{self.requests} ok"
                     + (f" ({self.ok / self.requests:.1%})" if self.requests else "")),
                    ("last second", f"{sum(last)}/{len(last)} ok" if last else "-"),
                    ("faults in force", "; ".join(self.active.values()) or "none"),
                    ("last event", self.last_event or "-")]
        table = Table(title=self.title or None, show_header=False, box=None)
        for k, v in rows:
            table.add_row(k, v)
        return table

    def __enter__(self) -> "LiveProgress":
        self._unsubscribe = self.history.subscribe(self._on)
        self._live = Live(console=self.console, refresh_per_second=self.refresh, get_renderable=self.render,
                          redirect_stdout=False, redirect_stderr=False)
        self._live.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self._live.stop()
        finally:
            self._unsubscribe()
