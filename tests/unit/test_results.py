"""results.json and the PNG plots."""
from __future__ import annotations

import json
import math
import random

import pytest

from testbed.run.checkers import check_availability, check_linearizability, check_split
from testbed.history import FaultRecord, Request
from testbed.run.results import overall_valid, plot_split, plot_timeline, read_results, write_results

PNG = b"\x89PNG\r\n\x1a\n"


def requests(n=300):
    rng = random.Random(5)
    out = []
    for i in range(n):
        t = i * 0.05
        in_fault = 5 <= t < 8
        ok = not (in_fault and rng.random() < 0.5)
        out.append(Request(t, t + rng.uniform(0.002, 0.2 if in_fault else 0.02), 200 if ok else 503,
                           version=rng.choices(["v1", "v2"], [95, 5])[0]))
    return out


FAULTS = [FaultRecord(5.0, 5.01, 0, "apply", {"kind": "crash"}, description="crash b-1"),
          FaultRecord(8.0, 8.02, 0, "revert", {"kind": "crash"}),
          FaultRecord(12.0, 12.0, 1, "apply", {"kind": "partition"}, description="partition")]


def test_write_results(tmp_path):
    rs = requests()
    verdicts = {"availability": check_availability(rs, 1.0, 0.99),
                "split": check_split(rs, {"v1": 95, "v2": 5}),
                "linearizability": check_linearizability([])}
    path = write_results(tmp_path / "out", "crash_failover", 42, {"rate": 20, "quick": True, "timeout": math.inf},
                         {"p99_ms": 123.4, "errors": 7}, verdicts)
    doc = json.loads(path.read_text())
    assert doc == read_results(tmp_path / "out")
    assert doc["experiment"] == "crash_failover" and doc["seed"] == 42
    assert doc["params"] == {"rate": 20, "quick": True, "timeout": None}
    assert doc["metrics"]["errors"] == 7
    assert doc["verdicts"]["availability"]["valid"] is False and doc["verdicts"]["availability"]["worst_window_start"]
    assert doc["verdicts"]["split"]["shares"][1]["version"] == "v2"
    assert doc["valid"] is False and doc["failed"] == ["availability"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["results.json"]     # no temp file left


def test_overall_valid_requires_boolean_valid():
    assert overall_valid({"a": {"valid": True}}) == (True, [])
    with pytest.raises(ValueError, match="no boolean 'valid'"):
        overall_valid({"a": {"ok": 1}})


def test_plots_are_png_files(tmp_path):
    rs = requests()
    t = plot_timeline(tmp_path / "timeline.png", rs, FAULTS, window_s=0.5, title="crash")
    s = plot_split(tmp_path / "split.png", check_split(rs, {"v1": 95, "v2": 5}))
    for p in (t, s):
        data = p.read_bytes()
        assert data[:8] == PNG and len(data) > 5000


def test_plots_cope_with_empty_and_failed_runs(tmp_path):
    all_failed = [Request(i, i + 1, None, error="connect refused") for i in range(5)]
    assert plot_timeline(tmp_path / "a.png", all_failed, []).read_bytes()[:8] == PNG
    assert plot_timeline(tmp_path / "b.png", [], FAULTS).read_bytes()[:8] == PNG
    assert plot_split(tmp_path / "c.png", check_split([], {"v1": 1, "v2": 1})).read_bytes()[:8] == PNG


def test_live_progress_follows_the_history():
    import io

    from rich.console import Console

    from testbed.history import FakeClock, History
    from testbed.run.results import LiveProgress
    clock = FakeClock(10.0)
    out = io.StringIO()
    hist = History(stream=io.StringIO(), clock=clock)
    with LiveProgress(hist, clock, duration_s=60, title="canary", console=Console(file=out, width=100)) as lp:
        for i in range(20):
            hist.request(t_start=9.0 + i * 0.1, t_end=9.05 + i * 0.1, status=200 if i % 4 else 503)
        hist.fault(t_start=9.5, t_end=9.6, fault_id=0, phase="apply", fault={"kind": "cut"}, description="cut a->b")
        hist.event("pilot", "config")
        assert lp.requests == 20 and lp.ok == 15 and lp.active == {0: "cut a->b"}
    text = out.getvalue()
    assert "15/20 ok (75.0%)" in text and "cut a->b" in text and "10.0 s / 60 s" in text
    assert "10.0s pilot: config" in text
    hist.request(t_start=11, t_end=12, status=200)      # unsubscribed at exit
    assert lp.requests == 20
